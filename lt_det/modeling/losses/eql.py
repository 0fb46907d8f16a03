"""Equalization Loss, EQL (Tan et al., "Equalization Loss for Long-Tailed Object Recognition",
CVPR 2020, eq. 4-6).

Shape shorthand: R ROIs, K foreground classes, logits (R, K + 1) with column K = background
(ignored, as in every sigmoid loss of lt_det), gt_classes (R,) in [0, K], class_prior (K,) the
per-class training frequency f_j (fraction of training images containing j by default,
``MODEL.ROI_BOX_HEAD.PRIOR``).

Sigmoid cross-entropy ``sum_j w_j BCE(sigmoid(z_j), y_j)`` with

    w_j = 1 - E(r) * T_lambda(f_j) * (1 - y_j),

E(r) = 1 for a foreground ROI and 0 for a background ROI, T_lambda(f) = 1 if f < lambda: on
foreground ROIs the negative gradients of the tail classes (f_j < lambda) are dropped; background
ROIs are untouched. lambda = 0 gives plain sigmoid cross-entropy. Per-ROI sums are averaged over
ROIs (as lt_det's sigmoid CE). At inference: per-class sigmoids.
"""
from typing import Any, Dict

import torch
from detectron2.config import CfgNode

from ._weighted_sigmoid import weighted_sigmoid_ce, weighted_sigmoid_ce_per_roi
from .base import check_logits_and_labels, check_reduction, empty_loss, reduce_per_roi
from .registry import register_cls_loss
from .sigmoid_ce import SigmoidCELoss

__all__ = ["eql_loss", "eql_weights", "EQLLoss"]


def eql_weights(
    gt_classes: torch.Tensor, class_prior: torch.Tensor, lambda_: float
) -> Dict[str, torch.Tensor]:
    """The weight tables of :func:`eql_loss` in the form of ``_weighted_sigmoid``.

    Returns:
        ``neg_weight`` (2, K): row 0 for background ROIs (all ones), row 1 for foreground ROIs
        (``1 - [f_j < lambda]``); ``pos_weight`` (K,) ones; ``row_group`` (R,) 1 on foreground
        ROIs.
    """
    k = class_prior.shape[0]
    tail = (class_prior < lambda_).to(torch.float32)
    neg = torch.stack([torch.ones_like(tail), 1.0 - tail])
    return {
        "neg_weight": neg,
        "pos_weight": torch.ones_like(tail),
        "row_group": (gt_classes < k).long(),
    }


def eql_loss(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    class_prior: torch.Tensor,
    *,
    lambda_: float = 1.76e-3,
    reduction: str = "mean",
) -> torch.Tensor:
    """Equalization loss (module docstring).

    Args:
        logits: (R, K + 1) classifier outputs; column K is ignored. Not modified.
        gt_classes: (R,) int64 labels in [0, K].
        class_prior: (K,) per-class frequencies f_j in (0, 1].
        lambda_: frequency threshold; classes with f_j < lambda_ are "tail" (>= 0; the paper's
            LVIS v0.5 value is 1.76e-3 on image fractions).
        reduction: "mean" (per-ROI sums averaged over R) | "sum" | "none" ((R,)).

    Returns:
        Scalar loss, or (R,) for ``reduction="none"``; an empty batch gives ``logits.sum() * 0``.
    """
    check_reduction(reduction)
    check_logits_and_labels(logits, gt_classes, class_prior.shape[0], owner="eql_loss")
    if gt_classes.numel() == 0:
        return empty_loss(logits, reduction)
    w = eql_weights(gt_classes, class_prior.to(logits.device), lambda_)
    return reduce_per_roi(weighted_sigmoid_ce(logits, gt_classes, **w), reduction)


@register_cls_loss("eql")
class EQLLoss(SigmoidCELoss):
    """Module form of :func:`eql_loss`; scores are per-class sigmoids."""

    needs_prior = True

    def __init__(
        self,
        *,
        num_classes: int,
        class_prior: torch.Tensor,
        lambda_: float = 1.76e-3,
        bias_prior_prob: float = 0.01,
    ):
        """
        Args:
            num_classes: K.
            class_prior: (K,) per-class frequencies (saved as a buffer).
            lambda_: tail threshold on the prior (MODEL.ROI_BOX_HEAD.EQL.LAMBDA), >= 0.
            bias_prior_prob: initial foreground score p (bias -log((1 - p) / p)); 0 disables.
        """
        super().__init__(
            num_classes=num_classes, class_prior=class_prior, bias_prior_prob=bias_prior_prob
        )
        if not lambda_ >= 0:
            raise ValueError(f"MODEL.ROI_BOX_HEAD.EQL.LAMBDA must be >= 0, got {lambda_}")
        self.lambda_ = float(lambda_)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        ret = super().from_config(cfg)
        ret["lambda_"] = cfg.MODEL.ROI_BOX_HEAD.EQL.LAMBDA
        return ret

    def forward(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, *, reduction: str = "mean"
    ) -> torch.Tensor:
        return eql_loss(
            logits, gt_classes, self.class_prior, lambda_=self.lambda_, reduction=reduction
        )

    def per_roi(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """(R,) losses with plain differentiable ops; ``forward`` is their mean."""
        w = eql_weights(gt_classes, self.class_prior.to(logits.device), self.lambda_)
        return weighted_sigmoid_ce_per_roi(logits, gt_classes, **w)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lambda_={self.lambda_:g}"
