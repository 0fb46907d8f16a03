"""Autograd functions behind the balanced (and plain sigmoid) losses.

They are written to cost no more than the plain losses they extend (softmax cross-entropy,
sigmoid BCE) at every size the box head sees (R x (K + 1) from 512 x 81 to 8192 x 1204), in
float32 and under bf16 autocast, whether the allocator hands out fresh pages or reuses memory
(``tools/bench_heads.py`` measures each of these regimes):

- one (R, K + 1) float buffer is allocated in the forward pass, holds the probabilities the
  gradient needs, and becomes the gradient in place in the backward pass (no one-hot target, no
  second full-size buffer, no full-size cast of bf16 logits before the maths);
- :class:`ShiftedSoftmaxCE` computes ``softmax(z + shift)`` once: the loss is ``-log p_y`` of R
  gathered values and the backward pass is a scale and a scatter, where ``F.cross_entropy``
  evaluates the exponential twice (log-softmax forward, its backward);
- the reduction ("mean" / "sum") is applied inside, so no autograd nodes are added after it.

The functions are differentiable once (``once_differentiable``); the plain-ops forms that can be
differentiated twice are the losses' ``per_roi`` methods. A second backward through a retained
graph recomputes the probabilities (the buffer was handed over by the first one).

Shape shorthand: R ROIs, K foreground classes, logits (R, K + 1), gt_classes (R,) in [0, K].
The maths run in ``promote_types(logits.dtype, float32)``; the gradient has the logits' dtype.
"""
from typing import Optional

import torch
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

__all__ = ["ShiftedSoftmaxCE", "ShiftedSigmoidCE"]

# Rows per chunk of the softplus reduction: about this many elements (256 kB in float32), so the
# temporaries stay in cache and are reused by the allocator.
_CHUNK_ELEMS = 1 << 16

# -log p_y is taken from the probabilities unless p_y is below this (then it is no longer a
# normal float32 with full precision); those rows get -log_softmax(z + shift)_y instead.
_TINY_PROB = 2.0 ** -100


def _math_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.promote_types(logits.dtype, torch.float32)


