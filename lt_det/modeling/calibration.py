"""Post-hoc calibration of box-classification scores, at inference only.

Shape shorthand: R ROIs, K foreground classes, logits (R, K + 1 [+ extra]) with the K foreground
classes in the first K columns, column K = background.

``norcal`` and ``logit_adjustment`` subtract ``strength * log c_j`` from the K foreground logits
and leave every other column as it is; the loss module's own activation (``predict_probs``) then turns the adjusted
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

``fracal`` (Alexandridis et al., "Fractal Calibration for long-tailed object detection", CVPR
2025; reference code kostas1515/FRACAL at 3543fe46, ``mmdet/models/roi_heads/bbox_heads/
fracal_bbox_head.py`` and ``stat_files/calculate_fractality.py``) adds a second, spatial term:
D_j, the box-counting (fractal) dimension of where class j's training boxes lie (their centres,
normalised by the image size; :func:`fractal_dimensions`), in [1, 2]: 1 for a class seen in few
places, 2 for one spread uniformly over the image. With pi_j = n_j / N (training images with
class j over all training images), frequency weight w (1 / ln 10: the reference's base-10
``base10`` variant) and strength lambda (2):

- softmax heads: ``z_j - w log(K pi_j) - lambda log D_j`` for the K foreground logits, background
  unchanged, then the loss's activation: the reference's ``softmax(z + wy) / D^lambda``
  renormalised (wy_j = -w log(K pi_j); background: 0 and 1);
- other heads (per-class scores p = a(z), sigmoid or Gumbel): ``a(z_j) * a(z_j - s_j)`` with
  ``s_j = w log(K pi_j) + (lambda log D_j - log mean_k D_k^lambda) / ln 10``, the reference's
  product of the plain and the adjusted score (the spatial term is in base 10 there, whatever w).

The adjustment does not depend on a detection's box: the dimension summarises the class's
locations in the training set, and the test-time location prior is taken as uniform.
w = lambda = 0 changes nothing on a softmax head (on a per-class head it leaves a(z)^2, the same
ranking).
"""
import logging
import math
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
    "fractal_dimensions",
]

logger = logging.getLogger(__name__)

CALIBRATION_METHODS = ("none", "norcal", "logit_adjustment", "fracal")
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


def fractal_dimensions(
    classes: torch.Tensor,
    centres: torch.Tensor,
    num_classes: int,
    *,
    max_grid: int = 64,
    min_instances: int = 4,
) -> torch.Tensor:
    """Box-counting dimension of every class's box centres in the unit square (FRACAL).

    For each grid size d = 1..``max_grid`` the unit square is cut into d x d cells
    [i / d, (i + 1) / d) x [j / d, (j + 1) / d); N_j(d) counts the cells holding a centre of class
    j (centres outside [0, 1)^2 fall in no cell). D_j is the least-squares slope of log N_j(d)
    against log d over the grid sizes with d^2 <= n_j, n_j the number of class-j boxes (the
    reference's ``curve_fit`` of a line). As the reference: D_j = 1 when n_j < ``min_instances``
    (4) and slopes below 1 are raised to 1. Points on a line give ~1, points filling the square ~2.

    Reference: kostas1515/FRACAL ``stat_files/calculate_fractality.py`` (``box_dim`` variant,
    grid sizes 1..64) at 3543fe46.

    Args:
        classes: (N,) int64 class of each box, in [0, K).
        centres: (N, 2) box centres (x / W, y / H).
        num_classes: K.
        max_grid: largest grid size, >= 1.
        min_instances: classes with fewer boxes get D = 1.

    Returns:
        (K,) float64 dimensions in [1, 2] (1 also for a class none of whose centres is inside).
    """
    if max_grid < 1:
        raise LTDetError(
            f"MODEL.ROI_BOX_HEAD.CALIBRATION.FRACAL_MAX_GRID must be >= 1, got {max_grid}."
        )
    k = int(num_classes)
    classes = torch.as_tensor(classes, dtype=torch.int64).reshape(-1)
    centres = torch.as_tensor(centres, dtype=torch.float64).reshape(-1, 2)
    counts = torch.bincount(classes, minlength=k)[:k].to(torch.float64)
    occupied = torch.zeros(k, max_grid, dtype=torch.float64)
    for d in range(1, max_grid + 1):
        step = 1.0 / d
        cells = []
        for axis in (0, 1):
            v = centres[:, axis]
            i = torch.floor(v * d)
            # The reference's cell test, i * step <= v < (i + 1) * step, in its float rounding.
            i = i - (v < i * step).to(i.dtype) + (v >= (i + 1) * step).to(i.dtype)
            cells.append(i)
        ix, iy = cells
        inside = (ix >= 0) & (ix < d) & (iy >= 0) & (iy < d)
        key = (classes[inside] * (d * d) + (iy[inside] * d + ix[inside]).to(torch.int64))
        hit = torch.bincount(key, minlength=k * d * d)[: k * d * d].view(k, d * d) > 0
        occupied[:, d - 1] = hit.sum(dim=1).to(torch.float64)
    grid = torch.arange(1, max_grid + 1, dtype=torch.float64)
    use = counts[:, None] >= grid[None, :] ** 2  # the reference's cut-off points
    x = torch.log(grid)[None, :].expand(k, -1)
    y = torch.where(use, torch.log(occupied.clamp(min=1.0)), torch.zeros_like(occupied))
    w = use.to(torch.float64)
    n, sx, sy = w.sum(1), (w * x).sum(1), (w * y).sum(1)
    sxx, sxy = (w * x * x).sum(1), (w * x * y).sum(1)
    denom = n * sxx - sx * sx
    slope = (n * sxy - sx * sy) / torch.where(denom > 0, denom, torch.ones_like(denom))
    empty = ((occupied == 0) & use).any(dim=1)  # no centre inside the image
    fit = (counts >= min_instances) & (denom > 0) & ~empty
    return torch.where(fit, slope.clamp(min=1.0), torch.ones_like(slope))


