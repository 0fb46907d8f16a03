#!/usr/bin/env python
r"""Pick tau for tau-normalisation on a validation set from one stage-1 checkpoint.

    python tools/tau_sweep.py --config-file configs/synthetic/rfs.yaml \
        --weights output/synthetic/rfs/model_final.pth --taus 0 0.25 0.5 0.75 1 1.25 \
        --out output/synthetic/tau_sweep

The frozen detector (backbone, RPN, box head) runs once per image; for every tau only the box
predictor, detectron2's ``fast_rcnn_inference`` (inside ``predictor.inference``) and the
evaluator's bookkeeping run again. Every tau has its own lt_det LVIS evaluator, so no box
features need to be kept in memory (LVIS val would need tens of GB). Box AP only (MASK_ON is
turned off: masks would need the mask head once per tau).

``--max-images N`` runs on the first N images and scores them against the ground truth of those
N images only (a quick look; the numbers are not those of the whole set). A progress bar with
ETA is shown on stderr.

Writes OUT/tau_sweep.csv, OUT/tau_sweep.md, OUT/tau_sweep.png, OUT/log.txt and OUT/tau_<t>/
(per-class AP and the detections of each tau); prints the table and the best tau by AP. An --out
that holds a finished sweep is refused (exit 2, nothing changed) unless --force; bad arguments
are refused before --out is made.
"""
import argparse
import logging
import os
import sys
import warnings
from typing import Dict, List

# detectron2 calls torch.jit.script when imported; recent torch warns that it is deprecated.
warnings.filterwarnings(
    "ignore", r"`torch\.jit\.script` is deprecated", FutureWarning, r"torch\.jit"
)

from detectron2.data import build_detection_test_loader  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from tqdm import tqdm  # noqa: E402

import lt_det.modeling  # noqa: E402,F401  registration
from lt_det.data import register_datasets_from_cfg  # noqa: E402
from lt_det.decouple import (  # noqa: E402
    SWEEP_METRICS,
    TauNormLinear,
    apply_decoupling,
    check_sweep_inputs,
    find_box_predictors,
    sweep_box_predictor,
    sweep_metrics,
    write_sweep_table,
)
from lt_det.decouple.classifiers import TAU_BIAS_MODES  # noqa: E402
from lt_det.checkpoint import LTCheckpointer  # noqa: E402
from lt_det.engine.defaults import check_num_classes, load_config  # noqa: E402
from lt_det.engine.log_setup import setup_lt_logging  # noqa: E402
from lt_det.errors import LTDetError, report_error  # noqa: E402
from lt_det.evaluation import build_lvis_evaluator  # noqa: E402

logger = logging.getLogger("lt_det.tau_sweep")
# What a finished sweep leaves in --out (a rerun without --force refuses the folder).
OUT_FILES = ("tau_sweep.csv", "tau_sweep.md", "tau_sweep.png")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True, help="stage-1 (or tau_norm) config")
    p.add_argument("--weights", required=True, help="stage-1 checkpoint (.pth / .pkl)")
    p.add_argument("--taus", type=float, nargs="+", default=[0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--dataset", help="evaluation dataset (default DATASETS.TEST[0])")
    p.add_argument("--tau-bias", choices=TAU_BIAS_MODES, help="default: config's")
    p.add_argument(
        "--normalize-background",
        action="store_true",
        help="also tau-normalise the background row (default: keep it, as MODEL.DECOUPLE does)",
    )
    p.add_argument("--max-images", type=int, default=0, help="evaluate the first N images (0: all)")
    p.add_argument("--force", action="store_true", help="replace an earlier sweep in --out")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def setup(args):
    cfg = load_config(args.config_file, args.opts)
    cfg.MODEL.WEIGHTS = args.weights
    cfg.MODEL.DECOUPLE.METHOD = "tau_norm"
    cfg.MODEL.MASK_ON = False  # box AP only
    if args.tau_bias:
        cfg.MODEL.DECOUPLE.TAU_BIAS = args.tau_bias
    cfg.freeze()
    register_datasets_from_cfg(cfg)
    check_num_classes(cfg)
    return cfg


def sweep(cfg, args) -> List[Dict[str, float]]:
    """Evaluate every tau in one pass over the dataset; returns one row per tau."""
    dataset = args.dataset or cfg.DATASETS.TEST[0]
    model = apply_decoupling(build_model(cfg), cfg).eval()
    LTCheckpointer(model, must_load="all").load(args.weights)  # the one load guard
    predictors = find_box_predictors(model)
    if len(predictors) != 1:
        raise LTDetError("tools/tau_sweep.py supports standard (not cascade) ROI heads.")
    predictor = predictors["roi_heads.box_predictor"]
    layer = predictor.cls_score
    assert isinstance(layer, TauNormLinear)
    if args.normalize_background:
        layer.num_normalized = layer.out_features

    evaluators = {}
    for tau in args.taus:
        ev = build_lvis_evaluator(
            cfg, dataset, os.path.join(args.out, f"tau_{tau:g}"), processed_images_only=True
        )
        ev.reset()
        evaluators[tau] = ev
    loader = build_detection_test_loader(cfg, dataset)
    total = min(len(loader.dataset), args.max_images) if args.max_images else len(loader.dataset)
    bar = tqdm(
        total=total,
        desc=f"tau sweep ({len(evaluators)} taus)",
        unit="img",
        mininterval=0.5 if sys.stderr.isatty() else 10,
    )
    with bar:
        n, t_frozen, t_heads = sweep_box_predictor(
            model,
            predictor,
            loader,
            evaluators,
            lambda tau: setattr(layer, "tau", tau),
            forward_per_point=True,  # tau changes the classifier's weights
            max_images=args.max_images,
            on_batch=bar.update,
        )
    logger.info(
        f"{n} images: frozen detector {t_frozen:.1f}s once, predictor + inference "
        f"{t_heads:.1f}s for {len(evaluators)} taus"
    )
    return [{"tau": tau, **m} for tau, m in sweep_metrics(evaluators).items()]


def write_outputs(rows: List[Dict[str, float]], out: str) -> Dict[str, float]:
    """Write csv / md / png; return the best row by AP."""
    markdown, (best,) = write_sweep_table(rows, out, "tau_sweep", ["tau"])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    taus = [r["tau"] for r in rows]
    for m, style in zip(SWEEP_METRICS, ["k-o", "r-s", "g-^", "b-v"]):
        ax.plot(taus, [r[m] for r in rows], style, label=m, markersize=4)
    ax.axvline(best["tau"], color="gray", ls=":", lw=1)
    ax.set_xlabel("tau")
    ax.set_ylabel("box AP (%)")
    ax.set_title("tau-normalisation sweep")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "tau_sweep.png"), dpi=120)
    plt.close(fig)
    print(markdown)
    return best


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out = os.path.abspath(args.out)
    try:
        check_sweep_inputs(args.weights, args.out, OUT_FILES, args.force)
        cfg = setup(args)  # config, dataset and class count checked before --out is made
        setup_lt_logging(args.out)
        rows = sweep(cfg, args)
    except LTDetError as e:
        return report_error(e)
    best = write_outputs(rows, args.out)
    print(f"best tau = {best['tau']:g} (AP {best['AP']:.2f}, APr {best['APr']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
