"""Generalized re-weighting (GRW; Zhang et al., "Distribution Alignment: A Unified Framework for
Long-tail Visual Recognition", CVPR 2021, Sec. 3.3, Eq. 6): softmax cross-entropy whose ROIs are
weighted by a reference distribution of the classes, the loss of DisAlign's stage 2.

Shape shorthand: R ROIs, K foreground classes, logits (R, K + 1) with column K = background,
gt_classes (R,) in [0, K], class_prior (K,) per-class training counts or frequencies (only their
ratios matter).

Weights (the reference's ``GRWFastRCNNOutputs._init_weights``, Megvii-BaseDetection/DisAlign
``instance_seg/lvis1.0/.../mask_rcnn.res50.fpn.lvisv1.multiscale.disalign.1x/roi_heads/
fast_rcnn.py`` at a2fc3500; ``cvpods/modeling/losses/grw_loss.py`` at 2deea5dc):

- ``r_j = n_j / sum_k n_k`` (the class's share),
- ``w_j = (1 / r_j) ** rho``, normalised so that the K foreground weights sum to K (mean 1),
- the background weight is 1 (the background is not re-weighted).

``rho = 0`` gives w = 1 everywhere (plain cross-entropy); ``rho = 1`` gives inverse-frequency
weights. The reference's LVIS v1 detection config uses ``GRW_SCALE = 0.8``.

Reduction "mean" is the reference's: ``F.cross_entropy(weight=w, reduction="mean")``, i.e.
``sum_i w_{y_i} CE_i / sum_i w_{y_i}`` (normalised by the batch's weights, not by R). So that the
per-ROI losses average to it, ``reduction="none"`` (and :meth:`GRWLoss.per_roi`) returns
``w_{y_i} CE_i / mean_i(w_{y_i})``: a ROI's value depends on the labels of its batch through that
normaliser, which is a constant of the logits. "sum" is the sum of those (R x "mean").
Inference applies no weight (softmax over K + 1).
"""
from typing import Any, Dict

import torch
from detectron2.config import CfgNode
from torch.nn import functional as F

from .base import ClsLoss, check_logits_and_labels, check_reduction, empty_loss
from .registry import register_cls_loss

__all__ = ["grw_weights", "grw_loss", "GRWLoss"]


def grw_weights(class_prior: torch.Tensor, rho: float) -> torch.Tensor:
    """(K + 1,) ROI weights ``[w_0 .. w_{K-1}, 1]`` with ``w_j ∝ (n_j / sum n) ** -rho``.

    Args:
        class_prior: (K,) positive per-class counts or frequencies n_j (image or instance
            counts, per ``MODEL.ROI_BOX_HEAD.PRIOR.SOURCE``); only ratios matter.
        rho: exponent >= 0 (the reference's ``exp_scale`` / ``GRW_SCALE``).

    Returns:
        float64 tensor (K + 1,); the K foreground weights sum to K, the background weight is 1.

    Raises:
        ValueError: rho < 0 (or not finite), or a count that is not finite and > 0.
    """
    if not (rho >= 0 and rho < float("inf")):
        raise ValueError(f"MODEL.ROI_BOX_HEAD.GRW.RHO must be finite and >= 0, got {rho}")
    n = torch.as_tensor(class_prior, dtype=torch.float64)
    if not bool((torch.isfinite(n) & (n > 0)).all()):
        raise ValueError("grw_weights: class counts must be finite and > 0")
    ratio = n / n.sum()
    w = ratio.pow(-float(rho))
    w = w * (n.numel() / w.sum())
    return F.pad(w, (0, 1), value=1.0)


def grw_loss(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    class_prior: torch.Tensor,
    *,
    rho: float = 0.8,
    reduction: str = "mean",
) -> torch.Tensor:
    """Generalized re-weighted softmax cross-entropy (see the module docstring).

    Args:
        logits: (R, K + 1) classifier outputs; column K is background.
        gt_classes: (R,) int64 labels in [0, K].
        class_prior: (K,) positive per-class counts or frequencies (ratios only).
        rho: exponent >= 0 of the weights; 0 gives plain cross-entropy.
        reduction: "mean" (``sum w_y CE / sum w_y``, the reference's) | "sum" (R x "mean")
            | "none" ((R,) ``w_y CE / mean(w_y)``, whose mean is "mean").

    Returns:
        Scalar loss, or (R,) for ``reduction="none"``. An empty batch gives ``logits.sum() * 0``.

    Raises:
        ValueError: a bad reduction, rho, prior, logits width or label (one line each).
    """
    check_reduction(reduction)
    check_logits_and_labels(logits, gt_classes, class_prior.shape[0], owner="grw_loss")
    if gt_classes.numel() == 0:
        return empty_loss(logits, reduction)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    weight = grw_weights(class_prior, rho).to(dtype=dtype, device=logits.device)
    z = logits.to(dtype)
    if reduction == "mean":
        return F.cross_entropy(z, gt_classes, weight=weight)
    roi_w = weight[gt_classes]
    per_roi = F.cross_entropy(z, gt_classes, reduction="none") * (roi_w / roi_w.mean())
    return per_roi if reduction == "none" else per_roi.sum()


@register_cls_loss("grw")
class GRWLoss(ClsLoss):
    """Module form of :func:`grw_loss` (``MODEL.ROI_BOX_HEAD.CLS_LOSS: "grw"``); the prior of
    ``PRIOR.SOURCE`` is its buffer; scores are softmax over K + 1 columns."""

    needs_prior = True
    prior_is_fraction = False  # only ratios are read: counts are accepted

    def __init__(self, *, num_classes: int, class_prior: torch.Tensor, rho: float = 0.8):
        """
        Args:
            num_classes: K.
            class_prior: (K,) positive per-class counts or frequencies (saved as a buffer).
            rho: MODEL.ROI_BOX_HEAD.GRW.RHO, >= 0 (0.8: the reference's LVIS v1 config).
        """
        super().__init__(num_classes=num_classes, class_prior=class_prior)
        grw_weights(self.class_prior, rho)  # refuse a bad rho when built
        self.rho = float(rho)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        return {**super().from_config(cfg), "rho": cfg.MODEL.ROI_BOX_HEAD.GRW.RHO}

    def forward(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, *, reduction: str = "mean"
    ) -> torch.Tensor:
        return grw_loss(logits, gt_classes, self.class_prior, rho=self.rho, reduction=reduction)

    def per_roi(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """(R,) ``w_y CE / mean(w_y)`` from plain torch ops (twice differentiable)."""
        return self.forward(logits, gt_classes, reduction="none")

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, rho={self.rho}"
