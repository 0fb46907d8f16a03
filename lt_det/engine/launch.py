"""Multi-process launch: works on CPU, stops its workers with it, says what it waits for.

Contract (detectron2's): ``main_func(*args)`` runs in each of ``num_gpus_per_machine``
processes. The backend is NCCL when every local process gets a GPU, gloo otherwise.
detectron2's ``launch`` starts the processes whenever it picks the same backend: NCCL always in
0.6, gloo without CUDA in newer versions (those with ``comm.create_local_process_group``; the
feature test is made once, :data:`D2_LAUNCH_RUNS_GLOO`). lt_det starts them itself only where it
cannot: gloo under detectron2 0.6, and a gloo (CPU) run on a machine with CUDA. Those processes
get detectron2's local process group through ``comm.create_local_process_group`` where it
exists; detectron2 0.6 has no public way to set it, so there (CPU processes under 0.6)
``comm.get_local_rank()`` / ``get_local_size()`` are not available, and lt_det does not call
them.

On top of the contract, whichever launcher runs, every way a run ends is one line
(:class:`~lt_det.errors.LTDetError`, ``lt_det: error: ...``), never a multiprocessing or gloo
traceback:

- an ``LTDetError`` raised in any worker reaches the caller of :func:`launch` as one
  ``LTDetError`` with the same message (prefixed by the worker's rank) and exit code; the other
  workers are stopped;
- SIGTERM / SIGINT: every process (one or several) stops with one line
  (:class:`~lt_det.engine.signals.StopSignals`): during training after saving a checkpoint, at
  any other time at once. The launcher forwards them to its workers and waits; a signal that
  ends workers still waiting for their peers is reported as such. A worker whose launcher died
  (``kill -9``) stops the same way instead of running on as an orphan;
- a worker killed from outside (``kill -9``, the out-of-memory killer): named with its signal;
  the others lose their connection to it and stop (:func:`is_peer_lost`), without their gloo /
  NCCL errors;
- a process waiting for the others of a multi-machine run says so (URL, world size, timeout),
  and again every minute; when they have not all joined within ``timeout`` the launcher stops
  its workers and says so (whatever torch's rendezvous does with its own timeout).
"""
import logging
import os
import signal
import sys
import threading
import time
from datetime import timedelta
from typing import Callable, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm

from ..errors import LTDetError, RunStopped
from .signals import StopSignals, signal_name, stopped_outside

__all__ = ["launch", "pick_backend", "is_peer_lost", "D2_LAUNCH_RUNS_GLOO"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)

# Exit status of a worker that stopped with its message in the queue.
_LTDET_EXIT = 3

# Feature test: detectron2's own launch runs gloo processes (newer than 0.6).
D2_LAUNCH_RUNS_GLOO = hasattr(comm, "create_local_process_group")

# Seconds between two "still waiting" lines of a multi-machine rendezvous.
WAIT_REPORT_S = 60.0

# Seconds the launcher gives torch's own rendezvous timeout before it stops the workers itself.
RENDEZVOUS_GRACE_S = 2.0

# Kinds of the messages workers leave in the launcher's queue.
_ERROR, _PEER_LOST, _JOINED, _DONE = "error", "peer_lost", "joined", "done"

# Texts of torch.distributed errors raised in a process whose peer is gone (gloo, NCCL, store).
_PEER_LOST_TEXTS = (
    "connection reset by peer", "connection closed by peer", "broken pipe",
    "connection refused", "communicator was aborted", "socket closed", "recv failed",
    "send failed", "connection reset", "eof",
)


def is_peer_lost(error: BaseException) -> bool:
    """Whether ``error`` is a torch.distributed failure of a process whose peer has gone (it
    stopped or was killed): a ``RuntimeError`` (``DistError``) naming a closed connection."""
    if not isinstance(error, RuntimeError) or isinstance(error, LTDetError):
        return False
    text = str(error).lower()
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(error, dist_error):
        return True
    return ("gloo" in text or "nccl" in text or "store" in text or "pair.cc" in text) and any(
        t in text for t in _PEER_LOST_TEXTS
    )


def pick_backend(num_procs_per_machine: int) -> str:
    """ "nccl" when CUDA has a device for every local process, else "gloo"."""
    if torch.cuda.is_available() and torch.cuda.device_count() >= num_procs_per_machine:
        return "nccl"
    return "gloo"


