"""Seesaw loss (Wang et al., "Seesaw Loss for Long-Tailed Instance Segmentation", CVPR 2021,
eq. 2-5).

Shape shorthand: R ROIs, K foreground classes, logits (R, K + 1) with column K = background,
gt_classes (R,) in [0, K], counts (K,) accumulated numbers of foreground ROIs per class.

Softmax cross-entropy in which, for a ROI of class i, the exponential of every other foreground
class j is multiplied by S_ij = M_ij * C_ij:

    M_ij = (N_j / N_i) ** p  if N_i > N_j else 1      (mitigation; N accumulated counts)
    C_ij = (sigma_j / sigma_i) ** q  if sigma_j > sigma_i else 1   (compensation)

sigma the softmax probabilities of the (detached) logits. In logits this is the additive shift

    log S_ij = -p * max(0, log N_i - log N_j) + q * max(0, z_j - max(z_i, lse + log eps)),

lse the log-sum-exp of the K foreground logits (the reference clamps sigma_i at eps = 0.01 before
dividing). Defaults p = 0.8, q = 2 (the paper's). p = q = 0 gives plain softmax CE.

Background: the paper's head adds a separate 2-way objectness branch; lt_det keeps detectron2's
K + 1 outputs, so the seesaw factors act among the foreground columns only: the background column
and background ROIs are plain cross-entropy (S = 1), and N counts foreground ROIs. Counts start at
0 (clamped to 1, so M = 1 at first) and are updated after the batch's loss was computed with the
counts as they were (the reference adds the batch first); they are a buffer saved with checkpoints
and summed over ranks only when the world size is above one.

The paper pairs the loss with a normalised linear (cosine) classifier:
``MODEL.ROI_BOX_HEAD.CLS_SCORE: normed_linear`` (see ``lt_det/modeling/box_predictor.py``).
"""
import math
from typing import Any, Dict

import torch
from detectron2.config import CfgNode
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from ._state import all_reduce_sum_
from .base import ClsLoss, check_logits_and_labels, check_reduction, empty_loss, reduce_per_roi
from .registry import register_cls_loss

__all__ = ["seesaw_loss", "seesaw_shift", "SeesawLoss"]


@torch.no_grad()
def seesaw_shift(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    counts: torch.Tensor,
    *,
    p: float = 0.8,
    q: float = 2.0,
    eps: float = 1e-2,
) -> torch.Tensor:
    """(R, K + 1) additive logit shift ``log S`` (module docstring), float32 or wider, constant.

    Zero in the ground-truth column, the background column and on background ROIs.
    """
    r, c = logits.shape
    k = c - 1
    dtype = torch.promote_types(logits.dtype, torch.float32)
    shift = logits.new_zeros((r, c), dtype=dtype)
    rows = (gt_classes < k).nonzero().view(-1)  # only foreground ROIs get a shift
    if rows.numel() == 0 or (p == 0 and q == 0):
        return shift
    z = logits.index_select(0, rows)[:, :k].to(dtype)
    y = gt_classes.index_select(0, rows).view(-1, 1)
    if q > 0:
        ref = torch.maximum(z.gather(1, y), torch.logsumexp(z, dim=1, keepdim=True) + math.log(eps))
        out = torch.sub(z, ref).clamp_(min=0)
    else:
        out = torch.zeros_like(z)
    if p > 0:
        log_n = torch.log(counts.to(device=logits.device, dtype=dtype).clamp(min=1))
        table = (log_n - log_n.view(-1, 1)).clamp_(max=0).mul_(p)  # (K, K) -M, row = own class
        # q * compensation - p * mitigation in one pass
        out = torch.add(table.index_select(0, y.view(-1)), out, alpha=q)
    elif q != 1:
        out.mul_(q)
    out.scatter_(1, y, 0.0)
    shift[:, :k].index_copy_(0, rows, out)
    return shift


def seesaw_loss(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    counts: torch.Tensor,
    *,
    p: float = 0.8,
    q: float = 2.0,
    eps: float = 1e-2,
    reduction: str = "mean",
) -> torch.Tensor:
    """Seesaw loss (module docstring): softmax CE of ``logits + seesaw_shift(...)``.

    Args:
        logits: (R, K + 1) classifier outputs; column K is background. Not modified.
        gt_classes: (R,) int64 labels in [0, K].
        counts: (K,) accumulated per-class foreground ROI counts N (>= 0).
        p, q: mitigation / compensation exponents (>= 0).
        eps: floor of sigma_i in the compensation ratio (0.01 in the reference).
        reduction: "mean" (over R) | "sum" | "none" ((R,)).

    Returns:
        Scalar loss, or (R,) for ``reduction="none"``; an empty batch gives ``logits.sum() * 0``.
    """
    check_reduction(reduction)
    check_logits_and_labels(logits, gt_classes, counts.shape[0], owner="seesaw_loss")
    if gt_classes.numel() == 0:
        return empty_loss(logits, reduction)
    shift = seesaw_shift(logits, gt_classes, counts, p=p, q=q, eps=eps)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        per_roi = _SeesawCE.apply(logits.to(shift.dtype), gt_classes, shift)
    return reduce_per_roi(per_roi, reduction)


