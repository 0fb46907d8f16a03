"""``"fast"`` backend: faster-coco-eval's C++ evaluator in LVIS mode.

faster-coco-eval applies LVIS's rules (detections of a class neither positive nor negative in an
image are dropped; unmatched detections of a not-exhaustive class are ignored) but its max-dets
caps each (image, class) pair, not each image: the caller applies the per-image cut first and
passes a ``max_dets`` that caps nothing.
"""
import copy
from typing import Dict, List, Tuple

import numpy as np
from faster_coco_eval import COCO
from faster_coco_eval.core import faster_eval_api as _fce_api
from faster_coco_eval.core.faster_eval_api import COCOeval_faster
from pycocotools import mask as mask_util

from .common import empty_tables, gt_ann_copies
from .registry import LT_LVIS_EVAL_BACKEND_REGISTRY

__all__ = ["fast"]


def _coco(images: List[Dict], anns: List[Dict], cats: List[Dict]) -> COCO:
    api = COCO()
    api.dataset = {"images": images, "annotations": anns, "categories": cats}
    api.createIndex()
    return api


def _dt_anns(dets, iou_type: str) -> List[Dict]:
    img = dets.image_id.tolist()
    cat = dets.category_id.tolist()
    score = dets.score.tolist()
    if iou_type == "bbox":
        boxes = dets.bbox.tolist()
        # area = w * h in Python floats, exactly as lvis-api computes it.
        return [
            {
                "id": k + 1,
                "image_id": i,
                "category_id": c,
                "score": s,
                "bbox": b,
                "area": b[2] * b[3],
                "iscrowd": 0,
            }
            for k, (i, c, s, b) in enumerate(zip(img, cat, score, boxes))
        ]
    segm = dets.segmentation
    areas = mask_util.area(list(segm)).tolist() if len(segm) else []
    return [
        {
            "id": k + 1,
            "image_id": i,
            "category_id": c,
            "score": s,
            "segmentation": m,
            "area": ar,
            "iscrowd": 0,
        }
        for k, (i, c, s, m, ar) in enumerate(zip(img, cat, score, segm, areas))
    ]


def _evaluate_sparse(ev: COCOeval_faster) -> None:
    """``ev.evaluate()`` without its dict over every (image, class) pair.

    faster-coco-eval 1.8 builds a Python dict keyed by all |images| x |classes| pairs although
    IoUs exist only where a pair has both gt and detections; this computes those pairs only and
    hands the C++ evaluator the same nested table. Falls back to ``ev.evaluate()`` when the
    installed version lacks the internals used here.
    """
    cpp = getattr(_fce_api, "_C", None)
    if cpp is None or not hasattr(ev, "_prepare") or not ev.params.useCats or ev.separate_eval:
        ev.evaluate()
        return
    p = ev.params
    p.maxDets = sorted(p.maxDets)
    ev._prepare()
    pairs = getattr(ev, "_nonempty_iou_pairs", None)
    if pairs is None:
        ev.evaluate()
        return
    img_pos = {i: n for n, i in enumerate(p.imgIds)}
    cat_pos = {c: k for k, c in enumerate(p.catIds)}
    empty: list = []
    table = [[empty] * len(p.catIds) for _ in p.imgIds]
    for img_id, cat_id in pairs:
        table[img_pos[img_id]][cat_pos[cat_id]] = ev.computeIoU(img_id, cat_id)
    ev._paramsEval = copy.deepcopy(p)
    ev.eval = cpp.COCOevalEvaluateAccumulate(
        ev._paramsEval, table, ev.gt_dataset, ev.dt_dataset, p.imgIds, p.catIds, True
    )


@LT_LVIS_EVAL_BACKEND_REGISTRY.register("fast")
def fast(
    gt, dets, *, iou_type: str, cat_ids: np.ndarray, img_ids: np.ndarray, max_dets: int
) -> Tuple[np.ndarray, np.ndarray]:
    """LVIS precision/recall of ``cat_ids`` with faster-coco-eval (see the registry for args)."""
    if len(dets) == 0 or len(img_ids) == 0:
        return empty_tables(gt, cat_ids)
    images = [gt.image_by_id[i] for i in img_ids.tolist()]
    cats = [gt.categories[k] for k in np.searchsorted(gt.cat_ids, cat_ids).tolist()]
    coco_gt = _coco(images, gt_ann_copies(gt, cat_ids, iou_type), cats)
    coco_dt = _coco(images, _dt_anns(dets, iou_type), cats)
    ev = COCOeval_faster(
        coco_gt, coco_dt, iou_type, lvis_style=True, print_function=lambda *a, **k: None
    )
    ev.params.imgIds = img_ids.tolist()
    ev.params.catIds = cat_ids.tolist()
    ev.params.maxDets = [int(max_dets)]
    _evaluate_sparse(ev)
    ev.accumulate()
    precision = np.array(ev.eval["precision"][..., -1], dtype=np.float64)
    recall = np.array(ev.eval["recall"][..., -1], dtype=np.float64)
    return precision, recall
