"""LVIS evaluation: detectron2 evaluator, offline evaluation, per-class reports, plots.

Backends (``TEST.LVIS.BACKEND``): "fast" (hotcoco in LVIS mode, default) and "lvis"
(official lvis-api, reference); see :mod:`lt_det.evaluation.backends`.

The offline API (:func:`evaluate_lvis`, :class:`DetectionTable`, :class:`LVISGroundTruth`,
per-class reports) imports neither torch nor detectron2; the detectron2 evaluator
(:class:`LTLVISEvaluator`, :func:`build_lvis_evaluator`) is loaded on first access.
"""
import importlib
from typing import Any

from ._json import json_ready, save_eval_results, write_json
from .backends import LT_LVIS_EVAL_BACKEND_REGISTRY, get_lvis_backend
from .classifier_norms import classifier_norms, plot_classifier_norms
from .detections import DetectionTable, top_k_per_group
from .ground_truth import LVISGroundTruth
from .lvis_eval import (
    LVISEvalResult,
    drop_zero_area,
    evaluate_lvis,
    select_detections,
    summarize_lvis,
)
from .per_class import read_per_class, write_per_class
from .plot import plot_ap_vs_frequency

_DETECTRON2_SIDE = {"LTLVISEvaluator", "build_lvis_evaluator"}  # lvis_evaluator.py

__all__ = [
    "DetectionTable",
    "LTLVISEvaluator",
    "LT_LVIS_EVAL_BACKEND_REGISTRY",
    "LVISEvalResult",
    "LVISGroundTruth",
    "build_lvis_evaluator",
    "classifier_norms",
    "drop_zero_area",
    "evaluate_lvis",
    "get_lvis_backend",
    "json_ready",
    "write_json",
    "save_eval_results",
    "plot_ap_vs_frequency",
    "plot_classifier_norms",
    "read_per_class",
    "select_detections",
    "summarize_lvis",
    "top_k_per_group",
    "write_per_class",
]


def __getattr__(name: str) -> Any:
    if name not in _DETECTRON2_SIDE:
        raise AttributeError(f"module 'lt_det.evaluation' has no attribute {name!r}")
    value = getattr(importlib.import_module(".lvis_evaluator", __name__), name)
    globals()[name] = value
    return value
