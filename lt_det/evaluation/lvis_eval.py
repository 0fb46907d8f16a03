"""Offline LVIS evaluation: ground truth + results -> LVIS metrics and per-class AP.

Protocols:
    standard (lvis-api): keep the ``max_dets_per_image`` (300) highest-scoring detections of every
        image across classes, then evaluate.
    AP-fixed (Dave et al., "Evaluating Large-Vocabulary Object Detectors: The Devil is in the
        Details", 2021): no per-image cap; keep the ``max_dets_per_class`` (10,000)
        highest-scoring detections of every class over the whole dataset.

Both backends ("fast" = hotcoco's LVIS mode, "lvis" = lvis-api) receive the same detections after
these cuts, and after lvis-api's area rule (ground truth and detections of area 0 are not
evaluated: :class:`LVISGroundTruth`, :func:`drop_zero_area`), so they differ only in how the LVIS
matching is computed.

Memory: every class's AP depends only on that class's gt and detections, so classes can be
evaluated in chunks (``class_chunk``) on the images where they are positive or negative, and the
(T, R, K, A) tables concatenated along K. The summary numbers are then computed from the full
tables exactly as lvis-api does, so chunking changes no number.

Shape shorthand: T = 10 IoU thresholds, R = 101 recall points, K = classes, A = 4 area ranges.
"""
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from ..errors import LTDetError
from .backends import get_lvis_backend
from .backends.common import AREA_RNGS, IOU_THRS, REC_THRS
from ._json import gc_paused
from .detections import DetectionTable, top_k_per_group
from .ground_truth import LVISGroundTruth

__all__ = [
    "LVISEvalResult",
    "evaluate_lvis",
    "select_detections",
    "drop_zero_area",
    "summarize_lvis",
    "METRIC_NAMES",
    "recall_key",
]

logger = logging.getLogger(__name__)

METRIC_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"]


def _mean_valid(s: np.ndarray) -> float:
    v = s[s > -1]
    return float(np.mean(v)) if v.size else -1.0


def summarize_lvis(
    precision: np.ndarray, recall: np.ndarray, frequency: Sequence[str], max_dets: int = 300
) -> "OrderedDict[str, float]":
    """LVIS summary metrics (fractions; -1 where undefined), computed as ``LVISEval.summarize``.

    Args:
        precision: (T, R, K, A) table.
        recall: (T, K, A) table.
        frequency: K strings "r"/"c"/"f".
        max_dets: only names the AR keys (``AR@300`` etc.), as lvis-api does; -1 under AP-fixed
            (no per-image cap: ``AR@-1``, the reference implementation's name).
    """
    frequency = np.asarray(frequency)
    t50 = np.where(IOU_THRS == 0.50)[0]
    t75 = np.where(IOU_THRS == 0.75)[0]
    out = OrderedDict()
    out["AP"] = _mean_valid(precision[:, :, :, 0])
    out["AP50"] = _mean_valid(precision[t50][:, :, :, 0])
    out["AP75"] = _mean_valid(precision[t75][:, :, :, 0])
    for a, name in ((1, "APs"), (2, "APm"), (3, "APl")):
        out[name] = _mean_valid(precision[:, :, :, a])
    for g in ("r", "c", "f"):
        idx = np.flatnonzero(frequency == g)
        out["AP" + g] = _mean_valid(precision[:, :, idx, 0])
    out[f"AR@{max_dets}"] = _mean_valid(recall[:, :, 0])
    for a, name in ((1, "s"), (2, "m"), (3, "l")):
        out[f"AR{name}@{max_dets}"] = _mean_valid(recall[:, :, a])
    return out


