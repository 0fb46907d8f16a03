"""LDAM: label-distribution-aware margin loss (Cao et al., "Learning Imbalanced Datasets with
Label-Distribution-Aware Margin Loss", NeurIPS 2019), with optional deferred re-weighting (DRW).

Shape shorthand: R ROIs, K foreground classes, logits (R, K + 1) with column K = background,
gt_classes (R,) in [0, K], class_prior (K,) n_j / #images (image fractions).

A foreground ROI of class y has the margin ``m_y = C / n_y ** (1/4)`` subtracted from its
true-class logit before a scaled softmax cross-entropy::

    l = CE(s * (z - m_y * onehot(y)), y)

C is chosen, as in Cao et al., so that the largest margin (of the rarest class) is ``max_margin``;
margins therefore depend only on the ratios of the n_j, and the prior's scale does not matter.
Background ROIs get no margin (the background is not a class with a count), so the background
column is trained as in plain cross-entropy. ``max_margin = 0`` and ``s = 1`` give plain softmax
cross-entropy. Cao et al. use s = 30 with cosine (normalised) logits; lt_det's box classifier is
a plain linear layer whose logits already have a free scale, so the default is s = 1.

DRW (Cao et al., Sec. 3.3): from iteration ``drw_start`` on, each ROI is weighted by the
class-balanced weight of its label (Cui et al. 2019, :func:`effective_number_weights`, beta =
``drw_beta``, foreground weights normalised to mean 1, background 1). The iteration is read from
detectron2's event storage while training; outside training (or without a storage) no weights
are applied. "mean" reduction divides the weighted sum by R.

Inference: ``softmax(s * z)`` over K + 1 (no margin).
"""
from typing import Any, Dict, Optional

import torch
from detectron2.config import CfgNode
from torch.nn import functional as F

from ._fused import MarginSoftmaxCE
from .base import ClsLoss, check_logits_and_labels, check_reduction, empty_loss
from .class_balanced import (
    class_counts_from_prior,
    effective_number_weights,
    num_train_images_for_counts,
)
from .registry import register_cls_loss

__all__ = ["ldam_margins", "ldam_loss", "ldam_per_roi", "LDAMLoss"]


def ldam_margins(class_prior: torch.Tensor, max_margin: float) -> torch.Tensor:
    """(K + 1,) margins ``[C / n_j ** 0.25 for j < K, 0]`` with C such that max = max_margin.

    Args:
        class_prior: (K,) positive per-class frequencies (only ratios matter).
        max_margin: the margin of the rarest class, >= 0.
    """
    if max_margin < 0:
        raise ValueError(f"LDAM max_margin must be >= 0, got {max_margin}")
    inv = class_prior.to(torch.float64) ** -0.25
    return F.pad(inv * (max_margin / inv.max()), (0, 1)).to(class_prior.dtype)


