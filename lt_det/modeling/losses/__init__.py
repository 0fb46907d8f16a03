"""Box-classification losses. Importing this package registers every loss."""
from .acsl import (
    ACSLLoss,
    acsl_background_draw,
    acsl_class_groups,
    acsl_loss,
    acsl_per_roi,
)
from .balanced_sigmoid import BalancedSigmoidLoss, balanced_sigmoid_loss
from .balanced_softmax import BalancedSoftmaxLoss, balanced_softmax_loss, balanced_softmax_shift
from .bags import BAGSLoss, bags_groups, bags_loss, bags_per_roi, bags_probs
from .base import ClsLoss
from .class_balanced import (
    ClassBalancedFocalLoss,
    ClassBalancedSigmoidLoss,
    ClassBalancedSoftmaxLoss,
    class_balanced_focal_loss,
    class_balanced_sigmoid_loss,
    class_balanced_softmax_loss,
    effective_number_weights,
)
from .ecm import ECMLoss, ecm_loss, ecm_margins, ecm_per_roi
from .eql import EQLLoss, eql_loss
from .eqlv2 import EQLv2Loss, eqlv2_loss, eqlv2_weights
from .federated import FederatedLoss, federated_class_mask, federated_loss
from .grw import GRWLoss, grw_loss, grw_weights
from .gol import GOLLoss, gol_loss, gol_per_roi, gumbel_probs
from .ldam import LDAMLoss, ldam_loss, ldam_margins
from .logit_adjusted import LogitAdjustedLoss, logit_adjusted_loss
from .pcb import PCBLoss, pcb_loss, pcb_soft_targets
from .registry import (
    LT_CLS_LOSS_REGISTRY,
    build_cls_loss,
    build_cls_loss_from_cfg,
    cls_loss_class,
    register_cls_loss,
)
from .seesaw import SeesawLoss, seesaw_loss, seesaw_shift
from .sigmoid_ce import SigmoidCELoss, sigmoid_ce_loss
from .softmax_ce import SoftmaxCELoss, softmax_ce_loss

__all__ = [k for k in globals().keys() if not k.startswith("_")]
