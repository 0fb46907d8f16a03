"""What makes a resumed run continue exactly where the interrupted one stopped.

Three pieces, all driven by ``LTTrainer``:

- :class:`ResumableSampler` wraps the training sampler. detectron2's infinite samplers restart
  from their seed when a run is resumed; the wrapper instead starts the stream after the images
  the finished iterations consumed: ``start = start_iter * (SOLVER.IMS_PER_BATCH / world size)``
  indices of this rank's stream are skipped (replayed and dropped, deterministic and cheap).
  Samplers that draw their stream in chunks from changing class rates (the Meta Sampler) expose
  ``stream_state()`` / ``resume_from(start, state)``: the checkpoint keeps the generator state and
  the rates of the chunk in progress, so the rest of that chunk is drawn as before.
- :class:`StreamCheckpoint` is the checkpointable ("train_sampler") that saves that stream state.
- :class:`SeededBatches` wraps the loader when ``SEED >= 0`` and reseeds python, numpy and torch
  around every batch from ``(SEED, iteration, rank)``, so the random choices of an iteration
  (anchor/ROI sampling; augmentation with ``NUM_WORKERS 0``) do not depend on how the run got
  there.

Exact continuation (same images, same losses) holds with ``DATALOADER.NUM_WORKERS 0`` and
``DATALOADER.ASPECT_RATIO_GROUPING False`` (or all images of one orientation) and ``SEED >= 0``;
otherwise the resumed stream still starts after the consumed images, but the batches can be
composed differently (see docs/robustness.md).
"""
import itertools
from typing import Any, Dict, Iterator, Optional

from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from torch.utils.data import Sampler

__all__ = [
    "ResumableSampler",
    "StreamCheckpoint",
    "SeededBatches",
    "iteration_seed",
]


class ResumableSampler(Sampler):
    """A training sampler whose (infinite) stream can start at a given position.

    Args:
        sampler: the sampler to wrap (``.sampler``).
    """

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.start = 0  # indices of this rank's stream to skip
        self.stream_state: Optional[Dict[str, Any]] = None  # see resume_from of the sampler
        self.position = 0

    def set_start(self, start: int, stream_state: Optional[Dict[str, Any]] = None) -> None:
        """Start the next iteration of the stream after its first ``start`` indices."""
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.start = int(start)
        self.stream_state = stream_state

    def __iter__(self) -> Iterator[int]:
        # position: indices of this rank's stream handed out so far, the skipped ones included
        # (in the process that iterates the sampler: the main one with NUM_WORKERS 0).
        self.position = self.start
        resume = getattr(self.sampler, "resume_from", None)
        if resume is not None:
            resume(self.start, self.stream_state)
            stream = iter(self.sampler)
        else:
            stream = itertools.islice(iter(self.sampler), self.start, None)
        for index in stream:
            self.position += 1
            yield index

    def __len__(self) -> int:
        return len(self.sampler)


class StreamCheckpoint:
    """Checkpointable holding the sampler's stream state (``stream_state()``), if it has one."""

    def __init__(self, sampler: ResumableSampler):
        self.sampler = sampler
        self.loaded: Optional[Dict[str, Any]] = None

    def state_dict(self) -> Dict[str, Any]:
        get = getattr(self.sampler.sampler, "stream_state", None)
        state = get() if get is not None else None
        return {"stream": state}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.loaded = state.get("stream")


def iteration_seed(seed: int, iteration: int, rank: int, salt: int = 0) -> int:
    """The seed of one iteration on one rank (a 31-bit mix of the numbers)."""
    x = ((int(seed) * 1_000_003 + int(iteration)) * 1_009 + int(rank)) * 7 + int(salt)
    x = (x ^ (x >> 16)) * 0x45D9F3B & 0xFFFFFFFF
    return (x ^ (x >> 16)) & 0x7FFFFFFF


class SeededBatches:
    """The training data loader LTTrainer hands to detectron2: it keeps the sampler it was built
    with and, with a seed, reseeds the global generators around every batch it hands out.

    With ``seed`` set, before batch ``i`` is fetched the generators get
    ``iteration_seed(seed, i, rank, 0)`` (augmentations drawn in this process), after it
    ``iteration_seed(seed, i, rank, 1)`` (the model's random choices: anchor and proposal
    sampling). So iteration ``i`` draws the same random numbers whether the run started at 0 or
    was resumed at ``i``, whatever the loader consumed on its own (e.g. the one-time worker seed
    when its iterator is created). Without a seed, batches pass through unchanged.

    The batch handed out last is kept (:attr:`last_batch`). The underlying loader's iterator is
    created at the first batch (so a resume that moved the
    sampler's start before training began is seen) and again after :meth:`restart`.

    Args:
        loader: the detectron2 training loader (``.dataset``).
        seed: ``cfg.SEED`` (>= 0), or None for no reseeding.
        sampler: the :class:`ResumableSampler` the loader draws from (``.train_sampler``).
    """

    def __init__(self, loader, seed: Optional[int], *, sampler: Optional[ResumableSampler] = None):
        self.dataset = loader
        self.seed = None if seed is None else int(seed)
        self.train_sampler = sampler
        self.next_iter = 0  # iteration of the next batch; set by the trainer on resume
        #: The batch handed out last (the NaN stop checks checkpoints on it).
        self.last_batch = None
        self._restart = False

    def restart(self, next_iter: int) -> None:
        """Re-create the loader's iterator before the next batch (e.g. after the sampler's start
        moved on resume); the next batch is iteration ``next_iter``."""
        self.next_iter = int(next_iter)
        self._restart = True

    def __iter__(self) -> Iterator:
        stream = None
        rank = comm.get_rank()
        while True:
            if stream is None or self._restart:
                stream, self._restart = iter(self.dataset), False
            if self.seed is None:
                batch = next(stream)
            else:
                seed_all_rng(iteration_seed(self.seed, self.next_iter, rank, 0))
                batch = next(stream)
                seed_all_rng(iteration_seed(self.seed, self.next_iter, rank, 1))
            self.next_iter += 1
            self.last_batch = batch
            yield batch

    def __len__(self) -> int:
        return len(self.dataset)
