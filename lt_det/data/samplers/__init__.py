"""Training samplers for the long tail, selected by ``DATALOADER.SAMPLER_TRAIN``.

``build_train_sampler(cfg, dataset_dicts)`` builds detectron2's "TrainingSampler" and
"RepeatFactorTrainingSampler" (with detectron2's own repeat factors) and lt_det's
"ClassBalancedSampler", "ClassPowerSampler", "MetaSampler", "GroupBalancedSampler" (GRBS + BET) and
"ProgressiveBalancedSampler". The Meta Sampler's rates are learned
by a :class:`MetaSamplerLearner` that the trainer drives.
"""
from .class_index import ClassImageIndex, as_class_image_index
from .class_power import ClassDrawSampler, ClassPowerSampler, class_power_probs
from .batch_stream import BatchStreamSampler
from .feature_bank import ClassBalancedFeatureBank
from .group_balanced import GroupBalancedSampler, frequency_groups, group_probabilities
from .progressive import ProgressiveBalancedSampler
from .meta_sampler import INIT_POWERS, MetaSampler, MetaSamplerLearner, default_roi_loss
from .registry import (
    LT_SAMPLER_REGISTRY,
    build_train_sampler,
    find_train_sampler,
    register_sampler,
    registered_sampler_names,
    repeat_factors_from_cfg,
)

__all__ = [
    "LT_SAMPLER_REGISTRY",
    "build_train_sampler",
    "find_train_sampler",
    "register_sampler",
    "registered_sampler_names",
    "repeat_factors_from_cfg",
    "ClassImageIndex",
    "as_class_image_index",
    "ClassDrawSampler",
    "ClassPowerSampler",
    "class_power_probs",
    "ClassBalancedFeatureBank",
    "BatchStreamSampler",
    "GroupBalancedSampler",
    "ProgressiveBalancedSampler",
    "frequency_groups",
    "group_probabilities",
    "INIT_POWERS",
    "MetaSampler",
    "MetaSamplerLearner",
    "default_roi_loss",
]
