#!/usr/bin/env python
"""Pick the strength of post-hoc calibration (NorCal gamma, logit-adjustment tau) on a validation
set, for one trained model and any box-classification head.

    python tools/calibration_sweep.py --config-file configs/synthetic/rfs.yaml \
        --weights output/synthetic/rfs/model_final.pth \
        --methods norcal logit_adjustment --values 0 0.1 0.2 0.3 0.5 0.75 1 \
        --out output/synthetic/calibration_sweep

The frozen detector (backbone, RPN, box head) runs once per image; for every (method, value) only
the box predictor (with ``MODEL.ROI_BOX_HEAD.CALIBRATION`` set to it), detectron2's
``fast_rcnn_inference`` and the evaluator run again. Box AP only (MASK_ON is turned off).

Writes OUT/calibration_sweep.csv and OUT/calibration_sweep.md; prints the table and, per method,
the best value by AP (ties: the smaller value). Put the winner in the config
(``MODEL.ROI_BOX_HEAD.CALIBRATION.METHOD`` + ``GAMMA`` / ``TAU``). An OUT that already holds a
sweep is refused unless ``--force``.
"""
import argparse
import csv
import os
import sys
import time
import warnings
from typing import Dict, List

# detectron2 calls torch.jit.script when imported; recent torch warns that it is deprecated.
warnings.filterwarnings(
    "ignore", r"`torch\.jit\.script` is deprecated", FutureWarning, r"torch\.jit"
)

import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.data import build_detection_test_loader  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.modeling.postprocessing import detector_postprocess  # noqa: E402
from tabulate import tabulate  # noqa: E402

import lt_det.modeling  # noqa: E402,F401  registration
from lt_det.data import register_datasets_from_cfg  # noqa: E402
from lt_det.decouple import find_box_predictors, frozen_box_batch  # noqa: E402
from lt_det.engine.defaults import check_num_classes, load_config  # noqa: E402
from lt_det.engine.log_setup import setup_lt_logging  # noqa: E402
from lt_det.errors import LTDetError, report_error  # noqa: E402
from lt_det.evaluation import build_lvis_evaluator  # noqa: E402
from lt_det.modeling.calibration import (  # noqa: E402
    CALIBRATION_METHODS,
    PosthocCalibration,
    calibration_log_ref,
)

METRICS = ("AP", "APr", "APc", "APf")
OUT_FILES = ("calibration_sweep.csv", "calibration_sweep.md")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True, help="the trained model's config")
    p.add_argument("--weights", required=True, help="its checkpoint (.pth / .pkl)")
    p.add_argument("--methods", nargs="+", default=["norcal"], choices=CALIBRATION_METHODS[1:])
    p.add_argument("--values", type=float, nargs="+", default=[0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0],
                   help="gamma (norcal) / tau (logit_adjustment) values; 0 = uncalibrated")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dataset", help="evaluation dataset (default DATASETS.TEST[0])")
    p.add_argument("--max-images", type=int, default=0, help="evaluate the first N images (0: all)")
    p.add_argument("--force", action="store_true", help="replace an earlier sweep in --out")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def setup(args):
    """Config and checks; everything that can be wrong is refused before anything is written."""
    if not os.path.isfile(args.weights) and "://" not in args.weights:
        raise LTDetError(f"--weights '{args.weights}' does not exist.")
    args.values = sorted(set(args.values))
    if any(v < 0 for v in args.values):
        raise LTDetError(f"--values must be >= 0, got {args.values}.")
    held = [f for f in OUT_FILES if os.path.isfile(os.path.join(args.out, f))]
    if held and not args.force:
        raise LTDetError(
            f"'{args.out}' already holds a sweep ({', '.join(held)}); nothing was changed. "
            "Choose another --out or pass --force."
        )
    cfg = load_config(args.config_file, args.opts)
    cfg.MODEL.WEIGHTS = args.weights
    cfg.MODEL.MASK_ON = False  # box AP only
    cfg.MODEL.ROI_BOX_HEAD.CALIBRATION.METHOD = "none"  # set per sweep point below
    cfg.freeze()
    register_datasets_from_cfg(cfg)
    check_num_classes(cfg)
    return cfg


def sweep(cfg, args) -> List[Dict[str, float]]:
    """Evaluate every (method, value) in one pass over the dataset; one row per point."""
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(args.weights)
    predictors = find_box_predictors(model)
    if len(predictors) != 1:
        raise LTDetError("tools/calibration_sweep.py supports standard (not cascade) ROI heads.")
    predictor = next(iter(predictors.values()))
    points = {}
    for method in args.methods:
        log_ref = calibration_log_ref(cfg, method)
        for v in args.values:
            cal = PosthocCalibration(method=method, log_ref=log_ref, strength=v)
            ev = build_lvis_evaluator(cfg, dataset, os.path.join(args.out, f"{method}_{v:g}"))
            ev.reset()
            points[(method, v)] = (cal, ev)
    loader = build_detection_test_loader(cfg, dataset)
    n, t_frozen, t_heads = 0, 0.0, 0.0
    with torch.no_grad():
        for inputs in loader:
            if args.max_images and n >= args.max_images:
                break
            n += len(inputs)
            t0 = time.perf_counter()
            batch = frozen_box_batch(model, inputs, sample=False)
            t1 = time.perf_counter()
            predictions = predictor(batch.box_features)
            for cal, ev in points.values():
                predictor.calibration = cal
                results, _ = predictor.inference(predictions, batch.proposals)
                outputs = [
                    {"instances": detector_postprocess(r, x.get("height", s[0]),
                                                       x.get("width", s[1]))}
                    for r, x, s in zip(results, inputs, batch.images.image_sizes)
                ]
                ev.process(inputs, outputs)
            t_frozen += t1 - t0
            t_heads += time.perf_counter() - t1
    predictor.calibration = None
    print(f"{n} images: frozen detector {t_frozen:.1f}s once, inference {t_heads:.1f}s for "
          f"{len(points)} settings")
    rows = []
    for (method, v), (_, ev) in points.items():
        res = ev.evaluate().get("bbox", {})
        rows.append({"method": method, "value": v,
                     **{m: float(res.get(m, float("nan"))) for m in METRICS}})
    return rows


def write_outputs(rows: List[Dict], out: str) -> Dict[str, Dict]:
    """Write csv / md; return the best row per method by AP (ties: the smaller value)."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, OUT_FILES[0]), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "value", *METRICS])
        w.writeheader()
        w.writerows(rows)
    best = {}
    for r in rows:
        b = best.get(r["method"])
        if b is None or r["AP"] > b["AP"]:
            best[r["method"]] = r
    table = [
        [r["method"], f"{r['value']:g}" + (" **best**" if best[r["method"]] is r else "")]
        + [f"{r[m]:.2f}" for m in METRICS]
        for r in rows
    ]
    markdown = tabulate(table, ["method", "value", *METRICS], tablefmt="github",
                        disable_numparse=True)
    with open(os.path.join(out, OUT_FILES[1]), "w") as f:
        f.write(markdown + "\n")
    print(markdown)
    return best


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out = os.path.abspath(args.out)
    try:
        if os.path.isfile(args.out):
            raise LTDetError(f"--out '{args.out}' is a file; give a folder.")
        cfg = setup(args)  # refuses bad input before anything is written
        setup_lt_logging(args.out)
        rows = sweep(cfg, args)
    except LTDetError as e:
        return report_error(e)
    for method, r in write_outputs(rows, args.out).items():
        key = "GAMMA" if method == "norcal" else "TAU"
        print(f"best {method}: {key} {r['value']:g} (AP {r['AP']:.2f}, APr {r['APr']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
