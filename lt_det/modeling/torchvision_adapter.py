"""Use an lt_det classification loss in torchvision's Faster R-CNN / Mask R-CNN.

torchvision's ``RoIHeads`` computes its training loss with the module-level function
``torchvision.models.detection.roi_heads.fastrcnn_loss``, which is left untouched.
:func:`use_cls_loss_in_torchvision` turns one model's ``roi_heads`` into a subclass of its own
class (as ``torch.nn.utils.parametrize`` does) whose hooks record what the classification term
needs: the sampled labels (``select_training_samples``) and the box predictor's class logits (a
forward hook), during that model's forward only. After torchvision's forward, its
``loss_classifier`` is replaced by the attached lt_det loss of those logits and labels; the
box-regression term is torchvision's. Every model keeps its own loss, so two models in one
process can train with different losses; models that were not adapted are unchanged.

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
from typing import Dict, List, Optional

import torch
from torch import nn

from .losses.base import ClsLoss

__all__ = [
    "use_cls_loss_in_torchvision",
    "torchvision_logits_to_lt",
    "torchvision_labels_to_lt",
    "LTRoIHeadsMixin",
]

# What the running forward of an adapted roi_heads recorded (None outside such a forward).
_RECORD: contextvars.ContextVar = contextvars.ContextVar("lt_det_tv_record", default=None)


def torchvision_logits_to_lt(class_logits: torch.Tensor) -> torch.Tensor:
    """(R, K + 1) torchvision logits (background first) -> lt_det order (background last)."""
    return torch.cat([class_logits[:, 1:], class_logits[:, :1]], dim=1)


def torchvision_labels_to_lt(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(R,) torchvision labels (0 = background, 1..K) -> lt_det labels in [0, K] (K = bg)."""
    return torch.where(labels == 0, torch.full_like(labels, num_classes), labels - 1)


class LTRoIHeadsMixin:
    """Mixed into a torchvision ``RoIHeads`` class: the classification loss is ``lt_cls_loss``.

    Needs the submodule ``lt_cls_loss`` (a :class:`ClsLoss`) and the forward hook
    :func:`_record_logits` on ``box_predictor``; :func:`use_cls_loss_in_torchvision` sets both.
    """

    lt_cls_loss: ClsLoss

    def select_training_samples(self, proposals, targets):
        out = super().select_training_samples(proposals, targets)
        record = _RECORD.get()
        if record is not None:
            record["labels"] = out[2]  # (image-wise) sampled labels, 0 = background
        return out

    def forward(self, features, proposals, image_shapes, targets=None):
        record: Dict[str, object] = {}
        token = _RECORD.set(record)
        try:
            result, losses = super().forward(features, proposals, image_shapes, targets)
        finally:
            _RECORD.reset(token)
        if "loss_classifier" in losses:
            class_logits = record["logits"]
            num_classes = class_logits.shape[1] - 1
            gt = torchvision_labels_to_lt(torch.cat(record["labels"], dim=0), num_classes)
            losses["loss_classifier"] = self.lt_cls_loss(torchvision_logits_to_lt(class_logits), gt)
        return result, losses


def _record_logits(module: nn.Module, args, output) -> None:
    record: Optional[Dict[str, object]] = _RECORD.get()
    if record is not None:
        record["logits"] = output[0]


_SUBCLASSES: Dict[type, type] = {}


def _lt_subclass(cls: type) -> type:
    """``cls`` with :class:`LTRoIHeadsMixin` mixed in (one class per torchvision class)."""
    if issubclass(cls, LTRoIHeadsMixin):
        return cls
    if cls not in _SUBCLASSES:
        _SUBCLASSES[cls] = type(f"LT{cls.__name__}", (LTRoIHeadsMixin, cls), {})
    return _SUBCLASSES[cls]


def use_cls_loss_in_torchvision(model: nn.Module, cls_loss: ClsLoss) -> nn.Module:
    """Make ``model`` (a torchvision ``FasterRCNN``/``MaskRCNN`` or its ``RoIHeads``) train its box
    classifier with ``cls_loss``.

    Args:
        model: the detector, or its ``roi_heads``. Modified in place: ``roi_heads.lt_cls_loss``
            becomes a submodule (its prior buffer is saved in the state dict), the box predictor
            gets a forward hook and ``roi_heads`` becomes an instance of its class with
            :class:`LTRoIHeadsMixin` mixed in (parameters and state-dict keys unchanged).
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
    if isinstance(roi_heads, LTRoIHeadsMixin):
        roi_heads.lt_cls_loss = cls_loss  # replace; the hook is already installed
        return model
    roi_heads.add_module("lt_cls_loss", cls_loss)
    roi_heads.box_predictor.register_forward_hook(_record_logits)
    roi_heads.__class__ = _lt_subclass(type(roi_heads))
    return model
