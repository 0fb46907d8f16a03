#!/usr/bin/env python
"""Per-class box-classifier weight norm against training frequency (Kang et al. 2020, Fig. 2).

    python tools/plot_classifier_norms.py \
        --checkpoints joint=output/synthetic/rfs/model_final.pth \
                      cRT=output/synthetic/stage2_crt/model_final.pth \
                      LWS=output/synthetic/stage2_lws/model_final.pth \
                      "tau1=output/synthetic/rfs/model_final.pth@tau=1" \
        --json datasets/lt_synth/lvis_v1_train.json --out output/synthetic/classifier_norms.png

Classes (foreground rows 0..K-1 of ``cls_score``) are sorted by training image count, most
frequent first; the rare / common / frequent bands are shaded. Each ``NAME=PATH`` adds a curve;
``PATH@tau=T`` plots the tau-normalised norms ``||w_c|| ** (1 - T)``; an LWS checkpoint
(``cls_score.scale``) plots the effective norms ``|s_c| * ||w_c||``. Frequencies come from
``--json`` (a LVIS json with categories, or a ``*_cat_info.json`` list), or from ``--dataset``
(a registered dataset; ``--config-file`` registers DATASETS.LVIS_FORMAT).
"""
import argparse
import sys
from typing import List, Optional, Tuple

from detectron2.data import MetadataCatalog

from lt_det.data import register_datasets_from_cfg
from lt_det.decouple.norms import DEFAULT_KEY, parse_spec, plot_classifier_norms
from lt_det.engine.defaults import load_config
from lt_det.errors import LTDetError, report_error


def frequencies_from_dataset(name: str, config_file: Optional[str]) -> Tuple[List[int], List[str]]:
    """(image counts, r/c/f) of a registered dataset (``--config-file`` registers its
    DATASETS.LVIS_FORMAT first), from the metadata registration computed."""
    if config_file:
        register_datasets_from_cfg(load_config(config_file))
    meta = MetadataCatalog.get(name)
    counts = meta.get("class_image_count", None)
    if counts is None:
        raise LTDetError(
            f"dataset '{name}' has no class_image_count metadata; register it with lt_det "
            "(--config-file with DATASETS.LVIS_FORMAT) or pass --json."
        )
    return [int(c["image_count"]) for c in counts], list(meta.class_frequency)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoints", nargs="+", required=True, help="NAME=PATH[@tau=T] ...")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--json", "--cat-info", dest="json", help="LVIS json or cat_info json")
    src.add_argument("--dataset", help="registered dataset name")
    p.add_argument("--config-file", help="config whose DATASETS.LVIS_FORMAT to register")
    p.add_argument("--key", default=DEFAULT_KEY, help=f"classifier module (default {DEFAULT_KEY})")
    p.add_argument("--out", required=True, help="PNG path")
    args = p.parse_args(argv)
    try:
        specs = {}
        for spec in args.checkpoints:
            name, path_spec = spec.split("=", 1) if "=" in spec else (spec, "")
            parse_spec(spec)  # validates
            specs[name] = path_spec
        freqs = args.json or frequencies_from_dataset(args.dataset, args.config_file)
        means = plot_classifier_norms(specs, freqs, args.out, key=args.key)
    except LTDetError as e:
        return report_error(e)
    for name, m in means.items():
        print(f"{name}: mean norm f {m['f']:.3f}  c {m['c']:.3f}  r {m['r']:.3f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
