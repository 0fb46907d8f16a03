"""Per-class training statistics: image counts, instance counts and the LVIS r/c/f groups.

The one place that counts classes. Dataset registration (:mod:`lt_det.data.lvis_format`), the
class priors of the balanced losses, the class-drawing samplers, the evaluation's frequency groups,
the synthetic benchmark and the tools all read these numbers from here.

Rules (LVIS, Gupta et al. 2019):

- the image count of class c is the number of images with at least one (non-crowd) instance of c;
  the instance count is its number of (non-crowd) instances;
- crowd annotations (``iscrowd`` = 1) are excluded from every count (LVIS has none; COCO-style
  datasets do, and a crowd region is not an instance to learn from);
- frequency group from the training image count n: rare ``n <= 10``, common ``10 < n <= 100``,
  frequent ``n > 100``;
- several training datasets are one training set: counts and image numbers add up (the UNION),
  never the first dataset's counts over all datasets' images.

Pure Python (no torch, no detectron2).
"""
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .errors import LTDetError

__all__ = [
    "ClassStats",
    "frequency_group",
    "frequency_groups",
    "class_stats_from_dicts",
    "class_stats_from_lvis_json",
    "union_class_stats",
    "counts_as_instance",
    "class_stats_to_metadata",
    "class_stats_from_metadata",
    "RARE_MAX_IMAGES",
    "COMMON_MAX_IMAGES",
]

#: LVIS frequency groups by training image count: r <= 10 < c <= 100 < f.
RARE_MAX_IMAGES = 10
COMMON_MAX_IMAGES = 100


def frequency_group(image_count: int) -> str:
    """LVIS frequency group of a class from its number of training images.

    Returns:
        "r" (``image_count <= 10``), "c" (``<= 100``) or "f".
    """
    if image_count <= RARE_MAX_IMAGES:
        return "r"
    if image_count <= COMMON_MAX_IMAGES:
        return "c"
    return "f"


def frequency_groups(image_counts: Iterable[int]) -> List[str]:
    """:func:`frequency_group` of every class."""
    return [frequency_group(int(n)) for n in image_counts]


def counts_as_instance(ann: Mapping[str, Any]) -> bool:
    """Whether an annotation enters the class statistics: every one except crowd regions
    (``iscrowd`` = 1; default 0)."""
    return not ann.get("iscrowd", 0)


@dataclass(frozen=True)
class ClassStats:
    """Per-class counts of a training set (K classes, contiguous order).

    Attributes:
        image_counts: K numbers of images containing the class (non-crowd instances only).
        instance_counts: K numbers of non-crowd instances.
        num_images: images in the set, those without annotations included.
    """

    image_counts: Tuple[int, ...]
    instance_counts: Tuple[int, ...]
    num_images: int

    @property
    def num_classes(self) -> int:
        return len(self.image_counts)

    @property
    def frequency(self) -> List[str]:
        """K LVIS groups ("r" / "c" / "f") from :attr:`image_counts`."""
        return frequency_groups(self.image_counts)

    def image_fractions(self) -> List[float]:
        """K fractions of the images that contain each class, in [0, 1]."""
        if self.num_images <= 0:
            raise LTDetError("class statistics of an empty training set (0 images).")
        return [n / self.num_images for n in self.image_counts]


def class_stats_from_dicts(
    dataset_dicts: Iterable[Mapping[str, Any]],
    num_classes: int,
    *,
    dataset_name: str = "<dicts>",
) -> ClassStats:
    """Count classes in detectron2 dataset dicts (contiguous ``category_id`` in [0, K)).

    Args:
        dataset_dicts: detectron2 dicts; an annotation's ``iscrowd`` (default 0) = 1 excludes it.
        num_classes: K.
        dataset_name: used in error messages.

    Raises:
        LTDetError: a non-crowd ``category_id`` outside [0, K), naming the dataset and image.
    """
    image_counts = [0] * num_classes
    instance_counts = [0] * num_classes
    num_images = 0
    for d in dataset_dicts:
        num_images += 1
        present = set()
        for ann in d.get("annotations", ()):
            if not counts_as_instance(ann):
                continue
            c = int(ann["category_id"])
            if not 0 <= c < num_classes:
                raise LTDetError(
                    f"Dataset {dataset_name!r}, image {d.get('image_id', d.get('file_name'))}: "
                    f"category_id {c} is outside [0, {num_classes}) (MODEL.ROI_HEADS.NUM_CLASSES="
                    f"{num_classes}); dataset dicts must use contiguous ids."
                )
            instance_counts[c] += 1
            present.add(c)
        for c in present:
            image_counts[c] += 1
    return ClassStats(tuple(image_counts), tuple(instance_counts), num_images)