@dataclass
class LVISEvalResult:
    """What :func:`evaluate_lvis` returns.

    Attributes:
        metrics: LVIS summary (fractions, -1 = undefined): AP, AP50, AP75, APs/m/l, APr/c/f,
            AR@N, ARs/m/l@N (N = max detections per image, 300; -1 under AP-fixed, which has
            no per-image cap, as the reference implementation names it).
        precision: (T, R, K, A); recall: (T, K, A) in sorted category id order.
        categories: K dicts {"id", "name", "frequency", "image_count"}.
        num_gt: (K,) gt instances per class in the evaluated set.
        info: protocol and timing details.
    """

    iou_type: str
    metrics: "OrderedDict[str, float]"
    precision: np.ndarray
    recall: np.ndarray
    categories: List[Dict[str, Any]]
    num_gt: np.ndarray
    info: Dict[str, Any] = field(default_factory=dict)

    def metrics_percent(self, names: Optional[Sequence[str]] = None) -> "OrderedDict[str, float]":
        """Metrics in percent like detectron2 (NaN where undefined)."""
        names = list(self.metrics) if names is None else names
        return OrderedDict(
            (k, self.metrics[k] * 100 if self.metrics[k] >= 0 else float("nan")) for k in names
        )

    def per_class(self) -> List[Dict[str, Any]]:
        """One dict per class: id, name, frequency, image_count, num_gt and AP, AP50, AP75, APs,
        APm, APl, AR (fractions, None where the class has no gt to evaluate)."""
        t50 = np.where(IOU_THRS == 0.50)[0]
        t75 = np.where(IOU_THRS == 0.75)[0]
        rows = []
        for k, cat in enumerate(self.categories):
            p = self.precision[:, :, k, :]
            vals = {
                "AP": _mean_valid(p[:, :, 0]),
                "AP50": _mean_valid(p[t50][:, :, 0]),
                "AP75": _mean_valid(p[t75][:, :, 0]),
                "APs": _mean_valid(p[:, :, 1]),
                "APm": _mean_valid(p[:, :, 2]),
                "APl": _mean_valid(p[:, :, 3]),
                "AR": _mean_valid(self.recall[:, k, 0]),
            }
            row = dict(cat)
            row["num_gt"] = int(self.num_gt[k])
            row.update({key: (None if v < 0 else v) for key, v in vals.items()})
            rows.append(row)
        return rows


def select_detections(
    dets: DetectionTable,
    gt: LVISGroundTruth,
    *,
    ap_fixed: bool = False,
    max_dets_per_image: int = 300,
    max_dets_per_class: int = 10000,
    source: str = "<results>",
) -> DetectionTable:
    """Apply the protocol's cut, then keep only the (image, class) pairs LVIS evaluates.

    Standard: top ``max_dets_per_image`` per image over all classes (lvis-api's
    ``LVISResults``; < 0 = no cap). AP-fixed: top ``max_dets_per_class`` per class over the
    dataset. Ties are broken by result order, as in lvis-api. Detections of classes that are
    not in the ground truth, or in images where their class is neither positive nor negative,
    are then dropped (lvis-api drops them too, after the cut).

    Raises:
        LTDetError: a result's image is not in ``gt`` (naming ``source``, the results file, the
            first such result by its place and the ground truth).
    """
    # Position of each result's image in gt.img_ids (sorted), to group by it below.
    img_pos, found = gt.image_index(dets.image_id)
    unknown = ~found
    if unknown.any():
        first = int(np.flatnonzero(unknown)[0])
        bad = np.unique(dets.image_id[unknown])[:5].tolist()
        raise LTDetError(
            f"'{source}': {int(unknown.sum())} results have image ids not in '{gt.source}' (e.g. "
            f"result {first} (0-based), image_id {int(dets.image_id[first])}; ids {bad}); "
            "results must come from the images of that ground truth: check that the two files "
            "are of the same split."
        )
    if ap_fixed:
        keep = top_k_per_group(dets.category_id, dets.score, max_dets_per_class)
    else:
        keep = top_k_per_group(img_pos, dets.score, max_dets_per_image)
    cat_idx, known = gt.category_index(dets.category_id[keep])
    if not known.all():
        unknown_ids = np.unique(dets.category_id[keep][~known])
        logger.warning(
            f"'{source}': {int((~known).sum())} of {len(keep)} results (after the cut) have "
            f"category ids that are not categories of '{gt.source}' (ids "
            f"{unknown_ids[:5].tolist()}{' ...' if len(unknown_ids) > 5 else ''}); they are not "
            "evaluated, as in lvis-api. Results with contiguous ids 0..K-1 instead of the "
            "dataset's, or from a model of another category list, look like this."
        )
    evaluated = known & gt.is_evaluated(img_pos[keep], cat_idx)
    return dets.take(keep[evaluated])