class PosthocCalibration(nn.Module):
    """A calibration method with its reference ``log_ref`` (a non-persistent buffer: it is
    computed from the training data at build time, never read from a checkpoint) and strength.

    Attributes:
        method: "norcal" | "logit_adjustment" | "fracal".
        strength: gamma (norcal), tau (logit adjustment) or lambda (fracal); may be changed
            between evaluations (``tools/calibration_sweep.py`` does).
        freq_weight: fracal's frequency weight w (unused by the others).
    """

    def __init__(
        self,
        *,
        method: str,
        log_ref: torch.Tensor,
        strength: float,
        freq_weight: float = 1.0 / math.log(10.0),
    ):
        """
        Args:
            method: a name of :data:`CALIBRATION_METHODS` other than "none".
            log_ref: (K,) log n_j (norcal) or log pi_j (logit adjustment); (2, K) for fracal:
                row 0 log(K pi_j), row 1 log D_j.
            strength: gamma / tau / lambda, >= 0.
            freq_weight: fracal's w (>= 0; 1 / ln 10 the reference's base-10 weights).
        """
        super().__init__()
        if method not in CALIBRATION_METHODS[1:]:
            raise LTDetError(
                f"Unknown MODEL.ROI_BOX_HEAD.CALIBRATION.METHOD {method!r}; choices: "
                f"{list(CALIBRATION_METHODS)}."
            )
        log_ref = torch.as_tensor(log_ref, dtype=torch.float32)
        if method == "fracal" and (log_ref.dim() != 2 or log_ref.shape[0] != 2):
            raise ValueError(
                "fracal's log_ref is (2, K): log(K pi_j) and log D_j, got shape "
                f"{tuple(log_ref.shape)} (see calibration_log_ref)."
            )
        self.method = method
        self.strength = float(strength)
        self.freq_weight = float(freq_weight)
        self.register_buffer("log_ref", log_ref, False)

    def _fracal_shift(self, per_class: bool) -> torch.Tensor:
        """(K,) what fracal subtracts from the foreground logits (module docstring)."""
        log_freq, log_dim = self.log_ref[0], self.log_ref[1]
        if not per_class:
            return self.freq_weight * log_freq + self.strength * log_dim
        spatial = self.strength * log_dim
        spatial = spatial - torch.logsumexp(spatial, dim=0) + math.log(spatial.numel())
        return self.freq_weight * log_freq + spatial / math.log(10.0)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """(R, C) logits with the adjustment on the first K columns (fracal: its softmax form)."""
        if self.method == "fracal":
            return calibrate_logits(logits, self._fracal_shift(False), 1.0)
        return calibrate_logits(logits, self.log_ref, self.strength)

    def predict_probs(self, logits: torch.Tensor, cls_loss: nn.Module) -> torch.Tensor:
        """Calibrated (R, K + 1) scores of a head whose loss module is ``cls_loss``: its
        ``predict_probs`` of the adjusted logits; for fracal on a head whose ``activation`` is
        not "softmax", the product of the plain and the adjusted scores (module docstring)."""
        if self.method != "fracal" or getattr(cls_loss, "activation", "softmax") == "softmax":
            return cls_loss.predict_probs(self(logits))
        k = self.log_ref.shape[1]
        plain = cls_loss.predict_probs(logits)
        adjusted = cls_loss.predict_probs(calibrate_logits(logits, self._fracal_shift(True), 1.0))
        return torch.cat([plain[:, :k] * adjusted[:, :k], plain[:, k:]], dim=1)

    def extra_repr(self) -> str:
        extra = f", freq_weight={self.freq_weight:g}" if self.method == "fracal" else ""
        return f"method={self.method!r}, strength={self.strength:g}{extra}"


