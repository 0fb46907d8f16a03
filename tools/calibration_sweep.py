#!/usr/bin/env python
"""Pick the strength of post-hoc calibration (NorCal gamma, logit-adjustment tau, FRACAL lambda)
on a validation set, for one trained model and any box-classification head.

    python tools/calibration_sweep.py --config-file configs/synthetic/rfs.yaml \
        --weights output/synthetic/rfs/model_final.pth \
        --methods norcal logit_adjustment --values 0 0.1 0.2 0.3 0.5 0.75 1 \
        --out output/synthetic/calibration_sweep

The frozen detector (backbone, RPN, box head) runs once per image; for every (method, value) only
the box predictor (with ``MODEL.ROI_BOX_HEAD.CALIBRATION`` set to it), detectron2's
``fast_rcnn_inference`` and the evaluator run again. Box AP only (MASK_ON is turned off).

Writes OUT/calibration_sweep.csv and OUT/calibration_sweep.md; prints the table and, per method,
the best value by AP (ties: the smaller value). Put the winner in the config
(``MODEL.ROI_BOX_HEAD.CALIBRATION.METHOD`` + ``GAMMA`` / ``TAU`` / ``FRACAL_LAMBDA``). An OUT
that already holds a sweep is refused unless ``--force``.
"""
import argparse
import os
import sys
import warnings
from typing import Dict, List

# detectron2 calls torch.jit.script when imported; recent torch warns that it is deprecated.
warnings.filterwarnings(
    "ignore", r"`torch\.jit\.script` is deprecated", FutureWarning, r"torch\.jit"
)

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.data import build_detection_test_loader  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

import lt_det.modeling  # noqa: E402,F401  registration
from lt_det.data import register_datasets_from_cfg  # noqa: E402
from lt_det.decouple import (  # noqa: E402
    check_sweep_inputs,
    find_box_predictors,
    sweep_box_predictor,
    sweep_metrics,
    write_sweep_table,
)
from lt_det.engine.defaults import check_num_classes, load_config  # noqa: E402
from lt_det.engine.log_setup import setup_lt_logging  # noqa: E402
from lt_det.errors import LTDetError, report_error  # noqa: E402
from lt_det.evaluation import build_lvis_evaluator  # noqa: E402
from lt_det.modeling.calibration import (  # noqa: E402
    CALIBRATION_METHODS,
    PosthocCalibration,
    calibration_log_ref,
)

OUT_FILES = ("calibration_sweep.csv", "calibration_sweep.md")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True, help="the trained model's config")
    p.add_argument("--weights", required=True, help="its checkpoint (.pth / .pkl)")
    p.add_argument("--methods", nargs="+", default=["norcal"], choices=CALIBRATION_METHODS[1:])
    p.add_argument("--values", type=float, nargs="+", default=[0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0],
                   help="gamma (norcal) / tau (logit_adjustment) / lambda (fracal) values; 0 = "
                        "uncalibrated (fracal: its frequency term alone)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dataset", help="evaluation dataset (default DATASETS.TEST[0])")
    p.add_argument("--max-images", type=int, default=0, help="evaluate the first N images (0: all)")
    p.add_argument("--force", action="store_true", help="replace an earlier sweep in --out")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def setup(args):
    """Config and checks; everything that can be wrong is refused before anything is written."""
    check_sweep_inputs(args.weights, args.out, OUT_FILES, args.force)
    args.values = sorted(set(args.values))
    if any(v < 0 for v in args.values):
        raise LTDetError(f"--values must be >= 0, got {args.values}.")
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
    calibrations, evaluators = {}, {}
    for method in args.methods:
        log_ref = calibration_log_ref(cfg, method)
        for v in args.values:
            calibrations[(method, v)] = PosthocCalibration(
                method=method, log_ref=log_ref, strength=v,
                freq_weight=cfg.MODEL.ROI_BOX_HEAD.CALIBRATION.FRACAL_FREQ_WEIGHT,
            )
            ev = build_lvis_evaluator(cfg, dataset, os.path.join(args.out, f"{method}_{v:g}"))
            ev.reset()
            evaluators[(method, v)] = ev
    n, t_frozen, t_heads = sweep_box_predictor(
        model,
        predictor,
        build_detection_test_loader(cfg, dataset),
        evaluators,
        lambda point: setattr(predictor, "calibration", calibrations[point]),
        forward_per_point=False,  # the calibration changes the scores only
        max_images=args.max_images,
    )
    predictor.calibration = None
    print(f"{n} images: frozen detector {t_frozen:.1f}s once, inference {t_heads:.1f}s for "
          f"{len(evaluators)} settings")
    metrics = sweep_metrics(evaluators)
    return [{"method": method, "value": v, **m} for (method, v), m in metrics.items()]


def write_outputs(rows: List[Dict], out: str) -> Dict[str, Dict]:
    """Write csv / md; return the best row per method by AP (ties: the smaller value)."""
    markdown, best = write_sweep_table(
        rows, out, "calibration_sweep", ["method", "value"], best_per="method"
    )
    print(markdown)
    return {r["method"]: r for r in best}


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out = os.path.abspath(args.out)
    try:
        cfg = setup(args)  # refuses bad input before anything is written
        setup_lt_logging(args.out)
        rows = sweep(cfg, args)
    except LTDetError as e:
        return report_error(e)
    for method, r in write_outputs(rows, args.out).items():
        key = {"norcal": "GAMMA", "fracal": "FRACAL_LAMBDA"}.get(method, "TAU")
        print(f"best {method}: {key} {r['value']:g} (AP {r['AP']:.2f}, APr {r['APr']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
