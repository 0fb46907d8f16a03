"""``"fast"`` backend: faster-coco-eval's C++ evaluator in LVIS mode.

faster-coco-eval applies LVIS's rules (detections of a class neither positive nor negative in an
image are dropped; unmatched detections of a not-exhaustive class are ignored) but its max-dets
caps each (image, class) pair, not each image: the caller applies the per-image cut first and
passes a ``max_dets`` that caps nothing.
"""
import contextlib
import copy
import gc
from typing import Dict, List, Tuple

import numpy as np
from faster_coco_eval import COCO
from faster_coco_eval.core import faster_eval_api as _fce_api
from faster_coco_eval.core.faster_eval_api import COCOeval_faster

from .common import empty_tables, gt_ann_copies
from .registry import LT_LVIS_EVAL_BACKEND_REGISTRY

__all__ = ["fast"]


def _coco(images: List[Dict], anns: List[Dict], cats: List[Dict]) -> COCO:
    api = COCO()
    api.dataset = {"images": images, "annotations": anns, "categories": cats}
    api.createIndex()
    return api


def _dt_anns(dets, iou_type: str) -> List[Dict]:
    """faster-coco-eval's detection dicts; areas from ``dets.area`` (set by
    :func:`lt_det.evaluation.lvis_eval.drop_zero_area`: box ``w * h`` or mask area, the values
    lvis-api computes), else computed here the same way."""
    if dets.area is None:
        dets = dets.with_area(iou_type)
    img = dets.image_id.tolist()
    cat = dets.category_id.tolist()
    score = dets.score.tolist()
    areas = dets.area.tolist()
    key = "bbox" if iou_type == "bbox" else "segmentation"
    regions = dets.bbox.tolist() if iou_type == "bbox" else dets.segmentation
    return [
        {
            "id": k + 1,
            "image_id": i,
            "category_id": c,
            "score": s,
            key: r,
            "area": ar,
            "iscrowd": 0,
        }
        for k, (i, c, s, r, ar) in enumerate(zip(img, cat, score, regions, areas))
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


# One evaluator call costs about as much as this many cells of its (image x class) grid
# (LVIS v1 val scale: ~1 ms per call, ~2.5 us per cell, empty or not).
_CALL_COST_CELLS = 400


def _class_groups(
    gt, cat_ids: np.ndarray, img_ids: np.ndarray
) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Split ``cat_ids`` into groups, each evaluated by one call on the images of its classes.

    faster-coco-eval's C++ evaluates every cell of its (image x class) grid, empty or not, while
    LVIS evaluates a class only on the images where it is positive or negative: at LVIS v1 val
    scale the grids of 100-class chunks have 12.1M cells for 0.17M such pairs. Classes are taken
    in order of their image count and join the current group while that costs fewer cells than
    a call of their own. A class's numbers depend only on its own cells, so grouping changes none.

    Returns:
        one (class ids, image ids) pair per group, both sorted.
    """
    keep = set(img_ids.tolist())
    images = {
        c: (gt.pos_images.get(c, set()) | gt.neg_images.get(c, set())) & keep
        for c in cat_ids.tolist()
    }
    groups, members, union = [], [], set()
    for c in sorted(images, key=lambda c: len(images[c])):
        merged = union | images[c]
        joined = len(merged) * (len(members) + 1)
        apart = len(union) * len(members) + _CALL_COST_CELLS + len(images[c])
        if members and joined > apart:
            groups.append((members, union))
            members, merged = [], images[c]
        members.append(c)
        union = merged
    if members:
        groups.append((members, union))
    return [
        (np.array(sorted(m), dtype=np.int64), np.array(sorted(u), dtype=np.int64))
        for m, u in groups
    ]


@contextlib.contextmanager
def _gc_paused():
    """Pause Python's cyclic garbage collector while the evaluation dicts are built and read.

    Every 700 new container objects start a collection that walks the young objects; with
    millions of detection dicts and box lists that was a third of the CPU time at LVIS v1 val
    scale (40 -> 27 s). Nothing built here forms a reference cycle, so reference counting frees
    it all; the collector's previous state is restored on exit.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@LT_LVIS_EVAL_BACKEND_REGISTRY.register("fast")
def fast(
    gt, dets, *, iou_type: str, cat_ids: np.ndarray, img_ids: np.ndarray, max_dets: int
) -> Tuple[np.ndarray, np.ndarray]:
    """LVIS precision/recall of ``cat_ids`` with faster-coco-eval (see the registry for args).

    Classes are evaluated in groups (:func:`_class_groups`); a group without detections keeps
    :func:`empty_tables`' values, which are what the evaluator returns for it.
    """
    precision, recall = empty_tables(gt, cat_ids)
    if len(dets) == 0 or len(img_ids) == 0:
        return precision, recall
    groups = _class_groups(gt, cat_ids, img_ids)
    group_of_class = np.empty(len(cat_ids), dtype=np.int64)
    for g, (members, _) in enumerate(groups):
        group_of_class[np.searchsorted(cat_ids, members)] = g
    det_group = group_of_class[np.searchsorted(cat_ids, dets.category_id)]
    order = np.argsort(det_group, kind="stable")  # result order kept within a group
    bounds = np.searchsorted(det_group[order], np.arange(len(groups) + 1))
    with _gc_paused():
        for g, (members, images) in enumerate(groups):
            if bounds[g] == bounds[g + 1]:
                continue
            k = np.searchsorted(cat_ids, members)
            group_dets = dets.take(order[bounds[g] : bounds[g + 1]])
            precision[:, :, k], recall[:, k] = _evaluate(
                gt, group_dets, iou_type, members, images, max_dets
            )
    return precision, recall


def _evaluate(
    gt, dets, iou_type: str, cat_ids: np.ndarray, img_ids: np.ndarray, max_dets: int
) -> Tuple[np.ndarray, np.ndarray]:
    """One faster-coco-eval run of ``cat_ids`` on ``img_ids`` (every detection lies there)."""
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