def calibration_log_ref(cfg: CfgNode, method: str) -> torch.Tensor:
    """(K,) log n_j for "norcal" (training images containing class j, or its training instances,
    as ``CALIBRATION.NORCAL_COUNTS`` says; union of DATASETS.TRAIN, crowd excluded, zero counts
    floored at PRIOR.ZERO_COUNT_FLOOR), log pi_j (the configured class prior) for
    "logit_adjustment"; (2, K) for "fracal": log(K n_j / N) (n_j training images with class j,
    floored as norcal's, N training images) and log D_j (:func:`fractal_dimensions` of the
    training boxes, grid sizes up to ``CALIBRATION.FRACAL_MAX_GRID``).

    Raises:
        LTDetError: an unknown NORCAL_COUNTS (the message lists the choices), a FRACAL_MAX_GRID
            below 1.
    """
    from ..data.train_stats import train_box_centres, train_class_stats
    from .priors import class_prior_from_cfg

    if method == "fracal":
        k, names = cfg.MODEL.ROI_HEADS.NUM_CLASSES, list(cfg.DATASETS.TRAIN)
        stats = train_class_stats(names, k)
        n = torch.tensor(stats.image_counts, dtype=torch.float64)
        n = n.clamp(min=cfg.MODEL.ROI_BOX_HEAD.PRIOR.ZERO_COUNT_FLOOR)
        dims = fractal_dimensions(
            *train_box_centres(names, k), k,
            max_grid=cfg.MODEL.ROI_BOX_HEAD.CALIBRATION.FRACAL_MAX_GRID,
        )
        q = torch.quantile(dims, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)).tolist()
        logger.info(
            "FRACAL: fractal dimensions of the %d classes' training boxes: min %.3f, median %.3f,"
            " max %.3f.", k, *q,
        )
        return torch.stack([torch.log(k * n / stats.num_images), torch.log(dims)]).float()

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
    if node.METHOD == "fracal":
        for key in ("FRACAL_LAMBDA", "FRACAL_FREQ_WEIGHT"):
            if not node[key] >= 0:
                raise LTDetError(
                    f"MODEL.ROI_BOX_HEAD.CALIBRATION.{key} must be >= 0, got {node[key]}."
                )
        return PosthocCalibration(
            method="fracal",
            log_ref=calibration_log_ref(cfg, "fracal"),
            strength=node.FRACAL_LAMBDA,
            freq_weight=node.FRACAL_FREQ_WEIGHT,
        )
    strength = node.GAMMA if node.METHOD == "norcal" else node.TAU
    return PosthocCalibration(
        method=node.METHOD, log_ref=calibration_log_ref(cfg, node.METHOD), strength=strength
    )
