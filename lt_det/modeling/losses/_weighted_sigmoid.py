"""Weighted per-class sigmoid cross-entropy, shared by EQL, EQLv2 and the federated loss.

Shape shorthand: R ROIs, K foreground classes, logits (R, K + 1) with column K = background
(ignored, as in every sigmoid loss of lt_det), gt_classes (R,) in [0, K], G row groups.

Per ROI i the loss is

    l_i = sum_{j < K, j != y_i} a[g_i, j] * softplus(z_ij)
          + [y_i < K] * b[y_i] * (softplus(z_iy) - z_iy)

i.e. ``sum_j w_ij * BCE(sigmoid(z_ij), [y_i == j])`` with the weight ``a[g_i, j]`` on the negative
columns (``a`` a (G, K) table, ``g_i`` the group of row i) and ``b[y]`` on the positive column.
The negative table is per group so that one function serves a per-class weight (EQLv2: G = 1), a
foreground/background switch (EQL: G = 2) and a per-image class set (federated: G = images).

:func:`weighted_sigmoid_ce_per_roi` writes this with plain differentiable ops (twice
differentiable; the ``per_roi`` form of the losses). :class:`WeightedSigmoidCE` computes the same
numbers with one (R, K + 1) buffer that is reused as the gradient (the training form, as the fused
functions of ``_fused.py``; differentiable once).
"""
from typing import Optional

import torch
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

__all__ = ["weighted_sigmoid_ce_per_roi", "WeightedSigmoidCE", "weighted_sigmoid_ce"]

_CHUNK_ELEMS = 1 << 20


def weighted_sigmoid_ce_per_roi(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    neg_weight: torch.Tensor,
    pos_weight: torch.Tensor,
    row_group: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """(R,) weighted sigmoid CE (module docstring), plain differentiable ops.

    Args:
        logits: (R, K + 1); column K is ignored.
        gt_classes: (R,) int64 in [0, K].
        neg_weight: (G, K) weights of the negative columns.
        pos_weight: (K,) weights of the positive column.
        row_group: (R,) int64 in [0, G), the group of each row; None when G = 1.
    """
    k = logits.shape[1] - 1
    x = logits[:, :k]
    targets = F.one_hot(gt_classes, k + 1)[:, :k].to(x.dtype)
    neg = neg_weight[0].expand_as(x) if row_group is None else neg_weight[row_group]
    weights = targets * pos_weight.to(x.dtype) + (1 - targets) * neg.to(x.dtype)
    bce = F.binary_cross_entropy_with_logits(x, targets, reduction="none")
    return (bce * weights).sum(dim=1)


class WeightedSigmoidCE(torch.autograd.Function):
    """Same values as :func:`weighted_sigmoid_ce_per_roi`; one (R, K + 1) buffer, reused as the
    gradient (differentiable once; a second backward recomputes the buffer)."""

    @staticmethod
    def _neg_rows(neg_weight, row_group, start, stop):
        return neg_weight[0] if row_group is None else neg_weight[row_group[start:stop]]

    @staticmethod
    def forward(ctx, logits, gt_classes, neg_weight, pos_weight, row_group):
        r, c = logits.shape
        k = c - 1
        x = logits[:, :k]
        per_roi = logits.new_empty(r)
        step = max(1, _CHUNK_ELEMS // max(k, 1))
        for start in range(0, r, step):
            stop = min(r, start + step)
            sp = F.softplus(x[start:stop])
            if row_group is None:
                per_roi[start:stop] = sp.mul_(neg_weight[0]).sum(dim=1)
            else:  # G small (images in a batch): one (rows, G) product, then pick each row's group
                g = row_group[start:stop].view(-1, 1)
                per_roi[start:stop] = (
                    torch.mm(sp, neg_weight.t()).gather(1, g).squeeze(1)
                )
        fg = gt_classes < k
        idx = gt_classes.clamp(max=k - 1).view(-1, 1)
        x_y = x.gather(1, idx).squeeze(1)
        sp_y = F.softplus(x_y)
        neg_y = (
            neg_weight[0].gather(0, idx.squeeze(1))
            if row_group is None
            else neg_weight[row_group, idx.squeeze(1)]
        )
        pos_y = pos_weight.gather(0, idx.squeeze(1))
        per_roi += torch.where(fg, pos_y * (sp_y - x_y) - neg_y * sp_y, torch.zeros_like(x_y))
        ctx.save_for_backward(logits, gt_classes, neg_weight, pos_weight, row_group)
        return per_roi

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        logits, gt_classes, neg_weight, pos_weight, row_group = ctx.saved_tensors
        k = logits.shape[1] - 1
        grad = logits.new_empty(logits.shape)
        torch.sigmoid(logits[:, :k], out=grad[:, :k])
        fg = gt_classes < k
        idx = gt_classes.clamp(max=k - 1).view(-1, 1)
        s_y = grad[:, :k].gather(1, idx).squeeze(1)
        if row_group is None:
            grad[:, :k].mul_(neg_weight[0])
        else:
            grad[:, :k].mul_(neg_weight.index_select(0, row_group))
        pos_y = pos_weight.gather(0, idx.squeeze(1))
        # positive column: b_y * (sigmoid - 1); background rows keep their negative weight there
        at_y = torch.where(fg, pos_y * (s_y - 1), grad[:, :k].gather(1, idx).squeeze(1))
        grad[:, :k].scatter_(1, idx, at_y.view(-1, 1))
        grad[:, k] = 0.0
        grad.mul_(grad_out.reshape(-1, 1))
        return grad, None, None, None, None


def weighted_sigmoid_ce(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    neg_weight: torch.Tensor,
    pos_weight: torch.Tensor,
    row_group: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """(R,) weighted sigmoid CE in at least float32, autocast off (training form).

    Same arguments as :func:`weighted_sigmoid_ce_per_roi`; the weights are constants (no
    gradient flows into them).
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return WeightedSigmoidCE.apply(
            logits.to(dtype),
            gt_classes,
            neg_weight.detach().to(dtype),
            pos_weight.detach().to(dtype),
            row_group,
        )
