"""MODEL.DECOUPLE.METHOD "disalign": Distribution Alignment (Zhang et al., "Distribution Alignment:
A Unified Framework for Long-tail Visual Recognition", CVPR 2021).

Stage 2 keeps the stage-1 classifier frozen and learns an adaptive calibration of its logits
(paper Sec. 3.2, Eq. 3-4): a per-class magnitude ``alpha`` and margin ``beta`` applied to the
foreground logits, blended with the original logits by an instance-wise confidence gate
``sigma(x)`` computed from the box feature. It is trained with generalized re-weighting, the
box-classification loss ``"grw"`` (:mod:`lt_det.modeling.losses.grw`).

Shape shorthand:
    R: number of ROIs;  D: box-feature dimension;  K: number of foreground classes.
    logits: (R, C) with C = K + 1 (column K = background; C > K + 1 for heads with extra
    logits, e.g. BAGS's group logits, which are left as they are, like the background).

Reference read: Megvii-BaseDetection/cvpods ``cvpods/modeling/roi_heads/disalign_fast_rcnn.py``
(``DisAlignFastRCNNOutputLayers``) at 2deea5dc, used by Megvii-BaseDetection/DisAlign
``instance_seg/lvis1.0/mask_rcnn/res50/mask_rcnn.res50.fpn.lvisv1.multiscale.disalign.1x/``
(``net.py``, ``config.py``, ``roi_heads/``) at a2fc3500:

- ``s_j = sigma(x) * (alpha_j z_j + beta_j) + (1 - sigma(x)) * z_j`` for j < K; the background
  logit z_K is not calibrated;
- ``alpha`` starts at 1 and ``beta`` at 0 (so stage 2 starts from the stage-1 logits exactly);
  the gate is ``sigmoid(g . x + c)``, g ~ N(0, 0.01^2), c = 0;
- only ``alpha``, ``beta``, g and c train (``net.py`` freezes everything else).

lt_det computes the same value as ``z_j + sigma(x) * ((alpha_j - 1) z_j + beta_j)`` (equal in
exact arithmetic; in floating point it returns the stage-1 logits bit for bit at alpha = 1,
beta = 0, where the reference's form rounds ``sigma z + (1 - sigma) z``).
"""
import logging
from typing import Any, Dict, List, Optional

import torch
from detectron2.config import CfgNode
from torch import nn
from torch.nn import functional as F

from ..errors import LTDetError
from ..modeling.normed_linear import NormedLinear
from .classifiers import find_box_predictors
from .registry import DecoupleMethod, register_decouple_method

__all__ = ["disalign_logits", "DisAlignLinear", "DistributionAlignment"]

#: Names of the parameters DisAlign adds to ``cls_score`` (what the DisAlign configs train).
DISALIGN_PARAMETERS = ("logit_scale", "logit_bias", "confidence_layer")


def disalign_logits(
    logits: torch.Tensor,
    confidence: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
) -> torch.Tensor:
    """DisAlign's calibrated logits ``z_j + sigma * ((alpha_j - 1) z_j + beta_j)`` for j < K.

    Args:
        logits: (R, C) stage-1 logits z, C >= K + 1; columns K.. (background, extra logits) are
            returned unchanged.
        confidence: (R, 1) or (R,) gate values sigma(x), in [0, 1] (a sigmoid's output).
        logit_scale: (K,) magnitudes alpha (1 = unchanged).
        logit_bias: (K,) margins beta (0 = unchanged).

    Returns:
        (R, C) calibrated logits; equal to ``logits`` (bit for bit) where alpha = 1, beta = 0.

    Raises:
        ValueError: shapes that do not fit (one line naming the function).
    """
    k = logit_scale.shape[0] if logit_scale.dim() == 1 else -1
    if (
        logits.dim() != 2
        or k < 1
        or logits.shape[1] < k + 1
        or logit_bias.shape != logit_scale.shape
        or confidence.numel() != logits.shape[0]
    ):
        raise ValueError(
            f"disalign_logits: expected logits (R, >= K + 1), confidence (R, 1), logit_scale and "
            f"logit_bias (K,); got {tuple(logits.shape)}, {tuple(confidence.shape)}, "
            f"{tuple(logit_scale.shape)}, {tuple(logit_bias.shape)}."
        )
    fg = logits[:, :k]
    shift = torch.addcmul(logit_bias, fg, logit_scale - 1)  # (alpha - 1) z + beta, (R, K)
    calibrated = torch.addcmul(fg, confidence.reshape(-1, 1), shift)
    return torch.cat([calibrated, logits[:, k:]], dim=1)


