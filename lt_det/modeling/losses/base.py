"""Base class of the box-classification loss modules.

Shape shorthand:
    R: number of ROIs in the batch.
    K: number of foreground classes; logits have K + 1 columns, column K is background.
    gt_classes: (R,) int64 labels in [0, K]; K means background.
"""
from typing import Any, Dict, Optional

import torch
from detectron2.config import CfgNode
from torch import nn
from torch.nn import functional as F

__all__ = ["ClsLoss", "empty_loss", "check_class_prior", "check_logits_and_labels"]


def check_class_prior(prior: torch.Tensor, *, owner: str, fractions: bool) -> None:
    """The range every class prior must lie in, for the pure loss functions and their modules.

    Args:
        prior: (K,) class prior.
        owner: what reads it (named in the message).
        fractions: True when the loss reads the values themselves (they must be frequencies in
            (0, 1]: image fractions or instance shares; counts are refused); False when only
            ratios matter (then any positive values, counts included, give the same loss).

    Raises:
        ValueError: for a value that is not finite, <= 0, or (``fractions``) > 1, naming the
            classes and what to do.
    """
    ok = torch.isfinite(prior) & (prior > 0)
    if fractions:
        ok &= prior <= 1
    if bool(ok.all()):
        return
    bad = torch.nonzero(~ok).flatten().tolist()
    values = [float(prior[i]) for i in bad[:5]]
    rng = "in (0, 1] (counts are not accepted: divide by the number of training images)" if (
        fractions
    ) else "finite and > 0 (counts or fractions: only ratios matter)"
    raise ValueError(
        f"{owner}: class_prior must be {rng}; classes {bad[:20]} are not (e.g. {values}). "
        "Zero counts: floor them (MODEL.ROI_BOX_HEAD.PRIOR.ZERO_COUNT_FLOOR)."
    )


def check_logits_and_labels(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    num_classes: Optional[int] = None,
    *,
    owner: str,
    extra_logits: int = 0,
) -> None:
    """The shapes and label range every box-classification loss reads, checked at its entry.

    Args:
        logits: must be (R, K + 1 + ``extra_logits``).
        gt_classes: must be (R,) integer labels in [0, K] (K = background).
        num_classes: K, read from what the caller holds ((K,) prior, weights, counts, class
            sets); None takes K = ``logits.shape[1] - 1 - extra_logits`` (then only the label
            range is checked against it).
        owner: the function named in the message.
        extra_logits: columns beyond K + 1 (BAGS's group logits).

    Raises:
        ValueError: one line naming ``owner``, what was given and what is expected.

    Cost: the shape checks are free; the range check is one ``aminmax`` over R labels and one
    device-to-host read of its two values (one synchronisation per loss call on a GPU; detectron2's
    box head already reads its classification statistics to the host once per iteration).
    """
    if logits.dim() != 2:
        raise ValueError(
            f"{owner}: logits must be 2-D (R, K + 1), got shape {tuple(logits.shape)}."
        )
    width = logits.shape[1]
    k = width - 1 - extra_logits if num_classes is None else int(num_classes)
    if width != k + 1 + extra_logits:
        more = f" + {extra_logits} group logits" if extra_logits else ""
        raise ValueError(
            f"{owner}: logits have {width} columns but the loss is set up for K = {k} classes "
            f"(expected K + 1{more} = {k + 1 + extra_logits}); the classifier and the loss "
            "must use the same MODEL.ROI_HEADS.NUM_CLASSES."
        )
    if gt_classes.dim() != 1 or gt_classes.shape[0] != logits.shape[0]:
        raise ValueError(
            f"{owner}: gt_classes must be (R,) = ({logits.shape[0]},) labels, got shape "
            f"{tuple(gt_classes.shape)}."
        )
    if gt_classes.dtype.is_floating_point or gt_classes.dtype == torch.bool:
        raise ValueError(f"{owner}: gt_classes must be integer labels, got {gt_classes.dtype}.")
    if gt_classes.numel() == 0:
        return
    lo, hi = (int(v) for v in torch.stack(torch.aminmax(gt_classes)).tolist())
    if lo < 0 or hi > k:
        raise ValueError(
            f"{owner}: gt_classes must lie in [0, {k}] ({k} = background), got values from {lo} "
            f"to {hi}; the dataset's category ids must be contiguous in [0, K) with K = "
            "MODEL.ROI_HEADS.NUM_CLASSES."
        )


def empty_loss(logits: torch.Tensor, reduction: str) -> torch.Tensor:
    """Zero loss for an empty batch that stays connected to the graph of ``logits``.

    Returns ``logits.sum() * 0.0`` for "mean"/"sum" and an empty (0,) tensor for "none".
    """
    if reduction == "none":
        return logits.sum(dim=1) * 0.0
    return logits.sum() * 0.0


