"""Atomic writes: the temporary file beside the target that is renamed onto it once complete.

Imports no torch: light tools (``tools/coco_to_lvis.py``) and the checkpointer share it.
"""
import os
import re
import secrets
from typing import IO, Tuple

__all__ = ["TMP_NAME", "open_temporary"]

#: Temporary files of an atomic write: ".<file name>.<pid>-<random hex>.tmp" beside the file.
TMP_NAME = re.compile(r"\.(?P<target>.+)\.\d+-[0-9a-f]+\.tmp")


def open_temporary(path: str, binary: bool) -> Tuple[IO, str]:
    """A new file beside ``path`` for an atomic write, and its path; created with mode 0o666
    less the umask (the mode every other file a run writes gets; ``tempfile.mkstemp`` would
    make it 0o600, unreadable to the user's group).

    Raises:
        OSError: the folder cannot be written.
    """
    folder, base = os.path.split(os.path.abspath(path))
    while True:
        tmp = os.path.join(folder, f".{base}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o666)
        except FileExistsError:  # pragma: no cover - 32 random bits taken
            continue
        if binary:
            return os.fdopen(fd, "wb"), tmp
        return os.fdopen(fd, "w", encoding="utf-8"), tmp
