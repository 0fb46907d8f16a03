"""Registry of training samplers, keyed by ``DATALOADER.SAMPLER_TRAIN``.

An entry is a builder ``(cfg, dataset_dicts) -> torch.utils.data.Sampler``. detectron2's own
``TrainingSampler`` and ``RepeatFactorTrainingSampler`` are registered here; the repeat factors
follow detectron2's rule on lt_det's class statistics (crowd regions excluded,
:func:`repeat_factors`); lt_det's samplers register themselves in their own modules. Adding a sampler is one module plus one
``@register_sampler("Name")``.

The trainer calls::

    sampler = build_train_sampler(cfg, dataset_dicts)
    loader = build_detection_train_loader(cfg, dataset=dataset_dicts, sampler=sampler)
"""
import logging
import math
from typing import Callable, Dict, List, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler
from torch.utils.data import Sampler

from ...class_stats import class_stats_from_dicts, counts_as_instance
from ...registry import Registry

__all__ = [
    "LT_SAMPLER_REGISTRY",
    "register_sampler",
    "build_train_sampler",
    "registered_sampler_names",
    "repeat_factors",
    "repeat_factors_from_cfg",
]

logger = logging.getLogger(__name__)

#: Training samplers selected by ``DATALOADER.SAMPLER_TRAIN``. Each entry is a builder
#: ``(cfg, dataset_dicts) -> torch.utils.data.Sampler`` yielding dataset indices forever.
LT_SAMPLER_REGISTRY = Registry(
    "LT_SAMPLER", config_key="DATALOADER.SAMPLER_TRAIN", what="training sampler"
)

SamplerBuilder = Callable[[CfgNode, Sequence[Dict]], Sampler]


def register_sampler(name: str) -> Callable[[SamplerBuilder], SamplerBuilder]:
    """Decorator registering a builder under the config value ``name`` ("ClassPowerSampler")."""

    # Config values are detectron2-style CamelCase class names.
    return LT_SAMPLER_REGISTRY.register(name)


def registered_sampler_names() -> List[str]:
    """Sorted names accepted by ``DATALOADER.SAMPLER_TRAIN``."""
    return LT_SAMPLER_REGISTRY.choices()


def build_train_sampler(cfg: CfgNode, dataset_dicts: Sequence[Dict]) -> Sampler:
    """Build the training sampler named by ``cfg.DATALOADER.SAMPLER_TRAIN``.

    Args:
        cfg: a config with lt_det's keys (:func:`lt_det.add_lt_config`).
        dataset_dicts: the training dataset dicts, in the order the data loader indexes them.

    Raises:
        lt_det.registry.UnknownChoiceError: the name is not registered; the message lists the
            valid names.
    """
    name = cfg.DATALOADER.SAMPLER_TRAIN
    builder = LT_SAMPLER_REGISTRY.get(name)
    logger.info(f"Using training sampler {name}")
    return builder(cfg, dataset_dicts)


def repeat_factors(
    dataset_dicts: Sequence[Dict], num_classes: int, repeat_thresh: float, *, sqrt: bool = True
) -> torch.Tensor:
    """Per-image repeat factors of repeat-factor sampling (Gupta et al., LVIS, CVPR 2019,
    appendix B.2; detectron2's ``RepeatFactorTrainingSampler.repeat_factors_from_category_frequency``)
    over lt_det's class statistics.

    f_c = (images with a non-crowd instance of c) / (images), from
    :func:`lt_det.class_stats.class_stats_from_dicts` (the one function that counts classes);
    r_c = max(1, sqrt(t / f_c)) (``sqrt=False``: max(1, t / f_c)); an image's factor is the largest
    r_c over the classes of its non-crowd instances, 1 when it has none. detectron2's own function
    counts crowd regions as well; here they are excluded as in every other class statistic.

    Args:
        dataset_dicts: detectron2 dicts with contiguous ``category_id`` in [0, K).
        num_classes: K.
        repeat_thresh: t (``DATALOADER.REPEAT_THRESHOLD``), > 0.
        sqrt: apply the square root (``DATALOADER.REPEAT_SQRT`` in newer detectron2; True there).

    Returns:
        float32 tensor (I,) of factors >= 1.
    """
    stats = class_stats_from_dicts(dataset_dicts, num_classes)
    rep = []
    for n in stats.image_counts:
        if n == 0:
            rep.append(1.0)
            continue
        ratio = repeat_thresh / (n / stats.num_images)
        rep.append(max(1.0, math.sqrt(ratio) if sqrt else ratio))
    factors = []
    for d in dataset_dicts:
        classes = {int(a["category_id"]) for a in d.get("annotations", ()) if counts_as_instance(a)}
        factors.append(max((rep[c] for c in classes), default=1.0))
    return torch.tensor(factors, dtype=torch.float32)


def repeat_factors_from_cfg(cfg: CfgNode, dataset_dicts: Sequence[Dict]) -> torch.Tensor:
    """:func:`repeat_factors` with ``DATALOADER.REPEAT_THRESHOLD`` (and ``DATALOADER.REPEAT_SQRT``
    where the installed detectron2 defines it; the square root otherwise, detectron2's rule)."""
    sqrt = bool(cfg.DATALOADER.get("REPEAT_SQRT", True))
    return repeat_factors(
        dataset_dicts, cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.DATALOADER.REPEAT_THRESHOLD, sqrt=sqrt
    )


@register_sampler("TrainingSampler")
def _training_sampler(cfg: CfgNode, dataset_dicts: Sequence[Dict]) -> Sampler:
    return TrainingSampler(len(dataset_dicts))


@register_sampler("RepeatFactorTrainingSampler")
def _repeat_factor_sampler(cfg: CfgNode, dataset_dicts: Sequence[Dict]) -> Sampler:
    return RepeatFactorTrainingSampler(repeat_factors_from_cfg(cfg, dataset_dicts))
