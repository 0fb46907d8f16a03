"""Datasets (LVIS-format registration, synthetic long-tailed data) and samplers."""
from .lvis_format import (
    load_lvis_format_json,
    register_datasets_from_cfg,
    register_lvis_format,
)
from .samplers import MetaSampler, MetaSamplerLearner, build_train_sampler  # registers samplers

__all__ = ["load_lvis_format_json", "register_datasets_from_cfg", "register_lvis_format"]
