"""A DetectionCheckpointer whose files are never left half-written.

fvcore's ``Checkpointer.save`` streams ``torch.save`` straight into ``<name>.pth`` and rewrites
``last_checkpoint`` in place: a run killed while saving leaves a truncated checkpoint that
``--resume`` then fails to load. Here both are written to a temporary file in the same folder and
moved into place with ``os.replace`` (atomic on POSIX and Windows), so the file named
``<name>.pth`` is always either the previous complete one or the new complete one.
Remote save folders (``://``) keep fvcore's behaviour.
"""
import os
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["AtomicDetectionCheckpointer", "atomic_torch_save"]


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` through ``path + ".tmp"`` and ``os.replace``."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with an atomic :meth:`save` (same arguments, same contents)."""

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        if "://" in self.save_dir:
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if "://" in self.save_dir:
            return super().tag_last_checkpoint(last_filename_basename)
        _atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)