def _detectron2_backend() -> str:
    """The backend detectron2's ``launch`` initialises: NCCL in 0.6; in newer versions NCCL with
    CUDA, gloo without."""
    return "nccl" if torch.cuda.is_available() or not D2_LAUNCH_RUNS_GLOO else "gloo"


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def launch(
    main_func: Callable,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Tuple = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
    backend: Optional[str] = None,
) -> None:
    """Run ``main_func(*args)`` in ``num_machines * num_gpus_per_machine`` processes.

    Args:
        main_func: a picklable (module-level) function.
        num_gpus_per_machine: processes per machine (one per GPU; on CPU, one per worker).
        num_machines, machine_rank: as in detectron2's ``launch``.
        dist_url: "tcp://host:port", or "auto" for a free local port (single machine only).
        args: arguments of ``main_func``.
        timeout: how long the processes wait for each other to join (rendezvous), and the
            timeout of the collective operations.
        backend: "nccl" | "gloo" | None (chosen by :func:`pick_backend`).

    Raises:
        LTDetError: a worker raised one (message prefixed with "rank R: ", ``exit_code`` kept),
            the other machines did not join in time, a worker was killed, or bad arguments.
        RunStopped: SIGTERM / SIGINT (exit code 128 + signal).
    """
    if num_gpus_per_machine < 1 or num_machines < 1:
        raise LTDetError(
            f"--num-gpus ({num_gpus_per_machine}) and --num-machines ({num_machines}) must be >= 1."
        )
    if not 0 <= machine_rank < num_machines:
        raise LTDetError(f"--machine-rank {machine_rank} outside [0, {num_machines}).")
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        with StopSignals():  # a signal outside the training loop: one line, not a traceback
            main_func(*args)
        return
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise LTDetError("--dist-url auto only works on one machine; give tcp://HOST:PORT.")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    backend = backend or pick_backend(num_gpus_per_machine)
    if backend not in ("nccl", "gloo"):
        raise LTDetError(f"unknown torch.distributed backend {backend!r}; use 'nccl' or 'gloo'.")
    if backend == "nccl" and torch.cuda.device_count() < num_gpus_per_machine:
        raise LTDetError(
            f"backend 'nccl' needs a CUDA device per process: {num_gpus_per_machine} processes, "
            f"{torch.cuda.device_count()} devices. Lower --num-gpus, or use gloo."
        )
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    work = (main_func, args, queue, os.getpid(), world_size, dist_url, timeout)
    use_d2 = backend == _detectron2_backend()
    first_rank = machine_rank * num_gpus_per_machine
    watch = _Supervisor(queue, first_rank, num_gpus_per_machine, world_size, dist_url, timeout)
    # torch's "Terminating process N via signal SIGTERM" warnings: the launcher reports the end
    spawn_log = logging.getLogger("torch.multiprocessing.spawn")
    spawn_level = spawn_log.level
    spawn_log.setLevel(logging.ERROR)
    with watch, StopSignals(deferred=True, on_signal=_forward_to_workers) as stop:
        try:
            if use_d2:
                from detectron2.engine import launch as d2_launch

                d2_launch(_worker_main, num_gpus_per_machine, num_machines, machine_rank,
                          dist_url, args=work, timeout=timeout)
            else:
                mp.start_processes(
                    _worker,
                    nprocs=num_gpus_per_machine,
                    args=(world_size, num_gpus_per_machine, machine_rank, backend, work),
                    daemon=False,
                    start_method="spawn",
                )
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
            if not _crashed_after_its_work(e, watch, num_gpus_per_machine, first_rank):
                error = _outcome(e, watch, stop.signum, first_rank)
                if error is None:
                    raise  # a bug in a worker: its traceback
                raise error from None
        finally:
            spawn_log.setLevel(spawn_level)
    watch.drain()
    if stop.signum is not None and len(watch.done) < num_gpus_per_machine:
        # a worker ended on the signal without a word (e.g. while it was being spawned)
        raise stopped_outside(stop.signum, "while the processes were starting")


def _forward_to_workers(signum: int) -> None:
    """SIGTERM / SIGINT of the launcher go to every worker as the same signal (they save a
    checkpoint and stop); the launcher keeps waiting for them. The same signal, so a Ctrl-C that
    reaches the launcher and its workers at once (the terminal signals the whole process group)
    gives every process one signal to report."""
    for child in mp.active_children():
        try:
            os.kill(child.pid, signum)
        except OSError:  # already gone
            pass


