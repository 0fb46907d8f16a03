"""Autograd functions behind the balanced (and plain sigmoid) losses.

They are written to stay close to the cost of plain softmax cross-entropy at LVIS scale
(R x (K + 1) = 8192 x 1204): a single (R, K + 1) buffer is allocated in the forward pass and
reused in place as the gradient in the backward pass, no one-hot target matrix is built, and the
softplus reduction runs over row chunks so its temporaries stay small. Hence the functions are
not twice differentiable and their graph can be backpropagated once only (a second backward
through a retained graph raises).

Shape shorthand: R ROIs, K foreground classes, logits (R, K + 1), gt_classes (R,) in [0, K].
Both functions return (R,) per-ROI losses; reductions are applied by the caller.
"""
import torch
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

# Rows per chunk are chosen so that one chunk holds about this many elements (4 MB in fp32).
_CHUNK_ELEMS = 1 << 20


def _subtract_one_at(grad: torch.Tensor, gt_classes: torch.Tensor) -> None:
    """grad[i, gt_classes[i]] -= 1, in place (one index per row: no atomics needed)."""
    idx = gt_classes.view(-1, 1)
    grad.scatter_(1, idx, grad.gather(1, idx) - 1.0)


class ShiftedSoftmaxCE(torch.autograd.Function):
    """Per-ROI ``-log softmax(z + shift)[y]`` for logits z (R, C) and a constant shift (C,)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, gt_classes: torch.Tensor, shift: torch.Tensor):
        logp = torch.add(logits, shift)
        if logp.device.type == "cpu":  # in place: page-faulting a fresh buffer costs on CPU
            torch.log_softmax(logp, dim=1, out=logp)
        else:  # no aliased out= on accelerators; their caching allocators make this cheap
            logp = torch.log_softmax(logp, dim=1)
        ctx.save_for_backward(gt_classes, logits, shift)
        ctx.buffer = logp  # an intermediate; handed over as the gradient by the first backward
        return -logp.gather(1, gt_classes.view(-1, 1)).squeeze(1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        gt_classes, logits, shift = ctx.saved_tensors
        if ctx.buffer is not None:  # first backward: softmax(z + shift) in the saved buffer
            grad, ctx.buffer = ctx.buffer.exp_(), None
        else:  # the buffer was used by an earlier backward: recompute it, same ops
            grad = torch.log_softmax(torch.add(logits, shift), dim=1).exp_()
        _subtract_one_at(grad, gt_classes)
        grad.mul_(grad_out.reshape(-1, 1))
        return grad, None, None


class ShiftedSigmoidCE(torch.autograd.Function):
    """Per-ROI ``sum_j BCE(sigmoid(z_j + s_j * fg), [y == j])`` over the first K columns.

    ``shift`` (K,) is added on ROIs whose label is foreground (``fg`` = y < K) only; pass
    ``shift=None`` for plain sigmoid CE. The gradient of column K (background) is zero.
    Uses BCE(x, t) = softplus(x) - t * x, so the loss of ROI i is
    ``sum_j softplus(x_ij) - [y_i < K] * x_{i, y_i}``.
    """

    @staticmethod
    def _shifted(logits, gt_classes, shift, out):
        """x = z[:, :K] + [y < K] * shift, written into ``out`` (R, K)."""
        k = logits.shape[1] - 1
        if shift is None:
            return out.copy_(logits[:, :k])
        is_fg = (gt_classes < k).to(out.dtype).view(-1, 1)
        return torch.addcmul(logits[:, :k], is_fg, shift.view(1, -1), out=out)

    @staticmethod
    def forward(ctx, logits: torch.Tensor, gt_classes: torch.Tensor, shift: torch.Tensor):
        r, c = logits.shape
        k = c - 1
        is_fg = gt_classes < k
        buf = logits.new_empty(r, c)  # columns :k hold x now and the gradient later
        x = ShiftedSigmoidCE._shifted(logits, gt_classes, shift, buf[:, :k])
        per_roi = logits.new_empty(r)
        step = max(1, _CHUNK_ELEMS // max(k, 1))
        for start in range(0, r, step):
            per_roi[start : start + step] = F.softplus(x[start : start + step]).sum(dim=1)
        x_at_gt = x.gather(1, gt_classes.clamp(max=k - 1).view(-1, 1)).squeeze(1)
        per_roi -= torch.where(is_fg, x_at_gt, torch.zeros_like(x_at_gt))
        ctx.save_for_backward(gt_classes, logits, shift)
        ctx.buffer = buf  # an intermediate; handed over as the gradient by the first backward
        return per_roi

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        gt_classes, logits, shift = ctx.saved_tensors
        k = logits.shape[1] - 1
        if ctx.buffer is not None:  # first backward: x is in the saved buffer
            grad, ctx.buffer = ctx.buffer, None
        else:  # the buffer was used by an earlier backward: recompute x
            grad = logits.new_empty(logits.shape)
            ShiftedSigmoidCE._shifted(logits, gt_classes, shift, grad[:, :k])
        grad[:, :k].sigmoid_()
        # Background ROIs get -1 in column K, which the zero fill below discards.
        _subtract_one_at(grad, gt_classes)
        grad[:, k] = 0.0
        grad.mul_(grad_out.reshape(-1, 1))
        return grad, None, None
