"""MODEL.DECOUPLE.METHOD "crt": classifier re-training (Kang et al. 2020)."""
from typing import Any, Dict, List

from detectron2.config import CfgNode
from torch import nn

from ..errors import LTDetError
from .classifiers import find_box_predictors, reinit_module_
from .freeze import prefix_matches
from .registry import DecoupleMethod, register_decouple_method

__all__ = ["ClassifierRetraining"]


@register_decouple_method("crt")
class ClassifierRetraining(DecoupleMethod):
    """cRT: re-initialise the modules named by ``reinit`` and retrain ``trainable`` alone."""

    requires_reinit = True  # an empty ``reinit`` is refused (that is "finetune")

    def __init__(self, *, trainable: List[str], reinit: List[str]):
        """
        Args:
            trainable: parameter-name prefixes left trainable (``MODEL.DECOUPLE.TRAINABLE``).
            reinit: module paths re-initialised after loading stage-1 weights
                (``MODEL.DECOUPLE.REINIT``), e.g. ``roi_heads.box_predictor.cls_score``.
        """
        super().__init__(trainable=trainable)
        if not reinit and self.requires_reinit:
            raise LTDetError(
                "MODEL.DECOUPLE.METHOD 'crt' re-initialises the modules in MODEL.DECOUPLE.REINIT, "
                "which is empty. To fine-tune the stage-1 classifier instead, use METHOD "
                "'finetune'."
            )
        self.reinit = list(reinit)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        return {**super().from_config(cfg), "reinit": list(cfg.MODEL.DECOUPLE.REINIT)}

    def apply(self, model: nn.Module) -> nn.Module:
        super().apply(model)
        self._reinit_modules(model)  # fail early on a bad REINIT entry
        return model

    def _reinit_modules(self, model: nn.Module):
        modules = dict(model.named_modules())
        out = []
        for name in self.reinit:
            if name not in modules:
                raise LTDetError(
                    f"MODEL.DECOUPLE.REINIT entry '{name}' is not a module path of the model; "
                    "e.g. roi_heads.box_predictor.cls_score or roi_heads.box_predictor.bbox_pred."
                )
            if not any(prefix_matches(name, t) or prefix_matches(t, name) for t in self.trainable):
                raise LTDetError(
                    f"MODEL.DECOUPLE.REINIT entry '{name}' is frozen (not under "
                    f"MODEL.DECOUPLE.TRAINABLE {self.trainable}); re-initialising it would leave "
                    "random weights. Add it to TRAINABLE or remove it from REINIT."
                )
            out.append((name, modules[name]))
        return out

    def after_stage1_load(self, model: nn.Module) -> None:
        predictors = find_box_predictors(model)
        for name, module in self._reinit_modules(model):
            reinit_module_(name, module, predictors)

    def __repr__(self) -> str:
        return f"ClassifierRetraining(trainable={self.trainable}, reinit={self.reinit})"
