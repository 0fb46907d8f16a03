"""Class-driven image samplers: class-balanced and class-power (square-root) sampling.

Shape shorthand: I images, K classes, n_c = number of training images that contain class c.

Every draw first picks a class c with probability ``pi_c`` and then, uniformly, one of the n_c
images containing c. :class:`ClassPowerSampler` uses ``pi_c ∝ n_c ** power``: power 0 is the
class-balanced sampler (``"ClassBalancedSampler"``), 0.5 square-root sampling, and 1 draws images
roughly in proportion to how many classes they contain. Images without annotations belong to no
class and are never drawn (detectron2 drops them anyway when
``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` is on); classes with n_c = 0 get probability 0.

Like detectron2's ``TrainingSampler`` the samplers yield dataset indices forever. All ranks
generate one common stream from a shared seed, in chunks of ``chunk_size`` draws; rank r keeps the
draws at positions r, r + W, r + 2W, ... (W = world size). Ranks therefore see disjoint parts
of one stream, and interleaving their outputs gives back the single-process stream. Draws are
with replacement, so the same image can still appear on two ranks, as in any i.i.d. sampler.
"""
from typing import Any, Dict, Iterator, Optional, Sequence

import torch
from detectron2.config import CfgNode, configurable
from torch.utils.data import Sampler

from ...errors import LTDetError
from .batch_stream import stream_shard
from .class_index import ClassImageIndex, ClassImagesLike, as_class_image_index
from .registry import register_sampler

__all__ = ["ClassDrawSampler", "ClassPowerSampler", "class_power_probs"]


def class_power_probs(image_counts: torch.Tensor, power: float) -> torch.Tensor:
    """``pi_c ∝ n_c ** power`` over the classes with n_c > 0, zero elsewhere.

    Args:
        image_counts: (K,) number of images containing each class.
        power: the exponent; 0 = class-balanced.

    Returns:
        (K,) float64 probabilities summing to 1.
    """
    counts = image_counts.to(torch.float64)
    present = counts > 0
    # 0 ** 0 would be 1: absent classes are masked explicitly.
    probs = torch.where(present, counts.clamp(min=1) ** power, torch.zeros_like(counts))
    total = probs.sum()
    if not total > 0:
        raise LTDetError("no class has a training image: nothing to sample.")
    return probs / total


