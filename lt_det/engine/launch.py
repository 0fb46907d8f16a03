"""Multi-process launch: works on CPU, stops its workers with it, says what it waits for.

Contract (detectron2's): ``main_func(*args)`` runs in each of ``num_gpus_per_machine``
processes. The backend is NCCL when every local process gets a GPU, gloo otherwise. Newer
detectron2 (with ``comm.create_local_process_group``) launches gloo processes itself; its
``launch`` is used whenever it picks the same backend. detectron2 0.6 hard-codes NCCL: then (and
for a CPU run on a machine with GPUs) lt_det starts the processes itself. The choice is a feature
test, made once (:data:`D2_LAUNCH_RUNS_GLOO`).

On top of the contract, whichever launcher runs:

- an :class:`~lt_det.errors.LTDetError` raised in any worker reaches the caller of :func:`launch`
  as one ``LTDetError`` with the same message (prefixed by the worker's rank) and exit code, not
  as a multiprocessing traceback; the other workers are stopped;
- SIGTERM / SIGINT sent to the launcher are forwarded to the workers (training saves a
  checkpoint and stops, see ``LTTrainer``), and a worker whose launcher died (``kill -9``) stops
  the same way instead of running on as an orphan;
- a process waiting for the others of a multi-machine run says so (URL, world size, timeout),
  and again every minute; a rendezvous that times out is reported as one message.
"""
import logging
import os
import signal
import sys
import threading
import time
from datetime import timedelta
from typing import Callable, Optional, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm

from ..errors import LTDetError

__all__ = ["launch", "pick_backend", "D2_LAUNCH_RUNS_GLOO"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)

# Exit status of a worker that stopped on an LTDetError (its message went through the queue).
_LTDET_EXIT = 3

# Feature test: detectron2's own launch runs gloo processes (newer than 0.6).
D2_LAUNCH_RUNS_GLOO = hasattr(comm, "create_local_process_group")

# Seconds between two "still waiting" lines of a multi-machine rendezvous.
WAIT_REPORT_S = 60.0


def pick_backend(num_procs_per_machine: int) -> str:
    """ "nccl" when CUDA has a device for every local process, else "gloo"."""
    if torch.cuda.is_available() and torch.cuda.device_count() >= num_procs_per_machine:
        return "nccl"
    return "gloo"


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
        timeout: timeout of the rendezvous and the collective operations.
        backend: "nccl" | "gloo" | None (chosen by :func:`pick_backend`).

    Raises:
        LTDetError: a worker raised one (message prefixed with "rank R: ", ``exit_code`` kept),
            the other machines did not join in time, or bad arguments.
    """
    if num_gpus_per_machine < 1 or num_machines < 1:
        raise LTDetError(
            f"--num-gpus ({num_gpus_per_machine}) and --num-machines ({num_machines}) must be >= 1."
        )
    if not 0 <= machine_rank < num_machines:
        raise LTDetError(f"--machine-rank {machine_rank} outside [0, {num_machines}).")
    world_size = num_machines * num_gpus_per_machine
    if world_size <= 1:
        main_func(*args)
        return
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise LTDetError("--dist-url auto only works on one machine; give tcp://HOST:PORT.")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    backend = backend or pick_backend(num_gpus_per_machine)
    if backend not in ("nccl", "gloo"):
        raise LTDetError(f"unknown torch.distributed backend {backend!r}; use 'nccl' or 'gloo'.")
    errors = mp.get_context("spawn").SimpleQueue()
    work = (main_func, args, errors, os.getpid(), world_size, dist_url, timeout)
    use_d2 = D2_LAUNCH_RUNS_GLOO and (backend == "nccl") == torch.cuda.is_available()
    with _forward_signals_to_workers():
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
        except (mp.ProcessRaisedException, mp.ProcessExitedException):
            # A worker that stopped on bad input (or a signal) left its message; report that
            # instead of the multiprocessing traceback (the other workers are stopped).
            message = _first_message(errors)
            if message is None:
                raise
            text, exit_code = message
            raise LTDetError(text, exit_code=exit_code) from None


class _forward_signals_to_workers:
    """While the workers run, SIGTERM / SIGINT of the launcher go to every worker as SIGTERM
    (they save a checkpoint and stop); the launcher keeps waiting for them."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __enter__(self):
        self.previous = {}
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in self.SIGNALS:
            self.previous[sig] = signal.signal(sig, self._forward)
        return self

    @staticmethod
    def _forward(signum, frame) -> None:
        for child in mp.active_children():
            try:
                os.kill(child.pid, signal.SIGTERM)
            except OSError:  # already gone
                pass

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _first_message(errors) -> Optional[Tuple[str, int]]:
    try:
        if not errors.empty():
            return errors.get()
    except (OSError, EOFError):  # pragma: no cover - broken pipe on shutdown
        pass
    return None


def _worker(local_rank, world_size, per_machine, machine_rank, backend, work):
    """lt_det's own worker (detectron2 0.6, or a CPU run on a machine with GPUs)."""
    main_func, args, errors, launcher_pid, _, dist_url, timeout = work
    rank = machine_rank * per_machine + local_rank
    with _rendezvous_report(rank, world_size, per_machine, dist_url, timeout):
        try:
            dist.init_process_group(
                backend=backend, init_method=dist_url, world_size=world_size, rank=rank,
                timeout=timeout,
            )
        except Exception as e:
            _report(errors, _rendezvous_error(e, rank, world_size, dist_url, timeout), 2)
            sys.exit(_LTDET_EXIT)
    if hasattr(comm, "create_local_process_group"):  # newer detectron2
        comm.create_local_process_group(per_machine)
    else:  # detectron2 0.6 has no function for it; its launch sets this same attribute
        for i in range(world_size // per_machine):
            pg = dist.new_group(list(range(i * per_machine, (i + 1) * per_machine)))
            if i == machine_rank:
                comm._LOCAL_PROCESS_GROUP = pg
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    comm.synchronize()
    try:
        _worker_main(*work)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _worker_main(main_func, args, errors, launcher_pid, world_size, dist_url, timeout):
    """Run ``main_func(*args)`` in a worker: LTDetError -> the queue; stop if the launcher dies."""
    _watch_launcher(launcher_pid)
    try:
        main_func(*args)
    except LTDetError as e:
        _report(errors, f"rank {comm.get_rank()}: {e}", getattr(e, "exit_code", 2))
        sys.exit(_LTDET_EXIT)


def _report(errors, text: str, exit_code: int) -> None:
    try:
        errors.put((text, exit_code))
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


class _rendezvous_report:
    """Say what a multi-machine rendezvous waits for, at the start and every WAIT_REPORT_S."""

    def __init__(self, rank, world_size, per_machine, dist_url, timeout):
        self.text = (
            f"rank {rank}: waiting for all {world_size} processes "
            f"({world_size // per_machine} machines x {per_machine}) to join at {dist_url} "
            f"(timeout {timeout}). Start the same command on every machine with its own "
            "--machine-rank and this --dist-url."
        )
        self.multi_machine = world_size > per_machine
        self.done = threading.Event()

    def __enter__(self):
        if self.multi_machine:
            print(f"lt_det: {self.text}", file=sys.stderr, flush=True)
            threading.Thread(target=self._repeat, daemon=True).start()
        return self

    def _repeat(self) -> None:
        start = time.monotonic()
        while not self.done.wait(WAIT_REPORT_S):
            waited = timedelta(seconds=int(time.monotonic() - start))
            print(f"lt_det: still {self.text} (waited {waited})", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        self.done.set()


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
