"""Progressively-balanced sampling (Kang et al., "Decoupling Representation and Classifier for
Long-Tailed Recognition", ICLR 2020): from instance-balanced to class-balanced over training.

Shape shorthand: I images, K classes, n_c = training images containing class c, T =
SOLVER.MAX_ITER, B = SOLVER.IMS_PER_BATCH.

Kang et al. interpolate the class sampling probabilities, ``p(t) = (1 - t/T) p_IB + (t/T) p_CB``.
For images, lt_det takes the same mixture of the two image samplers: every image of global batch
t (training iteration t) is, independently,

- with probability ``alpha_t = t / (T - 1)`` (1 when T = 1): class-balanced — a class uniformly
  among the classes with images, then uniformly one of its n_c images (``ClassBalancedSampler``);
- otherwise instance-balanced: uniformly one of all I images (``TrainingSampler``, with
  replacement).

So iteration 0 is exactly instance-balanced and iteration T - 1 exactly class-balanced; image i's
probability at iteration t is ``(1 - alpha_t) / I + alpha_t / K' * sum_{c in i} 1 / n_c``
(K' classes with images). Past T (a longer run) alpha stays 1.
"""
from typing import Any, Dict, Optional, Sequence

import torch
from detectron2.config import CfgNode
from torch.utils.data import Sampler

from ...errors import LTDetError
from .batch_stream import BatchStreamSampler
from .class_index import ClassImagesLike, as_class_image_index
from .registry import register_sampler

__all__ = ["ProgressiveBalancedSampler"]


class ProgressiveBalancedSampler(BatchStreamSampler):
    """Instance-balanced at iteration 0, class-balanced at iteration max_iter - 1 (see above)."""

    def __init__(
        self,
        class_images: ClassImagesLike,
        *,
        batch_size: int,
        max_iter: int,
        num_classes: Optional[int] = None,
        **kwargs: Any,
    ):
        """
        Args:
            class_images: detectron2 dataset dicts (I,), K per-class image lists, or a
                :class:`ClassImageIndex`.
            batch_size: B (SOLVER.IMS_PER_BATCH, all ranks).
            max_iter: T (SOLVER.MAX_ITER), >= 1.
            num_classes: K; default the largest category id + 1.
            **kwargs: seed, rank, world_size, batches_per_chunk of
                :class:`~lt_det.data.samplers.batch_stream.BatchStreamSampler`.
        """
        super().__init__(batch_size=batch_size, **kwargs)
        if max_iter < 1:
            raise LTDetError(f"SOLVER.MAX_ITER must be >= 1, got {max_iter}.")
        self.max_iter = int(max_iter)
        self._index = as_class_image_index(class_images, num_classes=num_classes)
        self._present = torch.nonzero(self._index.image_counts > 0).flatten()

    def alpha(self, iteration: int) -> float:
        """Probability that an image of global batch ``iteration`` is drawn class-balanced."""
        if self.max_iter == 1:
            return 1.0
        return min(1.0, iteration / (self.max_iter - 1))

    def draw_batches(
        self, generator: torch.Generator, first_batch: int, num_batches: int
    ) -> torch.Tensor:
        b = self.batch_size
        n = num_batches * b
        alpha = torch.tensor(
            [self.alpha(t) for t in range(first_batch, first_batch + num_batches)],
            dtype=torch.float64,
        )
        draw_alpha = alpha.repeat_interleave(b)  # the alpha of each draw's batch
        balanced = torch.rand(n, generator=generator, dtype=torch.float64) < draw_alpha
        classes = self._present[torch.randint(self._present.numel(), (n,), generator=generator)]
        cb = self._index.draw_images(classes, generator)
        ib = torch.randint(self._index.num_images, (n,), generator=generator)
        return torch.where(balanced, cb, ib)


@register_sampler("ProgressiveBalancedSampler")
def _progressive_sampler(cfg: CfgNode, dataset_dicts: Sequence[Dict]) -> Sampler:
    return ProgressiveBalancedSampler(
        dataset_dicts,
        batch_size=cfg.SOLVER.IMS_PER_BATCH,
        max_iter=cfg.SOLVER.MAX_ITER,
        num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES,
    )