class DisAlignLinear(nn.Linear):
    """The stage-1 classifier plus DisAlign's calibration (see the module docstring).

    Keeps the ``weight`` and ``bias`` of the layer it replaces (shared, same state-dict keys), so a
    stage-1 checkpoint loads unchanged; adds ``logit_scale`` (K,), ``logit_bias`` (K,) and
    ``confidence_layer`` (``nn.Linear(D, 1)``), which a stage-1 checkpoint lacks and which start
    at the identity calibration. A cosine classifier (``CLS_SCORE: normed_linear``) keeps its
    normalisation (``temperature`` set), as the reference's cosine variant does; the gate always
    reads the unnormalised feature x.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        num_classes: Optional[int] = None,
        gate_init_std: float = 0.01,
        temperature: Optional[float] = None,
        eps: float = 1e-6,
        device=None,
        dtype=None,
    ):
        """
        Args:
            in_features, out_features, bias: as ``nn.Linear`` (out_features = K + 1, or more).
            num_classes: K, the calibrated leading columns (default ``out_features - 1``).
            gate_init_std: std >= 0 of the gate weight's N(0, std^2) init (bias 0).
            temperature: None (plain linear logits) or the cosine classifier's temperature.
            eps: the cosine classifier's norm offset.
            device, dtype: as ``nn.Linear``.

        Raises:
            LTDetError: num_classes outside [1, out_features - 1], gate_init_std < 0.
        """
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        k = out_features - 1 if num_classes is None else int(num_classes)
        if not 1 <= k <= out_features - 1:
            raise LTDetError(
                f"DisAlignLinear: num_classes must be in [1, {out_features - 1}] for a "
                f"{out_features}-output classifier, got {k}."
            )
        if not gate_init_std >= 0:
            raise LTDetError(
                f"MODEL.DECOUPLE.DISALIGN.GATE_INIT_STD must be >= 0, got {gate_init_std}."
            )
        factory = {"device": device, "dtype": dtype}
        self.num_classes = k
        self.logit_scale = nn.Parameter(torch.ones(k, **factory))
        self.logit_bias = nn.Parameter(torch.zeros(k, **factory))
        self.confidence_layer = nn.Linear(in_features, 1, **factory)
        with torch.no_grad():
            nn.init.normal_(self.confidence_layer.weight, std=float(gate_init_std))
            nn.init.zeros_(self.confidence_layer.bias)
        self.temperature = None if temperature is None else float(temperature)
        self.eps = float(eps)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, *, num_classes: Optional[int] = None, gate_init_std: float = 0.01
    ) -> "DisAlignLinear":
        """A DisAlign layer sharing ``linear``'s weight and bias, at the identity calibration.

        Args:
            linear: the stage-1 ``cls_score``: an ``nn.Linear`` or a
                :class:`~lt_det.modeling.normed_linear.NormedLinear`.
            num_classes, gate_init_std: see :meth:`__init__`.

        Raises:
            LTDetError: ``linear`` is another ``nn.Linear`` subclass (LWS, tau-norm, ...).
        """
        if type(linear) not in (nn.Linear, NormedLinear):
            raise LTDetError(
                f"MODEL.DECOUPLE.METHOD 'disalign' calibrates an nn.Linear or normed_linear "
                f"cls_score, got {type(linear).__name__}; build the stage-2 model from the "
                "stage-1 architecture without another stage-2 layer."
            )
        cosine = isinstance(linear, NormedLinear)
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            num_classes=num_classes,
            gate_init_std=gate_init_std,
            temperature=linear.temperature if cosine else None,
            eps=linear.eps if cosine else 1e-6,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        # Share the Parameter objects: the state-dict keys stay "weight" and "bias".
        layer.weight = linear.weight
        layer.bias = linear.bias
        return layer

    def stage1_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(R, D) -> (R, C): the logits of the wrapped stage-1 classifier."""
        if self.temperature is None:
            return F.linear(x, self.weight, self.bias)
        return NormedLinear.forward(self, x)  # reads weight, bias, temperature, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(R, D) -> (R, C) calibrated logits."""
        confidence = torch.sigmoid(self.confidence_layer(x))  # (R, 1)
        return disalign_logits(self.stage1_logits(x), confidence, self.logit_scale, self.logit_bias)

    def extra_repr(self) -> str:
        cosine = "" if self.temperature is None else f", temperature={self.temperature:g}"
        return f"{super().extra_repr()}, num_classes={self.num_classes}{cosine}"


