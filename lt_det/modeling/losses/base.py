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

__all__ = ["ClsLoss", "empty_loss"]


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
        if not bool((prior > 0).all()):
            bad = torch.nonzero(prior <= 0).flatten().tolist()
            raise ValueError(
                f"{type(self).__name__}: class_prior must be > 0; classes {bad[:20]} are not "
                "(floor zero counts, see MODEL.ROI_BOX_HEAD.PRIOR.ZERO_COUNT_FLOOR)."
            )
        self.register_buffer("class_prior", prior)

    @classmethod
    def kwargs_from_cfg(cls, cfg: CfgNode) -> Dict[str, Any]:
        """Constructor keyword arguments read from a config (except ``class_prior``)."""
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
