#!/usr/bin/env python
"""Measure an LVIS-format dataset's properties next to LVIS v1's (docs/synthetic.md).

    python tools/measure_dataset.py --data output/demo/data                  # a generated dataset
    python tools/measure_dataset.py --data DIR --probe --spread-from docs/results.md
    python tools/measure_dataset.py --train T.json --val V.json --images DIR  # any LVIS-format pair

Prints json: the dataset's properties (long tail, crowding, rare/frequent co-occurrence,
validation class distribution, appearance variation read from the pixels), and
  transfer_probe   (--probe) rare vs frequent accuracy of a class-balanced linear probe on the
                   frozen features of a CNN trained on the frequent classes only, and the
                   confusable neighbours per class in that feature space
  names            classes sharing a head word (a vocabulary-only neighbour proxy)
  exposure         epochs and expected views per rare image under each sampler for a schedule
                   (--iters x --batch, RFS --repeat-thresh; stage 2 --stage2-iters), from the
                   samplers' draw probabilities (no training)
  val_noise        val instances per rare class, the APr noise from val sampling alone, and
                   (--spread-from) the seed-to-seed APr spread per method of a three-seed table
and the same for LVIS v1 where its published per-class training counts allow (`lvis_v1`).
"""
import argparse
import json
import os
import sys
import warnings

# This program's choice (the library sets no filter): detectron2 0.6 scripts helpers with
# torch.jit at import time, which recent torch reports on every start.
warnings.filterwarnings(
    "ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning
)

from lt_det.data.dataset_stats import (  # noqa: E402
    LVIS_V1_1X,
    apr_seed_spread,
    lvis_v1_exposure,
    lvis_v1_reference,
    measure_dataset,
    name_neighbours,
    sampler_exposure,
    val_rare_support,
)
from lt_det.data.lvis_v1_stats import load_lvis_v1_cat_info  # noqa: E402
from lt_det.errors import LTDetError, report_error  # noqa: E402


def _image_classes(train_json: str):
    with open(train_json) as f:
        data = json.load(f)
    ids = sorted(c["id"] for c in data["categories"])
    index = {c: i for i, c in enumerate(ids)}
    per = {im["id"]: set() for im in data["images"]}
    for a in data["annotations"]:
        if not a.get("iscrowd", 0):
            per[a["image_id"]].add(index[a["category_id"]])
    return [sorted(v) for v in per.values()], len(ids), [c["name"] for c in data["categories"]]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", help="folder written by make_synthetic_lvis.py / lt_benchmark.py")
    p.add_argument("--train", help="train json (instead of --data)")
    p.add_argument("--val", help="val json (instead of --data)")
    p.add_argument("--images", help="training image folder (appearance measures need it)")
    p.add_argument("--val-images", help="validation image folder (--probe needs it)")
    p.add_argument("--probe", action="store_true",
                   help="run the frequent-only representation probe (needs the images; "
                        "seconds to a minute of CPU)")
    p.add_argument("--iters", type=int, default=400, help="stage-1 iterations (benchmark: 400)")
    p.add_argument("--batch", type=int, default=8, help="images per iteration (synthetic: 8)")
    p.add_argument("--stage2-iters", type=int, default=200, help="stage-2 iterations")
    p.add_argument("--repeat-thresh", type=float, default=0.1,
                   help="RFS threshold t (configs/synthetic/rfs.yaml: 0.1; LVIS: 0.001)")
    p.add_argument("--spread-from", help="markdown with a three-seed 'mask APr' column of "
                   "'mean (min-max)' cells (docs/results.md, a benchmark's summary.md)")
    args = p.parse_args(argv)
    if args.data:
        train = os.path.join(args.data, "lvis_v1_train.json")
        val = os.path.join(args.data, "lvis_v1_val.json")
        images = os.path.join(args.data, "train")
        val_images = os.path.join(args.data, "val")
    elif args.train and args.val:
        train, val, images, val_images = args.train, args.val, args.images, args.val_images
    else:
        p.error("give --data, or --train and --val")
    if args.probe and not (images and val_images):
        p.error("--probe needs --data, or --images and --val-images")
    for name in ("iters", "batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    try:
        spread = None
        if args.spread_from:
            try:
                with open(args.spread_from, encoding="utf-8") as f:
                    spread = apr_seed_spread(f.read())
            except OSError as e:
                raise LTDetError(f"cannot read --spread-from '{args.spread_from}': {e}") from None
            except LTDetError as e:
                raise LTDetError(f"--spread-from '{args.spread_from}': {e}") from None
        out = {"dataset": measure_dataset(train, val, images)}
        image_classes, k, names = _image_classes(train)
        out["dataset"]["names"] = name_neighbours(names)
        out["dataset"]["exposure"] = sampler_exposure(
            image_classes, k, iters=args.iters, batch=args.batch,
            repeat_thresh=args.repeat_thresh, stage2_iters=args.stage2_iters)
        noise = val_rare_support(val, train)
        if spread is not None:
            noise["apr_seed_spread"] = spread
        out["dataset"]["val_noise"] = noise
        if args.probe:
            from lt_det.data.transfer_probe import transfer_probe

            out["dataset"]["transfer_probe"] = transfer_probe(train, val, images, val_images)
        try:
            info = load_lvis_v1_cat_info()
            ref = lvis_v1_reference(info)
            ref["names"] = name_neighbours([c["name"] for c in info])
            ref["exposure"] = {"1x": lvis_v1_exposure(info),
                               "2x": lvis_v1_exposure(info, iters=2 * LVIS_V1_1X["iters"])}
            ref["transfer_probe"] = ("not measured: LVIS images are not installed (the probe "
                                     "needs object crops); see docs/synthetic.md for the "
                                     "published APr / APf of a decoupled classifier")
            ref["val_noise"] = ("not measured: the LVIS v1 val json is not installed (only the "
                                "train per-class counts are)")
            out["lvis_v1"] = ref
        except LTDetError as e:  # not installed: the dataset's own numbers still print
            out["lvis_v1"] = str(e)
    except LTDetError as e:
        return report_error(e)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
