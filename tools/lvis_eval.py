#!/usr/bin/env python
r"""Evaluate an LVIS results file offline and print the LVIS metrics (percent).

    python tools/lvis_eval.py --gt lvis_v1_val.json \
        --results lvis_instances_results.json \
        --iou-type bbox [--backend fast|lvis] [--ap-fixed] [--ap-pool] [--class-chunk 100] \
        [--max-dets-per-image 300] [--output metrics.json] [--per-class-dir DIR] [--force]

Prints the metrics (AP ... AR@300; AR@-1 under --ap-fixed, which has no per-image cap) and,
with --class-chunk > 0, a progress bar with ETA over the class chunks on stderr (once the
evaluation has taken a second). Writes nothing
unless asked: ``--output`` writes the metrics and run info as json (``null`` where a metric is
undefined, e.g. APr without rare classes); ``--per-class-dir`` writes
``per_class_ap_<iou-type>.{json,csv}`` (AP per class with its frequency group and the training
image count stored in the gt categories), the input of ``tools/plot_ap_vs_frequency.py``.
Neither replaces an existing file unless ``--force`` is given (checked before any work).
"""
import argparse
import json
import logging
import os
import sys
import warnings
from typing import Sequence, Tuple

# detectron2 calls torch.jit.script when imported; recent torch warns that it is deprecated.
warnings.filterwarnings(
    "ignore", r"`torch\.jit\.script` is deprecated", FutureWarning, r"torch\.jit"
)

# The offline evaluator imports neither torch nor detectron2: this tool starts in well under a
# second (tests/test_import_weight.py checks that neither is imported).
from lt_det.errors import LTDetError, report_error  # noqa: E402
from lt_det.evaluation import (  # noqa: E402
    LT_LVIS_EVAL_BACKEND_REGISTRY,
    evaluate_lvis,
    json_ready,
    write_per_class,
)


