"""Two training stages in one command: stage 1 (representation), then stage 2 (the classifier).

A config with ``MODEL.DECOUPLE.STAGE1_CONFIG`` names the stage-1 config. ``tools/train_net.py``
trains that config into ``OUTPUT_DIR/stage1`` and then this config from
``OUTPUT_DIR/stage1/model_final.pth`` into ``OUTPUT_DIR``. Both stages keep their checkpoints,
``metrics.json``, ``eval_results.json`` and ``config.yaml``. ``--resume`` continues where the
command stopped: an unfinished stage 1 resumes, a finished one (its ``model_final.pth`` exists)
is skipped, and stage 2 resumes from its own last checkpoint or starts from stage 1's final one.
"""
import copy
import os
from typing import List, NamedTuple, Optional

from ..errors import LTDetError
from .defaults import check_output_dir, load_config

__all__ = ["TwoStages", "two_stage_args", "stage1_finished"]

STAGE1_SUBDIR = "stage1"


class TwoStages(NamedTuple):
    """The two runs of a two-stage config: copies of the command's argparse namespace."""

    stage1: object
    stage2: object
    stage1_dir: str


def stage1_finished(stage1_dir: str) -> bool:
    """Stage 1 has written its final checkpoint (written atomically at its last iteration)."""
    return os.path.isfile(os.path.join(stage1_dir, "model_final.pth"))


def _without_key(opts: List[str], key: str) -> List[str]:
    """``KEY VALUE`` pairs of ``opts`` without those of ``key``."""
    pairs = [(opts[i], opts[i + 1]) for i in range(0, len(opts) - 1, 2)]
    return [x for k, v in pairs if k != key for x in (k, v)]


def two_stage_args(args) -> Optional[TwoStages]:
    """Arguments of the two runs a two-stage config asks for, or None (a single-stage config, or
    ``--eval-only``, which evaluates the given weights only).

    Returns:
        :class:`TwoStages`: copies of ``args`` (argparse namespace of ``tools/train_net.py``)
        with ``config_file`` / ``opts`` set for each stage, and stage 1's OUTPUT_DIR.

    Raises:
        LTDetError: the stage-1 config is missing or names a stage 1 itself; OUTPUT_DIR already
            holds a run and neither --resume nor --overwrite-output is given (checked before
            stage 1 trains).
    """
    if args.eval_only:
        return None
    cfg = load_config(args.config_file, args.opts)
    path = cfg.MODEL.DECOUPLE.STAGE1_CONFIG
    if not path:
        return None
    if not os.path.isabs(path):
        path = os.path.join(os.path.dirname(os.path.abspath(args.config_file)), path)
    if not os.path.isfile(path):
        raise LTDetError(
            f"MODEL.DECOUPLE.STAGE1_CONFIG of '{args.config_file}' names '{path}', which does "
            "not exist. Fix the path (relative to that config's folder) or set it to \"\"."
        )
    out = cfg.OUTPUT_DIR
    stage1_dir = os.path.join(out, STAGE1_SUBDIR)
    s1 = copy.copy(args)
    s1.config_file = path
    # A STAGE1_CONFIG given on the command line chooses stage 1; it is not stage 1's own key.
    # The command's OUTPUT_DIR is stage 2's; stage 1 gets only its own (one value in its log).
    s1.opts = _without_key(
        _without_key(list(args.opts), "MODEL.DECOUPLE.STAGE1_CONFIG"), "OUTPUT_DIR"
    ) + ["OUTPUT_DIR", stage1_dir]
    if load_config(s1.config_file, s1.opts).MODEL.DECOUPLE.STAGE1_CONFIG:
        raise LTDetError(
            f"the stage-1 config '{path}' sets MODEL.DECOUPLE.STAGE1_CONFIG itself; a stage-1 "
            "config must train on its own."
        )
    s2 = copy.copy(args)
    s2.opts = list(args.opts) + [
        "MODEL.WEIGHTS", os.path.join(stage1_dir, "model_final.pth"),
        "MODEL.DECOUPLE.STAGE1_CONFIG", "",
    ]
    overwrite = getattr(args, "overwrite_output", False)
    check_output_dir(out, resume=args.resume, overwrite=overwrite)
    check_output_dir(stage1_dir, resume=args.resume, overwrite=overwrite)
    return TwoStages(s1, s2, stage1_dir)
