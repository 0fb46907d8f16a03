"""MODEL.DECOUPLE.METHOD "finetune": keep the stage-1 classifier and fine-tune it alone.

The stage 2 of Balanced Softmax and BALMS (Ren et al. 2020) as lt_det runs them: the frozen
detector of stage 1, the parameters under ``MODEL.DECOUPLE.TRAINABLE`` trained further from their
stage-1 values (nothing re-initialised, unlike ``crt``), typically with a rebalanced loss or
sampler.
"""
from .registry import DecoupleMethod, register_decouple_method

__all__ = ["ClassifierFineTuning"]


@register_decouple_method("finetune")
class ClassifierFineTuning(DecoupleMethod):
    """Freeze everything except ``MODEL.DECOUPLE.TRAINABLE`` and train it from stage 1."""
