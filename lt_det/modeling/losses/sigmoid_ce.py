"""Per-class sigmoid (binary) cross-entropy on the K foreground columns.

Shape shorthand: R ROIs, K foreground classes, logits (R, K + 1) with column K = background
(unused by the sigmoid losses), gt_classes (R,) in [0, K].
"""
import math
from typing import Any, Dict, Optional

import torch
from detectron2.config import CfgNode
from torch.nn import functional as F

from ._fused import ShiftedSigmoidCE
from .base import ClsLoss, check_logits_and_labels, check_reduction, empty_loss
from .registry import register_cls_loss

__all__ = ["sigmoid_ce_loss", "SigmoidCELoss", "sigmoid_probs", "sigmoid_ce_per_roi"]


def sigmoid_ce_loss(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    class_prior: Optional[torch.Tensor] = None,
    *,
    reduction: str = "mean",
) -> torch.Tensor:
    """Sum over the K foreground columns of ``BCE(sigmoid(z_j), [y == j])``.

    Background ROIs (y = K) have all-zero targets; column K of ``logits`` is ignored.

    Args:
        logits: (R, K + 1) classifier outputs; column K is background.
        gt_classes: (R,) int64 labels in [0, K].
        class_prior: unused (accepted so every loss has the same signature).
        reduction: "mean" (per-ROI sums averaged over R, as detectron2's sigmoid CE) | "sum"
            | "none" ((R,) per-ROI sums).

    Returns:
        Scalar loss, or (R,) for ``reduction="none"``. An empty batch gives ``logits.sum() * 0``.
    """
    check_reduction(reduction)
    check_logits_and_labels(logits, gt_classes, None, owner="sigmoid_ce_loss")
    del class_prior
    if gt_classes.numel() == 0:
        return empty_loss(logits, reduction)
    return ShiftedSigmoidCE.apply(logits, gt_classes, None, reduction)


def sigmoid_ce_per_roi(
    logits: torch.Tensor, gt_classes: torch.Tensor, fg_shift: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Per-ROI sigmoid CE in plain differentiable ops (twice differentiable; no fused kernel).

    Args:
        logits: (R, K + 1) classifier outputs; column K is background (ignored).
        gt_classes: (R,) int64 labels in [0, K].
        fg_shift: optional (K,) shift added to the foreground logits of foreground ROIs
            (Balanced Sigmoid's log-odds); None for plain sigmoid CE.

    Returns:
        (R,) ``sum_j BCE(sigmoid(z_j + [y < K] * s_j), [y == j])`` over the K foreground columns,
        in at least float32.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    k = logits.shape[1] - 1
    x = logits[:, :k].to(dtype)
    if fg_shift is not None:
        is_fg = (gt_classes < k).to(dtype)[:, None]
        x = x + is_fg * fg_shift.to(dtype)
    targets = F.one_hot(gt_classes, k + 1)[:, :k].to(dtype)
    return F.binary_cross_entropy_with_logits(x, targets, reduction="none").sum(dim=1)


def sigmoid_probs(logits: torch.Tensor) -> torch.Tensor:
    """(R, K + 1) scores: sigmoid of the K foreground columns, then a zero background column.

    detectron2's ``fast_rcnn_inference`` drops the last column, so it only reads the sigmoids.
    """
    k = logits.shape[1] - 1
    probs = torch.sigmoid(logits[:, :k])
    return torch.cat([probs, probs.new_zeros(probs.shape[0], 1)], dim=1)


@register_cls_loss("sigmoid_ce")
class SigmoidCELoss(ClsLoss):
    """Module form of :func:`sigmoid_ce_loss`; scores are per-class sigmoids."""

    activation = "sigmoid"

    def __init__(
        self,
        *,
        num_classes: int,
        class_prior: Optional[torch.Tensor] = None,
        bias_prior_prob: float = 0.01,
    ):
        """
        Args:
            num_classes: K.
            class_prior: (K,) prior; stored when given, unused by this loss.
            bias_prior_prob: p in [0, 1); the K foreground biases start at -log((1 - p) / p)
                (so every class starts with score p). 0 keeps detectron2's zero bias.
        """
        super().__init__(num_classes=num_classes, class_prior=class_prior)
        if not 0.0 <= bias_prior_prob < 1.0:
            raise ValueError(
                "MODEL.ROI_BOX_HEAD.SIGMOID_BIAS_PRIOR_PROB must be in [0, 1), got "
                f"{bias_prior_prob}"
            )
        self.bias_prior_prob = float(bias_prior_prob)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        ret = super().from_config(cfg)
        ret["bias_prior_prob"] = cfg.MODEL.ROI_BOX_HEAD.SIGMOID_BIAS_PRIOR_PROB
        return ret

    def forward(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, *, reduction: str = "mean"
    ) -> torch.Tensor:
        return sigmoid_ce_loss(logits, gt_classes, reduction=reduction)

    def per_roi(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        return sigmoid_ce_per_roi(logits, gt_classes)

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return sigmoid_probs(logits)

    def plain_per_roi(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        # The K per-class Bernoulli likelihoods of sigmoid_probs; no background column.
        return sigmoid_ce_per_roi(logits, gt_classes)

    @torch.no_grad()
    def init_cls_bias_(self, bias: torch.Tensor) -> None:
        p = self.bias_prior_prob
        if p > 0:
            bias[: self.num_classes].fill_(-math.log((1 - p) / p))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, bias_prior_prob={self.bias_prior_prob}"
