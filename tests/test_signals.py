"""SIGTERM / SIGINT: a checkpoint is saved after the current step, the run stops with one line,
and the launcher stops its workers (none is left running).

Each case runs tools/train_net.py's ``main`` in a subprocess (through a small driver that marks,
once per process, that training iterations are running). The test waits for those marks (files),
sends the signal, and waits for the processes to end: no timing assumption beyond generous
timeouts.
"""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_bad_input import data_opts, make_data, write_json
from test_resume import CONFIG, ROOT, TINY_OPTS

DRIVER = '''
import os, sys, time, importlib.util
from detectron2.engine import HookBase
from detectron2.utils import comm
from lt_det.engine import LTTrainer, launch

MARKS = sys.argv[1]


class Mark(HookBase):
    def after_step(self):
        if self.trainer.iter == 1:
            path = os.path.join(MARKS, f"rank{comm.get_rank()}")
            with open(path + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(path + ".tmp", path)
            go = os.environ.get("LT_TEST_GO_FILE")  # hold here until the test says go
            while go and not os.path.exists(go):
                time.sleep(0.1)


def hold_in_setup():
    """Before training: rank 0 waits for its peers in a collective (gloo), the others in python."""
    path = os.path.join(MARKS, f"setup{comm.get_rank()}")
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    if comm.get_rank() == 0:
        comm.synchronize()  # blocked until every peer comes (none will)
    while True:
        time.sleep(0.1)


def main(args):
    if os.environ.get("LT_TEST_HOLD_SETUP"):
        hold_in_setup()
    build_hooks = LTTrainer.build_hooks
    LTTrainer.build_hooks = lambda self: [Mark()] + build_hooks(self)
    spec = importlib.util.spec_from_file_location("train_net", os.path.join(sys.argv[2]))
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    return train_net.main(args)


if __name__ == "__main__":
    spec = importlib.util.spec_from_file_location("train_net", os.path.join(sys.argv[2]))
    train_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_net)
    args = train_net.argument_parser().parse_args(sys.argv[3:])
    try:
        launch(main, args.num_gpus, dist_url="auto", args=(args,))
    except Exception as e:
        print(f"lt_det: error: {e}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 1))
'''

TIMEOUT = 1800  # seconds: a hang guard only, generous for a loaded 2-core machine


def start(tmp_path, num_procs, *opts, go_file=None, hold_setup=False):
    data, root = make_data(tmp_path)
    js = write_json(tmp_path, data)
    marks = tmp_path / "marks"
    marks.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "out"
    cmd = [sys.executable, str(driver), str(marks), os.path.join(ROOT, "tools", "train_net.py"),
           "--config-file", CONFIG, "--num-gpus", str(num_procs), *TINY_OPTS,
           *data_opts(js, root), "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out),
           "SOLVER.MAX_ITER", "100000", "SOLVER.CHECKPOINT_PERIOD", "100000", *opts]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    if go_file is not None:
        env["LT_TEST_GO_FILE"] = str(go_file)
    if hold_setup:
        env["LT_TEST_HOLD_SETUP"] = "1"
    # a session of its own: a signal to its process group is what Ctrl-C in a terminal sends
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=str(tmp_path), start_new_session=True)
    return proc, marks, out