def check_mask_sizes(dets: DetectionTable, gt: LVISGroundTruth, source: str) -> None:
    """Every mask is the size of its image: RLE ``size`` = the ground truth's ``[height,
    width]``. A mask of another size (encoded on a resized image, or transposed) would be
    scored against the ground truth's masks anyway, giving wrong IoUs without a message.

    Raises:
        LTDetError: a mask whose size is not its image's (the first named, with its image and
            both files), or a size that is not two integers.
    """
    sizes = dets.mask_sizes(source)
    img_pos, found = gt.image_index(dets.image_id)
    bad = np.flatnonzero(found & (sizes != gt.image_sizes()[img_pos]).any(axis=1))
    if bad.size:
        i = int(bad[0])
        h, w = gt.image_sizes()[img_pos[i]].tolist()
        raise LTDetError(
            f"'{source}': {bad.size} masks are not the size of their image (e.g. result {i} "
            f"(0-based): size {sizes[i].tolist()}, image {int(dets.image_id[i])} is [{h}, {w}] "
            f"(height, width) in '{gt.source}'). An RLE's size is its image's [height, width]: "
            "encode the masks at the image's size (not a resized or transposed one)."
        )


def drop_zero_area(dets: DetectionTable, iou_type: str) -> DetectionTable:
    """The detections of positive area, with :attr:`DetectionTable.area` set for ``iou_type``.

    lvis-api's rule: ``LVISEval._prepare`` takes the detections of ``LVIS.get_ann_ids``, which
    keeps 0 < area < inf, where ``LVISResults`` set the area to the box's ``w * h`` (bbox) or
    the mask's pixel count (segm results without boxes). Empty masks and boxes of width or
    height 0 are thus not evaluated at all (not false positives). It applies after the
    protocol's cut, as there: such a detection still took one of the image's 300 places.

    Raises:
        LTDetError: the detections lack the boxes (bbox) or masks (segm) of ``iou_type``.
    """
    dets = dets.with_area(iou_type)
    keep = (dets.area > 0) & (dets.area < np.inf)
    return dets if keep.all() else dets.take(np.flatnonzero(keep))


