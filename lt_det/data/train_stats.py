"""Class statistics of registered datasets (:mod:`lt_det.class_stats` over detectron2's catalogs).

Datasets registered by :func:`lt_det.data.register_lvis_format` carry their statistics in the
metadata (computed once, at registration); others are counted from their dataset dicts.
"""
from typing import Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..class_stats import (
    ClassStats,
    class_stats_from_dicts,
    class_stats_from_metadata,
    union_class_stats,
)
from ..errors import LTDetError

__all__ = ["dataset_class_stats", "train_class_stats"]


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
