"""``"lvis"`` backend: the official lvis-api (``LVISEval``), the reference.

lvis-api builds one Python dict per (image, class, area range); the caller bounds its memory by
evaluating class chunks on the images where those classes are positive or negative.
"""
import logging
from typing import Dict, List, Tuple

import numpy as np
from lvis import LVIS, LVISEval, LVISResults

from .common import empty_tables, gt_ann_copies
from .registry import LT_LVIS_EVAL_BACKEND_REGISTRY

__all__ = ["lvis"]


class _LVISFromDict(LVIS):
    """An ``LVIS`` ground truth built from a dict (lvis-api's constructor only reads files)."""

    def __init__(self, dataset: Dict):  # noqa: D107 (same index as LVIS.__init__ builds)
        self.logger = logging.getLogger("lvis.lvis")
        self.dataset = dataset
        self._create_index()


@LT_LVIS_EVAL_BACKEND_REGISTRY.register("lvis")
def lvis(
    gt, dets, *, iou_type: str, cat_ids: np.ndarray, img_ids: np.ndarray, max_dets: int
) -> Tuple[np.ndarray, np.ndarray]:
    """LVIS precision/recall of ``cat_ids`` with lvis-api (see the registry for args)."""
    if len(dets) == 0 or len(img_ids) == 0:
        # lvis-api cannot load an empty result list; the tables are known in closed form.
        return empty_tables(gt, cat_ids)
    images: List[Dict] = [gt.image_by_id[i] for i in img_ids.tolist()]
    cats = [gt.categories[k] for k in np.searchsorted(gt.cat_ids, cat_ids).tolist()]
    lvis_gt = _LVISFromDict(
        {"images": images, "annotations": gt_ann_copies(gt, cat_ids, iou_type), "categories": cats}
    )
    res_logger = logging.getLogger("lvis.results")
    level = res_logger.level
    res_logger.setLevel(logging.ERROR)  # silences "Assuming user provided the results ..."
    try:
        # The caller already applied the per-image (or AP-fixed per-class) cut.
        lvis_dt = LVISResults(lvis_gt, dets.to_results(iou_type), max_dets=-1)
    finally:
        res_logger.setLevel(level)
    ev = LVISEval(lvis_gt, lvis_dt, iou_type)
    ev.params.img_ids = img_ids.tolist()
    ev.params.cat_ids = cat_ids.tolist()
    ev.evaluate()
    ev.accumulate()
    return np.array(ev.eval["precision"], np.float64), np.array(ev.eval["recall"], np.float64)
