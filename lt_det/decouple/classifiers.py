"""Box classifiers of a detector and the stage-2 classifier layers (LWS, tau-normalisation).

Shape shorthand:
    R: number of ROIs;  D: box-feature dimension;  K: number of foreground classes.
    cls_score: a (K + 1)-output ``nn.Linear``; row K (the last) is background.

:class:`LWSLinear` and :class:`TauNormLinear` are ``nn.Linear`` subclasses that keep the
parameters ``weight`` and ``bias`` of the layer they replace, so a stage-1 checkpoint loads into
them unchanged (LWS adds ``scale``, which a stage-1 checkpoint lacks and which starts at 1).
"""
import math
from typing import Dict, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import LTDetError
from ..modeling.losses.base import ClsLoss
from ..modeling.normed_linear import NormedLinear

__all__ = [
    "find_box_predictors",
    "tau_normalize",
    "LWSLinear",
    "TauNormLinear",
    "reinit_classifier_",
    "reinit_module_",
]

TAU_BIAS_MODES = ("keep", "zero", "scale")


def find_box_predictors(model: nn.Module) -> Dict[str, nn.Module]:
    """The Fast R-CNN box predictors of ``model``, by module path.

    ``roi_heads.box_predictor`` for standard ROI heads, ``roi_heads.box_predictor.<i>`` for each
    cascade stage. Each predictor has a ``cls_score`` ``nn.Linear``.

    Raises:
        LTDetError: if the model has no such predictor.
    """
    roi_heads = getattr(model, "roi_heads", None)
    predictor = getattr(roi_heads, "box_predictor", None)
    if predictor is None:
        raise LTDetError(
            f"{type(model).__name__} has no roi_heads.box_predictor; MODEL.DECOUPLE works on "
            "R-CNN detectors (GeneralizedRCNN with Standard or Cascade ROI heads)."
        )
    if isinstance(predictor, (nn.ModuleList, list, tuple)):
        found = {f"roi_heads.box_predictor.{i}": p for i, p in enumerate(predictor)}
    else:
        found = {"roi_heads.box_predictor": predictor}
    for name, p in found.items():
        if not isinstance(getattr(p, "cls_score", None), nn.Linear):
            raise LTDetError(f"{name} ({type(p).__name__}) has no nn.Linear 'cls_score'.")
    return found


