"""Which training images contain which class, as a compressed (CSR) table.

Shape shorthand: I images, K classes, Z (class, image) pairs with the class present in the image.

The table is built once from detectron2 dataset dicts with vectorised numpy (no per-class Python
loop): 100k images with LVIS v1 class statistics build in well under a second
(``tools/bench_samplers.py``). Annotations count as in every lt_det class statistic
(:func:`lt_det.class_stats.counts_as_instance`: crowd regions, ``iscrowd`` = 1, do not). Images
without (counted) annotations appear in no class list, so class-driven samplers never draw them.
"""
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch

from ...class_stats import counts_as_instance
from ...errors import LTDetError

__all__ = ["ClassImageIndex", "as_class_image_index", "uniform_offsets"]


def uniform_offsets(sizes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(n,) int64 offsets, offset i uniform in ``[0, sizes[i])`` (every size > 0), from n float64
    uniforms of ``generator``."""
    offsets = (torch.rand(sizes.numel(), generator=generator, dtype=torch.float64) * sizes).long()
    return torch.minimum(offsets, sizes - 1)  # guards u * size rounding up to size


@dataclass(frozen=True)
class ClassImageIndex:
    """Images of every class, class by class.

    Attributes:
        indptr: (K + 1,) int64; class ``c`` is on images ``image_ids[indptr[c]:indptr[c + 1]]``.
        image_ids: (Z,) int64 dataset indices, sorted within each class, without duplicates.
        num_images: I, the number of images of the dataset (including images without annotations).
    """

    indptr: torch.Tensor
    image_ids: torch.Tensor
    num_images: int

    @property
    def num_classes(self) -> int:
        """K."""
        return int(self.indptr.numel()) - 1

    @property
    def image_counts(self) -> torch.Tensor:
        """(K,) int64: number of images containing each class (n_c)."""
        return self.indptr[1:] - self.indptr[:-1]

    def images_of(self, class_id: int) -> torch.Tensor:
        """Dataset indices of the images containing ``class_id``."""
        return self.image_ids[self.indptr[class_id] : self.indptr[class_id + 1]]

    def draw_images(self, classes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(n,) dataset indices: for each of the (n,) ``classes`` (all with images) one of its
        images, uniformly (:func:`uniform_offsets`)."""
        start = self.indptr[classes]
        return self.image_ids[start + uniform_offsets(self.indptr[classes + 1] - start, generator)]

    @classmethod
    def from_dataset_dicts(
        cls, dataset_dicts: Sequence[Dict], *, num_classes: Optional[int] = None
    ) -> "ClassImageIndex":
        """Build the table from detectron2 dataset dicts.

        Args:
            dataset_dicts: I dicts with ``annotations`` (each with a contiguous ``category_id``);
                a dict without ``annotations`` counts as an image without annotations.
            num_classes: K; default ``max(category_id) + 1``. Must exceed every category id.
        """
        num_images = len(dataset_dicts)
        if num_images == 0:
            raise LTDetError("the training dataset is empty: no dataset dicts to sample from.")
        counted = [
            [a["category_id"] for a in d.get("annotations", ()) if counts_as_instance(a)]
            for d in dataset_dicts
        ]
        per_image = np.fromiter((len(c) for c in counted), dtype=np.int64, count=num_images)
        cats = np.fromiter(
            (c for image in counted for c in image), dtype=np.int64, count=int(per_image.sum())
        )
        images = np.repeat(np.arange(num_images, dtype=np.int64), per_image)
        return cls._from_pairs(cats, images, num_images=num_images, num_classes=num_classes)

    @classmethod
    def from_class_image_lists(
        cls, class_image_lists: Sequence[Sequence[int]], *, num_images: Optional[int] = None
    ) -> "ClassImageIndex":
        """Build the table from K lists of dataset indices (list ``c`` = images containing ``c``).

        Args:
            class_image_lists: K sequences of image indices; duplicates are removed.
            num_images: I; default ``max(index) + 1``.
        """
        lengths = np.fromiter((len(v) for v in class_image_lists), np.int64, len(class_image_lists))
        images = (
            np.concatenate([np.asarray(v, dtype=np.int64) for v in class_image_lists])
            if lengths.sum()
            else np.zeros(0, dtype=np.int64)
        )
        cats = np.repeat(np.arange(len(class_image_lists), dtype=np.int64), lengths)
        if num_images is None:
            num_images = int(images.max()) + 1 if images.size else 0
        return cls._from_pairs(
            cats, images, num_images=num_images, num_classes=len(class_image_lists)
        )

    @classmethod
    def _from_pairs(
        cls, cats: np.ndarray, images: np.ndarray, *, num_images: int, num_classes: Optional[int]
    ) -> "ClassImageIndex":
        if cats.size == 0:
            raise LTDetError(
                f"none of the {num_images} training images has an annotation; class-driven "
                "samplers need annotated images (check DATASETS.TRAIN and the annotation file)."
            )
        if cats.min() < 0:
            raise LTDetError(f"negative category_id {int(cats.min())} in the dataset dicts.")
        if num_classes is None:
            num_classes = int(cats.max()) + 1
        elif cats.max() >= num_classes:
            raise LTDetError(
                f"category_id {int(cats.max())} found in the dataset dicts, but the model has "
                f"{num_classes} classes (MODEL.ROI_HEADS.NUM_CLASSES); ids must be contiguous "
                f"in [0, {num_classes})."
            )
        if images.size and (images.min() < 0 or images.max() >= num_images):
            raise LTDetError(f"image indices must lie in [0, {num_images}).")
        # One sort of (class, image) keys gives per-class sorted, de-duplicated image lists.
        keys = np.unique(cats * num_images + images)
        cats, images = np.divmod(keys, num_images)
        indptr = np.zeros(num_classes + 1, dtype=np.int64)
        np.cumsum(np.bincount(cats, minlength=num_classes), out=indptr[1:])
        return cls(
            indptr=torch.from_numpy(indptr),
            image_ids=torch.from_numpy(images.astype(np.int64)),
            num_images=int(num_images),
        )


ClassImagesLike = Union[ClassImageIndex, Sequence[Dict], Sequence[Sequence[int]]]


def as_class_image_index(
    data: ClassImagesLike, *, num_classes: Optional[int] = None
) -> ClassImageIndex:
    """Accept a :class:`ClassImageIndex`, detectron2 dataset dicts or per-class image lists."""
    if isinstance(data, ClassImageIndex):
        if num_classes is not None and num_classes != data.num_classes:
            raise LTDetError(
                f"the class-image index has {data.num_classes} classes, expected {num_classes}."
            )
        return data
    if len(data) and isinstance(data[0], dict):
        return ClassImageIndex.from_dataset_dicts(data, num_classes=num_classes)
    index = ClassImageIndex.from_class_image_lists(data)
    if num_classes is not None and num_classes != index.num_classes:
        raise LTDetError(f"got {index.num_classes} class image lists, expected {num_classes}.")
    return index
