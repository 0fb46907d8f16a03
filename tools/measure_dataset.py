#!/usr/bin/env python
"""Measure an LVIS-format dataset's properties next to LVIS v1's (docs/synthetic.md).

    python tools/measure_dataset.py --data output/demo/data                  # a generated dataset
    python tools/measure_dataset.py --train T.json --val V.json --images DIR  # any LVIS-format pair

Prints json: the synthetic (or given) dataset's properties (long tail, crowding, rare/frequent
co-occurrence, validation class distribution, appearance variation read from the pixels) and the
ones LVIS v1's published per-class training counts give (`lvis_v1`, when installed).
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

from lt_det.data.dataset_stats import lvis_v1_reference, measure_dataset  # noqa: E402
from lt_det.data.lvis_v1_stats import load_lvis_v1_cat_info  # noqa: E402
from lt_det.errors import LTDetError, report_error  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", help="folder written by make_synthetic_lvis.py / lt_benchmark.py")
    p.add_argument("--train", help="train json (instead of --data)")
    p.add_argument("--val", help="val json (instead of --data)")
    p.add_argument("--images", help="training image folder (appearance measures need it)")
    args = p.parse_args(argv)
    if args.data:
        train = os.path.join(args.data, "lvis_v1_train.json")
        val = os.path.join(args.data, "lvis_v1_val.json")
        images = os.path.join(args.data, "train")
    elif args.train and args.val:
        train, val, images = args.train, args.val, args.images
    else:
        p.error("give --data, or --train and --val")
    try:
        out = {"dataset": measure_dataset(train, val, images)}
        try:
            out["lvis_v1"] = lvis_v1_reference(load_lvis_v1_cat_info())
        except LTDetError as e:  # not installed: the dataset's own numbers still print
            out["lvis_v1"] = str(e)
    except LTDetError as e:
        return report_error(e)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
