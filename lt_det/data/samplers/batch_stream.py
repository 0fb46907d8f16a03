"""Base of samplers whose draws depend on the batch they belong to (GRBS + BET, progressive).

Shape shorthand: I images, B = SOLVER.IMS_PER_BATCH (all ranks together), W = world size.

All ranks generate one common stream from a shared seed, batch by batch: positions
``[b * B, (b + 1) * B)`` of the stream form global batch b (training iteration b). Rank r keeps
the positions r, r + W, r + 2W, ..., so with B divisible by W (detectron2 requires it) every
rank takes B / W images of each global batch, and interleaving the ranks' outputs gives back the
single-process stream. The stream is a function of the seed alone, so a resumed run
(``ResumableSampler``) replays it and drops the consumed part. With aspect-ratio grouping
detectron2 may regroup neighbouring images into batches; the composition is exact per global
batch when all images have one orientation (or ``DATALOADER.ASPECT_RATIO_GROUPING False``).
"""
from typing import Iterator, Optional, Tuple

import torch
from detectron2.utils import comm
from torch.utils.data import Sampler

from ...errors import LTDetError

__all__ = ["BatchStreamSampler", "stream_shard"]


def stream_shard(
    seed: Optional[int], rank: Optional[int], world_size: Optional[int]
) -> Tuple[int, int, int]:
    """``(seed, rank, world_size)`` of a rank-sharded common stream, the None ones filled in
    from ``detectron2.utils.comm`` (the seed by ``comm.shared_random_seed()``, the same on all
    ranks).

    Raises:
        LTDetError: rank outside [0, world_size).
    """
    seed = int(comm.shared_random_seed() if seed is None else seed)
    rank = comm.get_rank() if rank is None else int(rank)
    world_size = comm.get_world_size() if world_size is None else int(world_size)
    if not 0 <= rank < world_size:
        raise LTDetError(f"rank {rank} outside [0, world_size={world_size}).")
    return seed, rank, world_size


class BatchStreamSampler(Sampler):
    """Infinite, seeded, rank-sharded stream drawn one global batch at a time.

    Subclasses implement :meth:`draw_batches`.
    """

    def __init__(
        self,
        *,
        batch_size: int,
        seed: Optional[int] = None,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
        batches_per_chunk: int = 256,
    ):
        """
        Args:
            batch_size: B, images per global batch (SOLVER.IMS_PER_BATCH), > 0.
            seed: seed of the stream, the same on all ranks. None: a random seed shared by all
                ranks (``comm.shared_random_seed()``; deterministic once cfg.SEED is set).
            rank, world_size: this process's shard; default from ``detectron2.utils.comm``.
            batches_per_chunk: global batches generated at a time.
        """
        if batch_size <= 0:
            raise LTDetError(f"SOLVER.IMS_PER_BATCH must be positive, got {batch_size}.")
        self._batch_size = int(batch_size)
        self._seed, self._rank, self._world_size = stream_shard(seed, rank, world_size)
        self._batches_per_chunk = max(1, int(batches_per_chunk))

    @property
    def batch_size(self) -> int:
        """B, images per global batch."""
        return self._batch_size

    def draw_batches(
        self, generator: torch.Generator, first_batch: int, num_batches: int
    ) -> torch.Tensor:
        """(num_batches * B,) int64 dataset indices of global batches first_batch, ...."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self._seed)
        batch = 0
        while True:
            draws = self.draw_batches(generator, batch, self._batches_per_chunk)
            position = batch * self._batch_size
            yield from draws[
                (self._rank - position) % self._world_size :: self._world_size
            ].tolist()
            batch += self._batches_per_chunk