def _crashed_after_its_work(error, watch: "_Supervisor", per_machine: int,
                            first_rank: int) -> bool:
    """Whether every local worker had reported its work done before one of them was killed
    by a signal: a crash while the process exits (torch's or gloo's teardown, e.g. "terminate
    called without an active exception"), after the run's checkpoints and results were written.
    Logged as a warning; the run counts as finished."""
    watch.drain()
    exit_code = getattr(error, "exit_code", None)
    if not (isinstance(error, mp.ProcessExitedException) and exit_code is not None
            and exit_code < 0 and len(watch.done) == per_machine and not watch.errors):
        return False
    logger.warning(
        f"rank {first_rank + error.error_index} ended with {signal_name(-exit_code)} while "
        "exiting, after every process had finished its work (a crash in the teardown of "
        "torch.distributed); the run's outputs are complete."
    )
    return True


def _outcome(error, watch: "_Supervisor", signum: Optional[int],
             first_rank: int) -> Optional[LTDetError]:
    """The one error of a launch whose workers did not all succeed (None: keep the traceback)."""
    watch.drain()
    if watch.timed_out:
        return LTDetError(watch.timeout_text())
    if watch.errors:
        # the launcher's own signal names the stop: a worker that torch's spawn terminated
        # (SIGTERM) after a peer stopped reports the stop it saw, not the one the user sent
        own = [e for e in watch.errors if signum is not None and e[1] == 128 + signum]
        text, exit_code = (own or watch.errors)[0]
        cls = RunStopped if exit_code > 128 else LTDetError
        return cls(text, exit_code=exit_code)
    if signum is not None:
        return stopped_outside(signum, "while the processes were starting or waiting for "
                                       "each other")
    exit_code = getattr(error, "exit_code", None)
    if isinstance(error, mp.ProcessExitedException) and exit_code is not None and exit_code < 0:
        rank = first_rank + error.error_index
        return LTDetError(
            f"rank {rank} (pid {error.error_pid}) was killed by {signal_name(-exit_code)} (kill "
            "from outside, or the out-of-memory killer); the other processes were stopped. The "
            "last checkpoint is intact; --resume continues from it.",
            exit_code=128 - exit_code,
        )
    if watch.lost:
        return LTDetError(watch.lost[0][0], exit_code=watch.lost[0][1])
    return None