class _SeesawCE(torch.autograd.Function):
    """Per-ROI ``-log softmax(z + shift)[y]`` that takes ownership of the (R, C) ``shift``
    buffer: z is added into it and its log-softmax, computed in place, becomes the gradient in
    the backward pass (one (R, C) buffer in all; differentiable once)."""

    @staticmethod
    def forward(ctx, logits, gt_classes, shift):
        logp = shift.add_(logits)
        if logp.device.type == "cpu":
            torch.log_softmax(logp, dim=1, out=logp)
        else:
            logp = torch.log_softmax(logp, dim=1)
        ctx.save_for_backward(gt_classes)
        ctx.buffer = logp
        return -logp.gather(1, gt_classes.view(-1, 1)).squeeze(1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        (gt_classes,) = ctx.saved_tensors
        if ctx.buffer is None:
            raise RuntimeError("seesaw_loss: the graph was already backpropagated once.")
        grad, ctx.buffer = ctx.buffer.exp_(), None
        idx = gt_classes.view(-1, 1)
        grad.scatter_(1, idx, grad.gather(1, idx) - 1.0)
        grad.mul_(grad_out.reshape(-1, 1))
        return grad, None, None


@register_cls_loss("seesaw")
class SeesawLoss(ClsLoss):
    """Module form of :func:`seesaw_loss` holding the counts N as the buffer ``counts`` (K,)
    float32; scores are softmax over K + 1.

    ``forward`` computes the loss with the current counts, then adds this batch's foreground
    ROIs per class (summed over ranks) whenever the loss is computed for training (grad enabled
    and the logits require grad; the module itself may be in eval mode, as in a decoupled
    stage 2).
    """

    #: The compensation factor is computed from detached logits (as the reference): a constant
    #: of the gradient, so second derivatives are those of the loss with the factor held fixed.
    detached_terms = True

    def __init__(
        self,
        *,
        num_classes: int,
        class_prior=None,
        p: float = 0.8,
        q: float = 2.0,
        eps: float = 1e-2,
    ):
        """
        Args:
            num_classes: K.
            class_prior: unused (stored when given).
            p, q: exponents (MODEL.ROI_BOX_HEAD.SEESAW.{P, Q}), >= 0.
            eps: compensation floor (MODEL.ROI_BOX_HEAD.SEESAW.EPS), in (0, 1].
        """
        super().__init__(num_classes=num_classes, class_prior=class_prior)
        if p < 0 or q < 0 or not 0 < eps <= 1:
            raise ValueError(
                f"MODEL.ROI_BOX_HEAD.SEESAW: P and Q must be >= 0 and EPS in (0, 1], got "
                f"P={p}, Q={q}, EPS={eps}"
            )
        self.p, self.q, self.eps = float(p), float(q), float(eps)
        self.register_buffer("counts", torch.zeros(self.num_classes))

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        ret = super().from_config(cfg)
        node = cfg.MODEL.ROI_BOX_HEAD.SEESAW
        ret.update(p=node.P, q=node.Q, eps=node.EPS)
        return ret

    def forward(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, *, reduction: str = "mean"
    ) -> torch.Tensor:
        loss = seesaw_loss(
            logits, gt_classes, self.counts, p=self.p, q=self.q, eps=self.eps, reduction=reduction
        )
        if torch.is_grad_enabled() and logits.requires_grad:  # a loss that will be trained on
            self.update_state_(gt_classes)
        return loss

    @torch.no_grad()
    def update_state_(self, gt_classes: torch.Tensor) -> None:
        """Add this batch's foreground ROIs per class (summed over ranks) to ``counts``."""
        fg = gt_classes[gt_classes < self.num_classes]
        batch = torch.bincount(fg, minlength=self.num_classes).to(self.counts)
        self.counts += all_reduce_sum_(batch)

    def per_roi(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """(R,) losses with the current counts and plain differentiable ops (no state change)."""
        shift = seesaw_shift(logits, gt_classes, self.counts, p=self.p, q=self.q, eps=self.eps)
        return F.cross_entropy(logits + shift.to(logits.dtype), gt_classes, reduction="none")

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, p={self.p:g}, q={self.q:g}, eps={self.eps:g}"