@gc_paused()  # see lt_det.evaluation._json
def evaluate_lvis(
    gt: Union[str, Dict[str, Any], LVISGroundTruth],
    results: Union[str, Sequence[Dict[str, Any]], DetectionTable],
    *,
    iou_type: str = "bbox",
    backend: str = "fast",
    ap_fixed: bool = False,
    max_dets_per_image: int = 300,
    max_dets_per_class: int = 10000,
    class_chunk: int = 100,
    frequency: Optional[Mapping[int, str]] = None,
    image_count: Optional[Mapping[int, int]] = None,
    ap_pool: bool = False,
    progress: bool = False,
) -> LVISEvalResult:
    """Evaluate LVIS results against LVIS ground truth.

    Args:
        gt: ground-truth json path, dict, or :class:`LVISGroundTruth`.
        results: results json path, list of result dicts (``image_id``, ``category_id``,
            ``score``, ``bbox`` XYWH and/or ``segmentation`` RLE), or a :class:`DetectionTable`.
        iou_type: "bbox" or "segm" (segm ignores result boxes: areas are mask areas).
        backend: "fast" (hotcoco) or "lvis" (lvis-api).
        ap_fixed: use the AP-fixed protocol (see module docstring).
        max_dets_per_image: standard protocol's per-image cap (300 for LVIS; < 0 = none).
        max_dets_per_class: AP-fixed per-class cap (10,000 for LVIS).
        class_chunk: evaluate at most this many classes at a time (0 = all at once). Bounds
            memory; does not change any number. The default, 100, is also TEST.LVIS.CLASS_CHUNK's
            and ``tools/lvis_eval.py``'s; for the fast backend 0 and 100 cost about the same.
        frequency / image_count: optional {category id: r/c/f group / training image count}
            overriding the ground truth's (see :class:`LVISGroundTruth`).
        ap_pool: also compute AP-pool over all classes and per frequency group (``APpool``,
            ``APpool_r/c/f``; bbox only, :mod:`lt_det.evaluation.ap_pool`) on the same
            detections.
        progress: show a progress bar with ETA over the class chunks on stderr (tqdm; from
            the first second on, so short runs print none), and log the loading times; only
            useful with ``class_chunk`` > 0.

    Warnings (logged): an empty results list (every metric 0); results of category ids that
    are not categories of ``gt`` (not evaluated, as in lvis-api).

    Raises:
        LTDetError: before any evaluation, naming the file, the entry and what to do: an
            unknown ``iou_type`` or backend, ``class_chunk`` < 0, a cap of 0, ground truth or
            results that break the input rules (docs/evaluation.md, "Input rules"), results of
            images not in ``gt``, masks not of their image's size, or results without the
            boxes / masks that ``iou_type`` evaluates.
    """
    if iou_type not in ("bbox", "segm"):
        raise LTDetError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}.")
    if class_chunk < 0:
        raise LTDetError(f"class_chunk (TEST.LVIS.CLASS_CHUNK) must be >= 0, got {class_chunk}.")
    for name, flag, value in (
        ("max_dets_per_image", "--max-dets-per-image, TEST.DETECTIONS_PER_IMAGE",
         max_dets_per_image),
        ("max_dets_per_class", "--max-dets-per-class", max_dets_per_class),
    ):
        if value == 0:
            raise LTDetError(
                f"{name} ({flag}) must be > 0 (LVIS: 300 per image, 10,000 per class under "
                "AP-fixed), "
                f"or < 0 for no cap; got 0, which would evaluate no detection."
            )
    run = get_lvis_backend(backend)
    tic = time.perf_counter()
    if not isinstance(gt, LVISGroundTruth):
        gt = LVISGroundTruth(gt, frequency=frequency, image_count=image_count)
    source = os.fspath(results) if isinstance(results, (str, os.PathLike)) else "<results>"
    if not isinstance(results, DetectionTable):
        results = DetectionTable.from_results(results)  # checked there, naming the file
    else:
        results.check()
    _check_iou_type(results, iou_type, source)
    if iou_type == "segm":
        check_mask_sizes(results, gt, source)
    t_load = time.perf_counter() - tic
    num_results = len(results)
    if num_results == 0:
        logger.warning(f"'{source}' holds no detections: every AP and AR below is 0.")
    dets = select_detections(
        results,
        gt,
        ap_fixed=ap_fixed,
        max_dets_per_image=max_dets_per_image,
        max_dets_per_class=max_dets_per_class,
        source=source,
    )
    del results
    if progress:  # after the last check of the inputs: a refusal stays one line
        logger.info(
            f"loaded {len(gt.img_ids)} images / {len(gt.cat_ids)} classes of ground truth and "
            f"{num_results} detections in {t_load:.1f}s"
        )
    dets = drop_zero_area(dets, iou_type)

    K = len(gt.cat_ids)
    cat_idx = gt.category_index(dets.category_id)[0]
    # The backend's own max-dets must cap nothing: no (image, class) pair has more detections
    # than its image.
    max_pair = int(np.bincount(gt.image_index(dets.image_id)[0]).max()) if len(dets) else 1
    chunk = max(1, K if class_chunk == 0 else class_chunk)
    # Rows grouped by class chunk, in result order within a chunk: one stable sort by chunk
    # number (numpy's radix sort when the numbers fit 16 bits), no sort per chunk.
    num_chunks = -(-K // chunk)
    chunk_of = cat_idx // chunk
    if num_chunks <= 1 << 16:
        chunk_of = chunk_of.astype(np.uint16)
    order = np.argsort(chunk_of, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(chunk_of, minlength=num_chunks))])
    # Filled chunk by chunk (no list of chunk tables to concatenate along K at the end).
    precision = np.empty((len(IOU_THRS), len(REC_THRS), K, len(AREA_RNGS)))
    recall = np.empty((len(IOU_THRS), K, len(AREA_RNGS)))
    starts = range(0, K, chunk)
    if progress and len(starts) > 1:
        starts = _progress_bar(starts, f"LVIS {iou_type}", chunk, K)
    for lo in starts:
        hi = min(K, lo + chunk)
        rows = order[bounds[lo // chunk] : bounds[lo // chunk + 1]]  # in result order
        cat_ids = gt.cat_ids[lo:hi]
        p, r = run(
            gt,
            dets.take(rows),
            iou_type=iou_type,
            cat_ids=cat_ids,
            img_ids=gt.relevant_images(cat_ids),
            max_dets=max_pair,
        )
        precision[:, :, lo:hi] = p
        recall[:, lo:hi] = r
    label = -1 if ap_fixed or max_dets_per_image < 0 else max_dets_per_image  # -1: no cap
    metrics = summarize_lvis(precision, recall, gt.frequency, label)
    if ap_pool:
        if iou_type != "bbox":
            raise LTDetError("AP-pool is computed for bbox only (iou_type='bbox').")
        from .ap_pool import ap_pool_metrics

        metrics.update(ap_pool_metrics(gt, dets))
    info = {
        "backend": backend,
        "ap_fixed": ap_fixed,
        "ap_pool": ap_pool,
        "max_dets_per_image": None if ap_fixed else max_dets_per_image,
        "max_dets_per_class": max_dets_per_class if ap_fixed else None,
        "class_chunk": class_chunk,
        "num_images": len(gt.img_ids),
        "num_classes": K,
        "num_detections_evaluated": len(dets),
        "seconds_loading": t_load,
        "seconds_total": time.perf_counter() - tic,
    }
    num_gt = np.array([gt.num_gt(c) for c in gt.cat_ids.tolist()])
    return LVISEvalResult(iou_type, metrics, precision, recall, gt.categories, num_gt, info)


def _check_iou_type(results: DetectionTable, iou_type: str, source: str) -> None:
    """Results hold what ``iou_type`` evaluates: boxes for "bbox", masks for "segm"."""
    field, other = ("bbox", "segm") if iou_type == "bbox" else ("segmentation", "bbox")
    if len(results) and getattr(results, field) is None:
        kind = "mask results without boxes" if iou_type == "bbox" else "box results"
        raise LTDetError(
            f"'{source}': '{iou_type}' evaluation needs '{field}' in every result, and these "
            f"lack it ({kind}?); evaluate them as '{other}' (tools/lvis_eval.py --iou-type "
            f"{other})."
        )


def _progress_bar(starts: range, desc: str, chunk: int, num_classes: int, after_s: float = 1.0):
    """tqdm over class chunks, counted in classes, with ETA (stderr; sparse off a terminal).

    The bar appears once the chunks have taken ``after_s`` seconds, starting at the classes
    done by then: a run that ends sooner prints no bar and does not import tqdm (whose import
    is a noticeable part of a small evaluation's CPU time).
    """
    import sys

    tic, bar, done = time.perf_counter(), None, 0
    try:
        for lo in starts:
            yield lo
            n = min(chunk, num_classes - lo)
            done += n
            if bar is not None:
                bar.update(n)
            elif time.perf_counter() - tic > after_s and done < num_classes:
                from tqdm import tqdm

                tty = sys.stderr.isatty()
                bar = tqdm(
                    total=num_classes, initial=done, desc=desc, unit="class",
                    mininterval=0.5 if tty else 10,
                )
    finally:
        if bar is not None:
            bar.close()


def recall_key(ap_fixed: bool, max_dets_per_image: int) -> str:
    """Name of the overall recall metric: ``AR@300`` (standard; ``AR@N`` for another cap N),
    ``AR@-1`` where no cap applies (AP-fixed, or a per-image cap < 0)."""
    return f"AR@{-1 if ap_fixed or max_dets_per_image < 0 else max_dets_per_image}"

