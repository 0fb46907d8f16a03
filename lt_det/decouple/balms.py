"""BALMS wiring: the per-ROI loss the Meta Sampler's inner step differentiates (twice).

The heads' loss modules use fused autograd Functions for speed, which ``torch.func`` cannot
differentiate twice. The meta-gradient therefore uses the same losses written with plain
differentiable ops (same values; checked in tests/test_decouple.py).

Shape shorthand: R ROIs, K foreground classes, logits (R, K + 1), gt_classes (R,) in [0, K].
"""
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import LTDetError

__all__ = ["per_roi_loss_for_meta"]

PerRoiLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _sigmoid_per_roi(logits, gt_classes, log_odds):
    k = logits.shape[1] - 1
    fg_logits = logits[:, :k]
    is_fg = gt_classes < k
    if log_odds is not None:
        fg_logits = fg_logits + is_fg.to(logits.dtype)[:, None] * log_odds
    targets = F.one_hot(gt_classes, k + 1)[:, :k].to(logits.dtype)
    return F.binary_cross_entropy_with_logits(fg_logits, targets, reduction="none").sum(dim=1)


def per_roi_loss_for_meta(cls_loss: nn.Module) -> PerRoiLoss:
    """A twice-differentiable ``(logits (R, K+1), gt_classes (R,)) -> (R,)`` loss equal to
    ``cls_loss`` (a registered ``ClsLoss`` module of the box predictor) per ROI.

    Raises:
        LTDetError: for a loss without a plain form here (add one for a new loss).
    """
    name = getattr(cls_loss, "loss_name", None)
    if name == "softmax_ce":
        return lambda logits, gt: F.cross_entropy(logits, gt, reduction="none")
    if name == "balanced_softmax":
        from ..modeling.losses import balanced_softmax_shift

        shift = balanced_softmax_shift(cls_loss.class_prior, background=cls_loss.background)
        return lambda logits, gt: F.cross_entropy(logits + shift.to(logits), gt, reduction="none")
    if name == "sigmoid_ce":
        return lambda logits, gt: _sigmoid_per_roi(logits, gt, None)
    if name == "balanced_sigmoid":
        prior = cls_loss.class_prior.clamp(1e-6, 1 - 1e-6)
        log_odds = torch.log(prior) - torch.log1p(-prior)
        return lambda logits, gt: _sigmoid_per_roi(logits, gt, log_odds.to(logits))
    raise LTDetError(
        f"The Meta Sampler has no plain per-ROI form of the loss {name!r} "
        "(MODEL.ROI_BOX_HEAD.CLS_LOSS); add one in lt_det/decouple/balms.py."
    )
