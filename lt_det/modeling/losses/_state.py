"""Helpers of the stateful losses (EQLv2's accumulated gradients, Seesaw's instance counts).

State lives in float32 buffers of the loss module (saved and restored with checkpoints, moved by
``.to(device)``), is updated under ``torch.no_grad()`` after the loss of the batch was computed
with the state as it was, and is summed over ranks only when the world size is above one.
"""
import torch
import torch.distributed as dist
from detectron2.utils import comm

__all__ = ["all_reduce_sum_"]


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over the ranks in place when more than one process runs; return it."""
    if comm.get_world_size() > 1:
        dist.all_reduce(t)
    return t
