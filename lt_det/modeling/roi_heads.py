"""ROI heads whose box predictors use lt_det's classification losses.

Select them with ``MODEL.ROI_HEADS.NAME: LTStandardROIHeads`` or ``LTCascadeROIHeads``; the loss
is ``MODEL.ROI_BOX_HEAD.CLS_LOSS``. Only ``_init_box_head`` is overridden: detectron2 builds its
heads as usual and the predictor(s) are swapped for :class:`LTFastRCNNOutputLayers` (every cascade
stage, each keeping its own box2box_transform). The class prior, when the loss needs one, is
computed once per model build and shared by all stages.
"""
from typing import Dict, List, Optional

import torch
from detectron2.config import CfgNode, configurable
from detectron2.structures import Instances
from detectron2.modeling.roi_heads import (
    ROI_HEADS_REGISTRY,
    CascadeROIHeads,
    StandardROIHeads,
)

from ..errors import LTDetError
from .box_predictor import LTFastRCNNOutputLayers
from .fast_inference import fast_rcnn_inference_topk
from .losses import cls_loss_class
from .priors import class_prior_from_cfg

__all__ = ["LTStandardROIHeads", "LTCascadeROIHeads", "class_prior_for_box_head"]


def class_prior_for_box_head(cfg: CfgNode) -> Optional[torch.Tensor]:
    """The (K,) prior if MODEL.ROI_BOX_HEAD.CLS_LOSS needs one, else None (nothing is counted)."""
    if cls_loss_class(cfg.MODEL.ROI_BOX_HEAD.CLS_LOSS).needs_prior:
        return class_prior_from_cfg(cfg)
    return None


def _check_lt_predictors(heads: str, arg: str, predictors) -> None:
    """Refuse a predictor that is not lt_det's (it would train detectron2's own loss silently)."""
    other = {type(p).__name__ for p in predictors if not isinstance(p, LTFastRCNNOutputLayers)}
    if other:
        raise LTDetError(
            f"{heads} got {arg} of type {', '.join(sorted(other))}; it needs lt_det's "
            "LTFastRCNNOutputLayers (the loss is its cls_loss). In a LazyConfig set the "
            "predictor's _target_ to lt_det.modeling.LTFastRCNNOutputLayers, or use detectron2's "
            "own heads."
        )


@ROI_HEADS_REGISTRY.register()
class LTStandardROIHeads(StandardROIHeads):
    """:class:`StandardROIHeads` with :class:`LTFastRCNNOutputLayers` as box predictor."""

    @configurable
    def __init__(self, *, box_predictor: torch.nn.Module, **kwargs):
        """detectron2's arguments; ``box_predictor`` must be an :class:`LTFastRCNNOutputLayers`
        (built from the config by ``_init_box_head``; given directly in a LazyConfig)."""
        _check_lt_predictors(type(self).__name__, "box_predictor", [box_predictor])
        super().__init__(box_predictor=box_predictor, **kwargs)

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
    """:class:`CascadeROIHeads` with :class:`LTFastRCNNOutputLayers` in every stage; at
    inference the stage-averaged scores go through
    :func:`lt_det.modeling.fast_inference.fast_rcnn_inference_topk` (detectron2's detections,
    computed from the best candidates only)."""

    @configurable
    def __init__(self, *, box_predictors: List[torch.nn.Module], **kwargs):
        """detectron2's arguments; every one of ``box_predictors`` must be an
        :class:`LTFastRCNNOutputLayers`."""
        _check_lt_predictors(type(self).__name__, "box_predictors", box_predictors)
        super().__init__(box_predictors=box_predictors, **kwargs)

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

    def _forward_box(
        self,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ):
        """Training: detectron2's. Inference: detectron2's cascade (each stage starts from the
        previous stage's boxes; scores averaged over the stages, boxes of the last stage), with
        :func:`~lt_det.modeling.fast_inference.fast_rcnn_inference_topk` in place of
        ``fast_rcnn_inference`` (the same detections).

        Returns:
            training: the losses of every stage; inference: per image Instances.
        """
        if self.training:
            return super()._forward_box(features, proposals, targets)
        box_features = [features[f] for f in self.box_in_features]
        image_sizes = [x.image_size for x in proposals]
        head_outputs = []  # (predictor, predictions, proposals) per stage
        prev_pred_boxes = None
        for k in range(self.num_cascade_stages):
            if k > 0:
                proposals = self._create_proposals_from_boxes(prev_pred_boxes, image_sizes)
            predictions = self._run_stage(box_features, proposals, k)
            prev_pred_boxes = self.box_predictor[k].predict_boxes(predictions, proposals)
            head_outputs.append((self.box_predictor[k], predictions, proposals))
        scores_per_stage = [h[0].predict_probs(h[1], h[2]) for h in head_outputs]
        # The same float sum as detectron2's (0 + s_1 + ... + s_n, times 1 / n).
        scores = [
            sum(list(scores_per_image)) * (1.0 / self.num_cascade_stages)
            for scores_per_image in zip(*scores_per_stage)
        ]
        predictor, predictions, proposals = head_outputs[-1]
        boxes = predictor.predict_boxes(predictions, proposals)
        pred_instances, _ = fast_rcnn_inference_topk(
            boxes,
            scores,
            image_sizes,
            predictor.test_score_thresh,
            predictor.test_nms_thresh,
            predictor.test_topk_per_image,
        )
        return pred_instances