def wait_for(condition, what, proc=None):
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended before {what}: {proc.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def check_stopped_run(proc, out, signum):
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 128 + signum, stderr[-3000:]
    assert "Traceback" not in stdout + stderr, (stdout + stderr)[-3000:]
    lines = [x for x in stderr.splitlines() if x.startswith("lt_det: error:")]
    assert len(lines) == 1, stderr[-3000:]
    name = (out / "last_checkpoint").read_text()
    assert f"stopped by {signal.Signals(signum).name} at iteration" in lines[0]
    assert f"checkpoint '{out / name}' was saved" in lines[0] and "--resume" in lines[0]
    state = torch.load(str(out / name), weights_only=False, map_location="cpu")
    assert name == f"model_{state['iteration']:07d}.pth" and state["iteration"] >= 1
    assert "model" in state and "trainer" in state  # what a periodic checkpoint holds
    return lines[0]


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
def test_sigint_saves_a_checkpoint_and_stops(tmp_path):
    proc, marks, out = start(tmp_path, 1)
    wait_for(lambda: (marks / "rank0").exists(), "training iterations", proc)
    proc.send_signal(signal.SIGINT)
    check_stopped_run(proc, out, signal.SIGINT)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
def test_sigterm_to_the_launcher_stops_both_workers_after_a_checkpoint(tmp_path):
    proc, marks, out = start(tmp_path, 2)
    ranks = [marks / "rank0", marks / "rank1"]
    wait_for(lambda: all(r.exists() for r in ranks), "both workers' iterations", proc)
    workers = [int(r.read_text()) for r in ranks]
    assert proc.pid not in workers and all(alive(p) for p in workers)
    proc.send_signal(signal.SIGTERM)
    line = check_stopped_run(proc, out, signal.SIGTERM)
    assert line.startswith("lt_det: error: rank ")
    wait_for(lambda: not any(alive(p) for p in workers), "the workers to end")


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
def test_workers_of_a_killed_launcher_save_and_stop(tmp_path):
    proc, marks, out = start(tmp_path, 2)
    ranks = [marks / "rank0", marks / "rank1"]
    wait_for(lambda: all(r.exists() for r in ranks), "both workers' iterations", proc)
    workers = [int(r.read_text()) for r in ranks]
    proc.kill()  # kill -9: the launcher cannot forward anything
    proc.wait(timeout=TIMEOUT)
    wait_for(lambda: not any(alive(p) for p in workers), "the orphaned workers to stop")
    name = (out / "last_checkpoint").read_text()
    state = torch.load(str(out / name), weights_only=False, map_location="cpu")
    assert name == f"model_{state['iteration']:07d}.pth" and state["iteration"] >= 1


def one_line(proc, exit_code):
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == exit_code, stderr[-3000:]
    for bad in ("Traceback", "ProcessExitedException", "ProcessRaisedException"):
        assert bad not in stdout + stderr, (stdout + stderr)[-3000:]
    lines = [x for x in stderr.splitlines() if x.startswith("lt_det: error:")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
@pytest.mark.parametrize("num_procs", [1, 2])
def test_ctrl_c_before_training_starts_is_one_line(tmp_path, num_procs):
    proc, marks, out = start(tmp_path, num_procs, hold_setup=True)
    setups = [marks / f"setup{r}" for r in range(num_procs)]
    wait_for(lambda: all(m.exists() for m in setups), "every process in its set-up", proc)
    workers = [int(m.read_text()) for m in setups]
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the launcher and its workers get SIGINT
    line = one_line(proc, 128 + signal.SIGINT)
    assert "stopped by SIGINT" in line and "nothing was saved" in line
    assert not (out / "last_checkpoint").exists()
    wait_for(lambda: not any(alive(p) for p in workers), "the workers to end")


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
def test_sigterm_while_a_worker_waits_for_its_peer_is_one_line(tmp_path):
    proc, marks, out = start(tmp_path, 2, hold_setup=True)
    setups = [marks / "setup0", marks / "setup1"]
    wait_for(lambda: all(m.exists() for m in setups), "both workers in their set-up", proc)
    workers = [int(m.read_text()) for m in setups]
    proc.send_signal(signal.SIGTERM)  # to the launcher only; it forwards to its workers
    line = one_line(proc, 128 + signal.SIGTERM)
    assert line.startswith("lt_det: error: rank ") and "stopped by SIGTERM" in line
    wait_for(lambda: not any(alive(p) for p in workers), "the workers to end")


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
def test_a_killed_worker_ends_the_run_with_one_line(tmp_path):
    proc, marks, out = start(tmp_path, 2)
    ranks = [marks / "rank0", marks / "rank1"]
    wait_for(lambda: all(r.exists() for r in ranks), "both workers' iterations", proc)
    workers = [int(r.read_text()) for r in ranks]
    os.kill(workers[1], signal.SIGKILL)  # e.g. the out-of-memory killer
    line = one_line(proc, 128 + signal.SIGKILL)
    assert f"rank 1 (pid {workers[1]}) was killed by SIGKILL" in line
    assert "--resume" in line
    wait_for(lambda: not any(alive(p) for p in workers), "the other worker to end")


def test_the_launchers_own_signal_names_the_stop():
    """Ctrl-C reaches the launcher and its workers at once; a worker that torch's spawn then
    terminates (SIGTERM) reports SIGTERM. The run's line and exit status are the user's signal."""
    import importlib
    import multiprocessing

    from lt_det.errors import RunStopped

    launch_mod = importlib.import_module("lt_det.engine.launch")  # the module, not the function

    queue = multiprocessing.get_context("spawn").SimpleQueue()
    watch = launch_mod._Supervisor(queue, 0, 2, 2, "tcp://127.0.0.1:1", launch_mod.DEFAULT_TIMEOUT)
    term = "rank 1: " + str(launch_mod.stopped_outside(signal.SIGTERM))
    intr = "rank 0: " + str(launch_mod.stopped_outside(signal.SIGINT))
    watch.errors = [(term, 128 + signal.SIGTERM), (intr, 128 + signal.SIGINT)]
    error = launch_mod._outcome(None, watch, signal.SIGINT, 0)
    assert isinstance(error, RunStopped) and error.exit_code == 130 and str(error) == intr
    # no signal of its own (a worker stopped alone): the first worker's line
    error = launch_mod._outcome(None, watch, None, 0)
    assert error.exit_code == 143 and str(error) == term


def _finish_then_abort_at_exit():
    """A worker whose work ends well, and whose process then aborts while exiting (as torch's
    teardown sometimes does: "terminate called without an active exception")."""
    import atexit

    from detectron2.utils import comm

    if comm.get_rank() == 1:
        atexit.register(os.abort)


def test_a_crash_while_exiting_after_the_work_is_a_warning(caplog):
    from lt_det.engine import launch

    caplog.set_level("WARNING", logger="lt_det.engine.launch")
    launch(_finish_then_abort_at_exit, 2, dist_url="auto", args=())
    lines = [r.getMessage() for r in caplog.records if r.name == "lt_det.engine.launch"]
    assert len(lines) == 1 and lines[0].startswith("rank 1 ended with SIGABRT while exiting")
