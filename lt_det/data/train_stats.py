"""Class statistics of registered datasets (:mod:`lt_det.class_stats` over detectron2's catalogs).

Datasets registered by :func:`lt_det.data.register_lvis_format` carry their statistics in the
metadata (computed once, at registration); others are counted from their dataset dicts.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ..class_stats import (
    ClassStats,
    class_stats_from_dicts,
    class_stats_from_metadata,
    counts_as_instance,
    union_class_stats,
)
from ..errors import LTDetError

__all__ = [
    "dataset_class_stats",
    "train_class_stats",
    "train_class_frequency",
    "dataset_box_centres",
    "train_box_centres",
]


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


def dataset_box_centres(name: str, num_classes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Where the boxes of the registered dataset ``name`` lie in their images: the classes and
    the box centres, normalised by the image's width and height (x / W, y / H; in [0, 1] for a
    box inside its image). Crowd regions are left out, as in every class statistic
    (:func:`lt_det.class_stats.counts_as_instance`). Loads the dataset dicts (about a minute
    for LVIS v1 train).

    Returns:
        (classes (N,) int64 in [0, K), centres (N, 2) float64).

    Raises:
        LTDetError: a record without ``width`` / ``height``, a box mode other than XYXY_ABS,
            XYWH_ABS or XYWHA_ABS, or a class outside [0, K), naming the dataset and image.
    """
    classes: List[int] = []
    centres: List[Tuple[float, float]] = []
    for d in DatasetCatalog.get(name):
        anns = [a for a in d.get("annotations", ()) if counts_as_instance(a)]
        if not anns:
            continue
        image = d.get("image_id", d.get("file_name"))
        if "width" not in d or "height" not in d:
            raise LTDetError(
                f"dataset '{name}', image {image}: the record has no 'width' / 'height', which "
                "the box locations are normalised by."
            )
        width, height = float(d["width"]), float(d["height"])
        for a in anns:
            c = int(a["category_id"])
            if not 0 <= c < num_classes:
                raise LTDetError(
                    f"dataset '{name}', image {image}: category_id {c} is outside [0, "
                    f"{num_classes}) (MODEL.ROI_HEADS.NUM_CLASSES={num_classes})."
                )
            b, mode = a["bbox"], a.get("bbox_mode")
            if mode == BoxMode.XYXY_ABS:
                cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            elif mode == BoxMode.XYWH_ABS:
                cx, cy = b[0] + b[2] / 2, b[1] + b[3] / 2
            elif mode == BoxMode.XYWHA_ABS:
                cx, cy = b[0], b[1]
            else:
                raise LTDetError(
                    f"dataset '{name}', image {image}: bbox_mode {mode!r} is not one of "
                    "XYXY_ABS, XYWH_ABS, XYWHA_ABS; box locations cannot be read."
                )
            classes.append(c)
            centres.append((cx / width, cy / height))
    return (
        torch.tensor(classes, dtype=torch.int64),
        torch.tensor(centres, dtype=torch.float64).reshape(-1, 2),
    )


def train_box_centres(names: Sequence[str], num_classes: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`dataset_box_centres` of the training datasets ``names`` (``DATASETS.TRAIN``),
    concatenated: (classes (N,), centres (N, 2))."""
    parts = [dataset_box_centres(n, num_classes) for n in names]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
