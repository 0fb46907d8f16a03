"""Multi-process launch that also works on CPU.

detectron2 0.6's ``launch`` hard-codes NCCL and asserts CUDA. This one picks the backend from what
the machine has (NCCL when every local process gets a GPU, gloo otherwise) and is otherwise the
same contract: ``main_func(*args)`` runs in each of ``num_gpus_per_machine`` processes.

Errors: an :class:`~lt_det.errors.LTDetError` raised in any worker reaches the caller of
:func:`launch` as one ``LTDetError`` with the same message (prefixed by the worker's rank), not as
a multiprocessing traceback; the other workers are stopped.
"""
import logging
import queue as _queue
import sys
from datetime import timedelta
from typing import Callable, Optional, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm

from ..errors import LTDetError

__all__ = ["launch", "pick_backend"]

DEFAULT_TIMEOUT = timedelta(minutes=30)

# Exit status of a worker that stopped on an LTDetError (its message went through the queue).
_LTDET_EXIT = 3


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
        timeout: timeout of the collective operations.
        backend: "nccl" | "gloo" | None (chosen by :func:`pick_backend`).

    Raises:
        LTDetError: a worker raised one (message prefixed with "rank R: "), or bad arguments.
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
    try:
        mp.start_processes(
            _worker,
            nprocs=num_gpus_per_machine,
            args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args,
                  timeout, backend, errors),
            daemon=False,
            start_method="spawn",
        )
    except (mp.ProcessRaisedException, mp.ProcessExitedException):
        # A worker that stopped on bad input left its message; report that instead of the
        # multiprocessing traceback (torch has already stopped the other workers).
        message = _first_message(errors)
        if message is None:
            raise
        raise LTDetError(message) from None


def _first_message(errors) -> Optional[str]:
    try:
        if not errors.empty():
            return errors.get()
    except (OSError, EOFError, _queue.Empty):  # pragma: no cover - broken pipe on shutdown
        pass
    return None


def _worker(local_rank, main_func, world_size, per_machine, machine_rank, dist_url, args, timeout,
            backend, errors):
    rank = machine_rank * per_machine + local_rank
    try:
        dist.init_process_group(
            backend=backend, init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout
        )
    except Exception:
        logging.getLogger(__name__).error(f"Process group URL: {dist_url}")
        raise
    if hasattr(comm, "create_local_process_group"):  # newer detectron2
        comm.create_local_process_group(per_machine)
    else:  # detectron2 0.6
        for i in range(world_size // per_machine):
            pg = dist.new_group(list(range(i * per_machine, (i + 1) * per_machine)))
            if i == machine_rank:
                comm._LOCAL_PROCESS_GROUP = pg
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    comm.synchronize()
    try:
        main_func(*args)
    except LTDetError as e:
        errors.put(f"rank {rank}: {e}")
        sys.exit(_LTDET_EXIT)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
