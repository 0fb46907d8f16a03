"""Sweeps over settings of a box predictor on a frozen detector: what ``tools/tau_sweep.py`` and
``tools/calibration_sweep.py`` share.

A sweep evaluates P settings ("points": a tau, a calibration strength, ...) of one trained
model. The frozen part (backbone, RPN, box head: :func:`frozen_box_batch`) runs once per batch;
for every point only the box predictor's inference (and, when the point changes it, the
predictor's forward pass) and the point's own evaluator run again, so no box features are kept.
"""
import csv
import os
import time
from typing import Callable, Dict, Hashable, Iterable, List, Optional, Sequence, Tuple

import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.modeling.postprocessing import detector_postprocess
from tabulate import tabulate
from torch import nn

from ..errors import LTDetError
from .features import frozen_box_batch

__all__ = [
    "SWEEP_METRICS",
    "check_sweep_inputs",
    "sweep_box_predictor",
    "sweep_metrics",
    "write_sweep_table",
]

#: The box AP columns of a sweep row (LVIS AP over all, rare, common, frequent classes).
SWEEP_METRICS = ("AP", "APr", "APc", "APf")


def sweep_box_predictor(
    model: nn.Module,
    predictor: nn.Module,
    loader: Iterable[List[Dict]],
    evaluators: Dict[Hashable, DatasetEvaluator],
    set_point: Callable[[Hashable], None],
    *,
    forward_per_point: bool,
    max_images: int = 0,
    on_batch: Optional[Callable[[int], None]] = None,
) -> Tuple[int, float, float]:
    """Run every point of a box-predictor sweep in one pass over ``loader``, feeding each
    point's evaluator (:func:`sweep_metrics` then evaluates them).

    Args:
        model: the GeneralizedRCNN (standard ROI heads), in eval mode.
        predictor: its box predictor.
        loader: detectron2 test loader (batches of input dicts).
        evaluators: {point: its evaluator, reset}, in the order the points are run and reported.
        set_point: sets a point on the predictor (or its classifier) before its inference.
        forward_per_point: the point changes the predictor's outputs (tau-normalised weights),
            so the predictor runs once per point; False: once per batch, then only its inference
            runs per point (a calibration of the scores).
        max_images: stop after the batch that reaches this many images (0: all).
        on_batch: called with the number of images of every batch (a progress bar).

    Returns:
        ``(images, seconds of the frozen detector, seconds of the P inferences)``.
    """
    n, t_frozen, t_heads = 0, 0.0, 0.0
    with torch.no_grad():
        for inputs in loader:
            if max_images and n >= max_images:
                break
            n += len(inputs)
            if on_batch is not None:
                on_batch(len(inputs))
            t0 = time.perf_counter()
            batch = frozen_box_batch(model, inputs, sample=False)
            t1 = time.perf_counter()
            if not forward_per_point:
                predictions = predictor(batch.box_features)
            for point, ev in evaluators.items():
                set_point(point)
                if forward_per_point:
                    predictions = predictor(batch.box_features)
                results, _ = predictor.inference(predictions, batch.proposals)
                outputs = [
                    {"instances": detector_postprocess(r, x.get("height", h), x.get("width", w))}
                    for r, x, (h, w) in zip(results, inputs, batch.images.image_sizes)
                ]
                ev.process(inputs, outputs)
            t_frozen += t1 - t0
            t_heads += time.perf_counter() - t1
    return n, t_frozen, t_heads


def sweep_metrics(
    evaluators: Dict[Hashable, DatasetEvaluator]
) -> Dict[Hashable, Dict[str, float]]:
    """``{point: {metric: box value}}`` for :data:`SWEEP_METRICS` (NaN where the evaluator has
    none), evaluating the points in order."""
    metrics = {}
    for point, ev in evaluators.items():
        res = ev.evaluate().get("bbox", {})
        metrics[point] = {m: float(res.get(m, float("nan"))) for m in SWEEP_METRICS}
    return metrics


def write_sweep_table(
    rows: List[Dict],
    out_dir: str,
    name: str,
    key_columns: Sequence[str],
    *,
    best_per: Optional[str] = None,
) -> Tuple[str, List[Dict]]:
    """Write a sweep's rows as ``OUT_DIR/NAME.csv`` and a markdown table ``OUT_DIR/NAME.md``.

    Args:
        rows: one dict per point: its ``key_columns`` and the :data:`SWEEP_METRICS`.
        out_dir: output folder (created).
        name: the files' name without extension.
        key_columns: the columns that name a point; numbers are written ``:g`` in the table.
        best_per: a key column whose values each get their own best row (None: one best).

    Returns:
        The markdown table (the best rows marked ``**best**``) and the best rows by AP, one per
        ``best_per`` value in the order they first appear (ties: the earlier row).
    """
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, name + ".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*key_columns, *SWEEP_METRICS])
        w.writeheader()
        w.writerows(rows)
    best = {}
    for r in rows:
        group = None if best_per is None else r[best_per]
        if group not in best or r["AP"] > best[group]["AP"]:
            best[group] = r
    best_ids = {id(r) for r in best.values()}
    table = []
    for r in rows:
        keys = [v if isinstance(v, str) else f"{v:g}" for v in (r[k] for k in key_columns)]
        keys[-1] += " **best**" if id(r) in best_ids else ""
        table.append(keys + [f"{r[m]:.2f}" for m in SWEEP_METRICS])
    markdown = tabulate(
        table, [*key_columns, *SWEEP_METRICS], tablefmt="github", disable_numparse=True
    )
    with open(os.path.join(out_dir, name + ".md"), "w") as f:
        f.write(markdown + "\n")
    return markdown, list(best.values())


def check_sweep_inputs(weights: str, out: str, files: Sequence[str], force: bool) -> None:
    """A sweep tool's arguments, checked before anything is written: the checkpoint ``weights``
    (a local path must exist; URLs are left to the checkpointer) and the output folder ``out``,
    refused when it already holds a sweep (any of ``files``) unless ``force``.

    Raises:
        LTDetError: ``weights`` is a missing local file; ``out`` is a file, or holds one of
            ``files`` and ``force`` is False.
    """
    if "://" not in weights and not os.path.isfile(weights):
        raise LTDetError(f"--weights '{weights}' does not exist.")
    if os.path.isfile(out):
        raise LTDetError(f"--out '{out}' is a file; give a folder.")
    held = [f for f in files if os.path.isfile(os.path.join(out, f))]
    if held and not force:
        raise LTDetError(
            f"'{out}' already holds a sweep ({', '.join(held)}); nothing was changed. "
            "Choose another --out or pass --force."
        )
