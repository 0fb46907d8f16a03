#!/usr/bin/env python
r"""Evaluate an LVIS results file offline and print the LVIS metrics (percent).

    python tools/lvis_eval.py --gt lvis_v1_val.json \
        --results lvis_instances_results.json \
        --iou-type bbox [--backend fast|lvis] [--ap-fixed] [--class-chunk 100] \
        [--max-dets-per-image 300] [--output metrics.json] [--per-class-dir DIR]

Prints the metrics (AP ... AR@300; AR@-1 under --ap-fixed, which has no per-image cap) and,
with --class-chunk > 0, a progress bar with ETA over the class chunks on stderr. Writes nothing
unless asked: ``--output`` writes the metrics and run info as json; ``--per-class-dir`` writes
``per_class_ap_<iou-type>.{json,csv}`` (AP per class with its frequency group and the training
image count stored in the gt categories), the input of ``tools/plot_ap_vs_frequency.py``.
"""
import argparse
import json
import logging
import math
import sys
import warnings

# detectron2 calls torch.jit.script when imported; recent torch warns that it is deprecated.
warnings.filterwarnings(
    "ignore", r"`torch\.jit\.script` is deprecated", FutureWarning, r"torch\.jit"
)

from lt_det.errors import LTDetError, report_error  # noqa: E402
from lt_det.evaluation import (  # noqa: E402
    LT_LVIS_EVAL_BACKEND_REGISTRY,
    evaluate_lvis,
    write_per_class,
)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--gt", required=True, help="LVIS-format ground-truth json")
    p.add_argument("--results", required=True, help="LVIS results json (list of detections)")
    p.add_argument("--iou-type", required=True, choices=["bbox", "segm"])
    p.add_argument(
        "--backend",
        default="fast",
        choices=LT_LVIS_EVAL_BACKEND_REGISTRY.choices(),
        help="fast: faster-coco-eval; lvis: lvis-api (default %(default)s)",
    )
    p.add_argument(
        "--ap-fixed",
        action="store_true",
        help="AP-fixed protocol: top --max-dets-per-class per class, no image cap",
    )
    p.add_argument(
        "--max-dets-per-image",
        type=int,
        default=300,
        help="standard protocol's per-image cap (default %(default)s)",
    )
    p.add_argument(
        "--max-dets-per-class",
        type=int,
        default=10000,
        help="AP-fixed per-class cap (default %(default)s)",
    )
    p.add_argument(
        "--class-chunk",
        type=int,
        default=0,
        help="classes evaluated at a time; 0 = all (default %(default)s)",
    )
    p.add_argument("--output", default="", help="write metrics (percent) and run info as json")
    p.add_argument("--per-class-dir", default="", help="write per-class AP json/csv here")
    args = p.parse_args()
    lt_logger = logging.getLogger("lt_det")  # loading times and progress, on stderr
    lt_logger.addHandler(logging.StreamHandler(sys.stderr))
    lt_logger.setLevel(logging.INFO)
    lt_logger.propagate = False  # lvis-api puts a handler on the root logger
    try:
        r = evaluate_lvis(
            args.gt,
            args.results,
            iou_type=args.iou_type,
            backend=args.backend,
            ap_fixed=args.ap_fixed,
            max_dets_per_image=args.max_dets_per_image,
            max_dets_per_class=args.max_dets_per_class,
            class_chunk=args.class_chunk,
            progress=True,
        )
    except LTDetError as e:
        return report_error(e)
    metrics = r.metrics_percent()
    protocol = "AP-fixed" if args.ap_fixed else f"{args.max_dets_per_image} detections/image"
    print(
        f"LVIS {args.iou_type} ({args.backend} backend, {protocol}, {r.info['seconds_total']:.1f}s)"
    )
    for k, v in metrics.items():
        print(f"  {k:<8} {v:7.3f}")
    if args.output:
        with open(args.output, "w") as f:
            safe = {k: (None if math.isnan(v) else v) for k, v in metrics.items()}
            json.dump({"iou_type": args.iou_type, "metrics": safe, "info": r.info}, f, indent=1)
    if args.per_class_dir:
        for path in write_per_class(
            r, args.per_class_dir, info={"gt": args.gt, "results": args.results}
        ):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
