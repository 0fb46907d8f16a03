"""MODEL.DECOUPLE.METHOD "lws": learnable weight scaling (Kang et al. 2020)."""
import logging

from torch import nn

from .classifiers import LWSLinear, find_box_predictors
from .registry import DecoupleMethod, register_decouple_method

__all__ = ["LearnableWeightScaling"]


@register_decouple_method("lws")
class LearnableWeightScaling(DecoupleMethod):
    """LWS: every box predictor's ``cls_score`` becomes an :class:`LWSLinear` (scales start at 1).

    Only ``MODEL.DECOUPLE.TRAINABLE`` trains; the LWS configs set it to
    ``roi_heads.box_predictor.cls_score.scale``. Naming ``cls_score`` itself also trains the
    weights (allowed, logged as a warning).
    """

    def apply(self, model: nn.Module) -> nn.Module:
        for predictor in find_box_predictors(model).values():
            if not isinstance(predictor.cls_score, LWSLinear):
                predictor.cls_score = LWSLinear.from_linear(predictor.cls_score)
        super().apply(model)
        trained = [
            n for n, p in model.named_parameters() if p.requires_grad and not n.endswith(".scale")
        ]
        if trained:
            logging.getLogger(__name__).warning(
                "MODEL.DECOUPLE.METHOD=lws also trains %s (MODEL.DECOUPLE.TRAINABLE=%s); "
                "plain LWS trains only '...cls_score.scale'.",
                trained,
                self.trainable,
            )
        return model
