"""Normalised linear (cosine) classifier, the box classifier of the Seesaw loss paper.

``y = temperature * <x / |x|, w_c / |w_c|> + b_c`` (Wang et al., CVPR 2021; the reference's
``NormedLinear`` with temperature 20). Selected by ``MODEL.ROI_BOX_HEAD.CLS_SCORE:
normed_linear``; a subclass of ``nn.Linear`` with the same parameters (``weight``, ``bias``),
so checkpoints of a plain linear classifier load into it.
"""
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["NormedLinear", "CLS_SCORE_CHOICES"]

#: Choices of ``MODEL.ROI_BOX_HEAD.CLS_SCORE``: "linear" (detectron2's ``nn.Linear``) or
#: "normed_linear" (:class:`NormedLinear`).
CLS_SCORE_CHOICES = ("linear", "normed_linear")


class NormedLinear(nn.Linear):
    """Cosine classifier: inputs (N, in_features) -> (N, out_features)."""

    def __init__(self, in_features: int, out_features: int, *, temperature: float = 20.0,
                 eps: float = 1e-6):
        """
        Args:
            in_features / out_features: as ``nn.Linear``.
            temperature: scale of the cosine similarities (> 0).
            eps: added to the norms (avoids division by zero).
        """
        super().__init__(in_features, out_features)
        if not temperature > 0:
            raise ValueError(
                f"MODEL.ROI_BOX_HEAD.NORMED_LINEAR_TEMPERATURE must be > 0, got {temperature}"
            )
        self.temperature = float(temperature)
        self.eps = float(eps)
        nn.init.normal_(self.weight, std=0.01)
        nn.init.constant_(self.bias, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x / (x.norm(dim=1, keepdim=True) + self.eps)
        w = self.weight / (self.weight.norm(dim=1, keepdim=True) + self.eps)
        return F.linear(self.temperature * x, w, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, temperature={self.temperature:g}"