def reduce_per_roi(per_roi: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce (R,) per-ROI losses: "mean" over ROIs, "sum", or "none"."""
    if reduction == "mean":
        return per_roi.sum() / per_roi.numel()
    if reduction == "sum":
        return per_roi.sum()
    return per_roi


def check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


class ClsLoss(nn.Module):
    """A box-classification loss: a pure loss function plus the prior it needs.

    Subclasses set :attr:`needs_prior`, implement :meth:`forward` (calling their pure
    function) and :meth:`per_roi` (the same loss in plain differentiable ops, for the Meta
    Sampler), and, when the activation is not softmax over K + 1, :meth:`predict_probs`,
    :meth:`plain_per_roi` and :meth:`init_cls_bias_`. The prior is a buffer, so it is saved in
    checkpoints and follows ``.to(device)``. No batch state is kept on the module.
    """

    #: Whether the loss reads ``class_prior`` (the balanced losses do).
    needs_prior: bool = False
    #: Whether the loss reads the prior's values (must be in (0, 1]), not only their ratios.
    prior_is_fraction: bool = False

    #: "softmax" (scores softmax over K + 1) or "sigmoid" (per-class sigmoids): names the plain
    #: loss this one extends, which ``tools/bench_heads.py`` times it against (softmax CE or
    #: sigmoid BCE).
    activation: str = "softmax"

    #: Why ``tools/bench_heads.py`` does not time this loss (None: every registered loss is timed).
    bench_opt_out: Optional[str] = None

    def __init__(self, *, num_classes: int, class_prior: Optional[torch.Tensor] = None):
        """
        Args:
            num_classes: K, the number of foreground classes.
            class_prior: (K,) per-class training frequencies in (0, 1] (image fractions or
                instance shares). Required when :attr:`needs_prior`.
        """
        super().__init__()
        self.num_classes = int(num_classes)
        if class_prior is None:
            if self.needs_prior:
                raise ValueError(
                    f"{type(self).__name__} needs class_prior, a (K,) = ({num_classes},) tensor "
                    "of per-class training frequencies (see lt_det.modeling.priors)."
                )
            self.register_buffer("class_prior", None)
            return
        prior = torch.as_tensor(class_prior, dtype=torch.float32).detach().clone()
        if prior.shape != (self.num_classes,):
            raise ValueError(
                f"{type(self).__name__}: class_prior has shape {tuple(prior.shape)}, expected "
                f"({self.num_classes},) for num_classes={self.num_classes}."
            )
        check_class_prior(prior, owner=type(self).__name__, fractions=self.prior_is_fraction)
        self.register_buffer("class_prior", prior)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        """Constructor keyword arguments read from a config (except ``class_prior``, which the
        builder computes or is given): detectron2's ``from_config(cfg) -> kwargs`` contract, as
        in ``FastRCNNOutputLayers``; ``cls(class_prior=..., **cls.from_config(cfg))`` builds the
        loss. Subclasses extend the dict of ``super().from_config(cfg)``."""
        return {"num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES}

    def forward(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, *, reduction: str = "mean"
    ) -> torch.Tensor:
        """The training loss.

        Args:
            logits: (R, K + 1) classifier outputs.
            gt_classes: (R,) int64 labels in [0, K].
            reduction: "mean" (over R) | "sum" | "none" ((R,) per-ROI losses).
        """
        raise NotImplementedError

    def _no_plain_form(self, what: str) -> NotImplementedError:
        name = getattr(self, "loss_name", type(self).__name__)
        return NotImplementedError(
            f"the box-classification loss {name!r} ({type(self).__name__}) does not implement "
            f"{what}, which the Meta Sampler (BALMS) differentiates twice; implement it in the "
            "loss's module with plain torch ops (see lt_det/modeling/losses/base.py)."
        )

    def per_roi(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """The training loss of every ROI, written with plain differentiable torch ops.

        Equal to ``forward(logits, gt_classes, reduction="none")``, but differentiable twice by
        ``torch.func`` (the fused autograd Functions of the forward pass are not); reads the
        module's buffers and changes no state. The Meta Sampler's inner step uses it.

        Args:
            logits: (R, K + 1) classifier outputs.
            gt_classes: (R,) int64 labels in [0, K].

        Returns:
            (R,) per-ROI losses.

        Raises:
            NotImplementedError: naming the loss, when a subclass does not provide it.
        """
        raise self._no_plain_form("per_roi")

    def plain_per_roi(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """Per-ROI negative log-likelihood of the inference scores (:meth:`predict_probs`):
        the head's loss with no prior or reweighting; the Meta Sampler's meta objective.

        Default: softmax cross-entropy over K + 1 columns, the loss of the default
        :meth:`predict_probs`. A loss with another activation must override it.

        Args:
            logits: (R, K + 1) classifier outputs.
            gt_classes: (R,) int64 labels in [0, K].

        Returns:
            (R,) per-ROI losses (plain ops, twice differentiable).

        Raises:
            NotImplementedError: when :meth:`predict_probs` is overridden but this is not.
        """
        if type(self).predict_probs is not ClsLoss.predict_probs:
            raise self._no_plain_form("plain_per_roi")
        return F.cross_entropy(logits, gt_classes, reduction="none")

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Inference scores (no prior applied).

        Args:
            logits: (R, K + 1) classifier outputs.

        Returns:
            (R, K + 1) scores; detectron2's ``fast_rcnn_inference`` uses the first K columns.
        """
        return F.softmax(logits, dim=-1)

    @torch.no_grad()
    def init_cls_bias_(self, bias: torch.Tensor) -> None:
        """Initialise the (K + 1,) classifier bias in place (default: leave it unchanged)."""

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"
