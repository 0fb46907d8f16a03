"""Class statistics of registered datasets (:mod:`lt_det.class_stats` over detectron2's catalogs).

Datasets registered by :func:`lt_det.data.register_lvis_format` carry their statistics in the
metadata (computed once, at registration); others are counted from their dataset dicts.
"""
from typing import List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..class_stats import (
    ClassStats,
    class_stats_from_dicts,
    class_stats_from_metadata,
    union_class_stats,
)
from ..errors import LTDetError

__all__ = ["dataset_class_stats", "train_class_stats", "train_class_frequency"]


def dataset_class_stats(name: str, num_classes: int) -> ClassStats:
    """The :class:`ClassStats` of the registered dataset ``name``.

    Reads the registration's metadata (``class_image_count``, ``class_instance_count``,
    ``num_images``) when present, else loads and counts the dataset dicts.

    Raises:
        LTDetError: the dataset has another number of classes than ``num_classes``.
    """
    stats = class_stats_from_metadata(MetadataCatalog.get(name))
    if stats is None:
        stats = class_stats_from_dicts(DatasetCatalog.get(name), num_classes, dataset_name=name)
    if stats.num_classes != num_classes:
        raise LTDetError(
            f"dataset '{name}' has {stats.num_classes} classes but MODEL.ROI_HEADS.NUM_CLASSES is "
            f"{num_classes}."
        )
    return stats


def train_class_stats(names: Sequence[str], num_classes: int) -> ClassStats:
    """The union of the statistics of the training datasets ``names`` (``DATASETS.TRAIN``)."""
    return union_class_stats([dataset_class_stats(n, num_classes) for n in names], names=names)


def train_class_frequency(names: Sequence[str], num_classes: int) -> Optional[List[str]]:
    """K r/c/f groups of the training set: one dataset's ``class_frequency`` metadata (e.g. the
    LVIS json's own groups), or the rule on the union's image counts for several datasets; None
    when a dataset has no statistics metadata (nothing is loaded for it)."""
    metas = [MetadataCatalog.get(n) for n in names]
    if len(metas) == 1:
        groups = metas[0].get("class_frequency", None)
        return list(groups) if groups is not None else None
    if any(class_stats_from_metadata(m) is None for m in metas):
        return None
    return train_class_stats(names, num_classes).frequency
