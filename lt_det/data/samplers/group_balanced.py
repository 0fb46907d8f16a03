"""GRBS: group-based relatively balanced batch sampler, with BET (batch embedded training).

After Zhang, "Covariance-corrected Whitening Alleviates Network Degeneration on Imbalanced
Classification" (arXiv 2408.17197; "B3RS" in its predecessor arXiv 2112.05958). No public code
exists; the definition below is lt_det's (docs/e2e.md).

Shape shorthand: I images, K classes, n_c = training images containing class c, G groups,
B = SOLVER.IMS_PER_BATCH (global batch), f = BET fraction, s = balance strength.

Groups: the classes with n_c > 0, sorted by (n_c, class id), split into G consecutive groups whose
sizes differ by at most one (``numpy.array_split``); group 0 is the rarest. ``M_g = sum_{c in g}
n_c`` is the group's number of (class, image) pairs.

Global batch b:

1. BET: ``B_b = floor(f * B + u)`` (u ~ U[0, 1)) slots are group-balanced, so E[B_b] = f * B;
   the other B - B_b slots are drawn uniformly over all I images (instance-balanced).
2. The B_b balanced slots are split between groups with ``q_g ∝ M_g ** (1 - s)`` by systematic
   sampling (points (v + i) / B_b, i < B_b, v ~ U[0, 1), on the cumulative q): group g gets
   ``floor(B_b q_g)`` or ``ceil(B_b q_g)`` slots, B_b q_g on average. s = 0 keeps the groups at
   their instance share, s = 1 makes them equally frequent.
3. A slot of group g draws a (class, image) pair of the group uniformly: class c with probability
   n_c / M_g, then an image containing c uniformly (classes inside a group have similar counts).
4. The batch's B images are shuffled, so every rank's share mixes groups and uniform slots.

With G = 1 and s anything, or f = 0, batches are instance-driven; with G = K, s = 1 and f = 1 the
sampler is class-balanced (per slot; each batch spreads its slots evenly over the classes).
"""
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode
from torch.utils.data import Sampler

from ...errors import LTDetError
from .batch_stream import BatchStreamSampler
from .class_index import ClassImagesLike, as_class_image_index, uniform_offsets
from .registry import register_sampler

__all__ = ["GroupBalancedSampler", "frequency_groups", "group_probabilities"]


def frequency_groups(image_counts: torch.Tensor, num_groups: int) -> list:
    """Split the classes with n_c > 0, rarest first, into ``num_groups`` near-equal groups.

    Args:
        image_counts: (K,) n_c.
        num_groups: G >= 1 (capped at the number of classes with images).

    Returns:
        G lists of class ids (sorted by (n_c, id)).
    """
    if num_groups < 1:
        raise LTDetError(f"DATALOADER.GRBS.NUM_GROUPS must be >= 1, got {num_groups}.")
    counts = image_counts.numpy()
    present = np.nonzero(counts > 0)[0]
    if present.size == 0:
        raise LTDetError("no class has a training image: nothing to sample.")
    order = present[np.lexsort((present, counts[present]))]
    return [g.tolist() for g in np.array_split(order, min(num_groups, present.size))]


def group_probabilities(group_mass: torch.Tensor, balance: float) -> torch.Tensor:
    """(G,) float64 ``q_g ∝ M_g ** (1 - balance)``, balance in [0, 1]."""
    if not 0.0 <= balance <= 1.0:
        raise LTDetError(f"DATALOADER.GRBS.BALANCE must be in [0, 1], got {balance}.")
    q = group_mass.to(torch.float64) ** (1.0 - balance)
    return q / q.sum()


class GroupBalancedSampler(BatchStreamSampler):
    """GRBS with BET (see the module docstring)."""

    def __init__(
        self,
        class_images: ClassImagesLike,
        *,
        batch_size: int,
        num_groups: int = 4,
        balance: float = 1.0,
        bet_fraction: float = 0.5,
        num_classes: Optional[int] = None,
        **kwargs: Any,
    ):
        """
        Args:
            class_images: detectron2 dataset dicts (I,), K per-class image lists, or a
                :class:`ClassImageIndex`.
            batch_size: B (SOLVER.IMS_PER_BATCH, all ranks).
            num_groups: G (DATALOADER.GRBS.NUM_GROUPS).
            balance: s in [0, 1] (DATALOADER.GRBS.BALANCE).
            bet_fraction: f in [0, 1] (DATALOADER.GRBS.BET_FRACTION).
            num_classes: K; default the largest category id + 1.
            **kwargs: seed, rank, world_size, batches_per_chunk of :class:`BatchStreamSampler`.
        """
        super().__init__(batch_size=batch_size, **kwargs)
        if not 0.0 <= bet_fraction <= 1.0:
            raise LTDetError(f"DATALOADER.GRBS.BET_FRACTION must be in [0, 1], got {bet_fraction}.")
        self._index = as_class_image_index(class_images, num_classes=num_classes)
        self._num_images = self._index.num_images
        self._bet_fraction = float(bet_fraction)
        self.groups = frequency_groups(self._index.image_counts, num_groups)
        # (class, image) pairs laid out group by group; group g is pairs[ptr[g]:ptr[g + 1]].
        pairs = [self._index.images_of(c) for g in self.groups for c in g]
        self._pairs = torch.cat(pairs)
        mass = torch.tensor([sum(int(self._index.image_counts[c]) for c in g) for g in self.groups])
        self._group_ptr = torch.cat([torch.zeros(1, dtype=torch.int64), mass.cumsum(0)])
        self.group_probs = group_probabilities(mass, balance)
        self._cdf = self.group_probs.cumsum(0)

    def draw_batches(
        self, generator: torch.Generator, first_batch: int, num_batches: int
    ) -> torch.Tensor:
        b = self.batch_size
        out = torch.empty(num_batches, b, dtype=torch.int64)
        balanced = (
            (
                self._bet_fraction * b
                + torch.rand(num_batches, generator=generator, dtype=torch.float64)
            )
            .floor()
            .long()
        )
        for i in range(num_batches):
            n = int(balanced[i])
            points = (torch.rand(1, generator=generator, dtype=torch.float64) + torch.arange(n)) / n
            groups = torch.searchsorted(self._cdf, points, right=True).clamp(
                max=len(self.groups) - 1
            )
            start, size = (
                self._group_ptr[groups],
                self._group_ptr[groups + 1] - self._group_ptr[groups],
            )
            batch = torch.cat(
                [
                    self._pairs[start + uniform_offsets(size, generator)],
                    torch.randint(self._num_images, (b - n,), generator=generator),
                ]
            )
            out[i] = batch[torch.randperm(b, generator=generator)]
        return out.flatten()


@register_sampler("GroupBalancedSampler")
def _group_balanced_sampler(cfg: CfgNode, dataset_dicts: Sequence[Dict]) -> Sampler:
    c = cfg.DATALOADER.GRBS
    return GroupBalancedSampler(
        dataset_dicts,
        batch_size=cfg.SOLVER.IMS_PER_BATCH,
        num_groups=c.NUM_GROUPS,
        balance=c.BALANCE,
        bet_fraction=c.BET_FRACTION,
        num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES,
    )
