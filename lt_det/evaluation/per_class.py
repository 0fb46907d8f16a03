"""Per-class AP reports: JSON and CSV with each class's training frequency and r/c/f group.

JSON layout (``per_class_ap_<task>.json``)::

    {"task": "bbox", "metrics": {"AP": 25.1, ...}, "info": {...},
     "classes": [{"id": 1, "name": "aerosol_can", "frequency": "c", "image_count": 64,
                  "num_gt": 12, "AP": 31.2, "AP50": ..., "AP75": ..., "APs": ..., "APm": ...,
                  "APl": ..., "AR": ...}, ...]}

AP values are in percent; ``null`` (JSON) / empty (CSV) where the class has no gt to evaluate,
and ``null`` for an undefined summary metric (percent NaN). Both files are UTF-8 whatever the
locale (class names such as "crème_brûlée" are written as they are in the CSV, escaped in the
JSON); the JSON is strict (no bare NaN).
"""
import csv
import json
import os
from typing import Any, Dict, List, Optional

from ..errors import LTDetError
from ._json import json_ready, load_json

__all__ = ["write_per_class", "read_per_class", "PER_CLASS_FIELDS"]

PER_CLASS_FIELDS = ["id", "name", "frequency", "image_count", "num_gt"]
_AP_FIELDS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR"]


def write_per_class(result, out_dir: str, *, info: Optional[Dict[str, Any]] = None) -> List[str]:
    """Write ``per_class_ap_<task>.json`` and ``.csv`` for an :class:`LVISEvalResult`.

    Returns:
        the two paths written.
    """
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for r in result.per_class():
        row = {k: r[k] for k in PER_CLASS_FIELDS}
        row.update({k: (None if r[k] is None else r[k] * 100) for k in _AP_FIELDS})
        rows.append(row)
    base = os.path.join(out_dir, f"per_class_ap_{result.iou_type}")
    doc = {
        "task": result.iou_type,
        "metrics": dict(result.metrics_percent()),
        "info": {**result.info, **(info or {})},
        "classes": rows,
    }
    with open(base + ".json", "w", encoding="utf-8") as f:
        json.dump(json_ready(doc), f, indent=1, allow_nan=False)
    with open(base + ".csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(PER_CLASS_FIELDS + _AP_FIELDS)
        for row in rows:
            w.writerow(
                [row[k] if row[k] is not None else "" for k in PER_CLASS_FIELDS]
                + ["" if row[k] is None else f"{row[k]:.4f}" for k in _AP_FIELDS]
            )
    return [base + ".json", base + ".csv"]


def read_per_class(path: str) -> Dict[str, Any]:
    """Read a ``per_class_ap_<task>.json`` written by :func:`write_per_class`."""
    if not os.path.isfile(path):
        raise LTDetError(f"per-class AP json not found: '{path}'.")
    doc = load_json(path, "per-class AP json")
    if not isinstance(doc, dict) or "classes" not in doc:
        raise LTDetError(
            f"'{path}' has no 'classes' list; expected a per_class_ap_<task>.json written by "
            "lt_det's LVIS evaluator or tools/lvis_eval.py."
        )
    return doc
