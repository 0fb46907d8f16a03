#!/usr/bin/env python
r"""Per-class box-classifier weight norm against training frequency (Kang et al. 2020, Fig. 2).

    python tools/plot_classifier_norms.py \
        --checkpoints joint=output/synthetic/rfs/model_final.pth \
                      cRT=output/synthetic/stage2_crt/model_final.pth \
                      LWS=output/synthetic/stage2_lws/model_final.pth \
                      "tau1=output/synthetic/rfs/model_final.pth@tau=1" \
        --json datasets/lt_synth/lvis_v1_train.json --out output/synthetic/classifier_norms.png

Classes (foreground rows 0..K-1 of ``cls_score``) are grouped frequent / common / rare (one
shaded band each) and sorted by training image count within a group, most frequent first. Each
``NAME=PATH`` adds a curve; ``PATH@tau=T`` plots the tau-normalised norms ``||w_c|| ** (1 - T)``;
an LWS checkpoint (``cls_score.scale``) plots the effective norms ``|s_c| * ||w_c||``.

Frequencies come from ``--json`` (a LVIS json with categories, or a ``*_cat_info.json`` list) or
from ``--dataset``: a dataset registered by ``--config-file`` (DATASETS.LVIS_FORMAT) or one of
detectron2's builtin names (``lvis_v1_train``: the LVIS v1 train category counts set up by
tools/setup_env.sh, else the json under DETECTRON2_DATASETS).

Writes the PNG (``--out``) only; prints each curve's mean norm per group.
"""
import argparse
import sys
import warnings
from typing import List, Optional, Tuple

# detectron2 calls torch.jit.script when imported; recent torch warns that it is deprecated.
warnings.filterwarnings(
    "ignore", r"`torch\.jit\.script` is deprecated", FutureWarning, r"torch\.jit"
)

from lt_det.data import register_datasets_from_cfg  # noqa: E402
from lt_det.engine.defaults import load_config  # noqa: E402
from lt_det.errors import LTDetError, report_error  # noqa: E402
from lt_det.evaluation.classifier_norms import (  # noqa: E402
    DEFAULT_KEY,
    frequencies_from_metadata,
    parse_spec,
    plot_classifier_norms,
)


def frequencies_from_dataset(name: str, config_file: Optional[str]) -> Tuple[List[int], List[str]]:
    """(image counts, r/c/f) of a dataset: one that ``--config-file`` registers (its
    DATASETS.LVIS_FORMAT), or one already registered, detectron2's builtin LVIS names included
    (:func:`lt_det.evaluation.classifier_norms.frequencies_from_metadata`)."""
    if config_file:
        register_datasets_from_cfg(load_config(config_file))
    return frequencies_from_metadata(name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--checkpoints", nargs="+", required=True, help="NAME=PATH[@tau=T] ...")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--json", "--cat-info", dest="json", help="LVIS json or cat_info json")
    src.add_argument(
        "--dataset", help="dataset name: from --config-file, or detectron2's (e.g. lvis_v1_train)"
    )
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
