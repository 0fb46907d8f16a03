"""AP-pool (Dave et al., "Evaluating Large-Vocabulary Object Detectors: The Devil is in the
Details", 2021, Sec. 5): cross-class calibration counts.

Per-class matching is LVIS's, unchanged (lvis-api ``evaluate_img``, area range "all"): in each
(image, class) pair the detections, by decreasing score, are matched greedily to the unmatched
ground truth of highest IoU >= t; an unmatched detection of a class listed in the image's
``not_exhaustive_category_ids`` is ignored. Then, for a pool of classes (all, or one frequency
group r / c / f), the detections of every class in the pool are sorted together by score and
give ONE precision-recall curve (true positives over the pool's total ground truth), summarised
as LVIS/COCO AP: 101-point interpolated precision, averaged over the 10 IoU thresholds
0.50:0.05:0.95. AP-fixed's per-class AP is unchanged by a per-class monotone score transform;
AP-pool is not, so it measures whether scores are comparable across classes.

Input detections must already be cut by the protocol (:func:`select_detections`: 300 per image,
or AP-fixed's 10,000 per class), as for the per-class metrics. Box IoU only ("bbox").

Shape shorthand: T = 10 IoU thresholds, N detections.
"""
from collections import defaultdict
from typing import Dict, List, Sequence, Tuple

import numpy as np

from ..errors import LTDetError
from .backends.common import IOU_THRS, REC_THRS
from .detections import DetectionTable
from .ground_truth import LVISGroundTruth

__all__ = ["match_detections", "pooled_ap", "ap_pool_metrics", "AP_POOL_NAMES"]

AP_POOL_NAMES = ["APpool", "APpool_r", "APpool_c", "APpool_f"]


def _box_iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of XYWH boxes (COCO's, no +1)."""
    ax2, ay2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx2, by2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, 0:1], b[None, :, 0])
    ih = np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, 1:2], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_detections(
    gt: LVISGroundTruth, dets: DetectionTable
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LVIS matching of every detection, per IoU threshold.

    Returns:
        ``(tp, ignored, num_gt)``: ``tp`` / ``ignored`` (T, N) booleans in the order of ``dets``
        (true positive; ignored, i.e. an unmatched detection of a not-exhaustive class in its
        image); ``num_gt`` (K,) gt instances per class in ``gt.cat_ids`` order.
    """
    if len(dets) and dets.bbox is None:
        raise LTDetError("AP-pool needs result boxes ('bbox'); it is computed for bbox only.")
    T = len(IOU_THRS)
    gt_by_pair: Dict[Tuple[int, int], List[List[float]]] = defaultdict(list)
    for c in gt.cat_ids.tolist():
        for a in gt.anns_by_cat.get(c, ()):
            gt_by_pair[(a["image_id"], c)].append(a["bbox"])
    rows_by_pair: Dict[Tuple[int, int], List[int]] = defaultdict(list)
    for i, (img, c) in enumerate(zip(dets.image_id.tolist(), dets.category_id.tolist())):
        rows_by_pair[(img, c)].append(i)
    tp = np.zeros((T, len(dets)), dtype=bool)
    ignored = np.zeros((T, len(dets)), dtype=bool)
    for (img, c), rows in rows_by_pair.items():
        rows = np.asarray(rows)
        rows = rows[np.argsort(-dets.score[rows], kind="mergesort")]
        g = np.asarray(gt_by_pair.get((img, c), []), dtype=np.float64).reshape(-1, 4)
        not_exhaustive = c in gt.not_exhaustive.get(img, ())
        ious = _box_iou_xywh(dets.bbox[rows], g) if len(g) else np.zeros((len(rows), 0))
        for t, thr in enumerate(IOU_THRS):
            taken = np.zeros(len(g), dtype=bool)
            for d in range(len(rows)):
                best, best_iou = -1, min(thr, 1 - 1e-10)
                for j in range(len(g)):
                    if taken[j] or ious[d, j] < best_iou:
                        continue
                    best, best_iou = j, ious[d, j]
                if best >= 0:
                    taken[best] = True
                    tp[t, rows[d]] = True
                elif not_exhaustive:
                    ignored[t, rows[d]] = True
    num_gt = np.array([gt.num_gt(c) for c in gt.cat_ids.tolist()])
    return tp, ignored, num_gt


def pooled_ap(scores: np.ndarray, tp: np.ndarray, ignored: np.ndarray, num_gt: int) -> float:
    """AP of one pooled precision-recall curve (LVIS/COCO summary), -1 when ``num_gt`` is 0.

    Args:
        scores: (N,) detection scores of the pool.
        tp / ignored: (T, N) true positives / ignored detections.
        num_gt: ground-truth instances of the pool.
    """
    if num_gt == 0:
        return -1.0
    order = np.argsort(-scores, kind="mergesort")
    aps = []
    for t in range(tp.shape[0]):
        keep = ~ignored[t, order]
        hits = tp[t, order][keep].astype(np.float64)
        tps = np.cumsum(hits)
        fps = np.cumsum(1.0 - hits)
        recall = tps / num_gt
        precision = tps / (tps + fps + np.spacing(1))
        # precision envelope (max to the right), then read at the 101 recall thresholds
        precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
        idx = np.searchsorted(recall, REC_THRS, side="left")
        q = np.zeros(len(REC_THRS))
        valid = idx < len(precision)
        q[valid] = precision[idx[valid]]
        aps.append(q.mean())
    return float(np.mean(aps))


def ap_pool_metrics(
    gt: LVISGroundTruth, dets: DetectionTable, pools: Sequence[str] = ("all", "r", "c", "f")
) -> Dict[str, float]:
    """{"APpool": .., "APpool_r": .., "APpool_c": .., "APpool_f": ..} (fractions, -1 for a pool
    without ground truth) from detections already cut by the protocol."""
    tp, ignored, num_gt = match_detections(gt, dets)
    cat_index = np.searchsorted(gt.cat_ids, dets.category_id)
    group = np.asarray(gt.frequency)[cat_index] if len(dets) else np.array([], dtype=str)
    out = {}
    for pool in pools:
        if pool == "all":
            sel, n = np.ones(len(dets), dtype=bool), int(num_gt.sum())
            name = "APpool"
        else:
            sel = group == pool
            n = int(num_gt[np.asarray(gt.frequency) == pool].sum())
            name = f"APpool_{pool}"
        out[name] = pooled_ap(dets.score[sel], tp[:, sel], ignored[:, sel], n)
    return out
