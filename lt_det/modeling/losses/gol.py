"""Gumbel Optimized Loss, GOL (Alexandridis et al., "Long-tailed Instance Segmentation using
Gumbel Optimized Loss", ECCV 2022, Sec. 3, eq. 7-9): binary cross-entropy with the Gumbel
activation instead of the sigmoid.

Shape shorthand: R ROIs, K foreground classes, logits (R, K + 1) with column K = background,
gt_classes (R,) in [0, K].

The Gumbel (complementary log-log) activation ``p = exp(-exp(-z))`` is a right-skewed sigmoid
whose mass sits at small probabilities, as the probabilities of most classes of a long-tailed
dataset do. Reference: kostas1515/GOL ``mmdet/models/losses/gumbel_ce.py`` (``GumbelCE``) at
70026b73, which this module follows:

- every one of the K + 1 columns is a Gumbel binary classifier: ROI i has target 1 in column
  ``y_i`` (column K for a background ROI, an objectness-like "background" output) and 0 in the
  others, ``l_i = sum_{j <= K} BCE(p(clamp(z_ij)), [y_i == j])``, averaged over ROIs;
- the logits are clamped to [CLAMP_MIN, CLAMP_MAX] = [-4, 10] before the activation (no gradient
  outside) and the reduced loss to at most MAX_LOSS = 20 (no gradient in a batch above it);
- the classifier bias starts at BIAS_INIT = -2 in all K + 1 outputs (the reference's
  ``init_cfg`` bias -2: p = exp(-e^2) = 6.2e-4, about 1 / K on LVIS);
- scores at inference: ``exp(-exp(-z_j))`` of the K class columns (the reference computes all
  K + 1 and mmdetection's ``multiclass_nms`` drops the background column; no objectness product).

The two terms are evaluated without forming 1 - p (u = exp(-z)): ``-log p = u`` and
``-log(1 - p) = z - log((1 - e^{-u}) / u)``, the ratio taken without cancellation (Kahan's form
in the fused loss, ``expm1`` in the plain one); their derivatives ``d(-log p)/dz = -u`` and
``d(-log(1 - p))/dz = u e^{-u} / (1 - e^{-u})``. Finite for every finite z and clamp range, in
float32 and under bf16 autocast (the maths runs in float32 at least); the reference's float32
``binary_cross_entropy(p, t)`` loses up to 0.1 % of the second term at z = 10.
"""
import math
from typing import Any, Dict, Optional

import torch
from detectron2.config import CfgNode
from torch.autograd.function import once_differentiable

from ...errors import LTDetError
from .base import ClsLoss, check_logits_and_labels, check_reduction, empty_loss
from .registry import register_cls_loss

__all__ = ["gol_loss", "gol_per_roi", "gumbel_probs", "gumbel_nll_negative", "GOLLoss"]

# gumbel_nll_negative takes -log(1 - e^{-u}) as x - log((1 - e^{-u}) / u) below this u
# (x > 0.69) and from -expm1(-u) above it.
_SMALL_U = 0.5

# Rows per chunk of the fused loss on CPU: about this many elements stay in cache.
_CHUNK_ELEMS = 1 << 17


def gumbel_probs(logits: torch.Tensor) -> torch.Tensor:
    """(R, K + 1) scores: ``exp(-exp(-z_j))`` of the K foreground columns, then a zero
    background column (detectron2's ``fast_rcnn_inference`` reads the first K only, as the
    reference's ``multiclass_nms`` drops its background column). In ``logits``' dtype."""
    k = logits.shape[1] - 1
    probs = torch.exp(-torch.exp(-logits[:, :k]))
    return torch.cat([probs, probs.new_zeros(probs.shape[0], 1)], dim=1)


