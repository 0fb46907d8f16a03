"""Pairwise Class Balance, PCB (He et al., "Relieving Long-tailed Instance Segmentation via
Pairwise Class Balance", CVPR 2022; reference code megvii-research/PCB at 066cd923,
``mmdet/models/losses/cross_entropy_pcb_loss.py`` (``CrossEntropyPCBLoss``) and
``mmdet/models/losses/seesaw_pcb_loss.py`` (``SeesawPCBLoss``)).

Shape shorthand: R ROIs, K foreground classes, logits (R, K + 1) with column K = background,
gt_classes (R,) in [0, K], confusion (K, K) with row = ground-truth class and column = predicted
class, counts (K,) accumulated numbers of foreground ROIs per class.

State. After each training batch, for every class i with n_i > 0 foreground ROIs in the batch
(summed over ranks), with b_i the mean over those ROIs of the softmax over the K foreground
logits (the background column left out):

    M_i <- m * M_i + (1 - m) * b_i,    then M_i <- M_i / sum_j M_ij

(m = MOMENTUM, 0.99; rows of classes absent from the batch are left as they are; a row starts at
0, so its first update sets it to b_i.) The counts N_i add n_i.

Soft targets ("fightback" labels): for a foreground ROI of class y, column y of M normalised over
the ground-truth classes, so that classes whose ROIs are often predicted as y get the mass:

    t_y[c] = M_cy / sum_i M_iy,    c in [0, K);    background column 0.

(A column of zero mass, possible only after the softmax underflowed, gives the one-hot target.)

Loss. A foreground ROI of class y:

    (1 - alpha) * base(z, y) + alpha * KL(t_y || softmax(z')),

background ROIs the base loss alone, averaged over all R ROIs (the reference's ``avg_factor``).
Base "softmax_ce": base = softmax CE over K + 1 and z' = z (``CrossEntropyPCBLoss``, alpha 0.4 in
its LVIS configs). Base "seesaw": base = lt_det's Seesaw loss and z' = z + its shift
(``SeesawPCBLoss``, alpha 0.05; the seesaw counts N are ``counts``). The KL divergence is the
soft-target cross-entropy minus the entropy of t_y, a constant of the logits (``SeesawPCBLoss``
reports the cross-entropy; gradients equal). alpha = 0 gives the base loss exactly.

Schedule. The matrix is updated from the first iteration; the regulariser is on from iteration
``start_iter`` (``round(START * SOLVER.MAX_ITER)``; the reference: epoch 17 of a 24-epoch
schedule) once every class has had a foreground ROI (N_i > 0 for all i), before that the loss is
the base loss. The statistics are added after the batch's loss was computed with the state as it
was (the reference adds the batch first); the state is a buffer saved with checkpoints and summed
over ranks only when the world size is above one.

Inference: softmax over K + 1 (the reference's ``get_activation``); PCB changes training only.

Not reproduced: the reference's iterative box head (``IterativeRoIHead``: three passes of the box
head, the loss on each with alpha scaled by 0, 1/2, 1 and weights 0.2, 0.2, 0.6, and the matrix
updated on each pass); lt_det's single pass is its last one (full alpha, one update per
iteration). Differences from the reference: docs/peers.md.
"""
import logging
from typing import Any, Dict, Optional, Tuple

import torch
from detectron2.config import CfgNode
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from ._state import all_reduce_sum_
from .base import ClsLoss, check_logits_and_labels, check_reduction, empty_loss, reduce_per_roi
from .ldam import _current_iteration
from .registry import register_cls_loss
from .seesaw import seesaw_loss, seesaw_shift

logger = logging.getLogger(__name__)

__all__ = [
    "PCB_BASES",
    "pcb_loss",
    "pcb_per_roi",
    "pcb_soft_targets",
    "pcb_batch_statistics",
    "pcb_update_confusion_",
    "PCBLoss",
]

#: Base losses the regulariser is added to (MODEL.ROI_BOX_HEAD.PCB.BASE).
PCB_BASES = ("softmax_ce", "seesaw")


