"""Box-classification heads: losses, class priors, box predictor, ROI heads, torchvision adapter.

Importing this package registers the losses (LT_CLS_LOSS_REGISTRY), the ROI heads
``LTStandardROIHeads`` / ``LTCascadeROIHeads`` (detectron2's ROI_HEADS_REGISTRY) and the
backbones of ``lt_det.modeling.backbone`` (detectron2's BACKBONE_REGISTRY).
"""
from . import backbone as _backbone  # registration (build_mnv2_fpn_backbone)  # noqa: F401
from . import roi_heads as _  # registration  # noqa: F401
from .box_predictor import LTFastRCNNOutputLayers
from .calibration import CALIBRATION_METHODS, PosthocCalibration, calibration_from_cfg
from .losses import (
    LT_CLS_LOSS_REGISTRY,
    BalancedSigmoidLoss,
    BalancedSoftmaxLoss,
    ClsLoss,
    SigmoidCELoss,
    SoftmaxCELoss,
    EQLLoss,
    EQLv2Loss,
    SeesawLoss,
    FederatedLoss,
    BAGSLoss,
    GOLLoss,
    eql_loss,
    eqlv2_loss,
    seesaw_loss,
    federated_loss,
    bags_loss,
    gol_loss,
    balanced_sigmoid_loss,
    balanced_softmax_loss,
    build_cls_loss,
    build_cls_loss_from_cfg,
    register_cls_loss,
    sigmoid_ce_loss,
    softmax_ce_loss,
)
from .mask_head import LTMaskRCNNConvUpsampleHead  # registration, as roi_heads
from .normed_linear import NormedLinear
from .priors import class_prior_from_cfg, class_prior_from_counts
from .roi_heads import LTCascadeROIHeads, LTStandardROIHeads
from .torchvision_adapter import (
    torchvision_labels_to_lt,
    torchvision_logits_to_lt,
    use_cls_loss_in_torchvision,
)

__all__ = [
    "LT_CLS_LOSS_REGISTRY",
    "ClsLoss",
    "SoftmaxCELoss",
    "SigmoidCELoss",
    "BalancedSoftmaxLoss",
    "BalancedSigmoidLoss",
    "softmax_ce_loss",
    "sigmoid_ce_loss",
    "balanced_softmax_loss",
    "balanced_sigmoid_loss",
    "EQLLoss",
    "EQLv2Loss",
    "SeesawLoss",
    "FederatedLoss",
    "BAGSLoss",
    "GOLLoss",
    "gol_loss",
    "eql_loss",
    "eqlv2_loss",
    "seesaw_loss",
    "federated_loss",
    "bags_loss",
    "LTMaskRCNNConvUpsampleHead",
    "NormedLinear",
    "PosthocCalibration",
    "calibration_from_cfg",
    "CALIBRATION_METHODS",
    "build_cls_loss",
    "build_cls_loss_from_cfg",
    "register_cls_loss",
    "class_prior_from_cfg",
    "class_prior_from_counts",
    "LTFastRCNNOutputLayers",
    "LTStandardROIHeads",
    "LTCascadeROIHeads",
    "use_cls_loss_in_torchvision",
    "torchvision_logits_to_lt",
    "torchvision_labels_to_lt",
]
