"""One run per output folder (the OUTPUT_DIR lock), honest failure messages (write failures, NaN
advice that works), and the multi-machine wait message."""
import errno
import os
import shutil
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


def poison_after_step(monkeypatch, iteration, factor):
    """Multiply every parameter by ``factor`` after the step of ``iteration`` (before the hooks:
    a checkpoint of that iteration saves the poisoned weights)."""
    run_step = LTTrainer.run_step

    def poisoned(self):
        ret = run_step(self)
        if self.iter == iteration:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.mul_(factor)
        return ret

    monkeypatch.setattr(LTTrainer, "run_step", poisoned)


def test_nan_stop_without_a_healthy_checkpoint_says_to_start_anew(tmp_path, monkeypatch):
    poison_after_step(monkeypatch, 1, float("nan"))  # model_0000001 saves NaN weights
    out = tmp_path / "out"
    msg = main_error(tmp_path, *tiny_dataset(tmp_path), "SOLVER.MAX_ITER", "6",
                     "SOLVER.CHECKPOINT_PERIOD", "2", out_dir=out)
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    assert "NaN or infinite at iteration 2" in msg
    assert "No checkpoint of this run can continue it (model_0000001.pth: its weights hold " \
           "NaN/inf)" in msg
    assert "Start anew (--overwrite-output, or another OUTPUT_DIR)" in msg
    assert "--resume" not in msg


def test_nan_stop_names_the_newest_healthy_checkpoint_and_the_advice_works(tmp_path, monkeypatch):
    # model_0000001 is sound; model_0000003 has finite weights 1e30 times too large (its loss is
    # not finite), and the run's loss is NaN at iteration 4.
    poison_after_step(monkeypatch, 3, 1e30)
    out = tmp_path / "out"
    opts = [*tiny_dataset(tmp_path), "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2"]
    msg = main_error(tmp_path, *opts, out_dir=out)
    assert (out / "last_checkpoint").read_text() == "model_0000003.pth"
    assert "NaN or infinite at iteration 4" in msg
    good = out / "model_0000001.pth"
    assert f"'{good}' is healthy (its weights are finite" in msg
    assert "at learning rate 0.001 = SOLVER.BASE_LR x 0.1" in msg  # BASE_LR 0.01 (TINY_OPTS)
    assert "Newer checkpoints cannot continue the run (model_0000003.pth: its forward pass on " \
           "that batch gives NaN/inf)" in msg
    assert f"echo model_0000001.pth > {out / 'last_checkpoint'}" in msg
    # the advice: point last_checkpoint at it, lower the learning rate, --resume
    monkeypatch.undo()
    (out / "last_checkpoint").write_text("model_0000001.pth")
    from test_resume import load_train_net

    train_net = load_train_net()
    train_net.main(train_net.argument_parser().parse_args(
        ["--config-file", CONFIG, "--resume", *TINY_OPTS, *opts, "OUTPUT_DIR", str(out),
         "SOLVER.BASE_LR", "0.001"]))
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    final = torch.load(str(out / "model_final.pth"), weights_only=False, map_location="cpu")
    assert final["iteration"] == 5
    assert all(torch.isfinite(t).all() for t in final["model"].values() if t.is_floating_point())


def test_nan_stop_when_the_checkpoint_resume_loads_is_healthy(tmp_path, monkeypatch):
    run_step = LTTrainer.run_step

    def nan_loss_at_3(self):  # the loss of iteration 3 only is NaN; the weights stay sound
        if self.iter == 3:
            forward = self.model.forward
            self.model.forward = lambda batch: {
                k: v * float("nan") for k, v in forward(batch).items()
            }
        return run_step(self)

    monkeypatch.setattr(LTTrainer, "run_step", nan_loss_at_3)
    out = tmp_path / "out"
    msg = main_error(tmp_path, *tiny_dataset(tmp_path), "SOLVER.MAX_ITER", "6",
                     "SOLVER.CHECKPOINT_PERIOD", "2", out_dir=out)
    assert f"'{out / 'model_0000001.pth'}' is healthy" in msg
    assert "it is the one --resume loads (named by last_checkpoint)" in msg
    assert "SOLVER.BASE_LR" in msg and "echo" not in msg


# ------------------------------------------------------------------ a full disk
DISK_DRIVER = '''
import errno, logging, os, sys
from detectron2.engine import HookBase
from detectron2.utils.events import EventWriter
from lt_det.engine import LTTrainer
from lt_det.engine.log_setup import LogFileHandler

WHAT = sys.argv[1]


class NoSpace:
    name = "full"

    def write(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self):
        pass

    def close(self):
        pass


class FullMetrics(EventWriter):  # a metrics writer on a full disk (detectron2's JSONWriter's)
    def __init__(self, path):
        self.path = path

    def write(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.path)


class FullLog(HookBase):  # log.txt's disk becomes full after iteration 2
    def after_step(self):
        if self.trainer.iter == 2:
            for h in logging.getLogger("detectron2").handlers:
                if isinstance(h, LogFileHandler):
                    h.setStream(NoSpace())
            logging.getLogger("detectron2").info("a line for log.txt")


if WHAT == "metrics":
    build_writers = LTTrainer.build_writers
    LTTrainer.build_writers = lambda self: build_writers(self) + [
        FullMetrics(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"))]
else:
    build_hooks = LTTrainer.build_hooks
    LTTrainer.build_hooks = lambda self: [FullLog()] + build_hooks(self)
sys.argv = [sys.argv[2]] + sys.argv[3:]  # then run tools/train_net.py as the user does
exec(compile(open(sys.argv[0]).read(), sys.argv[0], "exec"), {"__name__": "__main__"})
'''


