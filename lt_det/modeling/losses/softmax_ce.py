"""Plain softmax cross-entropy over K + 1 classes (detectron2's default box classifier loss).

Shape shorthand: R ROIs, K foreground classes, logits (R, K + 1) with column K = background,
gt_classes (R,) in [0, K].
"""
from typing import Optional

import torch
from torch.nn import functional as F

from .base import ClsLoss, check_logits_and_labels, check_reduction, empty_loss
from .registry import register_cls_loss

__all__ = ["softmax_ce_loss", "SoftmaxCELoss"]


def softmax_ce_loss(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    class_prior: Optional[torch.Tensor] = None,
    *,
    reduction: str = "mean",
) -> torch.Tensor:
    """Softmax cross-entropy ``-log softmax(z)[y]``.

    Args:
        logits: (R, K + 1) classifier outputs; column K is background.
        gt_classes: (R,) int64 labels in [0, K].
        class_prior: unused (accepted so every loss has the same signature).
        reduction: "mean" (over R) | "sum" | "none" ((R,) per-ROI losses).

    Returns:
        Scalar loss, or (R,) for ``reduction="none"``. An empty batch gives ``logits.sum() * 0``.
    """
    check_reduction(reduction)
    check_logits_and_labels(logits, gt_classes, None, owner="softmax_ce_loss")
    del class_prior
    if gt_classes.numel() == 0:
        return empty_loss(logits, reduction)
    return F.cross_entropy(logits, gt_classes, reduction=reduction)


@register_cls_loss("softmax_ce")
class SoftmaxCELoss(ClsLoss):
    """Module form of :func:`softmax_ce_loss`; scores are softmax over K + 1 columns."""

    def forward(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, *, reduction: str = "mean"
    ) -> torch.Tensor:
        return softmax_ce_loss(logits, gt_classes, reduction=reduction)

    def per_roi(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, gt_classes, reduction="none")

