"""Training entry points: LTTrainer, a CPU-capable launch, resume and bad-input checks.

See docs/robustness.md.
"""
from .checkpoint import AtomicDetectionCheckpointer
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
from .log_setup import setup_lt_logging
from .resume import ResumableSampler, SeededBatches
from .trainer import LTTrainer, ReportUnreadableImages

__all__ = [
    "LTTrainer",
    "launch",
    "setup_lt_logging",
    "load_config",
    "setup_cfg",
    "check_config_values",
    "check_num_classes",
    "check_output_dir",
    "config_choices",
    "eval_output_dir",
    "eval_only_config",
    "AtomicDetectionCheckpointer",
    "ResumableSampler",
    "SeededBatches",
    "ReportUnreadableImages",
]
