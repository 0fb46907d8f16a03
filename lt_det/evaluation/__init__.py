"""LVIS evaluation: detectron2 evaluator, offline evaluation, per-class reports, plots.

Backends (``TEST.LVIS.BACKEND``): "fast" (faster-coco-eval in LVIS mode, default) and "lvis"
(official lvis-api, reference); see :mod:`lt_det.evaluation.backends`.
"""
from .backends import LT_LVIS_EVAL_BACKEND_REGISTRY, get_lvis_backend
from .classifier_norms import classifier_norms, plot_classifier_norms
from .detections import DetectionTable, top_k_per_group
from .ground_truth import LVISGroundTruth
from .lvis_eval import LVISEvalResult, evaluate_lvis, select_detections, summarize_lvis
from .lvis_evaluator import LTLVISEvaluator, build_lvis_evaluator
from .per_class import read_per_class, write_per_class
from .plot import plot_ap_vs_frequency

__all__ = [
    "DetectionTable",
    "LTLVISEvaluator",
    "LT_LVIS_EVAL_BACKEND_REGISTRY",
    "LVISEvalResult",
    "LVISGroundTruth",
    "build_lvis_evaluator",
    "classifier_norms",
    "evaluate_lvis",
    "get_lvis_backend",
    "plot_ap_vs_frequency",
    "plot_classifier_norms",
    "read_per_class",
    "select_detections",
    "summarize_lvis",
    "top_k_per_group",
    "write_per_class",
]
