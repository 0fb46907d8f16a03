"""A small class-balanced set of ROI features: the meta set of the Meta Sampler.

Shape shorthand: K classes, M = features kept per class, D = feature dimension, R ROIs.

BALMS evaluates the meta loss on a class-balanced *meta set*. In detection an image holds many
classes and an ROI feature depends on the (frozen, in the decoupled stage) detector, so lt_det keeps
the meta set as a bank of the last M foreground ROI features seen for every class (FIFO per
class), filled from the training batches themselves. No extra images are loaded, memory is
K * M * D floats (1203 * 4 * 1024 * 4 B = 20 MB for LVIS), and a class enters the meta set as
soon as the loader draws one image with it. Meta batches are drawn class-balanced from the bank:
a class uniformly among the classes present, then one of its stored features.
"""
from typing import Optional, Tuple

import torch

from ..errors import LTDetError

__all__ = ["ClassBalancedFeatureBank"]


class ClassBalancedFeatureBank:
    """The last ``per_class`` foreground features of every class.

    The bank lives on the device of the first features pushed; bookkeeping stays on the CPU.
    """

    def __init__(self, *, num_classes: int, per_class: int):
        """
        Args:
            num_classes: K (foreground classes; label K = background is never stored).
            per_class: M, features kept per class (the oldest is replaced first).
        """
        if num_classes <= 0 or per_class <= 0:
            raise LTDetError(
                f"feature bank needs num_classes > 0 and per_class > 0 "
                f"(DATALOADER.META_SAMPLER.META_PER_CLASS), got {num_classes}, {per_class}."
            )
        self.num_classes = int(num_classes)
        self.per_class = int(per_class)
        self._features: Optional[torch.Tensor] = None  # (K, M, D)
        self._filled = torch.zeros(num_classes, dtype=torch.int64)  # valid slots per class
        self._next = torch.zeros(num_classes, dtype=torch.int64)  # next slot to overwrite

    @property
    def filled(self) -> torch.Tensor:
        """(K,) int64 number of stored features per class."""
        return self._filled

    def __len__(self) -> int:
        return int(self._filled.sum())

    @torch.no_grad()
    def push(self, features: torch.Tensor, gt_classes: torch.Tensor) -> None:
        """Store the foreground rows of a batch (vectorised; no per-class loop).

        Args:
            features: (R, D) ROI features (detached copies are stored).
            gt_classes: (R,) labels in [0, K]; rows labelled K (background) are ignored.
        """
        labels = gt_classes.detach().to("cpu", torch.int64)
        keep = (labels >= 0) & (labels < self.num_classes)
        if not bool(keep.any()):
            return
        if self._features is None:
            self._features = features.new_zeros(
                (self.num_classes, self.per_class, features.shape[1])
            )
        elif features.shape[1] != self._features.shape[2]:
            raise LTDetError(
                f"feature dimension changed from {self._features.shape[2]} to {features.shape[1]}."
            )
        elif self._features.device != features.device:  # e.g. restored from a CPU checkpoint
            self._features = self._features.to(features.device)
        rows = torch.nonzero(keep).squeeze(1)
        labels = labels[rows]
        order = torch.argsort(labels, stable=True)
        rows, labels = rows[order], labels[order]
        counts = torch.bincount(labels, minlength=self.num_classes)
        starts = torch.cumsum(counts, 0) - counts
        rank_in_class = torch.arange(labels.numel()) - starts[labels]
        # Only the last M features of a class in this batch can survive.
        skip = (counts - self.per_class).clamp(min=0)
        last = rank_in_class >= skip[labels]
        rows, labels, rank_in_class = rows[last], labels[last], rank_in_class[last]
        slots = (self._next[labels] + rank_in_class - skip[labels]) % self.per_class
        dev = self._features.device
        values = features.detach()[rows.to(dev)].to(self._features.dtype)
        self._features[labels.to(dev), slots.to(dev)] = values
        stored = counts.clamp(max=self.per_class)
        self._next = (self._next + stored) % self.per_class
        self._filled = torch.minimum(self._filled + stored, torch.tensor(self.per_class))

    def sample(
        self, batch_size: int, *, generator: Optional[torch.Generator] = None
    ) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """A class-balanced meta batch, or None while the bank is empty.

        Args:
            batch_size: B; each row picks a class uniformly among the stored classes, then one of
                its stored features. ``batch_size <= 0`` returns the whole bank (exactly balanced
                once every class holds M features).
            generator: CPU generator for the draw.

        Returns:
            features (B, D) and labels (B,) int64, on the bank's device.
        """
        present = torch.nonzero(self._filled > 0).squeeze(1)
        if present.numel() == 0:
            return None
        if batch_size <= 0:
            labels = torch.repeat_interleave(present, self._filled[present])
            starts = torch.cumsum(self._filled[present], 0) - self._filled[present]
            slots = torch.arange(labels.numel()) - torch.repeat_interleave(
                starts, self._filled[present]
            )
        else:
            pick = torch.randint(present.numel(), (batch_size,), generator=generator)
            labels = present[pick]
            u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
            slots = (u * self._filled[labels]).long()
        dev = self._features.device
        labels, slots = labels.to(dev), slots.to(dev)
        return self._features[labels, slots], labels

    def state_dict(self) -> dict:
        return {"features": self._features, "filled": self._filled, "next": self._next}

    def load_state_dict(self, state: dict) -> None:
        self._features = state["features"]
        self._filled = state["filled"].to(torch.int64).cpu()
        self._next = state["next"].to(torch.int64).cpu()