def gumbel_nll_negative(x: torch.Tensor) -> torch.Tensor:
    """``-log(1 - exp(-exp(-x)))`` elementwise, in plain differentiable ops (twice
    differentiable, finite gradients for every finite x).

    Args:
        x: logits of any shape, floating point.

    Returns:
        Same shape: the loss of target 0; >= 0, -> 0 as x -> -inf, ~ x as x -> +inf.
    """
    # Below -30 the value is 0 to every float precision; the clamp keeps u (and its gradient)
    # finite.
    u = torch.exp(-x.clamp(min=-30.0))
    small = u < _SMALL_U
    # Each branch sees safe inputs only, so the one torch.where drops has finite gradients.
    u_a = torch.where(small, u, torch.full_like(u, _SMALL_U)).clamp(min=torch.finfo(x.dtype).tiny)
    u_b = torch.where(small, torch.ones_like(u), u)
    a = x - torch.log(-torch.expm1(-u_a) / u_a)  # -log u - log((1 - e^{-u}) / u)
    b = -torch.log(-torch.expm1(-u_b))
    return torch.where(small, a, b)


def _check_clamp(clamp_min: float, clamp_max: float) -> None:
    if not (-50.0 <= clamp_min < clamp_max):
        raise LTDetError(
            "MODEL.ROI_BOX_HEAD.GOL.CLAMP_MIN must be in [-50, CLAMP_MAX) (below -50, exp(-z) "
            f"overflows a float32 sum), got CLAMP_MIN {clamp_min}, CLAMP_MAX {clamp_max}."
        )


