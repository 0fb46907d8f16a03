"""Helpers of the stateful losses (EQLv2's accumulated gradients, Seesaw's instance counts, the
generators of the losses that draw: federated negatives, ACSL's background suppression).

State lives in float32 buffers of the loss module (saved and restored with checkpoints, moved by
``.to(device)``), is updated under ``torch.no_grad()`` after the loss of the batch was computed
with the state as it was, and is summed over ranks only when the world size is above one.
"""
import torch
import torch.distributed as dist
from detectron2.utils import comm

__all__ = ["all_reduce_sum_", "SavedGenerator"]


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over the ranks in place when more than one process runs; return it."""
    if comm.get_world_size() > 1:
        dist.all_reduce(t)
    return t


class SavedGenerator:
    """Mixin of a loss module that draws with its own CPU ``torch.Generator``
    (``self.generator``): the generator's state is the module's extra state (torch's
    ``get_extra_state`` / ``set_extra_state``; ``<prefix>_extra_state`` in the state dict), so a
    checkpoint holds it and ``--resume`` draws what the uninterrupted run would have drawn. Not a
    buffer: it stays on the CPU whatever device the model moves to."""

    generator: torch.Generator

    def get_extra_state(self) -> torch.Tensor:
        """(S,) uint8 CPU tensor: ``Generator.get_state()``."""
        return self.generator.get_state()

    def set_extra_state(self, state: torch.Tensor) -> None:
        """Restore a state of :meth:`get_extra_state`."""
        self.generator.set_state(state.detach().to(device="cpu", dtype=torch.uint8))
