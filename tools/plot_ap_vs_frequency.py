#!/usr/bin/env python
r"""Plot per-class AP against training frequency (log x) with r/c/f bands, one or several runs.

    python tools/plot_ap_vs_frequency.py output/per_class_ap_bbox.json \
        other_run/per_class_ap_bbox.json --labels baseline balanced_softmax --out ap_vs_freq.png

Inputs are the ``per_class_ap_<task>.json`` files written by the LVIS evaluator (into
OUTPUT_DIR/inference/...) or by ``tools/lvis_eval.py --per-class-dir``.
"""
import argparse
import os
import sys
import warnings

# detectron2 calls torch.jit.script when imported; recent torch warns that it is deprecated.
warnings.filterwarnings(
    "ignore", r"`torch\.jit\.script` is deprecated", FutureWarning, r"torch\.jit"
)

from lt_det.errors import LTDetError, report_error  # noqa: E402
from lt_det.evaluation.per_class import read_per_class  # noqa: E402
from lt_det.evaluation.plot import plot_ap_vs_frequency  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("per_class_json", nargs="+", help="per_class_ap_<task>.json files")
    p.add_argument("--labels", nargs="*", default=None, help="one per file (default: paths)")
    p.add_argument("--out", default="ap_vs_frequency.png")
    p.add_argument("--title", default="")
    args = p.parse_args()
    labels = args.labels or [os.path.dirname(f) or f for f in args.per_class_json]
    try:
        runs = [read_per_class(f) for f in args.per_class_json]
        out = plot_ap_vs_frequency(runs, labels, args.out, title=args.title)
    except LTDetError as e:
        return report_error(e)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
