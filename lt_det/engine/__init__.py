"""Training entry points: LTTrainer, a CPU-capable launch, resume and bad-input checks.

See docs/robustness.md.
"""
from ..checkpoint import AtomicDetectionCheckpointer, LTCheckpointer
from .defaults import (
    check_config_values,
    check_num_classes,
    check_output_dir,
    config_choices,
    eval_only_config,
    eval_output_dir,
    load_config,
    setup_cfg,
)
from .launch import launch
from .lock import lock_output_dir, release_output_dir
from .log_setup import run_logging, setup_lt_logging
from .resume import ResumableSampler, SeededBatches
from .trainer import LTTrainer, ReportUnreadableImages

__all__ = [
    "LTTrainer",
    "launch",
    "setup_lt_logging",
    "run_logging",
    "load_config",
    "setup_cfg",
    "check_config_values",
    "check_num_classes",
    "check_output_dir",
    "config_choices",
    "lock_output_dir",
    "release_output_dir",
    "eval_output_dir",
    "eval_only_config",
    "AtomicDetectionCheckpointer",
    "LTCheckpointer",
    "ResumableSampler",
    "SeededBatches",
    "ReportUnreadableImages",
]
