"""One run per output folder: an advisory lock on ``OUTPUT_DIR/.lt_det.lock``.

``setup_cfg`` takes it in the main process once every input check has passed, before anything
else is written there, and keeps it for the life of the run. A second ``tools/train_net.py``
(a new run, ``--resume`` or ``--eval-only``) into the same folder is refused while the first one
is alive. The lock is the operating system's, taken on the open lock file with filelock's
``lock_descriptor`` (``flock`` on POSIX, ``LockFileEx`` on Windows: ``filelock.FileLock``'s own
primitive; ``FileLock`` itself is not used because filelock 3.x opens its file truncated, so a
refused contender would erase the holder's line). It is released on any exit, ``kill -9``
included, so a lock file left by a dead run is stale by construction and never blocks. The file
names the holder (pid, host, start time) for the message.
A folder whose disk is (nearly) full is refused at the same point, before config.yaml or log.txt
would be created empty. :func:`refuse_if_in_use` lets the output-folder check name the holder
instead of advising ``--resume`` / ``--overwrite-output``, which the lock would refuse too.
"""
import datetime
import errno
import os
import shutil
import socket
from typing import IO, Dict

from filelock import lock_descriptor, unlock_descriptor

from ..errors import LTDetError


def _try_lock(f: IO) -> bool:
    """Lock ``f``'s file for this process without waiting; False when another process holds it."""
    return lock_descriptor(f.fileno(), blocking=False)


def _unlock(f: IO) -> None:
    unlock_descriptor(f.fileno())


__all__ = [
    "LOCK_NAME",
    "MIN_FREE_BYTES",
    "lock_output_dir",
    "release_output_dir",
    "refuse_if_in_use",
]

LOCK_NAME = ".lt_det.lock"

# Folders locked by this process (real path -> open lock file); re-locking one is a no-op.
_HELD: Dict[str, IO] = {}


#: Free space an OUTPUT_DIR's disk must have when a run takes it: config.yaml, log.txt,
#: metrics.json and a first checkpoint of a small model fit; less is refused before anything
#: is written.
MIN_FREE_BYTES = 16 * 2**20


def _in_use_error(output_dir: str, holder: str) -> LTDetError:
    return LTDetError(
        f"OUTPUT_DIR '{output_dir}' is in use by another lt_det run ({holder or 'a process'}). "
        "Nothing was changed. Wait for that run to end (then --resume continues it), stop it, "
        "or choose another OUTPUT_DIR."
    )


def refuse_if_in_use(output_dir: str) -> None:
    """Raise the "in use" refusal when another live process holds ``output_dir``'s lock (no-op
    if this process holds it, or the folder has no lock file). Checks that would otherwise
    advise ``--resume`` or ``--overwrite-output`` for a folder in use call it first: the lock
    refuses both while the other run lives.

    Raises:
        LTDetError: naming the holder (pid, host, start time).
    """
    if not output_dir or "://" in output_dir or os.path.realpath(output_dir) in _HELD:
        return
    path = os.path.join(output_dir, LOCK_NAME)
    try:
        f = open(path, "r")
    except OSError:
        return
    with f:
        if _try_lock(f):
            _unlock(f)
            return
        holder = f.read().strip()
    raise _in_use_error(output_dir, holder)


def lock_output_dir(output_dir: str) -> None:
    """Lock ``output_dir`` for this process (created if missing).

    Raises:
        LTDetError: the folder cannot be written (read-only, its disk has less than
            :data:`MIN_FREE_BYTES` free, ...), or another live process holds the lock (named in
            the message). Nothing is written then (a new folder is removed again).
    """
    if not output_dir or "://" in output_dir:
        return
    key = os.path.realpath(output_dir)
    if key in _HELD:
        return
    path = os.path.join(output_dir, LOCK_NAME)
    created = not os.path.exists(output_dir)
    f = None
    try:
        os.makedirs(output_dir, exist_ok=True)
        free = shutil.disk_usage(output_dir).free
        if free < MIN_FREE_BYTES:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        f = open(path, "a+")
    except OSError as e:
        error = _cannot_write(output_dir, e)
        if created:
            _remove_empty_folder(output_dir)
        raise error from None
    if not _try_lock(f):
        f.seek(0)
        holder = f.read().strip()
        f.close()
        raise _in_use_error(output_dir, holder)
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
        f.flush()
    except OSError as e:  # e.g. disk full: the lock is released with the file
        f.close()
        raise _cannot_write(output_dir, e) from None
    _HELD[key] = f


def _cannot_write(output_dir: str, error: OSError) -> LTDetError:
    cause = error.strerror or str(error)
    if error.errno == errno.ENOSPC:
        try:
            cause += f"; its disk has {shutil.disk_usage(output_dir).free / 2**20:.1f} MiB free"
        except OSError:
            pass
        cause += f", a run needs at least {MIN_FREE_BYTES // 2**20} MiB"
    return LTDetError(
        f"OUTPUT_DIR '{output_dir}' cannot be written ({cause}). Nothing was written there. "
        "Choose a writable folder with free space (OUTPUT_DIR on the command line), or free "
        "disk space."
    )


def _remove_empty_folder(folder: str) -> None:
    try:
        os.rmdir(folder)
    except OSError:
        pass


def release_output_dir(output_dir: str) -> None:
    """Release the lock this process holds on ``output_dir`` (no-op if it holds none)."""
    f = _HELD.pop(os.path.realpath(output_dir), None) if output_dir else None
    if f is not None:
        f.close()  # closing the file releases the lock
