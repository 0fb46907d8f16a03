"""Registry of box-classification losses.

A loss is registered by decorating a :class:`~lt_det.modeling.losses.base.ClsLoss` subclass with
``@register_cls_loss("name")``; ``MODEL.ROI_BOX_HEAD.CLS_LOSS`` names the entry. Adding a loss is
one new module plus one registration.
"""
from typing import Callable, Optional

import torch
from detectron2.config import CfgNode

from ...registry import Registry

__all__ = [
    "LT_CLS_LOSS_REGISTRY",
    "register_cls_loss",
    "build_cls_loss",
    "build_cls_loss_from_cfg",
    "cls_loss_class",
]

#: Box-classification losses of the Fast R-CNN box predictor. Each entry is a ``ClsLoss``
#: subclass constructed with keyword arguments (``num_classes``, ``class_prior``, loss-specific
#: options) and exposing ``forward``, ``per_roi``, ``plain_per_roi`` and ``predict_probs``.
LT_CLS_LOSS_REGISTRY = Registry(
    "LT_CLS_LOSS", config_key="MODEL.ROI_BOX_HEAD.CLS_LOSS", what="box-classification loss"
)


def register_cls_loss(name: str) -> Callable[[type], type]:
    """Class decorator registering a loss under the config name ``name`` (e.g. "softmax_ce"),
    also set as its ``loss_name``."""
    return LT_CLS_LOSS_REGISTRY.register(name, name_attr="loss_name")


def cls_loss_class(name: str) -> type:
    """Return the registered loss class called ``name``.

    Raises:
        lt_det.registry.UnknownChoiceError: (an ``LTDetError`` and a ``KeyError``) if no loss
            of that name is registered; the message lists the valid names.
    """
    return LT_CLS_LOSS_REGISTRY.get(name)


def build_cls_loss(
    name: str, *, num_classes: int, class_prior: Optional[torch.Tensor] = None, **kwargs
) -> torch.nn.Module:
    """Build the loss ``name`` from keyword arguments (no config needed).

    Args:
        name: a registered loss name, e.g. ``"balanced_softmax"``.
        num_classes: K, the number of foreground classes.
        class_prior: (K,) per-class training frequencies in (0, 1); required by the balanced
            losses, optional (and unused) for the plain ones.
        kwargs: loss-specific options, e.g. ``background="fg_mass"`` for ``balanced_softmax`` or
            ``bias_prior_prob=0.01`` for the sigmoid losses.
    """
    return cls_loss_class(name)(num_classes=num_classes, class_prior=class_prior, **kwargs)


def build_cls_loss_from_cfg(
    cfg: CfgNode, *, class_prior: Optional[torch.Tensor] = None
) -> torch.nn.Module:
    """Build the loss selected by ``MODEL.ROI_BOX_HEAD.CLS_LOSS``.

    Args:
        cfg: a config with lt_det's keys (:func:`lt_det.add_lt_config`).
        class_prior: (K,) prior to use. When None and the loss needs a prior, it is computed
            from the config with :func:`lt_det.modeling.priors.class_prior_from_cfg`.
    """
    loss_cls = cls_loss_class(cfg.MODEL.ROI_BOX_HEAD.CLS_LOSS)
    if class_prior is None and loss_cls.needs_prior:
        from ..priors import class_prior_from_cfg

        class_prior = class_prior_from_cfg(cfg)
    return loss_cls(class_prior=class_prior, **loss_cls.from_config(cfg))
