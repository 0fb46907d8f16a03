"""Exact top-k post-processing of Fast R-CNN outputs, with work bounded by the output size.

Shape shorthand: R proposals of one image, K foreground classes, C = K (class-specific box
regression) or 1 (class-agnostic); N candidates = (proposal, class) pairs whose score exceeds
the score threshold; k = ``topk_per_image``.

detectron2's :func:`~detectron2.modeling.roi_heads.fast_rcnn.fast_rcnn_inference` builds a box for
every one of the N candidates and runs non-maximum suppression (NMS) class by class over all of
them. At LVIS's test settings (R = 1000, K = 1203, score threshold 1e-4, k = 300) N is about
1.2 million and the per-class NMS costs tens of seconds of CPU per image, while only k boxes are
returned. :func:`fast_rcnn_inference_topk` returns the same detections from the M best candidates:

1. take the candidates whose score is at least the M-th best candidate score (all ties of that
   score included), in detectron2's order (``nonzero`` of the R x K score mask, row-major);
2. run NMS on them class by class (``torchvision.ops.nms``, as detectron2's per-class NMS does);
3. if at least k boxes survive, the k best survivors are detectron2's k detections; otherwise
   double M and repeat. M starts at 4k (fewest passes in ``tools/bench_infer.py``).

Exactness: greedy NMS removes a box only for a box of its class with a higher score (or an equal
score earlier in torchvision's stable order), so the survivors among the candidates scoring >= t
are the same whether or not the candidates scoring < t take part, and every candidate left out
scores below every candidate taken. The boxes are the tensors detectron2 builds
(``predict_boxes`` of all proposals, clipped with ``Boxes.clip``); only the candidates' rows are
gathered.

Equal scores: detectron2 orders the survivors of all classes with an unstable sort (``argsort``
over every survivor; libstdc++'s introsort on CPU), so the relative order of two survivors with
the same score depends on every other survivor, including those the top-M passes never compute.
When two of the k returned scores are equal, or the k-th equals the next survivor's (and when
fewer than k survive every pass, or ``topk_per_image`` < 0), every candidate goes through the
per-class NMS and the survivors are ordered by detectron2's own ``argsort`` call on the same
tensor: its exact order, at about its NMS cost (without its one (N,) comparison per class).

Below 40,000 candidates detectron2's own function runs: there detectron2's ``batched_nms`` hands
NMS to torchvision's ``batched_nms``, which for small inputs offsets each class's boxes by a
class-dependent shift ("coordinate trick") whose float rounding of the IoUs per-class NMS would
not reproduce. From 40,000 candidates on detectron2 runs NMS class by class, as this module does.
Below that threshold detectron2's own cost is small (``tools/bench_infer.py``: about 0.03 s at
COCO's settings on one CPU thread).
"""
from typing import List, Optional, Tuple

import torch
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference_single_image
from detectron2.structures import Boxes, Instances
from torchvision.ops import nms

__all__ = [
    "fast_rcnn_inference_topk",
    "fast_rcnn_inference_topk_single_image",
    "PER_CLASS_NMS_MIN_CANDIDATES",
]

# detectron2's batched_nms (detectron2/layers/nms.py) runs NMS class by class from this many
# boxes on; below it torchvision's batched_nms may use the class-offset trick.
PER_CLASS_NMS_MIN_CANDIDATES = 40000

_TIED = object()  # equal scores among the returned survivors: detectron2's sort decides


def fast_rcnn_inference_topk(
    boxes: List[torch.Tensor],
    scores: List[torch.Tensor],
    image_shapes: List[Tuple[int, int]],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
    *,
    initial_candidates: Optional[int] = None,
) -> Tuple[List[Instances], List[torch.Tensor]]:
    """detectron2's ``fast_rcnn_inference`` (same arguments, same results), image by image with
    :func:`fast_rcnn_inference_topk_single_image`.

    Args:
        boxes: per image (Ri, K * 4) class-specific or (Ri, 4) class-agnostic boxes, XYXY in
            input-image pixels (``FastRCNNOutputLayers.predict_boxes``).
        scores: per image (Ri, K + 1) scores, column K = background
            (``FastRCNNOutputLayers.predict_probs``).
        image_shapes: per image (height, width) the boxes are clipped to.
        score_thresh: a detection needs a score > score_thresh.
        nms_thresh: IoU above which NMS removes the lower-scoring box of a class, in [0, 1].
        topk_per_image: detections returned per image; < 0 returns all.
        initial_candidates: M of the first pass; default 4 * topk_per_image.

    Returns:
        (list of Instances with ``pred_boxes``, ``scores``, ``pred_classes``; list of (Di,)
        int64 proposal indices), exactly as ``fast_rcnn_inference``.
    """
    results = [
        fast_rcnn_inference_topk_single_image(
            b,
            s,
            shape,
            score_thresh,
            nms_thresh,
            topk_per_image,
            initial_candidates=initial_candidates,
        )
        for b, s, shape in zip(boxes, scores, image_shapes)
    ]
    return [r[0] for r in results], [r[1] for r in results]