def _is_disalign(name: str) -> bool:
    """Whether a parameter name is one DisAlign adds (``...cls_score.logit_scale``,
    ``...cls_score.confidence_layer.weight``, ...)."""
    parts = name.split(".")
    return any(
        parts[i] == "cls_score" and parts[i + 1] in DISALIGN_PARAMETERS
        for i in range(len(parts) - 1)
    )


@register_decouple_method("disalign")
class DistributionAlignment(DecoupleMethod):
    """DisAlign: every box predictor's ``cls_score`` becomes a :class:`DisAlignLinear`.

    Only ``MODEL.DECOUPLE.TRAINABLE`` trains; the DisAlign configs set it to the layer's
    ``logit_scale``, ``logit_bias`` and ``confidence_layer`` (the reference's trainable set).
    Naming more (e.g. ``cls_score`` itself) is allowed and logged as a warning. The loss is the
    config's ``MODEL.ROI_BOX_HEAD.CLS_LOSS`` (the DisAlign configs: ``"grw"``, the reference's);
    another loss is allowed (an ablation) and logged as a warning.
    """

    def __init__(
        self, *, trainable: List[str], gate_init_std: float = 0.01, cls_loss: str = "grw"
    ):
        """
        Args:
            trainable: parameter-name prefixes that stay trainable (``MODEL.DECOUPLE.TRAINABLE``).
            gate_init_std: ``MODEL.DECOUPLE.DISALIGN.GATE_INIT_STD`` (>= 0).
            cls_loss: the stage's ``MODEL.ROI_BOX_HEAD.CLS_LOSS`` (checked against the
                reference's ``"grw"`` only, for the warning).

        Raises:
            LTDetError: gate_init_std < 0.
        """
        super().__init__(trainable=trainable)
        if not gate_init_std >= 0:
            raise LTDetError(
                f"MODEL.DECOUPLE.DISALIGN.GATE_INIT_STD must be >= 0, got {gate_init_std}."
            )
        self.gate_init_std = float(gate_init_std)
        self.cls_loss = str(cls_loss)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        return {
            **super().from_config(cfg),
            "gate_init_std": cfg.MODEL.DECOUPLE.DISALIGN.GATE_INIT_STD,
            "cls_loss": cfg.MODEL.ROI_BOX_HEAD.CLS_LOSS,
        }

    def apply(self, model: nn.Module) -> nn.Module:
        for predictor in find_box_predictors(model).values():
            cls_score = predictor.cls_score
            if isinstance(cls_score, DisAlignLinear):
                continue
            predictor.cls_score = DisAlignLinear.from_linear(
                cls_score,
                num_classes=getattr(predictor, "num_classes", cls_score.out_features - 1),
                gate_init_std=self.gate_init_std,
            )
        super().apply(model)
        trained = [
            n for n, p in model.named_parameters() if p.requires_grad and not _is_disalign(n)
        ]
        if trained:
            logging.getLogger(__name__).warning(
                "MODEL.DECOUPLE.METHOD=disalign also trains %s (MODEL.DECOUPLE.TRAINABLE=%s); "
                "DisAlign trains only '...cls_score.{logit_scale,logit_bias,confidence_layer}'.",
                trained,
                self.trainable,
            )
        if self.cls_loss != "grw":
            logging.getLogger(__name__).warning(
                "MODEL.DECOUPLE.METHOD=disalign with MODEL.ROI_BOX_HEAD.CLS_LOSS '%s': DisAlign "
                "trains its calibration with generalized re-weighting ('grw'; "
                "configs/lvis_stage2_disalign.yaml), so this run is not the reference method.",
                self.cls_loss,
            )
        return model

    def __repr__(self) -> str:
        return (
            f"DistributionAlignment(trainable={self.trainable}, "
            f"gate_init_std={self.gate_init_std})"
        )
