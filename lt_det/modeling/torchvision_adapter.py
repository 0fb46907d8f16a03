"""Use an lt_det classification loss in torchvision's Faster R-CNN / Mask R-CNN.

torchvision's ``RoIHeads`` computes its training loss with the module-level function
``torchvision.models.detection.roi_heads.fastrcnn_loss``. :func:`use_cls_loss_in_torchvision`
attaches a loss module to one model's ``roi_heads`` and, once per process, wraps that function
with a dispatcher: while *that* ``roi_heads`` runs its forward, the classification term is
computed by the attached loss; every other model (and every call outside such a forward) gets
torchvision's original function unchanged. The box-regression term is always torchvision's.

Column order. torchvision puts background in column 0 and class c (1..K) in column c; lt_det
(like detectron2) puts class j (0..K-1) in column j and background in column K. The adapter
permutes explicitly::

    logits_d2 = cat([class_logits[:, 1:], class_logits[:, :1]], dim=1)   # (R, K + 1)
    gt_d2     = where(labels == 0, K, labels - 1)                           # (R,) in [0, K]

so ``class_prior[j]`` is the prior of torchvision label ``j + 1``.

Inference: torchvision scores boxes with softmax over K + 1 columns, which is the right
activation for ``softmax_ce`` / ``balanced_softmax``. For the sigmoid losses compute scores with
``cls_loss.predict_probs(torchvision_logits_to_lt(class_logits))`` instead.
"""
import contextvars
from typing import List, Tuple

import torch
from torch import nn

from .losses.base import ClsLoss

__all__ = ["use_cls_loss_in_torchvision", "torchvision_logits_to_lt", "torchvision_labels_to_lt"]

# The loss of the roi_heads whose forward is running (None outside such a forward).
_ACTIVE_LOSS: contextvars.ContextVar = contextvars.ContextVar("lt_det_tv_cls_loss", default=None)
_ORIGINAL_FASTRCNN_LOSS = None


def torchvision_logits_to_lt(class_logits: torch.Tensor) -> torch.Tensor:
    """(R, K + 1) torchvision logits (background first) -> lt_det order (background last)."""
    return torch.cat([class_logits[:, 1:], class_logits[:, :1]], dim=1)


def torchvision_labels_to_lt(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(R,) torchvision labels (0 = background, 1..K) -> lt_det labels in [0, K] (K = bg)."""
    return torch.where(labels == 0, torch.full_like(labels, num_classes), labels - 1)


def _dispatching_fastrcnn_loss(
    class_logits: torch.Tensor,
    box_regression: torch.Tensor,
    labels: List[torch.Tensor],
    regression_targets: List[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor]:
    loss_module = _ACTIVE_LOSS.get()
    # torchvision's own function computes the box term (and a cross-entropy we discard).
    loss_cls, loss_box = _ORIGINAL_FASTRCNN_LOSS(
        class_logits, box_regression, labels, regression_targets
    )
    if loss_module is None:
        return loss_cls, loss_box
    num_classes = class_logits.shape[1] - 1
    gt = torchvision_labels_to_lt(torch.cat(labels, dim=0), num_classes)
    return loss_module(torchvision_logits_to_lt(class_logits), gt), loss_box


def _install_dispatcher() -> None:
    global _ORIGINAL_FASTRCNN_LOSS
    from torchvision.models.detection import roi_heads as tv_roi_heads

    if _ORIGINAL_FASTRCNN_LOSS is None:
        _ORIGINAL_FASTRCNN_LOSS = tv_roi_heads.fastrcnn_loss
        tv_roi_heads.fastrcnn_loss = _dispatching_fastrcnn_loss


def use_cls_loss_in_torchvision(model: nn.Module, cls_loss: ClsLoss) -> nn.Module:
    """Make ``model`` (a torchvision ``FasterRCNN``/``MaskRCNN`` or its ``RoIHeads``) train its box
    classifier with ``cls_loss``.

    Args:
        model: the detector, or its ``roi_heads``. Modified in place: ``roi_heads.lt_cls_loss``
            becomes a submodule (its prior buffer is saved in the state dict) and two forward
            hooks scope the loss to this model's forward.
        cls_loss: an lt_det loss module (e.g. ``build_cls_loss("balanced_softmax",
            num_classes=K, class_prior=prior)``) with K = torchvision ``num_classes`` - 1;
            ``class_prior[j]`` belongs to torchvision label j + 1.

    Returns:
        ``model``.
    """
    roi_heads = model.roi_heads if hasattr(model, "roi_heads") else model
    predictor = getattr(roi_heads, "box_predictor", None)
    cls_score = getattr(predictor, "cls_score", None)
    if isinstance(cls_score, nn.Linear) and cls_score.out_features != cls_loss.num_classes + 1:
        raise ValueError(
            f"The torchvision box predictor has {cls_score.out_features} outputs (background "
            f"included) but cls_loss has num_classes={cls_loss.num_classes}; expected "
            f"{cls_score.out_features - 1}."
        )
    if hasattr(roi_heads, "lt_cls_loss"):
        roi_heads.lt_cls_loss = cls_loss  # replace; hooks are already installed
        return model
    _install_dispatcher()
    roi_heads.add_module("lt_cls_loss", cls_loss)
    tokens: List[contextvars.Token] = []

    def _enter(module: nn.Module, args) -> None:
        tokens.append(_ACTIVE_LOSS.set(module.lt_cls_loss))

    def _exit(module: nn.Module, args, output) -> None:
        if tokens:
            _ACTIVE_LOSS.reset(tokens.pop())

    roi_heads.register_forward_pre_hook(_enter)
    roi_heads.register_forward_hook(_exit, always_call=True)
    return model