def fast_rcnn_inference_topk_single_image(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    image_shape: Tuple[int, int],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
    *,
    initial_candidates: Optional[int] = None,
) -> Tuple[Instances, torch.Tensor]:
    """One image of :func:`fast_rcnn_inference_topk`; equal to detectron2's
    ``fast_rcnn_inference_single_image`` (boxes, scores, classes, order and proposal indices).

    Args:
        boxes: (R, K * 4) or (R, 4) boxes. scores: (R, K + 1). Other arguments: see
            :func:`fast_rcnn_inference_topk`.

    Returns:
        (Instances of at most ``topk_per_image`` detections, (D,) proposal indices into the rows
        of ``boxes`` whose boxes and scores are all finite).
    """
    d2_args = (boxes, scores, image_shape, score_thresh, nms_thresh, topk_per_image)
    # Dropping rows (below) only removes candidates: an upper bound decides small inputs at the
    # cost of one comparison.
    few = int((scores[:, :-1] > score_thresh).sum()) < PER_CLASS_NMS_MIN_CANDIDATES
    if few or topk_per_image == 0:
        return fast_rcnn_inference_single_image(*d2_args)
    # Rows with a non-finite box or score are dropped first and the returned proposal indices
    # count the remaining rows, as in detectron2.
    valid_mask = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if not valid_mask.all():
        boxes, scores = boxes[valid_mask], scores[valid_mask]
    fg_scores = scores[:, :-1]  # (R, K)
    candidates = fg_scores > score_thresh
    num_candidates = int(candidates.sum())
    if num_candidates < PER_CLASS_NMS_MIN_CANDIDATES:
        return fast_rcnn_inference_single_image(*d2_args)

    def survivors(mask: torch.Tensor, every_candidate: bool):
        return _survivors(
            boxes, fg_scores, mask, image_shape, nms_thresh, topk_per_image, every_candidate
        )

    if topk_per_image > 0:
        flat_scores = fg_scores.reshape(-1)
        m = initial_candidates if initial_candidates is not None else 4 * topk_per_image
        m = max(m, topk_per_image, 1)
        while m < num_candidates:
            # Every candidate scoring at least the m-th best one, ties included.
            tau = torch.topk(flat_scores, m, sorted=False).values.min()
            found = survivors(fg_scores >= tau, False)
            if found is _TIED:
                break
            if found is not None:
                return found
            m *= 2
    # Every candidate is needed: too few survivors, equal scores in the returned order, or
    # topk_per_image < 0.
    return survivors(candidates, True)


def _survivors(
    boxes: torch.Tensor,
    fg_scores: torch.Tensor,
    mask: torch.Tensor,
    image_shape: Tuple[int, int],
    nms_thresh: float,
    topk: int,
    every_candidate: bool,
):
    """Per-class NMS on the candidates of the (R, K) ``mask``.

    With ``every_candidate`` (``mask`` = every score above the threshold, at least
    ``PER_CLASS_NMS_MIN_CANDIDATES`` of them) the survivors are ordered by detectron2's own call
    on the same tensor (``argsort(descending=True)`` of the survivors' scores in candidate
    order), so equal scores come out in its order; this is detectron2's computation with the
    candidates grouped by class once instead of one (N,) comparison per class.

    Returns:
        (Instances, proposal indices) of the best ``topk`` survivors (all when ``topk`` < 0);
        otherwise None when fewer than ``topk`` survive, ``_TIED`` when equal scores among the
        first ``topk`` + 1 survivors leave their order to detectron2's unstable sort.
    """
    num_classes = fg_scores.shape[1]
    inds = mask.nonzero()  # (M, 2) row-major: detectron2's filter_inds order
    rows, classes = inds[:, 0], inds[:, 1]
    cand_scores = fg_scores[rows, classes]
    if boxes.shape[1] == 4:
        cand_boxes = boxes[rows]
    else:
        cand_boxes = boxes.view(-1, num_classes, 4)[rows, classes]
    # Clipping is element-wise: clipping the gathered boxes equals detectron2's clipping of all.
    clipped = Boxes(cand_boxes)
    clipped.clip(image_shape)
    cand_boxes = clipped.tensor

    # The candidates grouped by class, candidate order kept within a class: the column-major
    # order of the mask.
    number = torch.full(mask.shape, -1, dtype=torch.long, device=mask.device)
    number[mask] = torch.arange(len(inds), device=mask.device)
    order = number.t()[mask.t()]
    counts = mask.sum(dim=0)
    counts = counts[counts > 0]
    starts = torch.cumsum(counts, 0) - counts
    keep_mask = torch.zeros(len(inds), dtype=torch.bool, device=mask.device)
    singles = counts == 1
    keep_mask[order[starts[singles]]] = True  # a class's only candidate always survives
    for start, count in zip(starts[~singles].tolist(), counts[~singles].tolist()):
        members = order[start : start + count]
        kept = nms(cand_boxes[members], cand_scores[members], nms_thresh)
        keep_mask[members[kept]] = True
    survivors = keep_mask.nonzero().view(-1)

    if every_candidate:
        keep = survivors[cand_scores[survivors].argsort(descending=True)]
        if topk >= 0:
            keep = keep[:topk]
    else:
        if len(survivors) < topk:
            return None
        surv_scores, surv_order = cand_scores[survivors].sort(descending=True, stable=True)
        head = surv_scores[: topk + 1]
        if bool((head[1:] == head[:-1]).any()):
            return _TIED
        keep = survivors[surv_order[:topk]]
    result = Instances(image_shape)
    result.pred_boxes = Boxes(cand_boxes[keep])
    result.scores = cand_scores[keep]
    result.pred_classes = classes[keep]
    return result, rows[keep]