def _same_file(a: str, b: str) -> bool:
    """Whether the paths name one existing file (links and relative paths included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def check_outputs(
    output: str,
    per_class_dir: str,
    iou_type: str,
    force: bool = False,
    inputs: Sequence[Tuple[str, str]] = (),
) -> None:
    """Refuse, before any work, output paths that could not be written, files that a run would
    replace (unless ``force``), and outputs that are one of the run's ``inputs`` (never, even
    with ``force``).

    Args:
        inputs: (flag, path) of the files the run reads (``--gt``, ``--results``).

    Raises:
        LTDetError: ``output`` is a folder, its folder does not exist, it exists, or it is an
            input; ``per_class_dir`` is a file or holds this task's per-class files (or an
            input under their names).
    """
    base = os.path.join(per_class_dir, f"per_class_ap_{iou_type}") if per_class_dir else ""
    written = [("--output", output)] if output else []
    written += [("--per-class-dir", base + ext) for ext in (".json", ".csv") if base]
    for flag, path in written:
        for in_flag, in_path in inputs:
            if _same_file(path, in_path):
                raise LTDetError(
                    f"{flag} would write '{path}', which is the {in_flag} file this run reads; "
                    "give another path (--force never replaces an input)."
                )
    if output:
        if os.path.isdir(output):
            raise LTDetError(f"--output '{output}' is a folder; give the path of a json file.")
        parent = os.path.dirname(output) or "."  # as the system resolves it: "a/../b" needs a
        if not os.path.isdir(parent):
            raise LTDetError(
                f"--output '{output}': folder '{parent}' does not exist; create it first."
            )
        if os.path.exists(output) and not force:
            raise LTDetError(
                f"--output '{output}' exists (an earlier evaluation?); give another path, or "
                "--force to replace it."
            )
    if per_class_dir and os.path.exists(per_class_dir) and not os.path.isdir(per_class_dir):
        raise LTDetError(f"--per-class-dir '{per_class_dir}' is a file; give a folder.")
    if per_class_dir and not force:
        there = [base + ext for ext in (".json", ".csv") if os.path.exists(base + ext)]
        if there:
            raise LTDetError(
                f"--per-class-dir '{per_class_dir}' already holds {there[0]} (an earlier "
                "evaluation?); give another folder, or --force to replace the per-class files."
            )


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--gt", required=True, help="LVIS-format ground-truth json")
    p.add_argument("--results", required=True, help="LVIS results json (list of detections)")
    p.add_argument("--iou-type", required=True, choices=["bbox", "segm"],
                   help="bbox: box AP from the results' 'bbox'; segm: mask AP from their "
                   "'segmentation' (RLE), areas from the masks")
    p.add_argument(
        "--backend",
        default="fast",
        choices=LT_LVIS_EVAL_BACKEND_REGISTRY.choices(),
        help="fast: hotcoco's LVIS mode; lvis: lvis-api (default %(default)s)",
    )
    p.add_argument(
        "--ap-fixed",
        action="store_true",
        help="AP-fixed protocol: top --max-dets-per-class per class, no image cap",
    )
    p.add_argument(
        "--ap-pool",
        action="store_true",
        help="also AP-pool (all, r, c, f; bbox only): one precision-recall curve per pool",
    )
    p.add_argument(
        "--max-dets-per-image",
        type=int,
        default=300,
        help="standard protocol's per-image cap (default %(default)s; < 0: no cap)",
    )
    p.add_argument(
        "--max-dets-per-class",
        type=int,
        default=10000,
        help="AP-fixed per-class cap (default %(default)s; < 0: no cap)",
    )
    p.add_argument(
        "--class-chunk",
        type=int,
        default=100,
        help="classes evaluated at a time; 0 = all at once (same numbers, more memory; "
        "slower with --backend lvis); default %(default)s, as TEST.LVIS.CLASS_CHUNK",
    )
    p.add_argument("--output", default="", help="write metrics (percent) and run info as json")
    p.add_argument("--per-class-dir", default="", help="write per-class AP json/csv here")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --output file / per-class files (refused otherwise)")
    args = p.parse_args()
    lt_logger = logging.getLogger("lt_det")  # loading times and progress, on stderr
    lt_logger.addHandler(logging.StreamHandler(sys.stderr))
    lt_logger.setLevel(logging.INFO)
    lt_logger.propagate = False  # lvis-api puts a handler on the root logger
    try:
        check_outputs(args.output, args.per_class_dir, args.iou_type, args.force,
                      inputs=[("--gt", args.gt), ("--results", args.results)])
        r = evaluate_lvis(
            args.gt,
            args.results,
            iou_type=args.iou_type,
            backend=args.backend,
            ap_fixed=args.ap_fixed,
            ap_pool=args.ap_pool,
            max_dets_per_image=args.max_dets_per_image,
            max_dets_per_class=args.max_dets_per_class,
            class_chunk=args.class_chunk,
            progress=True,
        )
    except LTDetError as e:
        return report_error(e)
    metrics = r.metrics_percent()
    protocol = (
        "AP-fixed" if args.ap_fixed
        else f"{args.max_dets_per_image} detections/image" if args.max_dets_per_image >= 0
        else "no per-image cap"
    )
    print(
        f"LVIS {args.iou_type} ({args.backend} backend, {protocol}, {r.info['seconds_total']:.1f}s)"
    )
    for k, v in metrics.items():
        print(f"  {k:<8} {v:7.3f}")
    if args.output:
        doc = {"iou_type": args.iou_type, "metrics": metrics, "info": r.info}
        with open(args.output, "w", encoding="utf-8") as f:  # undefined metrics as null
            json.dump(json_ready(doc), f, indent=1, allow_nan=False)
    if args.per_class_dir:
        for path in write_per_class(
            r, args.per_class_dir, info={"gt": args.gt, "results": args.results}
        ):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
