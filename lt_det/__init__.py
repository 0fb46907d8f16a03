"""lt_det: long-tailed object detection and instance segmentation on Detectron2.

Importing ``lt_det`` is light: the offline evaluator (``lt_det.evaluation``, ``tools/lvis_eval.py``)
needs neither torch nor detectron2. The model side is loaded on first use of any name below
(``lt_det.add_lt_config``, ``from lt_det import balanced_softmax_loss``, ...), and loading it
registers lt_det's losses, ROI heads, backbones and stage-2 methods in their registries, as
``import lt_det.modeling`` (or any module that imports it, e.g. ``lt_det.engine``) does.
"""
import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> module that defines it (loaded on first access, with the registrations).
_LAZY = {
    "add_lt_config": "lt_det.config",
    "LTFastRCNNOutputLayers": "lt_det.modeling",
    "balanced_sigmoid_loss": "lt_det.modeling",
    "balanced_softmax_loss": "lt_det.modeling",
    "build_cls_loss": "lt_det.modeling",
    "class_prior_from_cfg": "lt_det.modeling",
    "sigmoid_ce_loss": "lt_det.modeling",
    "softmax_ce_loss": "lt_det.modeling",
    "use_cls_loss_in_torchvision": "lt_det.modeling",
    "apply_decoupling": "lt_det.decouple",
    "tau_normalize": "lt_det.decouple",
}

__all__ = sorted(_LAZY)


def register_all() -> None:
    """Import the modules whose import registers lt_det's components (losses, ROI heads,
    backbones, samplers, stage-2 methods) with lt_det's and detectron2's registries. Idempotent."""
    importlib.import_module("lt_det.modeling")  # losses, LTStandardROIHeads, LTCascadeROIHeads
    importlib.import_module("lt_det.decouple")  # stage-2 methods (and the samplers they use)


# Subpackages reachable as attributes after a plain ``import lt_det`` (imported on first access).
_SUBMODULES = {
    "benchmark", "config", "data", "decouple", "engine", "errors", "evaluation", "model_zoo",
    "modeling",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"lt_det.{name}")
    if name not in _LAZY:
        raise AttributeError(f"module 'lt_det' has no attribute {name!r}")
    register_all()
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