def class_stats_from_lvis_json(
    data: Mapping[str, Any], *, declared: bool = True
) -> Tuple[List[int], ClassStats, List[str]]:
    """Per-category statistics of a loaded LVIS-format json, in increasing category-id order.

    Args:
        data: the json (``categories``; ``images`` and ``annotations`` when present: a
            ``*_cat_info.json`` list is ``{"categories": list}``).
        declared: use the categories' own ``image_count`` (``instance_count``) when every
            category has it (real LVIS: the training set's numbers, also in the val json);
            otherwise, or with ``declared=False``, count the annotations (crowd excluded).

    Returns:
        (category ids (K,), :class:`ClassStats`, K groups). A category's own ``frequency``
        field wins over the rule (the LVIS jsons carry the official groups).
    """
    cats = sorted(data["categories"], key=lambda c: c["id"])
    ids = [c["id"] for c in cats]
    num_images = len(data.get("images", ()))
    index = {cid: i for i, cid in enumerate(ids)}
    images_of = [set() for _ in ids]
    instance_counts = [0] * len(ids)
    for ann in data.get("annotations", ()):
        i = index.get(ann["category_id"])
        if i is None or not counts_as_instance(ann):
            continue
        images_of[i].add(ann["image_id"])
        instance_counts[i] += 1
    image_counts = [len(s) for s in images_of]
    if declared and all("image_count" in c for c in cats):
        image_counts = [int(c["image_count"]) for c in cats]
    if declared and all("instance_count" in c for c in cats):
        instance_counts = [int(c["instance_count"]) for c in cats]
    stats = ClassStats(tuple(image_counts), tuple(instance_counts), num_images)
    groups = [c.get("frequency") or g for c, g in zip(cats, stats.frequency)]
    return ids, stats, groups


def union_class_stats(parts: Sequence[ClassStats], *, names: Optional[Sequence[str]] = None):
    """The statistics of several training datasets taken together (counts and images add up).

    Raises:
        LTDetError: no part, or parts with different class counts (naming the datasets).
    """
    if not parts:
        raise LTDetError("class statistics of no training dataset (DATASETS.TRAIN is empty).")
    k = parts[0].num_classes
    if any(p.num_classes != k for p in parts):
        sizes = [p.num_classes for p in parts]
        raise LTDetError(
            f"training datasets {list(names) if names else ''} have different class counts "
            f"{sizes}; they cannot be one training set."
        )
    return ClassStats(
        tuple(sum(p.image_counts[c] for p in parts) for c in range(k)),
        tuple(sum(p.instance_counts[c] for p in parts) for c in range(k)),
        sum(p.num_images for p in parts),
    )


def class_stats_to_metadata(ids: Sequence[int], stats: ClassStats) -> Dict[str, Any]:
    """The dataset-metadata fields lt_det's registration sets from :class:`ClassStats`."""
    return {
        "class_image_count": [
            {"id": i, "image_count": n} for i, n in zip(ids, stats.image_counts)
        ],
        "class_instance_count": list(stats.instance_counts),
        "num_images": stats.num_images,
    }


def class_stats_from_metadata(meta: Any) -> Optional[ClassStats]:
    """:class:`ClassStats` stored by registration on a detectron2 ``Metadata`` (or a dict);
    None when the dataset was registered without them."""
    get = meta.get if hasattr(meta, "get") else (lambda k, d=None: getattr(meta, k, d))
    images, instances, num = (
        get("class_image_count", None),
        get("class_instance_count", None),
        get("num_images", None),
    )
    if images is None or instances is None or num is None:
        return None
    return ClassStats(
        tuple(int(e["image_count"]) for e in images), tuple(int(n) for n in instances), int(num)
    )
