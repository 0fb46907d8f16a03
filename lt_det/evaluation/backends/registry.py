"""Registry of LVIS evaluation backends (config key ``TEST.LVIS.BACKEND``).

A backend computes LVIS precision/recall tables for a set of classes::

    backend(gt, dets, *, iou_type, cat_ids, img_ids, max_dets) -> (precision, recall)

Args:
    gt (LVISGroundTruth): the validated ground truth.
    dets (DetectionTable): detections of ``cat_ids`` only, already cut to the protocol's
        per-image (or per-class, AP-fixed) limit and to the (image, class) pairs LVIS evaluates.
    iou_type (str): "bbox" or "segm".
    cat_ids ((K,) int array): sorted category ids to evaluate.
    img_ids ((I,) int array): sorted ids of the images where one of ``cat_ids`` is positive or
        negative; every detection lies in one of them.
    max_dets (int): at least the largest number of detections of one (image, class) pair, so
        that no backend-internal cap drops anything.

Returns:
    precision: (T, R, K, A) float64, T = 10 IoU thresholds, R = 101 recall points, A = 4 area
        ranges (all, small, medium, large); -1 where a class has no gt in that range.
    recall: (T, K, A) float64, -1 likewise.
"""
from typing import Callable

from ...registry import Registry

__all__ = ["LT_LVIS_EVAL_BACKEND_REGISTRY", "get_lvis_backend"]

LT_LVIS_EVAL_BACKEND_REGISTRY = Registry(
    "LT_LVIS_EVAL_BACKEND", config_key="TEST.LVIS.BACKEND", what="LVIS evaluation backend"
)


def get_lvis_backend(name: str) -> Callable:
    """The backend registered as ``name``, checked to run here.

    A backend whose library is optional has a ``check_ready()`` attribute (the "lvis" backend:
    lvis-api installed and working with this numpy); it is called here, so a backend that cannot
    run is refused when it is selected, not after training.

    Raises:
        LTDetError: no backend of that name (the message lists the choices), or its
            ``check_ready`` failed (the message names the fix).
    """
    backend = LT_LVIS_EVAL_BACKEND_REGISTRY.get(name)
    check_ready = getattr(backend, "check_ready", None)
    if check_ready is not None:
        check_ready()
    return backend
