"""JSON reading and writing for the evaluators.

Reading: orjson when it is installed (several times faster on result files of millions of
detections), the standard library's json otherwise; same values either way. Python's json writes
non-finite floats as the tokens NaN / Infinity, which orjson refuses; such a file is parsed again
with the standard library so that the result validator can name the bad value. Files are read as
bytes (JSON is UTF-8 whatever the locale).

Reading a results list in pieces: :func:`load_json_list` (memory of one piece's Python objects
at a time, not the whole file's).

Python's cyclic garbage collector is paused while results and ground truth are read and
evaluated (:func:`gc_paused`): those steps allocate millions of dicts and lists that stay alive
(no reference cycles), and each automatic collection would walk every one of them again: the
collector's cost grows with the number of live objects, the evaluation's does not.

Writing: :func:`json_ready` turns the non-finite floats of a result (NaN = undefined metric) into
``None``, so the json written holds ``null`` there and is valid JSON (bare ``NaN`` is not).
"""
import contextlib
import gc
import json
import math
import os
import re
from typing import Any, Iterator

from ..errors import LTDetError

try:
    import orjson
except ImportError:  # optional dependency (requirements.txt)
    orjson = None

__all__ = [
    "gc_paused",
    "load_json",
    "load_json_list",
    "json_backend",
    "json_ready",
    "write_json",
    "save_eval_results",
]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector inside the block (nesting-safe: it is enabled
    again on exit only if it was enabled on entry). Reference counting still frees everything
    that is dropped; only objects in reference cycles wait for the next collection."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def json_backend() -> str:
    """"orjson" or "json": the parser :func:`load_json` uses."""
    return "orjson" if orjson is not None else "json"


def _not_json(path: str, what: str, error: ValueError) -> LTDetError:
    where = ""
    if isinstance(error, json.JSONDecodeError):
        where = f" ({error.msg} at line {error.lineno}, column {error.colno})"
        if error.msg == "Extra data":
            return LTDetError(
                f"'{path}' is not valid JSON{where}: a whole JSON value is followed by more data "
                f"(two writes appended to one file?). A {what} holds one value; write it again "
                "as one."
            )
    elif isinstance(error, UnicodeDecodeError):
        where = f" (not UTF-8: {error.reason} at byte {error.start})"
    return LTDetError(
        f"'{path}' is not valid JSON{where}; a {what} cut short (an interrupted write, a full "
        "disk) ends like this. Write the file again (or restore it) and rerun."
    )


def load_json(path: str, what: str = "json file") -> Any:
    """Parse the json file at ``path``.

    Args:
        path: the file.
        what: what the file is ("results json", "ground-truth json"), for the message.

    Raises:
        LTDetError: the file is not valid JSON (e.g. truncated), naming it and what to do.
    """
    with open(path, "rb") as f:
        data = f.read()
    with gc_paused():
        return _parse(data, path, what)


def _parse(data: bytes, path: str, what: str) -> Any:
    try:
        if orjson is not None:
            try:
                return orjson.loads(data)
            except orjson.JSONDecodeError:
                pass  # NaN / Infinity tokens, or a real error that json reports with its place
        return json.loads(data)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise _not_json(path, what, e) from None


#: Where one result may end and the next begin: "}", a ",", "{", with any JSON whitespace
#: between (``json.dump``'s ", ", the compact ",", and ``indent=``'s ",\n  ").
_BOUNDARY = re.compile(rb"\}[ \t\r\n]*,[ \t\r\n]*\{")

#: Bytes looked back from where the last search stopped, so that a boundary that straddles two
#: blocks is found (one with more whitespace than this may be missed: the piece is then longer,
#: never wrong).
_OVERLAP = 64


_NOT_PARSED = object()


def _last_boundary(buf: bytearray, start: int) -> int:
    """Index of the "," of the last boundary in ``buf`` at or after ``start`` - :data:`_OVERLAP`
    (the bytes before ``start`` were searched already and held none), -1 if none; the last
    4 kB are searched first."""
    lo_all = max(0, start - _OVERLAP)
    tail = max(lo_all, len(buf) - 4096)
    for lo in (tail, lo_all) if tail > lo_all else (lo_all,):
        last = None
        for last in _BOUNDARY.finditer(buf, lo):
            pass
        if last is not None:
            return buf.index(b",", last.start())
    return -1


