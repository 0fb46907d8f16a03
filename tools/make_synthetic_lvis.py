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
import dataclasses
import sys
import warnings
from typing import Any, Dict, List, Optional, Tuple

# detectron2 calls torch.jit.script when imported; recent torch warns that it is deprecated.
warnings.filterwarnings(
    "ignore", r"`torch\.jit\.script` is deprecated", FutureWarning, r"torch\.jit"
)

from lt_det.data.synthetic import PRESETS, SyntheticSpec, generate_synthetic_lvis  # noqa: E402
from lt_det.data.synthetic_icons import IconSpec  # noqa: E402
from lt_det.errors import LTDetError, report_error  # noqa: E402


def knob_fields() -> Dict[Tuple[str, str], List[dataclasses.Field]]:
    """The knobs the flags are made from, by (group title, preset whose default they show):
    every SyntheticSpec field, then the IconSpec fields the shapes spec does not have."""
    shapes = list(dataclasses.fields(SyntheticSpec))
    names = {f.name for f in shapes}
    return {
        ("knobs (a flag left out keeps the preset's value)", "default"): shapes,
        ("pictograph knobs (--preset icons / icons_tiny)", "icons"): [
            f for f in dataclasses.fields(IconSpec) if f.name not in names
        ],
    }


def _flag_kwargs(f: dataclasses.Field, preset: str) -> Dict[str, Any]:
    """argparse keywords for one knob: its help, choices, and a type taken from its default;
    a flag left out is absent from the parsed namespace."""
    default = f.default
    if isinstance(default, tuple):
        default = "(" + ", ".join(f"{v:.3g}" for v in default) + ")"
    kwargs: Dict[str, Any] = {
        "help": f"{f.metadata['help']} [{preset} preset: {default}]",
        "default": argparse.SUPPRESS,
    }
    if "choices" in f.metadata:
        kwargs["choices"] = f.metadata["choices"]
    if isinstance(f.default, tuple):
        kwargs.update(nargs=len(f.default), type=type(f.default[0]),
                      metavar=("LO", "HI")[: len(f.default)])
    elif f.default is None or isinstance(f.default, str):
        kwargs["type"] = str
    else:
        kwargs["type"] = type(f.default)
    return kwargs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output folder (must be empty or absent)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the whole dataset")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    for (title, preset), group_fields in knob_fields().items():
        g = p.add_argument_group(title)
        for f in group_fields:
            g.add_argument("--" + f.name.replace("_", "-"), **_flag_kwargs(f, preset))
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
    knobs = {
        f.name: getattr(args, f.name)
        for group_fields in knob_fields().values()
        for f in group_fields
        if hasattr(args, f.name)
    }
    knobs = {k: tuple(v) if isinstance(v, list) else v for k, v in knobs.items()}
    try:
        result = generate_synthetic_lvis(
            args.out, seed=args.seed, preset=args.preset, overwrite=args.overwrite, **knobs
        )
    except LTDetError as e:
        return report_error(e)
    print(format_summary(result, args.out, args.seed, args.preset))
    return 0


if __name__ == "__main__":
    sys.exit(main())