@pytest.mark.parametrize("what, iteration", [("metrics", 19), ("log", 2)])
def test_disk_full_while_metrics_or_log_are_written(tmp_path, what, iteration):
    driver = tmp_path / "driver.py"
    driver.write_text(DISK_DRIVER)
    out = tmp_path / "out"
    cmd = [sys.executable, str(driver), what, os.path.join(ROOT, "tools", "train_net.py"),
           "--config-file", CONFIG, *TINY_OPTS, *tiny_dataset(tmp_path), "OUTPUT_DIR", str(out),
           "SOLVER.MAX_ITER", "40", "SOLVER.CHECKPOINT_PERIOD", "1000"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=str(tmp_path),
                       env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT))
    assert p.returncode == 2, p.stderr[-3000:]
    for bad in ("Traceback", "Logging error", "Exception ignored"):
        assert bad not in p.stdout + p.stderr, (p.stdout + p.stderr)[-3000:]
    lines = [x for x in p.stderr.splitlines() if x.startswith("lt_det: error:")]
    assert len(lines) == 1, p.stderr[-3000:]
    name = f"model_{iteration:07d}.pth"
    target = out / ("metrics.json" if what == "metrics" else "log.txt")
    assert f"cannot write '{target}' at iteration {iteration} (No space left on device" in lines[0]
    assert f"Checkpoint '{out / name}' was saved: free disk space, then --resume" in lines[0]
    assert (out / "last_checkpoint").read_text() == name
    state = torch.load(str(out / name), weights_only=False, map_location="cpu")
    assert state["iteration"] == iteration and "trainer" in state


def test_disk_full_at_start_writes_nothing(tmp_path, monkeypatch):
    from lt_det.engine import lock

    out = tmp_path / "out"
    opts = tiny_dataset(tmp_path)
    real = shutil.disk_usage
    monkeypatch.setattr(lock.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=4096))  # 4 KiB free
    msg = main_error(tmp_path, *opts, out_dir=out)
    assert msg.startswith(f"OUTPUT_DIR '{out}' cannot be written (No space left on device; its "
                          "disk has 0.0 MiB free, a run needs at least 16 MiB)")
    assert not out.exists()  # no empty config.yaml / log.txt (nor the folder)
    monkeypatch.undo()

    class FullFile:  # the lock file of a disk that fills while it is written
        def __init__(self, path, mode):
            self.f = open(path, mode)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def flush(self):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(lock, "open", FullFile, raising=False)
    msg = main_error(tmp_path, *opts, out_dir=out)
    assert msg.startswith(f"OUTPUT_DIR '{out}' cannot be written (No space left on device")
    assert sorted(os.listdir(out)) == [LOCK_NAME]  # no config.yaml, no log.txt


def test_a_folder_in_use_is_not_advised_resume_or_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "last_checkpoint").write_text("model_0000001.pth")  # an interrupted run ...
    holder = subprocess.Popen(  # ... that is going on again (or still) in another process
        [sys.executable, "-c", "import sys, time; from lt_det.engine.lock import lock_output_dir;"
         f"lock_output_dir({str(out)!r}); print('locked', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        msg = main_error(tmp_path, *tiny_dataset(tmp_path), out_dir=out)
    finally:
        holder.kill()
        holder.wait(timeout=TIMEOUT)
    assert msg.startswith(f"OUTPUT_DIR '{out}' is in use by another lt_det run (pid {holder.pid} ")
    assert "--overwrite-output" not in msg and "already holds" not in msg


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


def test_a_machine_other_than_rank_0_waits_no_longer_than_its_timeout(capfd):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"  # no machine 0 listens there
    with pytest.raises(LTDetError) as e:
        launch(_never_called, 1, num_machines=2, machine_rank=1, dist_url=url,
               timeout=timedelta(seconds=5))
    assert str(e.value).startswith(f"rank 1: not all 2 processes joined at {url} within 0:00:05")
    err = capfd.readouterr().err
    assert "Traceback" not in err


def test_nccl_without_a_cuda_device_per_process_is_one_line():
    if torch.cuda.is_available() and torch.cuda.device_count() >= 2:
        pytest.skip("this machine has a CUDA device per process")
    with pytest.raises(LTDetError, match=r"backend 'nccl' needs a CUDA device per process: 2 "):
        launch(_never_called, 2, dist_url="auto", backend="nccl")


# ------------------------------------------------------------------ the training log
def test_reported_errors_stay_out_of_the_training_log_only_while_training():
    """detectron2's loop logs "Exception during training" with the traceback; an LTDetError (one
    line from the entry point) is kept out of that log while training only, other errors are
    logged, and importing lt_det leaves detectron2's logger alone."""
    import logging

    from lt_det.engine import trainer as trainer_module

    code = ("import logging, lt_det.engine; "
            "print(logging.getLogger('detectron2.engine.train_loop').filters)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

    log = logging.getLogger("detectron2.engine.train_loop")
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(type(record.exc_info[1]).__name__)

    handler = Keep(level=logging.ERROR)
    filters = list(log.filters)
    log.addHandler(handler)

    def fail(error):
        try:
            raise error
        except Exception:
            log.exception("Exception during training:")

    try:
        with trainer_module.reported_errors_kept_out_of_log():
            fail(LTDetError("bad input"))
            fail(ValueError("a bug"))
        assert log.filters == filters
        fail(LTDetError("outside training"))
    finally:
        log.removeHandler(handler)
    assert seen == ["ValueError", "LTDetError"]
