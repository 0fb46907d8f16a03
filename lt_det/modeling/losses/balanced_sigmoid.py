"""Balanced Sigmoid (the sigmoid form of Balanced Softmax, as used by the BALMS LVIS code).

Shape shorthand: R ROIs, K foreground classes, logits (R, K + 1) with column K = background
(unused), gt_classes (R,) in [0, K], class_prior (K,) with n_j in (0, 1) = fraction of training
images that contain class j.

Per-class binary cross-entropy on the K foreground columns. On foreground ROIs every foreground
logit is trained as ``z_j + log(n_j / (1 - n_j))``; background ROIs are untouched. The loss is
the per-ROI sum over classes averaged over ROIs. Unlike the softmax form, the values n_j (not
only their ratios) matter; n_j = 0.5 for every class gives plain sigmoid cross-entropy.
At inference no prior is applied: scores are the sigmoids of the foreground logits.
"""
from typing import Any, Dict

import torch
from detectron2.config import CfgNode

from ._fused import ShiftedSigmoidCE
from .base import check_class_prior, check_logits_and_labels, check_reduction, empty_loss
from .registry import register_cls_loss
from .sigmoid_ce import SigmoidCELoss, sigmoid_ce_per_roi

__all__ = ["balanced_sigmoid_loss", "BalancedSigmoidLoss"]

# n_j is clamped to [EPS, 1 - EPS] so that a class present in every image keeps a finite shift.
EPS = 1e-6


def balanced_sigmoid_loss(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    class_prior: torch.Tensor,
    *,
    reduction: str = "mean",
) -> torch.Tensor:
    """Sigmoid CE with the foreground logits of foreground ROIs shifted by log(n / (1 - n)).

    Args:
        logits: (R, K + 1) classifier outputs; column K is background (ignored). Not modified.
        gt_classes: (R,) int64 labels in [0, K].
        class_prior: (K,) per-class frequencies in (0, 1] (a class in every image, n = 1, is
            clamped to 1 - 1e-6). Counts are refused: the values themselves matter.
        reduction: "mean" (per-ROI sums averaged over R) | "sum" | "none" ((R,) per-ROI sums).

    Returns:
        Scalar loss, or (R,) for ``reduction="none"``. An empty batch gives ``logits.sum() * 0``.

    Raises:
        ValueError: ``class_prior`` with a value outside (0, 1] or not finite.
    """
    check_reduction(reduction)
    check_logits_and_labels(logits, gt_classes, class_prior.shape[0], owner="balanced_sigmoid_loss")
    check_class_prior(class_prior, owner="balanced_sigmoid_loss", fractions=True)
    if gt_classes.numel() == 0:
        return empty_loss(logits, reduction)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    log_odds = prior_log_odds(class_prior, dtype)  # (K,)
    return ShiftedSigmoidCE.apply(logits, gt_classes, log_odds, reduction)


def prior_log_odds(class_prior: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(K,) ``log(n / (1 - n))`` of the prior clamped to [EPS, 1 - EPS], in ``dtype``."""
    prior = class_prior.to(dtype).clamp(EPS, 1 - EPS)
    return torch.log(prior) - torch.log1p(-prior)


@register_cls_loss("balanced_sigmoid")
class BalancedSigmoidLoss(SigmoidCELoss):
    """Module form of :func:`balanced_sigmoid_loss`; scores are per-class sigmoids."""

    needs_prior = True
    prior_is_fraction = True

    def __init__(
        self, *, num_classes: int, class_prior: torch.Tensor, bias_prior_prob: float = 0.01
    ):
        """
        Args:
            num_classes: K.
            class_prior: (K,) per-class image fractions in (0, 1) (saved as a buffer).
            bias_prior_prob: initial foreground score p (bias -log((1 - p) / p)); 0 disables.
        """
        super().__init__(
            num_classes=num_classes, class_prior=class_prior, bias_prior_prob=bias_prior_prob
        )

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        return super().from_config(cfg)

    def forward(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, *, reduction: str = "mean"
    ) -> torch.Tensor:
        return balanced_sigmoid_loss(logits, gt_classes, self.class_prior, reduction=reduction)

    def per_roi(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(logits.dtype, torch.float32)
        return sigmoid_ce_per_roi(logits, gt_classes, prior_log_odds(self.class_prior, dtype))
