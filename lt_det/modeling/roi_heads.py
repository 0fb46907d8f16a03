"""ROI heads whose box predictors use lt_det's classification losses.

Select them with ``MODEL.ROI_HEADS.NAME: LTStandardROIHeads`` or ``LTCascadeROIHeads``; the loss
is ``MODEL.ROI_BOX_HEAD.CLS_LOSS``. Only ``_init_box_head`` is overridden: detectron2 builds its
heads as usual and the predictor(s) are swapped for :class:`LTFastRCNNOutputLayers` (every cascade
stage, each keeping its own box2box_transform). The class prior, when the loss needs one, is
computed once per model build and shared by all stages.
"""
from typing import Dict, List, Optional

import torch
from detectron2.config import CfgNode
from detectron2.structures import Instances
from detectron2.modeling.roi_heads import (
    ROI_HEADS_REGISTRY,
    CascadeROIHeads,
    StandardROIHeads,
)

from .box_predictor import LTFastRCNNOutputLayers
from .losses import cls_loss_class
from .priors import class_prior_from_cfg

__all__ = ["LTStandardROIHeads", "LTCascadeROIHeads", "class_prior_for_box_head"]


def class_prior_for_box_head(cfg: CfgNode) -> Optional[torch.Tensor]:
    """The (K,) prior if MODEL.ROI_BOX_HEAD.CLS_LOSS needs one, else None (nothing is counted)."""
    if cls_loss_class(cfg.MODEL.ROI_BOX_HEAD.CLS_LOSS).needs_prior:
        return class_prior_from_cfg(cfg)
    return None


@ROI_HEADS_REGISTRY.register()
class LTStandardROIHeads(StandardROIHeads):
    """:class:`StandardROIHeads` with :class:`LTFastRCNNOutputLayers` as box predictor."""

    @classmethod
    def _init_box_head(cls, cfg: CfgNode, input_shape: Dict) -> Dict:
        ret = super()._init_box_head(cfg, input_shape)
        prior = class_prior_for_box_head(cfg)
        ret["box_predictor"] = LTFastRCNNOutputLayers(
            cfg, ret["box_head"].output_shape, class_prior=prior
        )
        return ret


@ROI_HEADS_REGISTRY.register()
class LTCascadeROIHeads(CascadeROIHeads):
    """:class:`CascadeROIHeads` with :class:`LTFastRCNNOutputLayers` in every stage."""

    @classmethod
    def _init_box_head(cls, cfg: CfgNode, input_shape: Dict) -> Dict:
        ret = super()._init_box_head(cfg, input_shape)
        prior = class_prior_for_box_head(cfg)
        ret["box_predictors"] = [
            LTFastRCNNOutputLayers(
                cfg,
                head.output_shape,
                box2box_transform=old.box2box_transform,
                class_prior=prior,
            )
            for head, old in zip(ret["box_heads"], ret["box_predictors"])
        ]
        return ret

    def box_losses(
        self,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: List[Instances],
    ) -> Dict[str, torch.Tensor]:
        """The box losses of every cascade stage for already sampled ``proposals`` (training
        mode): detectron2's own cascade loop, without the proposal sampling and mask head of
        ``forward``. Used by the classifier-only stage 2 (lt_det.decouple)."""
        return self._forward_box(features, proposals, targets)
