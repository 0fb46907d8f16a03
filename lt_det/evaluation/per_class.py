"""Per-class AP reports: JSON and CSV with each class's training frequency and r/c/f group.

JSON layout (``per_class_ap_<task>.json``)::

    {"task": "bbox", "metrics": {"AP": 25.1, ...}, "info": {...},
     "classes": [{"id": 1, "name": "aerosol_can", "frequency": "c", "image_count": 64,
                  "num_gt": 12, "AP": 31.2, "AP50": ..., "AP75": ..., "APs": ..., "APm": ...,
                  "APl": ..., "AR": ...}, ...]}

AP values are in percent; ``null`` (JSON) / empty (CSV) where the class has no gt to evaluate.
"""
import csv
import json
import math
import os
from typing import Any, Dict, List, Optional

from ..errors import LTDetError

__all__ = ["write_per_class", "read_per_class", "PER_CLASS_FIELDS"]

PER_CLASS_FIELDS = ["id", "name", "frequency", "image_count", "num_gt"]
_AP_FIELDS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR"]


def _json_safe(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


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
        "metrics": {k: _json_safe(v) for k, v in result.metrics_percent().items()},
        "info": {**result.info, **(info or {})},
        "classes": rows,
    }
    with open(base + ".json", "w") as f:
        json.dump(doc, f, indent=1)
    with open(base + ".csv", "w", newline="") as f:
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
    with open(path) as f:
        doc = json.load(f)
    if "classes" not in doc:
        raise LTDetError(
            f"'{path}' has no 'classes' list; expected a per_class_ap_<task>.json written by "
            "lt_det's LVIS evaluator or tools/lvis_eval.py."
        )
    return doc