def pcb_soft_targets(
    confusion: torch.Tensor, classes: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(targets (U, K), entropy (U,)) of the classes ``classes`` (U,) (None: all K, U = K) from
    the confusion matrix M (K, K), in M's dtype.

    Row u of ``targets`` is t_y for y = ``classes[u]`` (module docstring): column y of M divided
    by its sum c_y (the one-hot e_y where c_y = 0); ``entropy[u] = -sum_c t_y[c] log t_y[c]``
    (0 log 0 = 0), computed as ``log c_y - sum_c M_cy log M_cy / c_y`` (0 where c_y = 0).
    """
    k = confusion.shape[0]
    if classes is None:
        classes = torch.arange(k, device=confusion.device)
    tiny = torch.finfo(confusion.dtype).tiny
    cols = confusion.index_select(1, classes)  # (K, U)
    col = cols.sum(dim=0)
    empty = col <= 0
    col.clamp_(min=tiny)
    m_log_m = cols.clamp(min=tiny).log_().mul_(cols).sum(dim=0)
    entropy = col.log().sub_(m_log_m.div_(col)).masked_fill_(empty, 0.0)
    # divide and transpose in one pass, into rows
    targets = torch.div(cols.t(), col.view(-1, 1), out=cols.new_empty((len(classes), k)))
    if bool(empty.any()):
        targets[empty] = F.one_hot(classes[empty], k).to(targets.dtype)
    return targets, entropy


def _check(logits, gt_classes, confusion, alpha, base, counts, owner) -> None:
    check_logits_and_labels(logits, gt_classes, confusion.shape[0], owner=owner)
    if confusion.dim() != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"{owner}: confusion must be (K, K), got {tuple(confusion.shape)}.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{owner}: alpha must lie in [0, 1], got {alpha}.")
    if base not in PCB_BASES:
        raise ValueError(f"{owner}: base must be one of {PCB_BASES}, got {base!r}.")
    if base == "seesaw" and counts is None:
        raise ValueError(f"{owner}: base 'seesaw' needs counts, the (K,) seesaw class counts.")


def pcb_loss(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    confusion: torch.Tensor,
    *,
    alpha: float = 0.4,
    base: str = "softmax_ce",
    counts: Optional[torch.Tensor] = None,
    p: float = 0.8,
    q: float = 2.0,
    eps: float = 1e-2,
    reduction: str = "mean",
) -> torch.Tensor:
    """PCB loss (module docstring): the base loss with the regulariser of weight ``alpha``.

    Args:
        logits: (R, K + 1) classifier outputs; column K is background. Not modified.
        gt_classes: (R,) int64 labels in [0, K].
        confusion: (K, K) confusion matrix M (rows: ground-truth class; non-negative), read only.
        alpha: weight of the regulariser, in [0, 1]; 0 gives the base loss (M is not read).
        base: "softmax_ce" | "seesaw".
        counts: (K,) seesaw class counts N (>= 0); required for base "seesaw".
        p, q, eps: the Seesaw loss's exponents and floor (base "seesaw" only).
        reduction: "mean" (over R) | "sum" | "none" ((R,)).

    Returns:
        Scalar loss, or (R,) for ``reduction="none"``; an empty batch gives ``logits.sum() * 0``.

    Raises:
        ValueError: logits not (R, K + 1) for the K of ``confusion``, a label outside [0, K],
            ``alpha`` outside [0, 1], an unknown ``base`` or missing seesaw counts.
    """
    check_reduction(reduction)
    _check(logits, gt_classes, confusion, alpha, base, counts, "pcb_loss")
    if gt_classes.numel() == 0:
        return empty_loss(logits, reduction)
    k = confusion.shape[0]
    rows = (gt_classes < k).nonzero().view(-1)
    if alpha == 0 or rows.numel() == 0:  # the base loss, computed as the base module does
        if base == "seesaw":
            return seesaw_loss(
                logits, gt_classes, counts, p=p, q=q, eps=eps, reduction=reduction
            )
        return F.cross_entropy(logits, gt_classes, reduction=reduction)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    # soft targets of the classes present only; ``which`` maps each foreground ROI to its row
    classes, which = torch.unique(gt_classes.index_select(0, rows), return_inverse=True)
    targets, entropy = pcb_soft_targets(confusion.to(device=logits.device, dtype=dtype), classes)
    shift = None
    if base == "seesaw":
        shift = seesaw_shift(logits, gt_classes, counts, p=p, q=q, eps=eps)
    if rows.numel() == gt_classes.numel():
        rows = None  # every ROI is foreground: no row selection
    with torch.autocast(device_type=logits.device.type, enabled=False):
        per_roi = _PCBCE.apply(
            logits.to(dtype), gt_classes, shift, rows, which, targets, entropy, float(alpha)
        )
    return reduce_per_roi(per_roi, reduction)


#: Rows per block of the (rows, K) temporaries (gathered soft targets, foreground softmax): a
#: block stays in cache and no (R, K) buffer is allocated besides the softmax.
_BLOCK = 1024


def _blocks(n: int):
    return ((i, min(i + _BLOCK, n)) for i in range(0, n, _BLOCK))


class _PCBCE(torch.autograd.Function):
    """Per-ROI ``-log softmax(z')[y]`` (z' = z + shift) with, on the foreground rows ``rows``
    (None: all), ``(1 - alpha) * that + alpha * (-sum_c t[c] log softmax(z')_c - H)``, t and H
    the row ``which`` of ``targets`` (U, K) and ``entropy`` (U,); written with lse =
    logsumexp(z') as ``lse - (1 - alpha) z'_y - alpha (t . z' + H)`` (t sums to 1).

    One (R, C) buffer holds softmax(z') (the ``shift`` buffer when given, taken over) and becomes
    the gradient in the backward pass, ``softmax(z') - (1 - a) e_y - a t`` (a = alpha on
    foreground rows, 0 elsewhere); lse is read off it as ``max z' - log max softmax(z')`` (the
    largest probability is at least 1 / C, so its log is exact to rounding). The gathered
    targets are made block by block. Differentiable once."""

    @staticmethod
    def forward(ctx, logits, gt_classes, shift, rows, which, targets, entropy, alpha):
        z = logits if shift is None else shift.add_(logits)
        k = targets.shape[1]
        idx = gt_classes.view(-1, 1)
        lse = torch.amax(z, dim=1)
        z_y = z.gather(1, idx).squeeze(1)
        dot = z.new_empty(len(which))  # t . z' of the foreground rows
        for i, j in _blocks(len(which)):
            block = z[i:j] if rows is None else z.index_select(0, rows[i:j])
            dot[i:j] = targets.index_select(0, which[i:j]).mul_(block[:, :k]).sum(dim=1)
        if shift is None:
            probs = torch.softmax(z, dim=1)
        elif z.device.type == "cpu":
            probs = torch.softmax(z, dim=1, out=z)
        else:
            probs = torch.softmax(z, dim=1)
        lse.sub_(torch.amax(probs, dim=1).log_())
        soft = dot.add_(entropy.index_select(0, which))
        if rows is None:
            per_roi = lse.sub_(z_y.mul_(1.0 - alpha).add_(soft, alpha=alpha))
        else:
            fg = z_y.index_select(0, rows).mul_(1.0 - alpha).add_(soft, alpha=alpha)
            fg = lse.index_select(0, rows).sub_(fg)
            per_roi = lse.sub_(z_y).index_copy_(0, rows, fg)
        ctx.save_for_backward(gt_classes, rows, which, targets)
        ctx.alpha, ctx.buffer = alpha, probs
        return per_roi

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        gt_classes, rows, which, targets = ctx.saved_tensors
        if ctx.buffer is None:
            raise RuntimeError("pcb_loss: the graph was already backpropagated once.")
        grad, ctx.buffer, alpha = ctx.buffer, None, ctx.alpha
        k = targets.shape[1]
        idx = gt_classes.view(-1, 1)
        if rows is None:
            grad.scatter_(1, idx, grad.gather(1, idx) - (1.0 - alpha))
            for i, j in _blocks(len(which)):
                grad[i:j, :k].sub_(targets.index_select(0, which[i:j]), alpha=alpha)
        else:
            hard_weight = torch.ones_like(grad[:, 0]).index_fill_(0, rows, 1.0 - alpha)
            grad.scatter_(1, idx, grad.gather(1, idx) - hard_weight.view(-1, 1))
            for i, j in _blocks(len(which)):
                t = targets.index_select(0, which[i:j])
                grad[:, :k].index_add_(0, rows[i:j], t, alpha=-alpha)
        grad.mul_(grad_out.reshape(-1, 1))
        return grad, None, None, None, None, None, None, None


def pcb_per_roi(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    confusion: torch.Tensor,
    *,
    alpha: float = 0.4,
    base: str = "softmax_ce",
    counts: Optional[torch.Tensor] = None,
    p: float = 0.8,
    q: float = 2.0,
    eps: float = 1e-2,
) -> torch.Tensor:
    """(R,) per-ROI losses of :func:`pcb_loss` from plain torch ops (twice differentiable; the
    soft targets and the seesaw shift are constants). Arguments as :func:`pcb_loss`; no input
    checks."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    z = logits.to(dtype)
    if base == "seesaw":
        z = z + seesaw_shift(logits, gt_classes, counts, p=p, q=q, eps=eps).to(dtype)
    logp = F.log_softmax(z, dim=1)
    hard = -logp.gather(1, gt_classes.view(-1, 1)).squeeze(1)
    if alpha == 0:
        return hard
    k = confusion.shape[0]
    targets, entropy = pcb_soft_targets(confusion.to(device=logits.device, dtype=dtype))
    y = gt_classes.clamp(max=k - 1)  # background rows: any row, not used
    soft = -(logp[:, :k] * targets[y]).sum(dim=1) - entropy[y]
    return torch.where(gt_classes < k, (1.0 - alpha) * hard + alpha * soft, hard)


@torch.no_grad()
def pcb_batch_statistics(
    logits: torch.Tensor, gt_classes: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """This batch's (sums (K, K), n (K,)), float32 or wider: ``sums[i]`` the sum of the
    foreground softmax (over the first K logits) of the ROIs of class i, ``n[i]`` their number.
    Background ROIs are not counted."""
    k = logits.shape[1] - 1
    dtype = torch.promote_types(logits.dtype, torch.float32)
    rows = (gt_classes < k).nonzero().view(-1)
    y = gt_classes.index_select(0, rows)
    sums = logits.new_zeros((k, k), dtype=dtype)
    for i, j in _blocks(len(rows)):
        block = logits[:, :k].index_select(0, rows[i:j]).to(dtype)
        if block.device.type == "cpu":
            block = torch.softmax(block, dim=1, out=block)
        else:
            block = torch.softmax(block, dim=1)
        sums.index_add_(0, y[i:j], block)
    n = torch.bincount(y, minlength=k).to(dtype)
    return sums, n


@torch.no_grad()
def pcb_update_confusion_(
    confusion: torch.Tensor, sums: torch.Tensor, n: torch.Tensor, *, momentum: float = 0.99
) -> torch.Tensor:
    """Update M (K, K) in place from one batch's (sums, n) (module docstring) and return it:
    the rows of classes with n_i > 0 become ``m M_i + (1 - m) sums_i / n_i``, renormalised to
    sum 1; the others are left as they are. ``momentum`` in [0, 1)."""
    seen = (n > 0).nonzero().view(-1)
    if seen.numel() == 0:
        return confusion
    batch = sums.index_select(0, seen).to(confusion)
    batch /= n.index_select(0, seen).to(confusion).view(-1, 1)
    rows = confusion.index_select(0, seen).mul_(momentum).add_(batch, alpha=1.0 - momentum)
    rows.div_(rows.sum(dim=1, keepdim=True))
    return confusion.index_copy_(0, seen, rows)


@register_cls_loss("pcb")
class PCBLoss(ClsLoss):
    """Module form of :func:`pcb_loss` holding the state as buffers (``confusion`` (K, K) and
    ``counts`` (K,), float32); scores are softmax over K + 1.

    ``forward`` computes the loss with the current state (the regulariser on from iteration
    ``start_iter`` of detectron2's training loop, once every class has a count; outside a
    training loop the iteration counts as 0), then adds this batch's statistics (summed over
    ranks) whenever the loss is computed for training (grad enabled and the logits require grad;
    the module itself may be in eval mode, as in a decoupled stage 2).
    """

    #: The soft targets (and, for base "seesaw", the compensation factor) are constants of the
    #: gradient, so second derivatives are those of the loss with them held fixed.
    detached_terms = True

    def __init__(
        self,
        *,
        num_classes: int,
        class_prior=None,
        alpha: float = 0.4,
        momentum: float = 0.99,
        start_iter: int = 0,
        base: str = "softmax_ce",
        p: float = 0.8,
        q: float = 2.0,
        eps: float = 1e-2,
    ):
        """
        Args:
            num_classes: K.
            class_prior: unused (stored when given).
            alpha: regulariser weight (MODEL.ROI_BOX_HEAD.PCB.ALPHA), in [0, 1].
            momentum: of the matrix rows (MODEL.ROI_BOX_HEAD.PCB.MOMENTUM), in [0, 1).
            start_iter: first iteration with the regulariser (>= 0; from_config:
                round(MODEL.ROI_BOX_HEAD.PCB.START * SOLVER.MAX_ITER)).
            base: "softmax_ce" | "seesaw" (MODEL.ROI_BOX_HEAD.PCB.BASE).
            p, q, eps: Seesaw's (MODEL.ROI_BOX_HEAD.SEESAW.{P, Q, EPS}); base "seesaw" only.
        """
        super().__init__(num_classes=num_classes, class_prior=class_prior)
        if not 0 <= alpha <= 1 or not 0 <= momentum < 1 or start_iter < 0:
            raise ValueError(
                "MODEL.ROI_BOX_HEAD.PCB: ALPHA must lie in [0, 1], MOMENTUM in [0, 1) and START "
                f"in [0, 1], got ALPHA={alpha}, MOMENTUM={momentum}, start iteration {start_iter}"
            )
        if base not in PCB_BASES:
            raise ValueError(
                f"MODEL.ROI_BOX_HEAD.PCB.BASE must be one of {PCB_BASES}, got {base!r}"
            )
        if p < 0 or q < 0 or not 0 < eps <= 1:
            raise ValueError(
                f"MODEL.ROI_BOX_HEAD.SEESAW: P and Q must be >= 0 and EPS in (0, 1], got "
                f"P={p}, Q={q}, EPS={eps}"
            )
        self.alpha, self.momentum = float(alpha), float(momentum)
        self.start_iter, self.base = int(start_iter), base
        self.p, self.q, self.eps = float(p), float(q), float(eps)
        k = self.num_classes
        self.register_buffer("confusion", torch.zeros(k, k))
        self.register_buffer("counts", torch.zeros(k))
        self._logged = set()  # schedule lines already written ("waiting", "on")

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        ret = super().from_config(cfg)
        node, seesaw = cfg.MODEL.ROI_BOX_HEAD.PCB, cfg.MODEL.ROI_BOX_HEAD.SEESAW
        if not 0 <= node.START <= 1:
            raise ValueError(f"MODEL.ROI_BOX_HEAD.PCB.START must lie in [0, 1], got {node.START}")
        ret.update(
            alpha=node.ALPHA,
            momentum=node.MOMENTUM,
            start_iter=int(round(node.START * cfg.SOLVER.MAX_ITER)),
            base=node.BASE,
            p=seesaw.P,
            q=seesaw.Q,
            eps=seesaw.EPS,
        )
        return ret

    def current_alpha(self) -> float:
        """The regulariser weight of the next loss: ``alpha`` from iteration ``start_iter`` on
        once every class has a count, else 0."""
        if self.alpha == 0:
            return 0.0
        it = _current_iteration()
        if (0 if it is None else it) < self.start_iter or not bool((self.counts > 0).all()):
            return 0.0
        return self.alpha

    def _kwargs(self) -> Dict[str, Any]:
        return dict(
            alpha=self.current_alpha(), base=self.base, counts=self.counts, p=self.p, q=self.q,
            eps=self.eps,
        )

    def forward(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, *, reduction: str = "mean"
    ) -> torch.Tensor:
        kwargs = self._kwargs()
        loss = pcb_loss(logits, gt_classes, self.confusion, reduction=reduction, **kwargs)
        if torch.is_grad_enabled() and logits.requires_grad:  # a loss that will be trained on
            self._log_schedule(kwargs["alpha"])
            self.update_state_(logits, gt_classes)
        return loss

    def _log_schedule(self, alpha: float) -> None:
        """One log line when the regulariser comes on, and one if, at ``start_iter``, it must
        still wait for classes that no ROI has been labelled with yet."""
        it = _current_iteration()
        if self.alpha == 0 or it is None or it < self.start_iter:
            return
        if alpha > 0 and "on" not in self._logged:
            self._logged.add("on")
            logger.info(f"PCB: the confusion regulariser (alpha={self.alpha:g}) is on from "
                        f"iteration {it}.")
        elif alpha == 0 and "waiting" not in self._logged:
            self._logged.add("waiting")
            missing = int((self.counts == 0).sum())
            logger.info(
                f"PCB: iteration {it} reached START, but {missing} of {self.num_classes} classes "
                "have had no ROI labelled with them yet; the regulariser starts once every class "
                "has had one."
            )

    @torch.no_grad()
    def update_state_(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> None:
        """Add this batch's statistics (:func:`pcb_batch_statistics`, summed over ranks) to the
        matrix (:func:`pcb_update_confusion_`) and the counts."""
        sums, n = pcb_batch_statistics(logits.detach(), gt_classes)
        sums, n = all_reduce_sum_(sums.to(self.confusion)), all_reduce_sum_(n.to(self.counts))
        pcb_update_confusion_(self.confusion, sums, n, momentum=self.momentum)
        self.counts += n

    def per_roi(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """(R,) losses with the current state and plain differentiable ops (no state change)."""
        return pcb_per_roi(logits, gt_classes, self.confusion, **self._kwargs())

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, base={self.base}, alpha={self.alpha:g}, "
            f"momentum={self.momentum:g}, start_iter={self.start_iter}"
        )
