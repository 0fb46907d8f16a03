"""Balanced Softmax (Ren et al., "Balanced Meta-Softmax for Long-Tailed Visual Recognition",
NeurIPS 2020) for a box classifier with a background class.

Shape shorthand: R ROIs, K foreground classes, logits (R, K + 1) with column K = background,
gt_classes (R,) in [0, K], class_prior (K,) per-class training frequencies.

During training the foreground logits are shifted by the log prior, ``z_j + log n_j``; the
softmax is invariant to adding a constant to every column, so only the ratios n_i / n_j matter
among foreground classes (the logit difference of classes i, j moves by exactly
log(n_i / n_j)). What remains to choose is where the background logit sits relative to the
shifted foreground logits (``background``):

- ``"unshifted"``: the foreground logits get ``log(n_j / max_k n_k)`` and the
  background none (equivalently: every foreground logit gets log n_j, the background log max n).
  The most frequent class is trained exactly as in plain cross-entropy; rarer classes are
  handicapped against the background as well as against frequent classes, so at test time (no
  shift) they gain score against both.
- ``"fg_mass"`` (default): the foreground logits get ``log(n_j / mean_k n_k)`` and the
  background none (equivalently: background shifted by log(mean_j n_j)). When the foreground
  logits are equal the background-vs-foreground odds are exactly those of plain cross-entropy:
  classes are rebalanced inside the foreground and the sampler's foreground/background split is
  kept. It is the default because it changes only the rebalancing inside the foreground, not the
  detector's background decision; the two are compared on the synthetic benchmark in
  docs/heads.md.

Both are invariant to the scale of the prior (image fractions or instance shares give the same
loss when proportional), and a uniform prior gives exactly plain softmax cross-entropy.
At inference no prior is applied: scores are softmax over K + 1.
"""
from typing import Any, Dict

import torch
from detectron2.config import CfgNode
from torch.nn import functional as F

from ._fused import ShiftedSoftmaxCE
from .base import ClsLoss, check_class_prior, check_logits_and_labels, check_reduction, empty_loss
from .registry import register_cls_loss

__all__ = ["balanced_softmax_loss", "balanced_softmax_shift", "BalancedSoftmaxLoss"]

BACKGROUND_CHOICES = ("unshifted", "fg_mass")


def balanced_softmax_shift(
    class_prior: torch.Tensor, *, background: str = "fg_mass"
) -> torch.Tensor:
    """The (K + 1,) additive logit shift of :func:`balanced_softmax_loss`.

    Args:
        class_prior: (K,) positive per-class frequencies (only their ratios matter).
        background: "unshifted" | "fg_mass" (see the module docstring).

    Returns:
        (K + 1,) tensor ``[log n_j - log c for j < K, 0]`` with c = mean(n) ("fg_mass") or
        max(n) ("unshifted"), in the prior's dtype.
    """
    log_prior = torch.log(class_prior)
    if background == "fg_mass":
        ref = torch.log(class_prior.mean())
    elif background == "unshifted":
        ref = log_prior.max()
    else:
        raise ValueError(
            f"Unknown MODEL.ROI_BOX_HEAD.BALANCED_SOFTMAX_BG {background!r}; "
            f"choices: {list(BACKGROUND_CHOICES)}."
        )
    return F.pad(log_prior - ref, (0, 1))


def balanced_softmax_loss(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    class_prior: torch.Tensor,
    *,
    reduction: str = "mean",
    background: str = "fg_mass",
) -> torch.Tensor:
    """Softmax cross-entropy of ``logits + shift`` (see :func:`balanced_softmax_shift`).

    Args:
        logits: (R, K + 1) classifier outputs; column K is background. Not modified.
        gt_classes: (R,) int64 labels in [0, K].
        class_prior: (K,) positive per-class training frequencies; counts are accepted (only
            ratios matter).
        reduction: "mean" (over R) | "sum" | "none" ((R,) per-ROI losses).
        background: "unshifted" | "fg_mass": how the background logit sits relative to the
            shifted foreground logits.

    Returns:
        Scalar loss, or (R,) for ``reduction="none"``. An empty batch gives ``logits.sum() * 0``.

    Raises:
        ValueError: ``class_prior`` with a value that is not finite or not > 0.
    """
    check_reduction(reduction)
    check_logits_and_labels(logits, gt_classes, class_prior.shape[0], owner="balanced_softmax_loss")
    check_class_prior(class_prior, owner="balanced_softmax_loss", fractions=False)
    if gt_classes.numel() == 0:
        return empty_loss(logits, reduction)
    # Loss math in at least float32 (bf16/fp16 logits are promoted inside, float64 kept).
    dtype = torch.promote_types(logits.dtype, torch.float32)
    shift = balanced_softmax_shift(class_prior.to(dtype), background=background)
    return ShiftedSoftmaxCE.apply(logits, gt_classes, shift, reduction)


@register_cls_loss("balanced_softmax")
class BalancedSoftmaxLoss(ClsLoss):
    """Module form of :func:`balanced_softmax_loss`; scores are softmax over K + 1 columns."""

    needs_prior = True

    def __init__(
        self, *, num_classes: int, class_prior: torch.Tensor, background: str = "fg_mass"
    ):
        """
        Args:
            num_classes: K.
            class_prior: (K,) positive per-class training frequencies (saved as a buffer).
            background: "unshifted" | "fg_mass" (MODEL.ROI_BOX_HEAD.BALANCED_SOFTMAX_BG).
        """
        super().__init__(num_classes=num_classes, class_prior=class_prior)
        if background not in BACKGROUND_CHOICES:
            raise ValueError(
                f"Unknown MODEL.ROI_BOX_HEAD.BALANCED_SOFTMAX_BG {background!r}; "
                f"choices: {list(BACKGROUND_CHOICES)}."
            )
        self.background = background

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        ret = super().from_config(cfg)
        ret["background"] = cfg.MODEL.ROI_BOX_HEAD.BALANCED_SOFTMAX_BG
        return ret

    def forward(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, *, reduction: str = "mean"
    ) -> torch.Tensor:
        return balanced_softmax_loss(
            logits, gt_classes, self.class_prior, reduction=reduction, background=self.background
        )

    def per_roi(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(logits.dtype, torch.float32)
        shift = balanced_softmax_shift(self.class_prior.to(dtype), background=self.background)
        return F.cross_entropy(logits.to(dtype) + shift, gt_classes, reduction="none")

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, background={self.background!r}"