def _reduce(per_roi: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_roi.sum() / per_roi.numel()
    if reduction == "sum":
        return per_roi.sum()
    return per_roi


def _row_scale(grad_out: torch.Tensor, rows: int, reduction: str) -> torch.Tensor:
    """d loss / d per_roi[i]: a 0-dim tensor for "mean"/"sum", an (R, 1) column for "none"."""
    if reduction == "mean":
        return grad_out / rows
    if reduction == "sum":
        return grad_out
    return grad_out.reshape(-1, 1)


def _subtract_at(grad: torch.Tensor, gt_classes: torch.Tensor, scale: torch.Tensor) -> None:
    """grad[i, gt_classes[i]] -= scale (a scalar or scale[i]), in place (one index per row)."""
    idx = gt_classes.view(-1, 1)
    grad.scatter_(1, idx, grad.gather(1, idx) - scale)


class ShiftedSoftmaxCE(torch.autograd.Function):
    """``-log softmax(z + shift)[y]`` per ROI for logits z (R, C) and a constant shift (C,).

    ``apply(logits, gt_classes, shift, reduction="none")``: reduction "none" returns (R,)
    per-ROI losses, "mean" / "sum" a scalar. ``shift`` must already be in the maths dtype
    (:func:`_math_dtype`). Gradient with respect to ``logits`` only:
    ``g_i * (softmax(z_i + shift) - onehot(y_i))``.
    """

    @staticmethod
    def _probs(logits: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """softmax(logits + shift) over dim 1 in a new buffer of the maths dtype."""
        if logits.dtype == shift.dtype:
            probs = torch.add(logits, shift)
        else:  # one vectorised cast, then in place (a mixed-dtype add is not vectorised)
            probs = logits.to(shift.dtype).add_(shift)
        if probs.device.type == "cpu":  # in place: no second buffer to page-fault
            return torch.softmax(probs, dim=1, out=probs)
        return torch.softmax(probs, dim=1)  # no aliased out= on accelerators

    @staticmethod
    def forward(
        ctx,
        logits: torch.Tensor,
        gt_classes: torch.Tensor,
        shift: torch.Tensor,
        reduction: str = "none",
    ) -> torch.Tensor:
        probs = ShiftedSoftmaxCE._probs(logits, shift)
        idx = gt_classes.view(-1, 1)
        p_y = probs.gather(1, idx).squeeze(1)
        per_roi = p_y.log().neg_()
        tiny = p_y < _TINY_PROB
        if bool(tiny.any()):  # rare: an extreme logit gap; take these rows from log-softmax
            rows = torch.nonzero(tiny).squeeze(1)
            logp = torch.log_softmax(logits[rows].to(shift.dtype) + shift, dim=1)
            per_roi[rows] = -logp.gather(1, idx[rows]).squeeze(1)
        ctx.save_for_backward(logits, gt_classes, shift)
        ctx.buffer = probs  # an intermediate; handed over as the gradient by the first backward
        ctx.reduction = reduction
        return _reduce(per_roi, reduction)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        logits, gt_classes, shift = ctx.saved_tensors
        if ctx.buffer is not None:  # first backward: softmax(z + shift) in the saved buffer
            grad, ctx.buffer = ctx.buffer, None
        else:  # the buffer was used by an earlier backward: recompute it, same ops
            grad = ShiftedSoftmaxCE._probs(logits, shift)
        scale = _row_scale(grad_out, logits.shape[0], ctx.reduction)
        grad.mul_(scale)
        _subtract_at(grad, gt_classes, scale if scale.dim() == 0 else scale.to(grad.dtype))
        return grad.to(logits.dtype), None, None, None


class ShiftedSigmoidCE(torch.autograd.Function):
    """Per-ROI ``sum_j BCE(sigmoid(z_j + s_j * fg), [y == j])`` over the first K columns.

    ``apply(logits, gt_classes, shift, reduction="none")``. ``shift`` (K,) is added on ROIs whose
    label is foreground (``fg`` = y < K) only; pass ``shift=None`` for plain sigmoid CE. The
    gradient of column K (background) is zero. Uses BCE(x, t) = softplus(x) - t * x, so the loss
    of ROI i is ``sum_j softplus(x_ij) - [y_i < K] * x_{i, y_i}``.
    """

    @staticmethod
    def _shifted(
        logits: torch.Tensor,
        gt_classes: torch.Tensor,
        shift: Optional[torch.Tensor],
        out: torch.Tensor,
    ) -> torch.Tensor:
        """x = z[:, :K] + [y < K] * shift, written into ``out`` (R, K) of the maths dtype."""
        k = logits.shape[1] - 1
        out.copy_(logits[:, :k])  # casts bf16 logits in the same pass
        if shift is not None:
            is_fg = (gt_classes < k).to(out.dtype).view(-1, 1)
            out.addcmul_(is_fg, shift.view(1, -1))
        return out

    @staticmethod
    def forward(
        ctx,
        logits: torch.Tensor,
        gt_classes: torch.Tensor,
        shift: Optional[torch.Tensor],
        reduction: str = "none",
    ) -> torch.Tensor:
        r, c = logits.shape
        k = c - 1
        dtype = _math_dtype(logits)
        is_fg = gt_classes < k
        buf = logits.new_empty((r, c), dtype=dtype)  # columns :k hold x now, the gradient later
        x = ShiftedSigmoidCE._shifted(logits, gt_classes, shift, buf[:, :k])
        per_roi = logits.new_empty(r, dtype=dtype)
        step = max(1, _CHUNK_ELEMS // max(k, 1))
        for start in range(0, r, step):
            torch.sum(F.softplus(x[start : start + step]), dim=1, out=per_roi[start : start + step])
        x_at_gt = x.gather(1, gt_classes.clamp(max=k - 1).view(-1, 1)).squeeze(1)
        per_roi -= torch.where(is_fg, x_at_gt, torch.zeros_like(x_at_gt))
        ctx.save_for_backward(logits, gt_classes, shift)
        ctx.buffer = buf  # an intermediate; handed over as the gradient by the first backward
        ctx.reduction = reduction
        return _reduce(per_roi, reduction)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        logits, gt_classes, shift = ctx.saved_tensors
        k = logits.shape[1] - 1
        if ctx.buffer is not None:  # first backward: x is in the saved buffer
            grad, ctx.buffer = ctx.buffer, None
        else:  # the buffer was used by an earlier backward: recompute x
            grad = logits.new_empty(logits.shape, dtype=_math_dtype(logits))
            ShiftedSigmoidCE._shifted(logits, gt_classes, shift, grad[:, :k])
        grad[:, :k].sigmoid_()
        scale = _row_scale(grad_out, logits.shape[0], ctx.reduction)
        # Background ROIs get -1 in column K, which the zero fill below discards.
        _subtract_at(grad, gt_classes, 1.0)
        grad[:, k] = 0.0
        grad.mul_(scale)
        return grad.to(logits.dtype), None, None, None
