"""Logit-adjusted softmax cross-entropy (Menon et al., "Long-Tail Learning via Logit Adjustment",
ICLR 2021), training form, for a box classifier with a background class.

Shape shorthand: R ROIs, K foreground classes, logits (R, K + 1) with column K = background,
gt_classes (R,) in [0, K], class_prior (K,) per-class training frequencies pi_j.

Training: ``l = CE(z + tau * shift, y)`` where ``shift`` is Balanced Softmax's (K + 1,) shift
(:func:`~lt_det.modeling.losses.balanced_softmax.balanced_softmax_shift`):
``log pi_j - log c`` for the foreground columns and 0 for the background, with c = mean(pi)
("fg_mass") or max(pi) ("unshifted"), chosen by the same key as Balanced Softmax
(``MODEL.ROI_BOX_HEAD.BALANCED_SOFTMAX_BG``). Menon et al.'s ``z_j + tau log pi_j`` is this up
to a constant per row (softmax is shift-invariant), once the background's place is fixed. Hence
tau = 1 is exactly Balanced Softmax and tau = 0 (or a uniform prior) is plain cross-entropy.

Inference: softmax over K + 1 of ``z - posthoc_tau * shift`` — Menon et al.'s post-hoc
correction ``z_j - tau log pi_j`` (with the same background choice) when ``posthoc_tau > 0``;
the default 0 gives plain softmax scores, the consistent choice after the training form.
"""
from typing import Any, Dict

import torch
from detectron2.config import CfgNode
from torch.nn import functional as F

from ._fused import ShiftedSoftmaxCE
from .balanced_softmax import BACKGROUND_CHOICES, balanced_softmax_shift
from .base import ClsLoss, check_logits_and_labels, check_reduction, empty_loss, reduce_per_roi
from .registry import register_cls_loss

__all__ = ["logit_adjusted_loss", "LogitAdjustedLoss"]


def logit_adjusted_loss(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    class_prior: torch.Tensor,
    *,
    tau: float = 1.0,
    background: str = "fg_mass",
    reduction: str = "mean",
) -> torch.Tensor:
    """Softmax CE of ``logits + tau * balanced_softmax_shift(class_prior, background)``.

    Plain torch ops (twice differentiable).

    Args:
        logits: (R, K + 1) classifier outputs; column K is background. Not modified.
        gt_classes: (R,) int64 labels in [0, K].
        class_prior: (K,) positive per-class training frequencies.
        tau: adjustment strength (>= 0); 1 = Balanced Softmax, 0 = plain CE.
        background: "fg_mass" | "unshifted" (see balanced_softmax.py).
        reduction: "mean" | "sum" | "none" ((R,) per-ROI losses).
    """
    check_reduction(reduction)
    check_logits_and_labels(logits, gt_classes, class_prior.shape[0], owner="logit_adjusted_loss")
    if gt_classes.numel() == 0:
        return empty_loss(logits, reduction)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    shift = tau * balanced_softmax_shift(class_prior.to(dtype), background=background)
    return F.cross_entropy(logits.to(dtype) + shift, gt_classes, reduction=reduction)


@register_cls_loss("logit_adjusted")
class LogitAdjustedLoss(ClsLoss):
    """Module form of :func:`logit_adjusted_loss`; scores are softmax of ``z - posthoc_tau *
    shift`` over K + 1 (plain softmax by default)."""

    needs_prior = True

    def __init__(
        self,
        *,
        num_classes: int,
        class_prior: torch.Tensor,
        tau: float = 1.0,
        background: str = "fg_mass",
        posthoc_tau: float = 0.0,
    ):
        """
        Args:
            num_classes: K.
            class_prior: (K,) positive per-class training frequencies (saved as a buffer).
            tau: MODEL.ROI_BOX_HEAD.LOGIT_ADJUSTED.TAU (>= 0).
            background: MODEL.ROI_BOX_HEAD.BALANCED_SOFTMAX_BG ("fg_mass" | "unshifted").
            posthoc_tau: MODEL.ROI_BOX_HEAD.LOGIT_ADJUSTED.POSTHOC_TAU (>= 0), the inference
                correction; 0 = none.
        """
        super().__init__(num_classes=num_classes, class_prior=class_prior)
        if background not in BACKGROUND_CHOICES:
            raise ValueError(
                f"Unknown MODEL.ROI_BOX_HEAD.BALANCED_SOFTMAX_BG {background!r}; "
                f"choices: {list(BACKGROUND_CHOICES)}."
            )
        if tau < 0 or posthoc_tau < 0:
            raise ValueError(
                "MODEL.ROI_BOX_HEAD.LOGIT_ADJUSTED.TAU and POSTHOC_TAU must be >= 0, got "
                f"{tau} and {posthoc_tau}"
            )
        self.tau, self.posthoc_tau, self.background = float(tau), float(posthoc_tau), background

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        head = cfg.MODEL.ROI_BOX_HEAD
        ret = super().from_config(cfg)
        ret.update(
            tau=head.LOGIT_ADJUSTED.TAU,
            background=head.BALANCED_SOFTMAX_BG,
            posthoc_tau=head.LOGIT_ADJUSTED.POSTHOC_TAU,
        )
        return ret

    def _shift(self, dtype: torch.dtype) -> torch.Tensor:
        return balanced_softmax_shift(self.class_prior.to(dtype), background=self.background)

    def forward(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, *, reduction: str = "mean"
    ) -> torch.Tensor:
        check_reduction(reduction)
        if gt_classes.numel() == 0:
            return empty_loss(logits, reduction)
        dtype = torch.promote_types(logits.dtype, torch.float32)
        # The fused form of per_roi (same values, one (R, K + 1) buffer).
        per_roi = ShiftedSoftmaxCE.apply(
            logits.to(dtype), gt_classes, self.tau * self._shift(dtype)
        )
        return reduce_per_roi(per_roi, reduction)

    def per_roi(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """(R,) per-ROI losses, plain torch ops (twice differentiable)."""
        return logit_adjusted_loss(
            logits,
            gt_classes,
            self.class_prior,
            tau=self.tau,
            background=self.background,
            reduction="none",
        )

    def _scored_logits(self, logits: torch.Tensor) -> torch.Tensor:
        if self.posthoc_tau == 0:
            return logits
        dtype = torch.promote_types(logits.dtype, torch.float32)
        return logits.to(dtype) - self.posthoc_tau * self._shift(dtype)

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return F.softmax(self._scored_logits(logits), dim=-1)

    def plain_per_roi(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """(R,) negative log-likelihood of :meth:`predict_probs`."""
        return F.cross_entropy(self._scored_logits(logits), gt_classes, reduction="none")

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, tau={self.tau}, background={self.background!r}, "
            f"posthoc_tau={self.posthoc_tau}"
        )
