#!/usr/bin/env python
"""Generate the synthetic long-tailed LVIS-format dataset (shapes or pictographs); print a summary.

    python tools/make_synthetic_lvis.py --out datasets/lt_synth --seed 0
    python tools/make_synthetic_lvis.py --out output/tiny --preset tiny
    python tools/make_synthetic_lvis.py --out DIR --count-source lvis_v1   # real LVIS v1 tail shape
    python tools/make_synthetic_lvis.py --out DIR --num-textures 2 --overwrite
    python tools/make_synthetic_lvis.py --out DIR --preset icons   # 200 pictograph classes (OpenMoji)

Writes DIR/lvis_v1_train.json, DIR/lvis_v1_val.json, DIR/train/*.png, DIR/val/*.png
(see docs/synthetic.md and lt_det/data/synthetic.py).
"""
import argparse
import sys
import warnings
from typing import List, Optional

# detectron2 calls torch.jit.script when imported; recent torch warns that it is deprecated.
warnings.filterwarnings(
    "ignore", r"`torch\.jit\.script` is deprecated", FutureWarning, r"torch\.jit"
)

from lt_det.data.synthetic import (  # noqa: E402
    COUNT_PROFILES,
    PRESETS,
    VAL_PROFILES,
    generate_synthetic_lvis,
)
from lt_det.errors import LTDetError, report_error  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output folder (must be empty or absent)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", choices=sorted(PRESETS), default="default")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    g = p.add_argument_group("knobs (default: the preset's value)")
    g.add_argument("--num-shapes", type=int)
    g.add_argument("--num-colours", type=int)
    g.add_argument("--num-textures", type=int)
    g.add_argument("--image-size", type=int)
    g.add_argument("--max-train-images", type=int)
    g.add_argument("--min-train-images", type=int)
    g.add_argument("--count-profile", choices=COUNT_PROFILES)
    g.add_argument(
        "--count-source",
        help="LVIS v1 cat_info json giving the tail's shape; 'lvis_v1' = the file `make setup` "
        "installs (lt_det.data.lvis_v1_stats.default_cat_info_path())",
    )
    g.add_argument("--val-images-per-class", type=int)
    g.add_argument("--co-occurrence", type=float)
    g.add_argument("--max-classes-per-image", type=int)
    g.add_argument("--max-instances-per-class", type=int)
    g.add_argument("--neg-per-image", type=int)
    g.add_argument("--max-objects", type=int)
    g.add_argument("--val-profile", choices=VAL_PROFILES)
    g.add_argument("--val-fraction", type=float)
    g.add_argument("--appearance-jitter", type=float)
    return p


def format_summary(result: dict, out: str, seed: int, preset: str) -> str:
    s = result["summary"]
    g = s["groups"]
    return "\n".join(
        [
            f"synthetic LVIS-format dataset in {out} (seed {seed}, preset {preset}): "
            f"{s['seconds']:.1f} s",
            f"  classes  {s['num_classes']:6d}   rare {g['r']}  common {g['c']}  frequent {g['f']}"
            f"   (train images per class: {s['image_count_max']} .. {s['image_count_min']})",
            f"  train    {s['train_images']:6d} images {s['train_instances']:7d} instances"
            f"   {result['train_json']}",
            f"  val      {s['val_images']:6d} images {s['val_instances']:7d} instances"
            f"   {result['val_json']}",
        ]
    )


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    count_source = args.count_source
    if count_source == "lvis_v1":
        from lt_det.data.lvis_v1_stats import default_cat_info_path

        count_source = default_cat_info_path()
    try:
        result = generate_synthetic_lvis(
            args.out,
            seed=args.seed,
            preset=args.preset,
            num_shapes=args.num_shapes,
            num_colours=args.num_colours,
            num_textures=args.num_textures,
            image_size=args.image_size,
            max_train_images=args.max_train_images,
            min_train_images=args.min_train_images,
            count_profile=args.count_profile,
            count_source=count_source,
            val_images_per_class=args.val_images_per_class,
            co_occurrence=args.co_occurrence,
            max_classes_per_image=args.max_classes_per_image,
            max_instances_per_class=args.max_instances_per_class,
            neg_per_image=args.neg_per_image,
            max_objects=args.max_objects,
            val_profile=args.val_profile,
            val_fraction=args.val_fraction,
            appearance_jitter=args.appearance_jitter,
            overwrite=args.overwrite,
        )
    except LTDetError as e:
        return report_error(e)
    print(format_summary(result, args.out, args.seed, args.preset))
    return 0


if __name__ == "__main__":
    sys.exit(main())
