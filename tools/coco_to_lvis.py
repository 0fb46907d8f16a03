#!/usr/bin/env python
"""Convert a COCO-format instances json into an LVIS-format json for lt_det to train and score.

    python tools/coco_to_lvis.py --input data/train_coco.json --output data/train.json
    python tools/coco_to_lvis.py --input data/val_coco.json --output data/val.json \\
        --counts-from data/train.json        # the training counts and r/c/f groups, as LVIS's val

Adds per image ``neg_category_ids`` and ``not_exhaustive_category_ids`` and per category
``image_count``, ``instance_count`` and ``frequency`` (r: at most 10 training images, 0
included; c: 11-100, f: > 100; crowd annotations are not counted). Images, annotations and the
other keys are kept.

Assumption: the COCO json is exhaustively labelled, as COCO is (every instance of every category
is labelled in every image). So a category with no annotation in an image is a verified negative
there, and the categories with a crowd region (iscrowd 1) in an image are its not-exhaustive ones
(present, not labelled one by one); an image without crowd regions has none. Data labelled
otherwise needs its own lists (docs/own_data.md).

Bad input is one line "lt_det: error: ..." on stderr, exit status 2, before anything is written;
an existing --output is replaced only with --force.
"""
import argparse
import sys

# Pure Python: neither torch nor detectron2 is imported.
from lt_det.coco_to_lvis import convert_coco_json
from lt_det.errors import LTDetError, report_error


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--input", required=True, help="COCO-format instances json")
    p.add_argument("--output", required=True, help="LVIS-format json to write")
    p.add_argument(
        "--counts-from",
        metavar="TRAIN_JSON",
        help="LVIS-format training json (written by this tool): copy its categories' "
        "image_count, instance_count and frequency instead of counting --input (for a "
        "validation split)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing --output")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        lvis = convert_coco_json(
            args.input, args.output, force=args.force, counts_from=args.counts_from
        )
    except LTDetError as e:
        return report_error(e)
    groups = [c["frequency"] for c in lvis["categories"]]
    source = f"counts from {args.counts_from}" if args.counts_from else "counted here"
    print(
        f"wrote {args.output}: {len(lvis['images'])} images, {len(lvis['annotations'])} "
        f"annotations, {len(groups)} categories (rare {groups.count('r')}, common "
        f"{groups.count('c')}, frequent {groups.count('f')}; {source})"
    )
    if not args.counts_from:
        print(
            "  the r/c/f groups (APr / APc / APf) come from this file's own image counts: right "
            "for a training split; for a val or test split, convert the training json first and "
            "pass it as --counts-from, as LVIS's val carries its training counts."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
