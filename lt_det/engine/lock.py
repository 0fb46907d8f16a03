"""One run per output folder: an advisory lock on ``OUTPUT_DIR/.lt_det.lock``.

``setup_cfg`` takes it in the main process once every input check has passed, before anything
else is written there, and keeps it for the life of the run. A second ``tools/train_net.py``
(a new run, ``--resume`` or ``--eval-only``) into the same folder is refused while the first one
is alive. The lock is the operating system's (``flock`` on POSIX, ``msvcrt.locking`` on Windows):
it is released on any exit, ``kill -9`` included, so a lock file left by a dead run is stale by
construction and never blocks. The file names the holder (pid, host, start time) for the message.
"""
import datetime
import os
import socket
from typing import IO, Dict

from ..errors import LTDetError

try:  # feature test, once: POSIX flock, else Windows byte-range locking
    import fcntl

    def _try_lock(f: IO) -> bool:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

except ImportError:  # pragma: no cover - Windows
    import msvcrt

    def _try_lock(f: IO) -> bool:
        try:
            msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True


__all__ = ["LOCK_NAME", "lock_output_dir", "release_output_dir"]

LOCK_NAME = ".lt_det.lock"

# Folders locked by this process (real path -> open lock file); re-locking one is a no-op.
_HELD: Dict[str, IO] = {}


def lock_output_dir(output_dir: str) -> None:
    """Lock ``output_dir`` for this process (created if missing).

    Raises:
        LTDetError: the folder cannot be written (read-only, no space, ...), or another live
            process holds the lock (named in the message).
    """
    if not output_dir or "://" in output_dir:
        return
    key = os.path.realpath(output_dir)
    if key in _HELD:
        return
    path = os.path.join(output_dir, LOCK_NAME)
    try:
        os.makedirs(output_dir, exist_ok=True)
        f = open(path, "a+")
    except OSError as e:
        raise LTDetError(
            f"OUTPUT_DIR '{output_dir}' cannot be written ({e.strerror or e}). Choose a writable "
            "folder with free space (OUTPUT_DIR on the command line)."
        ) from None
    if not _try_lock(f):
        f.seek(0)
        holder = f.read().strip() or "a process"
        f.close()
        raise LTDetError(
            f"OUTPUT_DIR '{output_dir}' is in use by another lt_det run ({holder}). Nothing was "
            "changed. Wait for that run to end (then --resume continues it), stop it, or choose "
            "another OUTPUT_DIR."
        )
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
    f.flush()
    _HELD[key] = f


def release_output_dir(output_dir: str) -> None:
    """Release the lock this process holds on ``output_dir`` (no-op if it holds none)."""
    f = _HELD.pop(os.path.realpath(output_dir), None) if output_dir else None
    if f is not None:
        f.close()  # closing the file releases the lock