def tau_normalize(
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    tau: float,
    *,
    num_normalized: int,
    bias_mode: str = "keep",
    eps: float = 1e-12,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """tau-normalisation (Kang et al. 2020): ``w_c <- w_c / ||w_c|| ** tau`` for the first rows.

    Args:
        weight: (C, D) classifier weight, C = K + 1 (or K).
        bias: (C,) bias or None.
        tau: exponent; 0 returns the inputs unchanged, 1 gives unit-norm rows.
        num_normalized: how many leading rows to normalise (K: the background row K is kept).
        bias_mode: "keep" (bias unchanged) | "zero" (normalised rows get bias 0)
            | "scale" (bias of row c divided by the same factor ``||w_c|| ** tau``).
        eps: floor of the norms (an all-zero row stays zero).

    Returns:
        New (weight, bias) tensors; the inputs are not modified.
    """
    if bias_mode not in TAU_BIAS_MODES:
        raise LTDetError(
            f"MODEL.DECOUPLE.TAU_BIAS is {bias_mode!r}; choices: {list(TAU_BIAS_MODES)}."
        )
    k = int(num_normalized)
    if tau == 0 and bias_mode != "zero":
        return weight, bias
    factor = weight[:k].norm(dim=1).clamp_min(eps).pow(tau)  # (k,)
    new_weight = torch.cat([weight[:k] / factor[:, None], weight[k:]], dim=0)
    if bias is None or bias_mode == "keep":
        return new_weight, bias
    if bias_mode == "zero":
        new_bias = torch.cat([torch.zeros_like(bias[:k]), bias[k:]])
    else:
        new_bias = torch.cat([bias[:k] / factor, bias[k:]])
    return new_weight, new_bias


def _copy_linear_into(src: nn.Linear, dst: nn.Linear) -> nn.Linear:
    # Share the Parameter objects: the state-dict keys stay "weight" and "bias".
    dst.weight = src.weight
    dst.bias = src.bias
    return dst


class LWSLinear(nn.Linear):
    """Learnable weight scaling: ``logits_c = s_c * (w_c . x + b_c)``, one ``s_c`` per output.

    ``scale`` has one entry per output row, background included (K + 1 for softmax heads; with
    sigmoid losses the background column is unused and its scale gets no gradient). It starts
    at 1, so a fresh LWS layer computes exactly what the wrapped layer computed: built from a
    cosine classifier (:class:`~lt_det.modeling.normed_linear.NormedLinear`, ``CLS_SCORE:
    normed_linear``) it scales the cosine logits ``temperature * cos(x, w_c) + b_c``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        temperature: Optional[float] = None,
        eps: float = 1e-6,
        **kwargs,
    ):
        """
        Args:
            in_features, out_features, bias: as ``nn.Linear``.
            temperature, eps: those of the wrapped cosine classifier; None = a plain linear one.
        """
        super().__init__(in_features, out_features, bias=bias, **kwargs)
        self.temperature = None if temperature is None else float(temperature)
        self.eps = float(eps)
        self.scale = nn.Parameter(
            torch.ones(out_features, device=self.weight.device, dtype=self.weight.dtype)
        )

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "LWSLinear":
        """An LWS layer sharing ``linear``'s weight and bias, with scales 1.

        Raises:
            LTDetError: ``linear`` is neither an ``nn.Linear`` nor a ``NormedLinear`` (e.g. an
                other stage-2 layer), whose logits the layer could not reproduce.
        """
        if type(linear) not in (nn.Linear, NormedLinear):
            raise LTDetError(
                "MODEL.DECOUPLE.METHOD 'lws' scales an nn.Linear or normed_linear cls_score, got "
                f"{type(linear).__name__}; build the stage-2 model from the stage-1 architecture "
                "without another stage-2 layer."
            )
        cosine = isinstance(linear, NormedLinear)
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            temperature=linear.temperature if cosine else None,
            eps=linear.eps if cosine else 1e-6,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        return _copy_linear_into(linear, layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(R, D) -> (R, C)."""
        if self.temperature is None:
            return F.linear(x, self.weight, self.bias) * self.scale
        return NormedLinear.forward(self, x) * self.scale  # reads weight, bias, temperature, eps

    def extra_repr(self) -> str:
        cosine = "" if self.temperature is None else f", temperature={self.temperature:g}"
        return f"{super().extra_repr()}{cosine}"


class TauNormLinear(nn.Linear):
    """A linear classifier whose first ``num_normalized`` rows are tau-normalised on the fly.

    Normalising in ``forward`` (not in place) means the order of building, loading weights and
    evaluating does not matter, the stored weights stay the stage-1 ones, and ``tau`` can be
    changed at any time (``tools/tau_sweep.py`` does).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        tau: float = 1.0,
        num_normalized: Optional[int] = None,
        bias_mode: str = "keep",
        **kwargs,
    ):
        """
        Args:
            in_features, out_features, bias: as ``nn.Linear``.
            tau: the exponent.
            num_normalized: rows normalised (default ``out_features - 1``: all but background).
            bias_mode: see :func:`tau_normalize`.
        """
        super().__init__(in_features, out_features, bias=bias, **kwargs)
        if bias_mode not in TAU_BIAS_MODES:
            raise LTDetError(
                f"MODEL.DECOUPLE.TAU_BIAS is {bias_mode!r}; choices: {list(TAU_BIAS_MODES)}."
            )
        if not math.isfinite(tau):
            raise LTDetError(f"MODEL.DECOUPLE.TAU must be finite, got {tau}.")
        self.tau = float(tau)
        self.num_normalized = out_features - 1 if num_normalized is None else int(num_normalized)
        self.bias_mode = bias_mode

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> "TauNormLinear":
        """A tau-norm layer sharing ``linear``'s weight and bias (kwargs: tau, ...).

        Raises:
            LTDetError: ``linear`` is a cosine classifier (``CLS_SCORE: normed_linear``), whose
                weights are normalised in every forward pass, so tau-normalisation would change
                nothing; or another ``nn.Linear`` subclass (another stage-2 layer).
        """
        if isinstance(linear, NormedLinear):
            raise LTDetError(
                "MODEL.DECOUPLE.METHOD 'tau_norm' on a cosine classifier (MODEL.ROI_BOX_HEAD."
                "CLS_SCORE 'normed_linear'): its weights are normalised in every forward pass, so "
                "tau-normalisation changes nothing. Use 'lws' or 'crt' for this model."
            )
        if type(linear) is not nn.Linear:
            raise LTDetError(
                "MODEL.DECOUPLE.METHOD 'tau_norm' normalises an nn.Linear cls_score, got "
                f"{type(linear).__name__}; build the stage-2 model from the stage-1 architecture "
                "without another stage-2 layer."
            )
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
            **kwargs,
        )
        return _copy_linear_into(linear, layer)

    def normalized_parameters(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The (weight, bias) actually applied."""
        return tau_normalize(
            self.weight,
            self.bias,
            self.tau,
            num_normalized=self.num_normalized,
            bias_mode=self.bias_mode,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(R, D) -> (R, C)."""
        weight, bias = self.normalized_parameters()
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, tau={self.tau}, num_normalized={self.num_normalized}, "
            f"bias_mode={self.bias_mode}"
        )


@torch.no_grad()
def reinit_classifier_(predictor: nn.Module) -> None:
    """Re-initialise ``predictor.cls_score`` as detectron2 does at construction.

    Weight ~ N(0, 0.01^2), bias 0, then the predictor's own bias init (the sigmoid losses set
    ``-log((1 - p) / p)``; see ``MODEL.ROI_BOX_HEAD.SIGMOID_BIAS_PRIOR_PROB``). LWS scales reset
    to 1.
    """
    cls_score = predictor.cls_score
    nn.init.normal_(cls_score.weight, std=0.01)
    if cls_score.bias is not None:
        nn.init.constant_(cls_score.bias, 0.0)
        cls_loss = getattr(predictor, "cls_loss", None)  # lt_det's predictor owns its loss
        if isinstance(cls_loss, ClsLoss):
            cls_loss.init_cls_bias_(cls_score.bias)
    if isinstance(cls_score, LWSLinear):
        cls_score.scale.fill_(1.0)


@torch.no_grad()
def reinit_module_(name: str, module: nn.Module, predictors: Dict[str, nn.Module]) -> None:
    """Re-initialise the module at path ``name``.

    ``<predictor>.cls_score`` -> :func:`reinit_classifier_`; ``<predictor>.bbox_pred`` ->
    N(0, 0.001^2) weight, bias 0 (detectron2's init); anything else -> every submodule's
    ``reset_parameters()``.
    """
    for pname, predictor in predictors.items():
        if module is predictor.cls_score:
            reinit_classifier_(predictor)
            return
        if module is getattr(predictor, "bbox_pred", None):
            nn.init.normal_(module.weight, std=0.001)
            if module.bias is not None:
                nn.init.constant_(module.bias, 0.0)
            return
    reset = [m for m in module.modules() if callable(getattr(m, "reset_parameters", None))]
    if not reset:
        raise LTDetError(
            f"MODEL.DECOUPLE.REINIT entry '{name}' ({type(module).__name__}) has no "
            "reset_parameters(); name a module such as roi_heads.box_predictor.cls_score."
        )
    for m in reset:
        m.reset_parameters()
