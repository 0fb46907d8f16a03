"""Datasets (LVIS-format registration, synthetic long-tailed data) and samplers."""
from .lvis_format import (
    load_lvis_format_json,
    register_datasets_from_cfg,
    register_lvis_format,
)
from . import samplers as _samplers  # noqa: F401  (registers the samplers)

__all__ = ["load_lvis_format_json", "register_datasets_from_cfg", "register_lvis_format"]
