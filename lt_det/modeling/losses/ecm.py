"""Effective Class-Margin loss, ECM (Cho & Krähenbühl, "Long-tail Detection with Effective
Class-Margins", ECCV 2022; the formulas below are those of the authors' code,
janghyuncho/ECM-Loss ``mmdet/models/losses/effective_class_margin_loss.py`` and
``ecm_utils.py`` at commit a6372408, which the paper points to).

Shape shorthand: R ROIs, K foreground classes, logits (R, K + 1) with column K = background,
gt_classes (R,) in [0, K], class_counts (K,) training instance counts n_j (only their ratios
matter: counts or instance shares give the same loss).

The background is given the count ``n_K = fg_bg_ratio * sum_j n_j`` (the reference's
empirical background-to-foreground ROI ratio of Mask R-CNN, 6.3313), so every one of the K + 1
columns c has n_c positives and ``N_c = sum_{c'} n_{c'} - n_c`` negatives. The reference's
margins and weights (``compute_weight``, ``get_detection_weight``)::

    m+_c = log(1 + (n_c / N_c) ** (1/4)),    m-_c = log(1 + (N_c / n_c) ** (1/4)),
    a_c = N_c / n_c,                         w_c = a_c * log((1 + a_c) / a_c),

and the loss of ROI i is a two-sided sigmoid over every column, weighted per column::

    l_i = - sum_{c <= K} w_c * log q_ic(t_ic),
    q_ic(1) = e^{z + m+} / (e^{z + m+} + e^{-z + m-}) = sigmoid(2 z_ic + s_c),
    s_c = m+_c - m-_c = (1/4) log(n_c / N_c),

i.e. ``sum_c w_c * BCE(sigmoid(2 z_ic + s_c), [y_i == c])``; "mean" divides the sum over ROIs
by R (the reference's ``sum / B``). Rare classes get a large negative s (a positive must clear a
wide margin) and a weight near 1; the background column (a_K = 1 / fg_bg_ratio) weighs ~0.31.
Column K is trained like a class, with target 1 on background ROIs.

At inference the margins are dropped and, as the reference's ``get_activation``, every class
score is ``sigmoid(z_j) * (1 - sigmoid(z_K))`` (the raw logits, not 2 z).

The reference reads the counts from ``lvis_v1_image_count.pkl``, whose 1203 values are LVIS v1
train's ``instance_count`` (not ``image_count``), so lt_det counts instances of DATASETS.TRAIN.
Differences from the reference: docs/peers.md.
"""
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from ...errors import LTDetError
from ._fused import _reduce, _row_scale, _softplus, _subtract_at
from .base import ClsLoss, check_logits_and_labels, check_reduction, empty_loss
from .eqlv2 import eqlv2_probs, objectness_product_nll
from .registry import register_cls_loss

__all__ = ["ecm_margins", "ecm_loss", "ecm_per_roi", "ECMLoss"]

#: The reference's background-to-foreground sample ratio ("empirical fg-bg ratio from Mask-RCNN").
FG_BG_RATIO = 6.3313

# Rows per chunk of the softplus reduction (as in _fused.py): the temporaries stay in cache.
_CHUNK_ELEMS = 1 << 16