class _Supervisor:
    """The launcher's view of its workers: their messages (``queue``), the rendezvous deadline,
    and the "waiting for" lines of a multi-machine run.

    A daemon thread waits for the first worker to report that the process group is set up
    (``joined``); if that takes longer than ``timeout`` (+ :data:`RENDEZVOUS_GRACE_S`), it kills
    the local workers (they are blocked in torch's rendezvous, which signals cannot interrupt)
    and :attr:`timed_out` is set.
    """

    def __init__(self, queue, first_rank, per_machine, world_size, dist_url, timeout):
        self.queue = queue
        self.world_size, self.per_machine, self.dist_url = world_size, per_machine, dist_url
        self.timeout = timeout
        ranks = (f"rank {first_rank}" if per_machine == 1
                 else f"ranks {first_rank}-{first_rank + per_machine - 1}")
        self.ranks = ranks
        self.wait_text = (
            f"{ranks}: waiting for all {world_size} processes ({world_size // per_machine} "
            f"machines x {per_machine}) to join at {dist_url} (timeout {timeout}). Start the "
            "same command on every machine with its own --machine-rank and this --dist-url."
        )
        self.multi_machine = world_size > per_machine
        self.errors: List[Tuple[str, int]] = []
        self.lost: List[Tuple[str, int]] = []
        self.done: set = set()
        self.joined = threading.Event()
        self.finished = threading.Event()
        self.timed_out = False
        self._lock = threading.Lock()

    def timeout_text(self) -> str:
        return (
            f"{self.ranks}: not all {self.world_size} processes joined at {self.dist_url} within "
            f"{self.timeout}. Start the command on every machine (each with its --machine-rank), "
            "check that HOST:PORT of --dist-url is reachable from all of them, then run again."
        )

    def __enter__(self):
        if self.multi_machine:
            print(f"lt_det: {self.wait_text}", file=sys.stderr, flush=True)
        threading.Thread(target=self._watch, name="lt_det-launch-watch", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.finished.set()

    def drain(self) -> None:
        """Read every message the workers left (joined, done, errors)."""
        with self._lock:
            try:
                while not self.queue.empty():
                    kind, local_rank, text, exit_code = self.queue.get()
                    if kind == _JOINED:
                        self.joined.set()
                    elif kind == _DONE:
                        self.done.add(local_rank)
                    elif kind == _PEER_LOST:
                        self.lost.append((text, exit_code))
                    else:
                        self.errors.append((text, exit_code))
            except (OSError, EOFError):  # pragma: no cover - broken pipe on shutdown
                pass

    def _watch(self) -> None:
        start = time.monotonic()
        deadline = start + self.timeout.total_seconds() + RENDEZVOUS_GRACE_S
        next_report = start + WAIT_REPORT_S
        while not self.finished.wait(0.5):
            self.drain()
            if self.joined.is_set():
                return
            now = time.monotonic()
            if now >= deadline:
                self.timed_out = True
                for child in mp.active_children():
                    try:
                        os.kill(child.pid, signal.SIGKILL)
                    except OSError:
                        pass
                return
            if self.multi_machine and now >= next_report:
                next_report += WAIT_REPORT_S
                waited = timedelta(seconds=int(now - start))
                print(f"lt_det: still {self.wait_text} (waited {waited})", file=sys.stderr,
                      flush=True)


def _worker(local_rank, world_size, per_machine, machine_rank, backend, work):
    """lt_det's own worker: a gloo run that detectron2's ``launch`` does not start (0.6, or CUDA
    present)."""
    main_func, args, queue, launcher_pid, _, dist_url, timeout = work
    rank = machine_rank * per_machine + local_rank
    try:
        dist.init_process_group(
            backend=backend, init_method=dist_url, world_size=world_size, rank=rank,
            timeout=timeout,
        )
    except Exception as e:
        _put(queue, _ERROR, local_rank, _rendezvous_error(e, rank, world_size, dist_url, timeout))
        sys.exit(_LTDET_EXIT)
    if D2_LAUNCH_RUNS_GLOO:  # detectron2 0.6 has no public way to set the local group
        comm.create_local_process_group(per_machine)
    try:
        _worker_main(*work, local_rank=local_rank)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _worker_main(main_func, args, queue, launcher_pid, world_size, dist_url, timeout, *,
                 local_rank: Optional[int] = None):
    """Run ``main_func(*args)`` in a worker whose process group is set up: every end that is
    not a success goes to the launcher's queue as one message; stop if the launcher dies.
    ``local_rank``: given by lt_det's own worker; detectron2's launch sets up its local group."""
    if local_rank is None:
        local_rank = comm.get_local_rank()
    _put(queue, _JOINED, local_rank)
    _watch_launcher(launcher_pid)
    stop = StopSignals(where="outside the training iterations").install()
    try:
        comm.synchronize()
        main_func(*args)
    except LTDetError as e:  # bad input, or a signal stop (RunStopped)
        _put(queue, _ERROR, local_rank, f"rank {comm.get_rank()}: {e}",
             getattr(e, "exit_code", 2))
        sys.exit(_LTDET_EXIT)
    except Exception as e:  # noqa: BLE001 - only a lost peer is turned into a line
        if not is_peer_lost(e):
            raise
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        _put(queue, _PEER_LOST, local_rank,
             f"rank {comm.get_rank()}: lost the connection to another process of the run (it "
             f"stopped or was killed: {first}). The last checkpoint is intact; --resume "
             "continues from it.", 2)
        sys.exit(_LTDET_EXIT)
    finally:
        stop.uninstall()
    _put(queue, _DONE, local_rank)


def _put(queue, kind: str, local_rank: int, text: str = "", exit_code: int = 0) -> None:
    try:
        queue.put((kind, local_rank, text, exit_code))
    except (OSError, EOFError):  # pragma: no cover - the launcher is gone
        pass


def _watch_launcher(launcher_pid: int, period_s: float = 1.0) -> None:
    """A daemon thread that sends this worker SIGTERM (save and stop) once its launcher is gone."""

    def watch() -> None:
        while True:
            time.sleep(period_s)
            if os.getppid() != launcher_pid:
                logger.warning("The launcher process is gone; stopping this worker.")
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="lt_det-launcher-watch", daemon=True).start()


def _rendezvous_error(error, rank, world_size, dist_url, timeout) -> str:
    first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
    if "timeout" in str(error).lower() or "timed out" in str(error).lower():
        return (
            f"rank {rank}: not all {world_size} processes joined at {dist_url} within {timeout}. "
            "Start the command on every machine (each with its --machine-rank), check that "
            "HOST:PORT of --dist-url is reachable from all of them, then run again."
        )
    return (
        f"rank {rank}: cannot set up the process group at {dist_url} ({type(error).__name__}: "
        f"{first}). Check --dist-url (tcp://HOST:PORT of machine 0, a free port)."
    )
