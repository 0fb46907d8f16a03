"""MODEL.DECOUPLE.METHOD "tau_norm": tau-normalised classifier, no training (Kang et al. 2020)."""
from typing import Any, Dict

from detectron2.config import CfgNode
from torch import nn

from .classifiers import TauNormLinear, find_box_predictors
from .freeze import freeze_all_but, keep_frozen_in_eval
from .registry import DecoupleMethod, register_decouple_method

__all__ = ["TauNormalization"]


@register_decouple_method("tau_norm")
class TauNormalization(DecoupleMethod):
    """tau-normalisation: no training; each ``cls_score`` becomes a :class:`TauNormLinear`.

    The foreground rows (0..K-1) are normalised; the background row K is left as trained (its
    norm reflects foreground/background separation, not class frequency). The bias follows
    ``MODEL.DECOUPLE.TAU_BIAS``. Every parameter is frozen.
    """

    trains = False

    def __init__(self, *, tau: float, bias_mode: str):
        """
        Args:
            tau: ``MODEL.DECOUPLE.TAU``.
            bias_mode: ``MODEL.DECOUPLE.TAU_BIAS`` ("keep" | "zero" | "scale").
        """
        super().__init__(trainable=[])
        self.tau = float(tau)
        self.bias_mode = bias_mode

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        return {"tau": cfg.MODEL.DECOUPLE.TAU, "bias_mode": cfg.MODEL.DECOUPLE.TAU_BIAS}

    def apply(self, model: nn.Module) -> nn.Module:
        for predictor in find_box_predictors(model).values():
            cls_score = predictor.cls_score
            num_fg = getattr(predictor, "num_classes", cls_score.out_features - 1)
            if isinstance(cls_score, TauNormLinear):
                cls_score.tau, cls_score.bias_mode = self.tau, self.bias_mode
                continue
            predictor.cls_score = TauNormLinear.from_linear(
                cls_score, tau=self.tau, num_normalized=num_fg, bias_mode=self.bias_mode
            )
        freeze_all_but(model, [])
        keep_frozen_in_eval(model)
        return model

    def __repr__(self) -> str:
        return f"TauNormalization(tau={self.tau}, bias_mode={self.bias_mode!r})"