def ecm_margins(
    class_counts: torch.Tensor, fg_bg_ratio: float = FG_BG_RATIO
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The (K + 1,) logit shift s and column weight w of the ECM loss (module docstring).

    Args:
        class_counts: (K,) positive training counts n_j (only ratios matter).
        fg_bg_ratio: background count over the sum of the foreground counts, > 0.

    Returns:
        (shift, weight), each (K + 1,) in the dtype of ``class_counts`` (computed in float64);
        column K is the background's.

    Raises:
        ValueError: a count that is not finite and > 0, or ``fg_bg_ratio`` <= 0.
    """
    if not fg_bg_ratio > 0:
        raise ValueError(f"ECM fg_bg_ratio must be > 0, got {fg_bg_ratio}")
    n = class_counts.detach().to(torch.float64)
    if not bool((torch.isfinite(n) & (n > 0)).all()):
        bad = torch.nonzero(~(torch.isfinite(n) & (n > 0))).flatten().tolist()
        raise ValueError(
            f"ECM class_counts must be finite and > 0; classes {bad[:20]} are not (zero counts: "
            "floor them, MODEL.ROI_BOX_HEAD.PRIOR.ZERO_COUNT_FLOOR)."
        )
    n = torch.cat([n, n.sum().view(1) * fg_bg_ratio])
    n_neg = n.sum() - n
    shift = 0.25 * (n / n_neg).log()
    a = n_neg / n
    weight = a * torch.log1p(1.0 / a)
    return shift.to(class_counts.dtype), weight.to(class_counts.dtype)


class _MarginSigmoidCE(torch.autograd.Function):
    """Per-ROI ``sum_{c <= K} w_c * BCE(2 z_c + s_c, [y == c])`` over all K + 1 columns.

    ``apply(logits, gt_classes, shift, weight, reduction)``: ``shift`` / ``weight`` (K + 1,) in
    the maths dtype (``promote_types(logits.dtype, float32)``). One (R, K + 1) buffer holds
    x = 2 z + s in the forward pass and becomes the gradient ``2 w_c (sigmoid(x) - t)`` in place
    in the backward pass (the pattern of ``_fused.py``); differentiable once.
    """

    @staticmethod
    def _shifted(logits, shift, out):
        return torch.add(shift, logits, alpha=2.0, out=out)

    @staticmethod
    def forward(ctx, logits, gt_classes, shift, weight, reduction="none"):
        r, c = logits.shape
        buf = logits.new_empty((r, c), dtype=shift.dtype)
        x = _MarginSigmoidCE._shifted(logits, shift, buf)
        per_roi = logits.new_empty(r, dtype=shift.dtype)
        step = max(1, _CHUNK_ELEMS // max(c, 1))
        for start in range(0, r, step):
            torch.mv(_softplus(x[start : start + step]), weight, out=per_roi[start : start + step])
        idx = gt_classes.view(-1, 1)
        per_roi -= weight[gt_classes] * x.gather(1, idx).squeeze(1)
        ctx.save_for_backward(logits, gt_classes, shift, weight)
        ctx.buffer = buf  # handed over as the gradient by the first backward
        ctx.reduction = reduction
        return _reduce(per_roi, reduction)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        logits, gt_classes, shift, weight = ctx.saved_tensors
        if ctx.buffer is not None:
            grad, ctx.buffer = ctx.buffer, None
        else:  # the buffer was used by an earlier backward: recompute x
            grad = _MarginSigmoidCE._shifted(
                logits, shift, logits.new_empty(logits.shape, dtype=shift.dtype)
            )
        r, c = grad.shape
        scale = _row_scale(grad_out, r, ctx.reduction)
        factor = 2.0 * weight * scale if scale.dim() == 0 else 2.0 * weight
        rows = None if scale.dim() == 0 else scale.to(grad.dtype)  # reduction "none": (R, 1)
        step = max(1, _CHUNK_ELEMS // max(c, 1))
        for start in range(0, r, step):  # chunks that stay in cache
            g = grad[start : start + step].sigmoid_()
            _subtract_at(g, gt_classes[start : start + step], 1.0)
            g.mul_(factor)
            if rows is not None:
                g.mul_(rows[start : start + step])
        return grad.to(logits.dtype), None, None, None, None


def ecm_loss(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    class_counts: torch.Tensor,
    *,
    fg_bg_ratio: float = FG_BG_RATIO,
    reduction: str = "mean",
) -> torch.Tensor:
    """ECM loss (module docstring), training form: one fused pass, differentiable once
    (:func:`ecm_per_roi` gives the same values from plain ops).

    Args:
        logits: (R, K + 1) classifier outputs; column K (background) is trained too. Not
            modified.
        gt_classes: (R,) int64 labels in [0, K].
        class_counts: (K,) positive training instance counts (or shares; only ratios matter).
        fg_bg_ratio: background count / sum of foreground counts (> 0; 6.3313, the reference's).
        reduction: "mean" (per-ROI sums averaged over R) | "sum" | "none" ((R,)).

    Returns:
        Scalar loss, or (R,) for ``reduction="none"``; an empty batch gives ``logits.sum() * 0``.

    Raises:
        ValueError: logits not (R, K + 1) for the K of the counts, a label outside [0, K], a
            count that is not > 0, or ``fg_bg_ratio`` <= 0.
    """
    check_reduction(reduction)
    check_logits_and_labels(logits, gt_classes, class_counts.shape[0], owner="ecm_loss")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    shift, weight = ecm_margins(class_counts.to(device=logits.device, dtype=dtype), fg_bg_ratio)
    if gt_classes.numel() == 0:
        return empty_loss(logits, reduction)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return _MarginSigmoidCE.apply(logits, gt_classes, shift, weight, reduction)


def ecm_per_roi(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    class_counts: torch.Tensor,
    *,
    fg_bg_ratio: float = FG_BG_RATIO,
) -> torch.Tensor:
    """(R,) per-ROI losses of :func:`ecm_loss` from plain torch ops (twice differentiable).
    Arguments as :func:`ecm_loss`; no input checks."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    shift, weight = ecm_margins(class_counts.to(device=logits.device, dtype=dtype), fg_bg_ratio)
    x = 2.0 * logits.to(dtype) + shift
    target = F.one_hot(gt_classes, logits.shape[1]).to(dtype)
    bce = F.binary_cross_entropy_with_logits(x, target, reduction="none")
    return (bce * weight).sum(dim=1)


@register_cls_loss("ecm")
class ECMLoss(ClsLoss):
    """Module form of :func:`ecm_loss`; scores are ``sigmoid(z_j) * (1 - sigmoid(z_K))``.

    The classifier bias keeps detectron2's zero initialisation (the reference's normalised
    linear classifier starts at bias 0); ``MODEL.ROI_BOX_HEAD.SIGMOID_BIAS_PRIOR_PROB`` is not
    read.
    """

    activation = "sigmoid"

    def __init__(
        self,
        *,
        num_classes: int,
        class_prior: Optional[torch.Tensor] = None,
        class_counts: Optional[Sequence[float]] = None,
        fg_bg_ratio: float = FG_BG_RATIO,
    ):
        """
        Args:
            num_classes: K.
            class_prior: (K,) prior; used as the counts (its ratios) when ``class_counts`` is
                None, else stored and unused.
            class_counts: K positive training instance counts (from DATASETS.TRAIN when built
                from a config, zero counts floored by MODEL.ROI_BOX_HEAD.PRIOR.ZERO_COUNT_FLOOR);
                saved as the buffer ``class_counts``.
            fg_bg_ratio: MODEL.ROI_BOX_HEAD.ECM.FG_BG_RATIO, > 0.

        Raises:
            LTDetError: ``fg_bg_ratio`` <= 0, no counts, counts of another length or not > 0.
        """
        super().__init__(num_classes=num_classes, class_prior=class_prior)
        if not fg_bg_ratio > 0:
            raise LTDetError(f"MODEL.ROI_BOX_HEAD.ECM.FG_BG_RATIO must be > 0, got {fg_bg_ratio}")
        source = class_counts if class_counts is not None else self.class_prior
        if source is None:
            raise LTDetError(
                "ECMLoss needs class_counts (K training instance counts) or a class_prior."
            )
        counts = torch.as_tensor(source, dtype=torch.float32).detach().clone().flatten()
        if counts.shape != (self.num_classes,):
            raise LTDetError(
                f"ECMLoss: {counts.numel()} class counts for num_classes={self.num_classes}."
            )
        try:
            ecm_margins(counts, fg_bg_ratio)
        except ValueError as e:
            raise LTDetError(str(e)) from None
        self.fg_bg_ratio = float(fg_bg_ratio)
        self.register_buffer("class_counts", counts)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        from ...data.train_stats import train_class_stats
        from ..priors import class_prior_from_counts

        ret = super().from_config(cfg)
        train = list(cfg.DATASETS.TRAIN)
        stats = train_class_stats(train, cfg.MODEL.ROI_HEADS.NUM_CLASSES)
        shares = class_prior_from_counts(  # instance shares, zero counts floored (warned)
            stats.instance_counts,
            max(sum(stats.instance_counts), 1),
            zero_count_floor=cfg.MODEL.ROI_BOX_HEAD.PRIOR.ZERO_COUNT_FLOOR,
            source=f"the instance counts of DATASETS.TRAIN {train} (ECM)",
        )
        ret.update(class_counts=shares, fg_bg_ratio=cfg.MODEL.ROI_BOX_HEAD.ECM.FG_BG_RATIO)
        return ret

    def margins(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(shift (K + 1,), weight (K + 1,)) of :func:`ecm_margins` for this module's counts."""
        return ecm_margins(self.class_counts, self.fg_bg_ratio)

    def forward(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, *, reduction: str = "mean"
    ) -> torch.Tensor:
        return ecm_loss(
            logits,
            gt_classes,
            self.class_counts,
            fg_bg_ratio=self.fg_bg_ratio,
            reduction=reduction,
        )

    def per_roi(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """(R,) losses with plain differentiable ops; ``forward`` is their mean."""
        return ecm_per_roi(logits, gt_classes, self.class_counts, fg_bg_ratio=self.fg_bg_ratio)

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return eqlv2_probs(logits, test_with_obj=True)

    def plain_per_roi(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """(R,) Bernoulli negative log-likelihood of the K scores of :meth:`predict_probs`."""
        return objectness_product_nll(logits, gt_classes)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fg_bg_ratio={self.fg_bg_ratio:g}"
