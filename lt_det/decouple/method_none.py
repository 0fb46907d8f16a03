"""MODEL.DECOUPLE.METHOD "none": ordinary (joint) training."""
from typing import Any, Dict

from detectron2.config import CfgNode
from torch import nn

from .registry import DecoupleMethod, register_decouple_method

__all__ = ["NoDecoupling"]


@register_decouple_method("none")
class NoDecoupling(DecoupleMethod):
    """Ordinary (joint) training: nothing frozen, nothing changed."""

    trains = True

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        return {"trainable": []}

    def apply(self, model: nn.Module) -> nn.Module:
        return model