def ldam_loss(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    class_prior: torch.Tensor,
    *,
    max_margin: float = 0.5,
    scale: float = 1.0,
    roi_weights: Optional[torch.Tensor] = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """LDAM loss ``w_y * CE(s * (z - m_y onehot(y)), y)`` (see the module docstring).

    The training form: one fused pass (:class:`~lt_det.modeling.losses._fused.MarginSoftmaxCE`,
    differentiable once); :func:`ldam_per_roi` gives the same values from plain ops.

    Args:
        logits: (R, K + 1) classifier outputs; column K is background. Not modified.
        gt_classes: (R,) int64 labels in [0, K].
        class_prior: (K,) positive per-class frequencies (margins use their ratios only).
        max_margin: margin of the rarest class (>= 0).
        scale: s > 0, multiplies the margin-adjusted logits.
        roi_weights: optional (K + 1,) per-label weights (DRW); None = all 1.
        reduction: "mean" (weighted sum / R) | "sum" | "none" ((R,) per-ROI losses).
    """
    check_reduction(reduction)
    check_logits_and_labels(logits, gt_classes, class_prior.shape[0], owner="ldam_loss")
    if scale <= 0:
        raise ValueError(f"LDAM scale must be > 0, got {scale}")
    if gt_classes.numel() == 0:
        return empty_loss(logits, reduction)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    margins = ldam_margins(class_prior.to(dtype), max_margin)[gt_classes]  # (R,), 0 for bg
    weights = None if roi_weights is None else roi_weights.to(dtype)[gt_classes]
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return MarginSoftmaxCE.apply(logits, gt_classes, float(scale), margins, weights, reduction)


def ldam_per_roi(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    class_prior: torch.Tensor,
    *,
    max_margin: float = 0.5,
    scale: float = 1.0,
    roi_weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """(R,) per-ROI losses of :func:`ldam_loss` from plain torch ops (twice differentiable; the
    reference that the fused training form is tested against). Arguments as :func:`ldam_loss`;
    no input checks."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    z = logits.to(dtype)
    margins = ldam_margins(class_prior.to(dtype), max_margin)[gt_classes]  # (R,), 0 for bg
    adjusted = z - F.one_hot(gt_classes, z.shape[1]).to(dtype) * margins.unsqueeze(1)
    per_roi = F.cross_entropy(scale * adjusted, gt_classes, reduction="none")
    if roi_weights is not None:
        per_roi = per_roi * roi_weights.to(dtype)[gt_classes]
    return per_roi


def _current_iteration() -> Optional[int]:
    from detectron2.utils.events import get_event_storage

    try:
        return int(get_event_storage().iter)
    except AssertionError:  # no EventStorage open: not inside a training loop
        return None


@register_cls_loss("ldam")
class LDAMLoss(ClsLoss):
    """Module form of :func:`ldam_loss`; scores are ``softmax(scale * z)`` over K + 1."""

    needs_prior = True

    def __init__(
        self,
        *,
        num_classes: int,
        class_prior: torch.Tensor,
        max_margin: float = 0.5,
        scale: float = 1.0,
        drw_start: int = -1,
        drw_beta: float = 0.9999,
        num_images: Optional[int] = None,
    ):
        """
        Args:
            num_classes: K.
            class_prior: (K,) image fractions (saved as a buffer).
            max_margin: MODEL.ROI_BOX_HEAD.LDAM.MAX_MARGIN (>= 0).
            scale: MODEL.ROI_BOX_HEAD.LDAM.SCALE (> 0).
            drw_start: MODEL.ROI_BOX_HEAD.LDAM.DRW_START; iteration from which DRW weights
                apply, -1 = never.
            drw_beta: MODEL.ROI_BOX_HEAD.LDAM.DRW_BETA, in [0, 1).
            num_images: number of training images (DRW needs counts = prior * num_images);
                required when drw_start >= 0.
        """
        super().__init__(num_classes=num_classes, class_prior=class_prior)
        if max_margin < 0 or scale <= 0:
            raise ValueError(
                "MODEL.ROI_BOX_HEAD.LDAM: MAX_MARGIN must be >= 0 and SCALE > 0, got "
                f"{max_margin} and {scale}"
            )
        self.max_margin, self.scale = float(max_margin), float(scale)
        self.drw_start = int(drw_start)
        self.drw_beta = float(drw_beta)
        weights = None
        if self.drw_start >= 0:
            if num_images is None:
                raise ValueError("LDAM with DRW (drw_start >= 0) needs num_images")
            counts = class_counts_from_prior(self.class_prior, num_images)
            weights = effective_number_weights(counts, self.drw_beta).float()
        self.register_buffer("drw_weights", weights)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        c = cfg.MODEL.ROI_BOX_HEAD.LDAM
        ret = super().from_config(cfg)
        ret.update(
            max_margin=c.MAX_MARGIN, scale=c.SCALE, drw_start=c.DRW_START, drw_beta=c.DRW_BETA
        )
        if c.DRW_START >= 0:
            ret["num_images"] = num_train_images_for_counts(cfg)
        return ret

    def _weights(self) -> Optional[torch.Tensor]:
        if self.drw_weights is None or not self.training:
            return None
        it = _current_iteration()
        return self.drw_weights if it is not None and it >= self.drw_start else None

    def forward(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, *, reduction: str = "mean"
    ) -> torch.Tensor:
        return ldam_loss(
            logits,
            gt_classes,
            self.class_prior,
            max_margin=self.max_margin,
            scale=self.scale,
            roi_weights=self._weights(),
            reduction=reduction,
        )

    def per_roi(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """(R,) per-ROI losses, plain torch ops (twice differentiable)."""
        return ldam_per_roi(
            logits,
            gt_classes,
            self.class_prior,
            max_margin=self.max_margin,
            scale=self.scale,
            roi_weights=self._weights(),
        )

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.scale * logits, dim=-1)

    def plain_per_roi(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """(R,) negative log-likelihood of :meth:`predict_probs` (no margin, no weights)."""
        return F.cross_entropy(self.scale * logits, gt_classes, reduction="none")

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, max_margin={self.max_margin}, scale={self.scale}, "
            f"drw_start={self.drw_start}"
        )
