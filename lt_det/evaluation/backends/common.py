"""Parameters shared by the backends (LVIS's, which are COCO's with 300 detections)."""
from typing import Dict, List, Sequence, Tuple

import numpy as np

__all__ = ["IOU_THRS", "REC_THRS", "AREA_RNGS", "AREA_LABELS", "gt_ann_copies", "empty_tables"]

IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RNGS = [[0 ** 2, 1e5 ** 2], [0 ** 2, 32 ** 2], [32 ** 2, 96 ** 2], [96 ** 2, 1e5 ** 2]]
AREA_LABELS = ["all", "small", "medium", "large"]


def gt_ann_copies(gt, cat_ids: Sequence[int], iou_type: str) -> List[Dict]:
    """Shallow copies of the gt annotations of ``cat_ids`` with only what evaluation reads.

    Copies, because both libraries write into annotation dicts (``ignore``, ``rle``,
    ``_ignore``); ``iscrowd`` is 0 as in lvis-api, which has no crowd regions.
    """
    out = []
    for c in cat_ids:
        for a in gt.anns_by_cat.get(int(c), ()):
            d = {
                "id": a["id"],
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "area": a["area"],
                "bbox": a["bbox"],
                "iscrowd": 0,
            }
            if iou_type == "segm":
                d["segmentation"] = a["segmentation"]
            out.append(d)
    return out


def empty_tables(gt, cat_ids: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """LVIS tables for classes without any detection: 0 where the class has gt in the area
    range (its recall and precision are 0), -1 elsewhere."""
    T, R, K, A = len(IOU_THRS), len(REC_THRS), len(cat_ids), len(AREA_RNGS)
    precision = -np.ones((T, R, K, A))
    recall = -np.ones((T, K, A))
    for k, c in enumerate(cat_ids):
        areas = np.array([a["area"] for a in gt.anns_by_cat.get(int(c), ())], dtype=np.float64)
        for a, (lo, hi) in enumerate(AREA_RNGS):
            if np.any((areas >= lo) & (areas <= hi)):
                precision[:, :, k, a] = 0.0
                recall[:, k, a] = 0.0
    return precision, recall
