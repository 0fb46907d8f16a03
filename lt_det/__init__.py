"""lt_det: long-tailed object detection and instance segmentation on Detectron2."""
from .config import add_lt_config
from . import modeling as _modeling  # registration (losses, LTStandardROIHeads, LTCascadeROIHeads)
from .modeling import (
    LTFastRCNNOutputLayers,
    balanced_sigmoid_loss,
    balanced_softmax_loss,
    build_cls_loss,
    class_prior_from_cfg,
    sigmoid_ce_loss,
    softmax_ce_loss,
    use_cls_loss_in_torchvision,
)

from .decouple import apply_decoupling, tau_normalize  # stage-2 methods (registration)

__version__ = "0.1.0"

__all__ = ["add_lt_config"]
__all__ += [
    "LTFastRCNNOutputLayers",
    "balanced_sigmoid_loss",
    "balanced_softmax_loss",
    "build_cls_loss",
    "class_prior_from_cfg",
    "sigmoid_ce_loss",
    "softmax_ce_loss",
    "use_cls_loss_in_torchvision",
]
__all__ += ["apply_decoupling", "tau_normalize"]
