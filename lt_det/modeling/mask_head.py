"""Mask head whose inference work is bounded by the detections, not by detections x classes.

Shape shorthand: B detections (all images), K classes, C channels of the mask features, M x M
the mask resolution (28 for the LVIS configs).

detectron2's class-specific ``MaskRCNNConvUpsampleHead`` predicts K masks per detection at
inference, (B, K, M, M) logits from a 1x1 convolution, and ``mask_rcnn_inference`` then keeps the
one of the predicted class. At LVIS's 300 detections per image and K = 1203 that convolution is
B * K * C * M^2 = 300 * 1203 * 256 * 784 = 72 G multiply-adds per image, most of the head's
time; the kept masks need B * C * M^2 (1203x fewer). :class:`LTMaskRCNNConvUpsampleHead` computes
only those: the same layers up to the predictor, then each detection's class row of the 1x1
convolution (``sum_c w[k, c] x[c] + b[k]``). The masks equal detectron2's up to float rounding
(the sum over C taken in another order: ``tests/test_lvis_scale.py`` compares them). Training,
class-agnostic heads (one mask per detection) and an empty batch use detectron2's own path, and
the parameters and checkpoint keys are detectron2's.
"""
from typing import List

import torch
from detectron2.layers import cat
from detectron2.modeling.roi_heads.mask_head import (
    ROI_MASK_HEAD_REGISTRY,
    MaskRCNNConvUpsampleHead,
    mask_rcnn_inference,
)
from detectron2.structures import Instances

__all__ = ["LTMaskRCNNConvUpsampleHead"]


@ROI_MASK_HEAD_REGISTRY.register()
class LTMaskRCNNConvUpsampleHead(MaskRCNNConvUpsampleHead):
    """``MaskRCNNConvUpsampleHead`` (same constructor, parameters and training) whose
    class-specific inference computes only each detection's predicted-class mask
    (``MODEL.ROI_MASK_HEAD.NAME: "LTMaskRCNNConvUpsampleHead"``; module docstring)."""

    def forward(self, x: torch.Tensor, instances: List[Instances]):
        """
        Args:
            x: (B, C_in, S, S) pooled features of the detections (or of the sampled foreground
                proposals in training).
            instances: per image, the detections with ``pred_classes`` (inference) or the
                proposals with ``gt_classes`` (training).

        Returns:
            The mask losses in training; in inference ``instances``, each with ``pred_masks``
            (n, 1, M, M) probabilities, as detectron2's head returns them.
        """
        if self.training or self.predictor.out_channels == 1 or x.shape[0] == 0:
            return super().forward(x, instances)
        for layer in self:  # every layer of the head before the 1x1 class predictor (the last)
            if layer is self.predictor:
                break
            x = layer(x)
        classes = cat([i.pred_classes for i in instances])
        weight = self.predictor.weight[classes, :, 0, 0]  # (B, C)
        logits = torch.einsum("bchw,bc->bhw", x, weight)
        if self.predictor.bias is not None:
            logits = logits + self.predictor.bias[classes].view(-1, 1, 1)
        mask_rcnn_inference(logits[:, None], instances)  # one channel: sigmoid, split per image
        return instances
