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
- the reduction ("mean" / "sum") is applied inside, so no autograd nodes are added after it;
- :class:`MarginSoftmaxCE` (LDAM) is the same pattern with a per-ROI margin on the true-class
  logit, a logit scale and per-ROI weights;
- :class:`FocalSigmoidCE` (class-balanced focal loss) computes the loss and its gradient in one
  pass over row chunks that stay in cache, so the backward pass is one scale of the buffer.

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

__all__ = ["ShiftedSoftmaxCE", "ShiftedSigmoidCE", "MarginSoftmaxCE", "FocalSigmoidCE"]

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


class MarginSoftmaxCE(torch.autograd.Function):
    """``w_i * -log softmax(s * (z_i - m_i onehot(y_i)))[y_i]`` per ROI (LDAM, Cao et al. 2019).

    ``apply(logits, gt_classes, scale, gt_margin, row_weight, reduction="none")``: logits (R, C),
    ``scale`` s > 0 (a float), ``gt_margin`` (R,) the margin of each ROI's own label (0 for
    background) and ``row_weight`` (R,) or None, both in the maths dtype (:func:`_math_dtype`).
    The reduction "mean" divides the weighted sum by R. Gradient with respect to ``logits`` only:
    ``g_i * w_i * s * (softmax(s * (z_i - m_i onehot(y_i))) - onehot(y_i))``.
    """

    @staticmethod
    def _probs(logits, gt_classes, scale, gt_margin):
        """softmax(s * (z - m onehot(y))) over dim 1 in a new buffer of the maths dtype."""
        dtype = gt_margin.dtype
        if logits.dtype == dtype:
            buf = logits.mul(scale) if scale != 1.0 else logits.clone()
        else:  # one vectorised cast, then in place
            buf = logits.to(dtype)
            if scale != 1.0:
                buf.mul_(scale)
        idx = gt_classes.view(-1, 1)
        buf.scatter_(1, idx, buf.gather(1, idx) - (scale * gt_margin).view(-1, 1))
        if buf.device.type == "cpu":
            return torch.softmax(buf, dim=1, out=buf)
        return torch.softmax(buf, dim=1)

    @staticmethod
    def forward(ctx, logits, gt_classes, scale, gt_margin, row_weight=None, reduction="none"):
        probs = MarginSoftmaxCE._probs(logits, gt_classes, scale, gt_margin)
        idx = gt_classes.view(-1, 1)
        p_y = probs.gather(1, idx).squeeze(1)
        per_roi = p_y.log().neg_()
        tiny = p_y < _TINY_PROB
        if bool(tiny.any()):  # rare: an extreme logit gap; take these rows from log-softmax
            rows = torch.nonzero(tiny).squeeze(1)
            z = logits[rows].to(gt_margin.dtype)
            z = z - F.one_hot(gt_classes[rows], z.shape[1]).to(z.dtype) * gt_margin[rows, None]
            logp = torch.log_softmax(scale * z, dim=1)
            per_roi[rows] = -logp.gather(1, idx[rows]).squeeze(1)
        if row_weight is not None:
            per_roi.mul_(row_weight)
        ctx.save_for_backward(logits, gt_classes, gt_margin, row_weight)
        ctx.buffer = probs  # an intermediate; handed over as the gradient by the first backward
        ctx.scale, ctx.reduction = scale, reduction
        return _reduce(per_roi, reduction)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        logits, gt_classes, gt_margin, row_weight = ctx.saved_tensors
        if ctx.buffer is not None:
            grad, ctx.buffer = ctx.buffer, None
        else:  # the buffer was used by an earlier backward: recompute it, same ops
            grad = MarginSoftmaxCE._probs(logits, gt_classes, ctx.scale, gt_margin)
        factor = _row_scale(grad_out, logits.shape[0], ctx.reduction).to(grad.dtype) * ctx.scale
        if row_weight is not None:
            factor = factor * row_weight.view(-1, 1)
        grad.mul_(factor)
        _subtract_at(grad, gt_classes, factor)
        return grad.to(logits.dtype), None, None, None, None, None


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x) elementwise, to rounding, from vectorised ops only.

    ``max(x, 0) + log1p(e)`` with ``e = exp(-|x|)``; log1p(e) is ``log(u) - ((u - 1) - e) / u``
    with ``u = 1 + e`` (the rounding error of u corrected to first order), because the
    vectorised ``log`` is several times faster than ``log1p`` on CPU.
    """
    e = x.abs().neg_().exp_()
    u = e + 1.0
    err = (u - 1.0).sub_(e).div_(u)
    return torch.log(u).sub_(err).add_(torch.relu(x))


class FocalSigmoidCE(torch.autograd.Function):
    """``w_i * sum_{j<K} FL_gamma(z_ij, [y_i == j])`` per ROI (sigmoid focal loss, Lin et al.
    2017, with per-ROI weights as in Cui et al. 2019's class-balanced form).

    ``apply(logits, gt_classes, gamma, row_weight, reduction="none")``: logits (R, K + 1)
    (column K unused, its gradient 0), ``gamma`` >= 0 (a float), ``row_weight`` (R,) in the maths
    dtype or None. ``FL(x, 0) = p ** gamma * softplus(x)``, ``FL(x, 1) = (1 - p) ** gamma *
    softplus(-x)`` with p = sigmoid(x); their derivatives, written out::

        d FL(x, 0) / dx =  p ** gamma       * (gamma * (1 - p) * softplus(x)  + p)
        d FL(x, 1) / dx = -(1 - p) ** gamma * (gamma * p       * softplus(-x) + 1 - p)

    The forward pass computes both over row chunks of about ``_CHUNK_ELEMS`` elements (on CPU:
    they stay in cache) into one (R, K + 1) buffer; the backward pass scales it by ``g_i * w_i``.
    Where the plain form's ``pow`` backward gives NaN (gamma < 1 at a saturated logit, 1 - p_t
    = 0) these derivatives stay finite.
    """

    @staticmethod
    def _power(p: torch.Tensor, gamma: float) -> Optional[torch.Tensor]:
        if gamma == 0.0:
            return None
        if gamma == 1.0:
            return p
        if gamma == 2.0:
            return p * p
        return p.pow(gamma)

    @staticmethod
    def _loss_and_grad(logits, gt_classes, gamma, dtype):
        """((R,) unweighted per-ROI losses, (R, K + 1) buffer of their gradients)."""
        r, c = logits.shape
        k = c - 1
        fg = gt_classes < k
        idx = gt_classes.clamp(max=k - 1).view(-1, 1)
        # The true-class column of foreground ROIs (R values): FL(x, 1) and its derivative.
        x_y = logits.gather(1, idx).squeeze(1).to(dtype)
        q_y = torch.sigmoid(-x_y)  # 1 - p, without cancellation
        sp_neg_y = _softplus(-x_y)
        qg = FocalSigmoidCE._power(q_y, gamma)
        pos_loss = sp_neg_y if qg is None else qg * sp_neg_y
        pos_grad = gamma * (1 - q_y) * sp_neg_y + q_y
        pos_grad = -(pos_grad if qg is None else qg * pos_grad)
        # Whole rows (column K included, then zeroed): the chunks stay contiguous.
        pos_loss = torch.where(fg, pos_loss, torch.zeros_like(pos_loss)).view(-1, 1)
        pos_grad = torch.where(fg, pos_grad, torch.zeros_like(pos_grad)).view(-1, 1)
        at = gt_classes.view(-1, 1)  # background rows: column K, set to 0
        grad = logits.new_empty((r, c), dtype=dtype)
        per_roi = logits.new_empty(r, dtype=dtype)
        # CPU: chunks that stay in cache. Elsewhere one chunk (a launch per op and chunk costs
        # more than the memory traffic it saves).
        step = max(1, _CHUNK_ELEMS // c) if logits.device.type == "cpu" else max(r, 1)
        for start in range(0, r, step):
            stop = min(r, start + step)
            x = logits[start:stop].to(dtype)
            p = torch.sigmoid(x)
            sp = _softplus(x)
            pg = FocalSigmoidCE._power(p, gamma)
            elem = sp if pg is None else pg.mul(sp)
            elem[:, k] = 0.0
            elem.scatter_(1, at[start:stop], pos_loss[start:stop])
            torch.sum(elem, dim=1, out=per_roi[start:stop])
            out = grad[start:stop]
            if pg is None:
                out.copy_(p)
            else:  # p ** gamma * (gamma * (1 - p) * sp + p)
                torch.mul(torch.rsub(p, 1.0).mul_(sp).mul_(gamma).add_(p), pg, out=out)
            out[:, k] = 0.0
            out.scatter_(1, at[start:stop], pos_grad[start:stop])
        return per_roi, grad

    @staticmethod
    def forward(ctx, logits, gt_classes, gamma, row_weight=None, reduction="none"):
        dtype = _math_dtype(logits) if row_weight is None else row_weight.dtype
        per_roi, grad = FocalSigmoidCE._loss_and_grad(logits, gt_classes, gamma, dtype)
        if row_weight is not None:
            per_roi.mul_(row_weight)
        ctx.save_for_backward(logits, gt_classes, row_weight)
        ctx.buffer = grad  # an intermediate; handed over as the gradient by the first backward
        ctx.gamma, ctx.reduction, ctx.dtype = gamma, reduction, dtype
        return _reduce(per_roi, reduction)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        logits, gt_classes, row_weight = ctx.saved_tensors
        if ctx.buffer is not None:
            grad, ctx.buffer = ctx.buffer, None
        else:  # the buffer was used by an earlier backward: recompute it, same ops
            grad = FocalSigmoidCE._loss_and_grad(logits, gt_classes, ctx.gamma, ctx.dtype)[1]
        factor = _row_scale(grad_out, logits.shape[0], ctx.reduction).to(grad.dtype)
        if row_weight is not None:
            factor = factor * row_weight.view(-1, 1)
        grad.mul_(factor)
        return grad.to(logits.dtype), None, None, None, None
