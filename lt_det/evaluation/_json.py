"""JSON reading for the evaluators: orjson when it is installed (several times faster on result
files of millions of detections), the standard library's json otherwise; same values either way."""
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
            return orjson.loads(f.read())
    with open(path) as f:
        return json.load(f)
