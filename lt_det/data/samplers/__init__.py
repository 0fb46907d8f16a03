"""Training samplers for the long tail, selected by ``DATALOADER.SAMPLER_TRAIN``.

``build_train_sampler(cfg, dataset_dicts)`` builds detectron2's "TrainingSampler" and
"RepeatFactorTrainingSampler" (with detectron2's own repeat factors) and lt_det's
"ClassBalancedSampler", "ClassPowerSampler", "MetaSampler", "GroupBalancedSampler" (GRBS + BET)
and "ProgressiveBalancedSampler". The Meta Sampler's rates are learned in the training loop by
:class:`lt_det.decouple.balms.MetaSamplerLearner`.
"""
from .batch_stream import BatchStreamSampler
from .class_index import ClassImageIndex, as_class_image_index
from .class_power import ClassDrawSampler, ClassPowerSampler, class_power_probs
from .group_balanced import GroupBalancedSampler, frequency_groups, group_probabilities
from .meta_sampler import INIT_POWERS, MetaSampler
from .progressive import ProgressiveBalancedSampler
from .registry import (
    LT_SAMPLER_REGISTRY,
    build_train_sampler,
    register_sampler,
    registered_sampler_names,
    repeat_factors,
    repeat_factors_from_cfg,
)

__all__ = [
    "LT_SAMPLER_REGISTRY",
    "build_train_sampler",
    "register_sampler",
    "registered_sampler_names",
    "repeat_factors_from_cfg",
    "ClassImageIndex",
    "as_class_image_index",
    "ClassDrawSampler",
    "ClassPowerSampler",
    "class_power_probs",
    "INIT_POWERS",
    "MetaSampler",
    "BatchStreamSampler",
    "GroupBalancedSampler",
    "ProgressiveBalancedSampler",
    "frequency_groups",
    "group_probabilities",
]
