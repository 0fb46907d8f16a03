"""Post-hoc calibration of box-classification scores, at inference only.

Shape shorthand: R ROIs, K foreground classes, logits (R, K + 1 [+ extra]) with the K foreground
classes in the first K columns, column K = background.

Both methods subtract ``strength * log c_j`` from the K foreground logits and leave every other
column as it is; the loss module's own activation (``predict_probs``) then turns the adjusted
logits into scores, so the calibration composes with every head:

- ``norcal`` (Pan et al., "On Model Calibration for Long-Tailed Object Detection and Instance
  Segmentation", NeurIPS 2021; reference code tydpan/NorCal,
  ``projects/NorCal/norcal/roi_heads.py``): c_j = n_j, the number of training images containing
  class j (``CALIBRATION.NORCAL_COUNTS`` "image", the reference's ``_get_frequencies(cfg,
  by="image")``) or of its training instances ("instance"), strength gamma. For a softmax head
  this is exactly the reference's default ("exps", renorm): ``exp(z_j) / n_j^gamma`` for the
  foreground, ``exp(z_K)`` kept, renormalised per ROI; for a sigmoid head each class is
  renormalised against its own complement: p'_j = (p_j / n_j^gamma) / (p_j / n_j^gamma + 1 - p_j).
  gamma = 0 changes nothing.
- ``logit_adjustment`` (post-hoc form of Menon et al., "Long-tail learning via logit
  adjustment", ICLR 2021): c_j = pi_j, the class prior of ``MODEL.ROI_BOX_HEAD.PRIOR``, strength
  tau: z_j - tau * log pi_j. tau = 0 changes nothing.
"""
from typing import Optional

import torch
from detectron2.config import CfgNode
from torch import nn

from ..errors import LTDetError

__all__ = [
    "CALIBRATION_METHODS",
    "NORCAL_COUNTS",
    "PosthocCalibration",
    "calibration_from_cfg",
    "calibration_log_ref",
    "calibrate_logits",
]

CALIBRATION_METHODS = ("none", "norcal", "logit_adjustment")
#: Choices of ``CALIBRATION.NORCAL_COUNTS``: what n_j counts (the reference: images).
NORCAL_COUNTS = ("image", "instance")


def calibrate_logits(logits: torch.Tensor, log_ref: torch.Tensor, strength: float) -> torch.Tensor:
    """``logits`` with ``strength * log_ref`` (K,) subtracted from the first K columns (new tensor).

    Args:
        logits: (R, C) with C >= K + 1; columns K.. are returned unchanged.
        log_ref: (K,) log n_j (norcal) or log pi_j (logit adjustment).
        strength: gamma or tau.
    """
    k = log_ref.shape[0]
    if strength == 0:
        return logits
    fg = logits[:, :k] - strength * log_ref.to(logits)
    return torch.cat([fg, logits[:, k:]], dim=1)


class PosthocCalibration(nn.Module):
    """A calibration method with its (K,) reference ``log_ref`` (a non-persistent buffer: it is
    computed from the training data at build time, never read from a checkpoint) and strength.

    Attributes:
        method: "norcal" | "logit_adjustment".
        strength: gamma (norcal) or tau (logit adjustment); may be changed between evaluations
            (``tools/calibration_sweep.py`` does).
    """

    def __init__(self, *, method: str, log_ref: torch.Tensor, strength: float):
        super().__init__()
        if method not in CALIBRATION_METHODS[1:]:
            raise LTDetError(
                f"Unknown MODEL.ROI_BOX_HEAD.CALIBRATION.METHOD {method!r}; choices: "
                f"{list(CALIBRATION_METHODS)}."
            )
        self.method = method
        self.strength = float(strength)
        self.register_buffer("log_ref", torch.as_tensor(log_ref, dtype=torch.float32), False)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return calibrate_logits(logits, self.log_ref, self.strength)

    def extra_repr(self) -> str:
        return f"method={self.method!r}, strength={self.strength:g}"


def calibration_log_ref(cfg: CfgNode, method: str) -> torch.Tensor:
    """(K,) log n_j for "norcal" (training images containing class j, or its training instances,
    as ``CALIBRATION.NORCAL_COUNTS`` says; union of DATASETS.TRAIN, crowd excluded, zero counts
    floored at PRIOR.ZERO_COUNT_FLOOR), log pi_j (the configured class prior) for
    "logit_adjustment".

    Raises:
        LTDetError: an unknown NORCAL_COUNTS (the message lists the choices).
    """
    from ..data.train_stats import train_class_stats
    from .priors import class_prior_from_cfg

    if method == "norcal":
        by = cfg.MODEL.ROI_BOX_HEAD.CALIBRATION.NORCAL_COUNTS
        if by not in NORCAL_COUNTS:
            raise LTDetError(
                f"Unknown MODEL.ROI_BOX_HEAD.CALIBRATION.NORCAL_COUNTS {by!r}; choices: "
                f"{list(NORCAL_COUNTS)}."
            )
        stats = train_class_stats(list(cfg.DATASETS.TRAIN), cfg.MODEL.ROI_HEADS.NUM_CLASSES)
        n = stats.image_counts if by == "image" else stats.instance_counts
        counts = torch.tensor(n, dtype=torch.float32)
        return torch.log(counts.clamp(min=cfg.MODEL.ROI_BOX_HEAD.PRIOR.ZERO_COUNT_FLOOR))
    return torch.log(class_prior_from_cfg(cfg))


def calibration_from_cfg(cfg: CfgNode) -> Optional[PosthocCalibration]:
    """The calibration of ``MODEL.ROI_BOX_HEAD.CALIBRATION``, or None for "none".

    Raises:
        LTDetError: for an unknown METHOD (the message lists the choices).
    """
    node = cfg.MODEL.ROI_BOX_HEAD.CALIBRATION
    if node.METHOD not in CALIBRATION_METHODS:
        raise LTDetError(
            f"Unknown MODEL.ROI_BOX_HEAD.CALIBRATION.METHOD {node.METHOD!r}; choices: "
            f"{list(CALIBRATION_METHODS)}."
        )
    if node.METHOD == "none":
        return None
    strength = node.GAMMA if node.METHOD == "norcal" else node.TAU
    return PosthocCalibration(
        method=node.METHOD, log_ref=calibration_log_ref(cfg, node.METHOD), strength=strength
    )
