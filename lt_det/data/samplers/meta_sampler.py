"""The Meta Sampler of BALMS (Ren et al., "Balanced Meta-Softmax for Long-Tailed Visual
Recognition", NeurIPS 2020): the data-loader side.

Shape shorthand: K foreground classes.

:class:`MetaSampler` draws class c with probability pi_c, then an image containing c uniformly
(as :class:`~.class_power.ClassPowerSampler`). The (K,) rates ``pi`` (summing to 1) live in
shared memory (``share_memory_()``) and are re-read for every chunk of draws, so the copies of the
sampler that detectron2 runs inside forked data-loader workers see every update. They are learned
in the training loop by :class:`lt_det.decouple.balms.MetaSamplerLearner` (meta-gradient through
one step of the classifier; see there), which writes them in place.
"""
from typing import Any, Dict, Sequence

import torch
from detectron2.config import CfgNode, configurable
from torch.utils.data import Sampler

from ...errors import LTDetError
from .class_index import ClassImagesLike
from .class_power import ClassDrawSampler, class_power_probs
from .registry import register_sampler

__all__ = ["MetaSampler", "INIT_POWERS"]

# DATALOADER.META_SAMPLER.INIT -> exponent of the image counts of the initial rates.
INIT_POWERS = {"class_balanced": 0.0, "sqrt": 0.5, "instance": 1.0}


class MetaSampler(ClassDrawSampler):
    """Draw class c with the learned probability pi_c, then uniformly an image containing c.

    ``rates`` is a shared-memory (K,) tensor; write it only in place (``set_rates`` or the
    learner), never rebind it, or forked workers keep reading the old storage.
    """

    @configurable
    def __init__(
        self,
        class_images: ClassImagesLike,
        *,
        init: str = "sqrt",
        chunk_size: int = 256,
        **kwargs: Any,
    ):
        """
        Args:
            class_images: detectron2 dataset dicts (I,), K per-class image lists, or a
                :class:`~.class_index.ClassImageIndex`.
            init: initial rates, one of ``INIT_POWERS`` ("class_balanced" | "sqrt" | "instance":
                proportional to n_c ** 0, 0.5, 1).
            chunk_size: draws per read of the rates (small, so updates reach the loader quickly).
            **kwargs: num_classes (K; must equal the number of classes of the box classifier),
                seed, rank, world_size of :class:`~.class_power.ClassDrawSampler`.
        """
        super().__init__(class_images, chunk_size=chunk_size, **kwargs)
        if init not in INIT_POWERS:
            raise LTDetError(
                f"Unknown DATALOADER.META_SAMPLER.INIT {init!r}. Valid: {sorted(INIT_POWERS)}."
            )
        rates = class_power_probs(self._counts, INIT_POWERS[init]).to(torch.float32)
        self._rates = rates.share_memory_()

    @classmethod
    def from_config(cls, cfg: CfgNode, dataset_dicts: Sequence[Dict]) -> Dict:
        return {
            "class_images": dataset_dicts,
            "init": cfg.DATALOADER.META_SAMPLER.INIT,
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
        }

    @property
    def rates(self) -> torch.Tensor:
        """(K,) float32 shared-memory class probabilities; zero for classes without images."""
        return self._rates

    def set_rates(self, rates: torch.Tensor) -> None:
        """Write new (K,) class probabilities in place (renormalised over drawable classes)."""
        rates = rates.detach().to("cpu", torch.float32).reshape(-1)
        if rates.numel() != self.num_classes or not bool((rates >= 0).all()):
            raise LTDetError(f"rates must be {self.num_classes} non-negative numbers.")
        rates = rates * (self._counts > 0)
        if not rates.sum() > 0:
            raise LTDetError("rates are zero for every class that has training images.")
        self._rates.copy_(rates / rates.sum())

    def class_probabilities(self) -> torch.Tensor:
        return self._rates.clone()


@register_sampler("MetaSampler")
def _meta_sampler(cfg: CfgNode, dataset_dicts: Sequence[Dict]) -> Sampler:
    return MetaSampler(cfg, dataset_dicts)
