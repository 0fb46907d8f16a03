"""JSON reading for the evaluators: orjson when it is installed (several times faster on result
files of millions of detections), the standard library's json otherwise; same values either way.

Python's json writes non-finite floats as the tokens NaN / Infinity, which orjson refuses; such a file
is parsed again with the standard library so that the result validator can name the bad value."""
import json
from typing import Any

try:
    import orjson
except ImportError:  # optional dependency (requirements.txt)
    orjson = None

__all__ = ["load_json", "json_backend"]


def json_backend() -> str:
    """"orjson" or "json": the parser :func:`load_json` uses."""
    return "orjson" if orjson is not None else "json"


def load_json(path: str) -> Any:
    """Parse the json file at ``path``.

    Raises:
        ValueError: the file is not valid json (``json.JSONDecodeError`` or
            ``orjson.JSONDecodeError``, both subclasses of ValueError).
    """
    if orjson is not None:
        with open(path, "rb") as f:
            data = f.read()
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return json.loads(data)  # NaN / Infinity tokens, or a real error json reports
    with open(path) as f:
        return json.load(f)
