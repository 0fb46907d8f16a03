"""One run per output folder (the OUTPUT_DIR lock), honest failure messages (write failures, NaN
advice that works), and the multi-machine wait message."""
import errno
import os
import subprocess
import sys
from datetime import timedelta

import pytest
import torch
import yaml
from test_bad_input import data_opts, main_error, make_data, write_json
from test_resume import CONFIG, ROOT, TINY_OPTS
from test_signals import TIMEOUT, start, wait_for

from lt_det.engine import LTTrainer, launch, load_config, lock_output_dir, release_output_dir
from lt_det.engine.lock import LOCK_NAME
from lt_det.errors import LTDetError


def tiny_dataset(tmp_path):
    data, root = make_data(tmp_path)
    return data_opts(write_json(tmp_path, data), root)


def snapshot(folder):
    return {f: open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder))}


# ------------------------------------------------------------------ one run per folder
def test_two_writers_into_one_output_dir(tmp_path):
    go = tmp_path / "go"
    proc, marks, out = start(tmp_path, 1, "SEED", "11", "SOLVER.MAX_ITER", "3", go_file=go)
    try:
        wait_for(lambda: (marks / "rank0").exists(), "run A's iterations", proc)
        before = snapshot(out)
        opts = tiny_dataset(tmp_path)
        # B: a new run with another seed, and C: a --resume, while A is alive
        for msg in (main_error(tmp_path, *opts, "SEED", "22", out_dir=out),
                    _resume_error(tmp_path, opts, out)):
            assert f"OUTPUT_DIR '{out}' is in use by another lt_det run (pid {proc.pid}" in msg
            assert "Nothing was changed" in msg
            assert snapshot(out) == before
        go.write_text("")
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, stderr[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert yaml.safe_load((out / "config.yaml").read_text())["SEED"] == 11
    assert (out / "model_final.pth").exists()
    # A released the lock on exit: the folder can be continued now (no "in use" refusal).
    lock_output_dir(str(out))
    release_output_dir(str(out))


def _resume_error(tmp_path, opts, out):
    from test_resume import load_train_net

    train_net = load_train_net()
    args = train_net.argument_parser().parse_args(
        ["--config-file", CONFIG, "--resume", *TINY_OPTS, *opts, "OUTPUT_DIR", str(out)]
    )
    with pytest.raises(LTDetError) as e:
        train_net.main(args)
    return str(e.value)


def test_a_lock_left_by_a_killed_run_does_not_block(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from lt_det.engine.lock import lock_output_dir;"
         f"lock_output_dir({str(out)!r}); print('locked', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LTDetError, match=rf"in use by another lt_det run \(pid {holder.pid} "):
            lock_output_dir(str(out))
    finally:
        holder.kill()  # kill -9: no clean-up runs in the holder
        holder.wait(timeout=TIMEOUT)
    assert (out / LOCK_NAME).exists()  # the stale file is still there ...
    lock_output_dir(str(out))  # ... and does not block
    assert f"pid {os.getpid()} " in (out / LOCK_NAME).read_text()
    release_output_dir(str(out))


def test_output_dir_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where OUTPUT_DIR should be")
    msg = main_error(tmp_path, *tiny_dataset(tmp_path), out_dir=blocker / "out")
    assert f"OUTPUT_DIR '{blocker / 'out'}' cannot be written (Not a directory)" in msg


# ------------------------------------------------------------------ failure messages
def test_disk_full_while_saving_a_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "out"

    def no_space(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", no_space)
    msg = main_error(tmp_path, *tiny_dataset(tmp_path), "SOLVER.MAX_ITER", "2",
                     "SOLVER.CHECKPOINT_PERIOD", "1", out_dir=out)
    assert msg.startswith(f"cannot write '{out / 'model_0000000.pth'}' (No space left on device)")
    assert "Nothing older was lost" in msg and "--resume" in msg
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def test_resume_with_a_lower_base_lr_trains_at_it(tmp_path):
    opts = [*TINY_OPTS, *tiny_dataset(tmp_path), "OUTPUT_DIR", str(tmp_path / "out"),
            "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "1"]
    first = LTTrainer(load_config(CONFIG, opts))
    first.resume_or_load(resume=False)
    first.train()
    saved = torch.load(str(tmp_path / "out" / "model_0000001.pth"), weights_only=False)
    assert {g["lr"] for g in saved["trainer"]["_trainer"]["optimizer"]["param_groups"]} == {0.01}
    lower = LTTrainer(load_config(CONFIG, [*opts, "SOLVER.BASE_LR", "0.001",
                                           "SOLVER.MAX_ITER", "4"]))
    lower.resume_or_load(resume=True)
    assert lower.start_iter == 2
    # SOLVER.STEPS () and no warm-up: the learning rate is BASE_LR at every iteration
    assert {g["lr"] for g in lower.optimizer.param_groups} == {0.001}
    assert set(lower.scheduler.base_lrs) == {0.001}


def test_nan_advice_names_the_file_resume_loads_and_its_weights(tmp_path, monkeypatch):
    run_step = LTTrainer.run_step

    def poisoned(self):
        ret = run_step(self)
        if self.iter == 1:  # the weights diverge after this step; model_0000001 saves them
            with torch.no_grad():
                for p in self.model.parameters():
                    p.mul_(float("nan"))
        return ret

    monkeypatch.setattr(LTTrainer, "run_step", poisoned)
    out = tmp_path / "out"
    msg = main_error(tmp_path, *tiny_dataset(tmp_path), "SOLVER.MAX_ITER", "6",
                     "SOLVER.CHECKPOINT_PERIOD", "2", out_dir=out)
    last = (out / "last_checkpoint").read_text()
    assert last == "model_0000001.pth" and "at iteration 2" in msg
    assert f"--resume continues from '{out / last}'" in msg
    assert "weights already hold NaN/inf" in msg and "earlier model_*.pth" in msg


# ------------------------------------------------------------------ multi-machine wait
def _never_called():  # pragma: no cover - the rendezvous never completes
    raise AssertionError("the other machine never came")


def test_waiting_for_other_machines_says_so_and_times_out(capfd):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    with pytest.raises(LTDetError) as e:
        launch(_never_called, 1, num_machines=2, machine_rank=0, dist_url=url,
               timeout=timedelta(seconds=5))
    err = capfd.readouterr().err
    assert f"rank 0: waiting for all 2 processes (2 machines x 1) to join at {url}" in err
    assert "--machine-rank" in err
    assert f"not all 2 processes joined at {url} within 0:00:05" in str(e.value)
