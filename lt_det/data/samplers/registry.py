"""Registry of training samplers, keyed by ``DATALOADER.SAMPLER_TRAIN``.

An entry is a builder ``(cfg, dataset_dicts) -> torch.utils.data.Sampler``. detectron2's own
``TrainingSampler`` and ``RepeatFactorTrainingSampler`` are registered here with exactly the
arguments detectron2's ``build_detection_train_loader`` would give them; lt_det's samplers
register themselves in their own modules. Adding a sampler is one module plus one
``@register_sampler("Name")``.

The trainer calls::

    sampler = build_train_sampler(cfg, dataset_dicts)
    loader = build_detection_train_loader(cfg, dataset=dataset_dicts, sampler=sampler)
"""
import inspect
import logging
from typing import Callable, Dict, List, Sequence

from detectron2.config import CfgNode
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler
from torch.utils.data import Sampler

from ...registry import Registry

__all__ = [
    "LT_SAMPLER_REGISTRY",
    "register_sampler",
    "build_train_sampler",
    "registered_sampler_names",
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


def repeat_factors_from_cfg(cfg: CfgNode, dataset_dicts: Sequence[Dict]):
    """detectron2's own per-image repeat factors for ``dataset_dicts`` (float32 tensor (I,)).

    Newer detectron2 has a ``sqrt`` argument and a ``DATALOADER.REPEAT_SQRT`` key; it is passed
    when both exist, so the factors are always exactly the ones detectron2 itself would use.
    """
    fn = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency
    kwargs = {}
    if "sqrt" in inspect.signature(fn).parameters and "REPEAT_SQRT" in cfg.DATALOADER:
        kwargs["sqrt"] = cfg.DATALOADER.REPEAT_SQRT
    return fn(dataset_dicts, cfg.DATALOADER.REPEAT_THRESHOLD, **kwargs)


@register_sampler("TrainingSampler")
def _training_sampler(cfg: CfgNode, dataset_dicts: Sequence[Dict]) -> Sampler:
    return TrainingSampler(len(dataset_dicts))


@register_sampler("RepeatFactorTrainingSampler")
def _repeat_factor_sampler(cfg: CfgNode, dataset_dicts: Sequence[Dict]) -> Sampler:
    return RepeatFactorTrainingSampler(repeat_factors_from_cfg(cfg, dataset_dicts))