def load_json_list(path: str, piece_bytes: int = 256 << 10) -> Iterator[list]:
    """The top-level list of the json file at ``path``, in consecutive pieces (lists of its
    elements, in order), reading about ``piece_bytes`` of the file at a time.

    A piece ends at the last boundary ``}, {`` read so far (any whitespace around the ``,``:
    ``json.dump``'s, compact and indented files alike); the piece is parsed as a list on its
    own: the boundary's ``,`` is overwritten with ``]`` in the read buffer and the piece is
    handed to orjson as a view of that buffer (no copy of the file's bytes); the same ``,``
    then becomes the ``[`` of the next piece. A cut that is not between two elements of the
    top-level list (inside a string or a nested list) leaves a piece that is not valid JSON,
    so a piece that parses is exactly the elements it holds; one that does not parse is read
    on to a later boundary (the whole rest of the file at the end). Each byte is searched for a
    boundary once, so the time is linear in the file's size even where no boundary comes for
    long; a file with none comes in one piece.

    Raises:
        LTDetError: a piece does not parse as a list (a file that is not a list, not valid
            JSON, holds NaN tokens, or orjson is not installed); the caller then reads the
            whole file with :func:`load_json`, whose message names the place.
    """
    if orjson is None:
        raise LTDetError(f"'{path}': piecewise reading needs orjson.")
    # Unparsed bytes; from the second piece on they start with the "[" written over a ",".
    buf = bytearray()
    with open(path, "rb") as f:
        while True:
            searched = len(buf)  # bytes of buf already searched for a boundary
            block = f.read(piece_bytes)
            buf += block
            at_end = len(block) < piece_bytes  # a regular file reads short only at its end
            cut = -1 if at_end else _last_boundary(buf, searched)
            if cut < 0 and not at_end:
                continue  # no boundary yet: read on
            if cut >= 0:
                buf[cut] = 0x5D  # "]" over the boundary's ","
            with memoryview(buf) as view:  # released before buf is resized
                try:
                    piece = orjson.loads(view[: cut + 1] if cut >= 0 else view)
                except orjson.JSONDecodeError:
                    piece = _NOT_PARSED
            if piece is _NOT_PARSED:
                if cut < 0:
                    raise LTDetError(f"'{path}' does not parse piece by piece.")
                buf[cut] = 0x2C  # the "," back: no boundary between results; read on
                continue
            if not isinstance(piece, list):
                raise LTDetError(f"'{path}' is not a list.")
            if piece:
                yield piece
            del piece
            if cut < 0:
                return
            buf[cut] = 0x5B  # "[": the next piece starts here
            del buf[:cut]


def json_ready(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-inf) replaced by ``None``, in nested dicts,
    lists and tuples (tuples become lists), so that ``json.dump(json_ready(obj), f,
    allow_nan=False)`` writes valid JSON with ``null`` where a metric is undefined."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if hasattr(obj, "item") and hasattr(obj, "dtype") and getattr(obj, "ndim", 1) == 0:
        return json_ready(obj.item())  # numpy scalars
    return obj


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` to ``path`` as valid JSON (non-finite floats as ``null``, UTF-8), through a
    temporary file renamed into place, so that an interrupted write leaves the old file whole.

    Raises:
        OSError: the folder cannot be written (full disk, permissions).
    """
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(json_ready(obj), f, indent=2, allow_nan=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_eval_results(folder: str, results: Any) -> None:
    """Write a run's final evaluation results to ``folder/eval_results.json`` (main process only;
    nothing when ``results`` is empty), as :func:`write_json` does."""
    from detectron2.utils import comm

    if results and comm.is_main_process():
        os.makedirs(folder, exist_ok=True)
        write_json(os.path.join(folder, "eval_results.json"), results)
