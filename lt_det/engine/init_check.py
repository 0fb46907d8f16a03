"""Warn when frozen BatchNorm meets random initialisation.

detectron2's R50 configs freeze BatchNorm (``FrozenBN``) because they start from ImageNet weights.
With ``MODEL.WEIGHTS ""`` those layers keep their initial statistics (mean 0, variance 1, scale 1,
shift 0) for the whole run, so activations are never normalised: the loss starts in the hundreds
and the detector learns nothing useful. Nothing fails, so the user is told here.
"""
import logging
from typing import List

import torch
from torch import nn

__all__ = ["untrained_frozen_bn", "warn_frozen_bn_at_random_init"]

logger = logging.getLogger(__name__)


def untrained_frozen_bn(model: nn.Module) -> List[str]:
    """Names of the frozen BatchNorm layers of ``model`` that still hold their initial values
    (weight 1, bias 0, running mean 0, running var 1 up to eps, in every channel)."""
    from detectron2.layers import FrozenBatchNorm2d

    names = []
    for name, m in model.named_modules():
        if isinstance(m, FrozenBatchNorm2d):
            initial = (
                torch.all(m.weight == 1)
                and torch.all(m.bias == 0)
                and torch.all(m.running_mean == 0)
                # detectron2 initialises running_var to 1 - eps (an exact identity)
                and torch.all((m.running_var - 1).abs() <= 2 * m.eps)
            )
            if initial:
                names.append(name)
    return names


def warn_frozen_bn_at_random_init(model: nn.Module, weights: str) -> List[str]:
    """Log a warning naming the way out when frozen BatchNorm layers were never loaded.

    Args:
        model: the model after its weights were loaded.
        weights: ``MODEL.WEIGHTS`` (named in the message).

    Returns:
        the names of the untrained frozen BatchNorm layers (empty: nothing logged).
    """
    names = untrained_frozen_bn(model)
    if names:
        source = f"MODEL.WEIGHTS '{weights}'" if weights else 'MODEL.WEIGHTS ""'
        logger.warning(
            f"{len(names)} frozen BatchNorm layers (e.g. {names[0]}) still hold their initial "
            f"values after loading {source}: they will never normalise, and the detector will "
            "train poorly (losses in the hundreds, no detections). Either start from pretrained "
            "weights (MODEL.WEIGHTS a local .pkl/.pth file, e.g. an ImageNet R-50 copied onto "
            "this machine), or train from scratch with normalisation that learns: "
            'MODEL.RESNETS.NORM "GN" (and MODEL.FPN.NORM "GN") or "SyncBN"/"BN".'
        )
    return names