class _GumbelBCE(torch.autograd.Function):
    """Per-ROI ``sum_{j <= K} BCE(exp(-exp(-clamp(z_ij))), [y_i == j])`` and its gradient.

    ``apply(logits, gt_classes, clamp_min, clamp_max, reduction="none")``. One (R, K + 1) buffer
    of the maths dtype holds the gradient, computed with the loss in one pass over row chunks
    (on CPU they stay in cache); the backward pass scales it. Gradient 0 where the logit lies
    outside (clamp_min, clamp_max), the ends included, as ``torch.clamp``'s.

    The target-0 term without branches: with u = e^{-x}, w = e^{-u} (rounded) and
    ``phi = (1 - w) / -log(w)`` (Kahan's expm1: ``(1 - e^{-u}) / u`` to a few ulps whatever the
    rounding of w), ``-log(1 - e^{-u}) = x - log(phi)`` and its derivative is ``w / phi``. x is
    held where u stays a normal number below ~80 (no slow denormal exp; the term is < 1e-34
    there) and where w < 1 (above, ``log(phi)`` is below the rounding of x).
    """

    @staticmethod
    def _loss_and_grad(logits, gt_classes, lo, hi, dtype):
        r, c = logits.shape
        info = torch.finfo(dtype)
        x_min = max(lo, -math.log(-math.log(info.tiny) - 7.0))  # u <= ~80 (float32)
        x_max = -0.9 * math.log(info.eps)  # w = e^{-u} < 1
        grad = logits.new_empty((r, c), dtype=dtype)
        per_roi = logits.new_empty(r, dtype=dtype)
        at = gt_classes.view(-1, 1)
        # The target column: -log p = u, d/dz = -u (0 outside the clamp range), R values.
        raw_t = logits.gather(1, at).to(dtype)
        u_t = torch.exp(-raw_t.clamp(lo, hi))
        g_t = torch.where((raw_t > lo) & (raw_t < hi), -u_t, torch.zeros_like(u_t))
        step = max(1, _CHUNK_ELEMS // c) if logits.device.type == "cpu" else max(r, 1)
        # Work buffers allocated once: fresh chunk-sized temporaries would be page-faulted anew
        # in every chunk (glibc returns freed heap tops to the system).
        x_buf, w_buf, phi_buf = (logits.new_empty((min(step, r), c), dtype=dtype) for _ in "xwp")
        for start in range(0, r, step):
            stop = min(r, start + step)
            raw = logits[start:stop].to(dtype)
            x, w, phi = x_buf[: stop - start], w_buf[: stop - start], phi_buf[: stop - start]
            torch.clamp(raw, x_min, hi, out=x)
            torch.neg(x, out=w)
            if hi > x_max:
                w.clamp_(min=-x_max)
            w.exp_().neg_().exp_()  # e^{-u}, u = e^{-x}
            g = grad[start:stop]
            torch.log(w, out=g)
            torch.sub(w, 1.0, out=phi).div_(g)  # (1 - w) / -log(w)
            torch.div(w, phi, out=g)
            elem = torch.sub(x, phi.log_(), out=phi)
            elem.scatter_(1, at[start:stop], u_t[start:stop])
            g.scatter_(1, at[start:stop], g_t[start:stop])
            torch.sum(elem, dim=1, out=per_roi[start:stop])
            lo_hi = torch.aminmax(raw)
            if float(lo_hi.min) <= lo or float(lo_hi.max) >= hi:  # no gradient where clamped
                # min(z - lo, hi - z) * 1e30 clamped to [0, 1]: 0 at or outside the ends, else 1
                # (the spacing of floats near the ends is far above 1e-30).
                torch.minimum(torch.sub(raw, lo, out=x), torch.neg(raw, out=w).add_(hi), out=x)
                g.mul_(x.mul_(1e30).clamp_(0.0, 1.0))
        return per_roi, grad

    @staticmethod
    def forward(ctx, logits, gt_classes, clamp_min, clamp_max, reduction="none"):
        dtype = torch.promote_types(logits.dtype, torch.float32)
        per_roi, grad = _GumbelBCE._loss_and_grad(logits, gt_classes, clamp_min, clamp_max, dtype)
        ctx.save_for_backward(logits, gt_classes)
        ctx.buffer = grad  # an intermediate; handed over as the gradient by the first backward
        ctx.args = (clamp_min, clamp_max, dtype, reduction)
        if reduction == "mean":
            return per_roi.sum() / per_roi.numel()
        return per_roi.sum() if reduction == "sum" else per_roi

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        logits, gt_classes = ctx.saved_tensors
        lo, hi, dtype, reduction = ctx.args
        if ctx.buffer is not None:
            grad, ctx.buffer = ctx.buffer, None
        else:  # the buffer was used by an earlier backward: recompute it, same ops
            grad = _GumbelBCE._loss_and_grad(logits, gt_classes, lo, hi, dtype)[1]
        if reduction == "mean":
            grad.mul_(grad_out.to(dtype) / logits.shape[0])
        elif reduction == "sum":
            grad.mul_(grad_out.to(dtype))
        else:
            grad.mul_(grad_out.to(dtype).view(-1, 1))
        return grad.to(logits.dtype), None, None, None, None


def gol_loss(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    class_prior: Optional[torch.Tensor] = None,
    *,
    clamp_min: float = -4.0,
    clamp_max: float = 10.0,
    max_loss: float = 20.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Gumbel binary cross-entropy over the K + 1 columns (module docstring).

    Args:
        logits: (R, K + 1) classifier outputs; column K is the background classifier. Not
            modified.
        gt_classes: (R,) int64 labels in [0, K].
        class_prior: unused (accepted so every loss has the same signature).
        clamp_min, clamp_max: the logits are clamped to this range before the activation
            (gradient 0 outside); -50 <= clamp_min < clamp_max (clamp_max may be ``inf``).
        max_loss: the reduced loss ("mean" / "sum") is clamped to at most this (its gradient is
            0 above it, as the reference's ``torch.clamp(loss, 0, 20)``); 0 disables. Not
            applied to ``reduction="none"``.
        reduction: "mean" (per-ROI sums averaged over R) | "sum" | "none" ((R,)).

    Returns:
        Scalar loss, or (R,) for ``reduction="none"``; an empty batch gives ``logits.sum() * 0``.

    Raises:
        ValueError: logits not (R, K + 1), a label outside [0, K], or a bad clamp range.
    """
    check_reduction(reduction)
    check_logits_and_labels(logits, gt_classes, None, owner="gol_loss")
    _check_clamp(clamp_min, clamp_max)
    del class_prior
    if gt_classes.numel() == 0:
        return empty_loss(logits, reduction)
    out = _GumbelBCE.apply(logits, gt_classes, float(clamp_min), float(clamp_max), reduction)
    if max_loss > 0 and reduction != "none":
        out = out.clamp(max=max_loss)
    return out


def gol_per_roi(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    *,
    clamp_min: float = -4.0,
    clamp_max: float = 10.0,
) -> torch.Tensor:
    """(R,) per-ROI losses of :func:`gol_loss` in plain differentiable ops (twice
    differentiable; no fused kernel, no ``max_loss``), in at least float32."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    x = logits.to(dtype).clamp(clamp_min, clamp_max)
    target = torch.nn.functional.one_hot(gt_classes, x.shape[1]).to(dtype)
    elem = target * torch.exp(-x) + (1 - target) * gumbel_nll_negative(x)
    return elem.sum(dim=1)


@register_cls_loss("gol")
class GOLLoss(ClsLoss):
    """Module form of :func:`gol_loss`; scores are per-class Gumbel activations."""

    # Per-class scores (no softmax across classes): timed against sigmoid BCE by
    # tools/bench_heads.py, and calibrated in the per-class form.
    activation = "sigmoid"

    def __init__(
        self,
        *,
        num_classes: int,
        class_prior: Optional[torch.Tensor] = None,
        clamp_min: float = -4.0,
        clamp_max: float = 10.0,
        max_loss: float = 20.0,
        bias_init: float = -2.0,
    ):
        """
        Args:
            num_classes: K.
            class_prior: (K,) prior; stored when given, unused by this loss.
            clamp_min, clamp_max: logit range of the activation (MODEL.ROI_BOX_HEAD.GOL.
                CLAMP_MIN / CLAMP_MAX), -50 <= clamp_min < clamp_max.
            max_loss: cap of the reduced loss (GOL.MAX_LOSS), >= 0; 0 disables.
            bias_init: initial bias of all K + 1 classifier outputs (GOL.BIAS_INIT), finite.

        Raises:
            LTDetError: a value out of its range, naming the config key.
        """
        super().__init__(num_classes=num_classes, class_prior=class_prior)
        _check_clamp(clamp_min, clamp_max)
        if not max_loss >= 0:
            raise LTDetError(f"MODEL.ROI_BOX_HEAD.GOL.MAX_LOSS must be >= 0, got {max_loss}.")
        if not math.isfinite(bias_init):
            raise LTDetError(f"MODEL.ROI_BOX_HEAD.GOL.BIAS_INIT must be finite, got {bias_init}.")
        self.clamp_min, self.clamp_max = float(clamp_min), float(clamp_max)
        self.max_loss, self.bias_init = float(max_loss), float(bias_init)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        ret = super().from_config(cfg)
        node = cfg.MODEL.ROI_BOX_HEAD.GOL
        ret.update(
            clamp_min=node.CLAMP_MIN,
            clamp_max=node.CLAMP_MAX,
            max_loss=node.MAX_LOSS,
            bias_init=node.BIAS_INIT,
        )
        return ret

    def forward(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, *, reduction: str = "mean"
    ) -> torch.Tensor:
        return gol_loss(
            logits,
            gt_classes,
            clamp_min=self.clamp_min,
            clamp_max=self.clamp_max,
            max_loss=self.max_loss,
            reduction=reduction,
        )

    def per_roi(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """(R,) losses with plain differentiable ops; ``forward`` is their mean (below
        ``max_loss``)."""
        return gol_per_roi(logits, gt_classes, clamp_min=self.clamp_min, clamp_max=self.clamp_max)

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return gumbel_probs(logits)

    def plain_per_roi(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        # The K per-class Bernoulli likelihoods of gumbel_probs (no clamp, no background column).
        dtype = torch.promote_types(logits.dtype, torch.float32)
        k = logits.shape[1] - 1
        x = logits[:, :k].to(dtype)
        target = torch.nn.functional.one_hot(gt_classes, k + 1)[:, :k].to(dtype)
        return (target * torch.exp(-x) + (1 - target) * gumbel_nll_negative(x)).sum(dim=1)

    @torch.no_grad()
    def init_cls_bias_(self, bias: torch.Tensor) -> None:
        bias[: self.num_classes + 1].fill_(self.bias_init)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, clamp=[{self.clamp_min:g}, {self.clamp_max:g}], "
            f"max_loss={self.max_loss:g}, bias_init={self.bias_init:g}"
        )