class ClassDrawSampler(Sampler):
    """Base of the class-driven samplers: draw a class, then an image containing it.

    Subclasses define :meth:`class_probabilities`, which is read again at the start of every
    chunk of draws (the Meta Sampler changes it while training).
    """

    def __init__(
        self,
        class_images: ClassImagesLike,
        *,
        num_classes: Optional[int] = None,
        seed: Optional[int] = None,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        chunk_size: int = 4096,
    ):
        """
        Args:
            class_images: detectron2 dataset dicts (I,), K per-class lists of image indices, or a
                :class:`ClassImageIndex`.
            num_classes: K; default: the largest category id + 1.
            seed: seed of the draw stream, the same on all ranks. None: a random seed shared by
                all ranks (``comm.shared_random_seed()``; deterministic once cfg.SEED is set).
            rank, world_size: this process's shard; default from ``detectron2.utils.comm``.
            chunk_size: draws generated at a time (of the common stream, all ranks together).
        """
        self._index: ClassImageIndex = as_class_image_index(class_images, num_classes=num_classes)
        self._counts = self._index.image_counts
        self._seed, self._rank, self._world_size = stream_shard(seed, rank, world_size)
        if chunk_size <= 0:
            raise LTDetError(f"chunk_size must be positive, got {chunk_size}.")
        self._chunk_size = int(chunk_size)
        self._resume = (0, None)  # see resume_from
        self._stream_state: Optional[Dict] = None
        self._chunk_probs: Optional[torch.Tensor] = None

    @property
    def class_image_index(self) -> ClassImageIndex:
        """The (class -> images) table the sampler draws from."""
        return self._index

    @property
    def num_classes(self) -> int:
        """K."""
        return self._index.num_classes

    @property
    def image_counts(self) -> torch.Tensor:
        """(K,) int64 n_c."""
        return self._counts

    def class_probabilities(self) -> torch.Tensor:
        """(K,) probabilities of drawing each class next (zero for classes without images)."""
        raise NotImplementedError

    def _draw(
        self, generator: torch.Generator, n: int, probs: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        if probs is None:
            probs = self.class_probabilities()
        self._chunk_probs = probs.detach().clone()
        probs = probs.to(torch.float64) * (self._counts > 0)
        if not probs.sum() > 0:
            raise LTDetError("all class sampling rates are zero for the classes with images.")
        classes = torch.multinomial(probs, n, replacement=True, generator=generator)
        return self._index.draw_images(classes, generator)

    def stream_state(self) -> Optional[Dict]:
        """The chunk in progress: its first position in the common stream, the generator state
        before it was drawn and the class probabilities it was drawn with (None before the
        first draw). With :meth:`resume_from` a resumed run draws the rest of that chunk as
        before, even when the probabilities have changed since (Meta Sampler)."""
        return self._stream_state

    def resume_from(self, start: int, state: Optional[Dict] = None) -> None:
        """Make the next ``iter()`` skip the first ``start`` indices of this rank's stream.

        Args:
            start: indices of this rank's stream already consumed.
            state: a :meth:`stream_state` saved when those were consumed, or None (the stream is
                replayed from the seed with the current probabilities).
        """
        self._resume = (int(start), state)

    def __iter__(self) -> Iterator[int]:
        start, state = self._resume
        self._resume = (0, None)
        generator = torch.Generator()
        generator.manual_seed(self._seed)
        position = 0  # index of the chunk's first draw in the common stream
        saved_probs = None
        if state is not None and state["position"] <= start * self._world_size:
            generator.set_state(state["generator"])
            position, saved_probs = int(state["position"]), state["probs"]
        skip_to = start * self._world_size  # first common-stream position this rank still needs
        while True:
            generator_state = generator.get_state()
            draws = self._draw(generator, self._chunk_size, saved_probs)
            saved_probs = None
            self._stream_state = {
                "position": position,
                "generator": generator_state,
                "probs": self._chunk_probs,
            }
            first = (self._rank - position) % self._world_size
            mine = draws[first :: self._world_size]
            if skip_to > position:  # rank r's j-th draw here is at position + first + j * W
                mine = mine[max(0, -(-(skip_to - position - first) // self._world_size)) :]
            yield from mine.tolist()
            position += self._chunk_size


class ClassPowerSampler(ClassDrawSampler):
    """Draw class c with probability ∝ n_c ** power, then uniformly an image containing c."""

    @configurable
    def __init__(self, class_images: ClassImagesLike, *, power: float, **kwargs: Any):
        """
        Args:
            class_images: detectron2 dataset dicts (I,), K per-class image lists, or a
                :class:`ClassImageIndex`.
            power: exponent of n_c; 0 = class-balanced, 0.5 = square-root sampling.
            **kwargs: num_classes, seed, rank, world_size, chunk_size of
                :class:`ClassDrawSampler`.
        """
        super().__init__(class_images, **kwargs)
        self._power = float(power)
        self._probs = class_power_probs(self._counts, self._power)

    @classmethod
    def from_config(cls, cfg: CfgNode, dataset_dicts: Sequence[Dict]) -> Dict:
        return {
            "class_images": dataset_dicts,
            "power": cfg.DATALOADER.CLASS_POWER,
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
        }

    @property
    def power(self) -> float:
        return self._power

    def class_probabilities(self) -> torch.Tensor:
        return self._probs


@register_sampler("ClassPowerSampler")
def _class_power_sampler(cfg: CfgNode, dataset_dicts: Sequence[Dict]) -> Sampler:
    return ClassPowerSampler(cfg, dataset_dicts)


@register_sampler("ClassBalancedSampler")
def _class_balanced_sampler(cfg: CfgNode, dataset_dicts: Sequence[Dict]) -> Sampler:
    return ClassPowerSampler(dataset_dicts, power=0.0, num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES)
