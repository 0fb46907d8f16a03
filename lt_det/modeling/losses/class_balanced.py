"""Class-balanced losses (Cui et al., "Class-Balanced Loss Based on Effective Number of Samples",
CVPR 2019) in softmax, sigmoid and focal form, for a box classifier with a background class.

Shape shorthand: R ROIs, K foreground classes, logits (R, K + 1) with column K = background,
gt_classes (R,) in [0, K], class_counts (K,) n_j = number of training images containing class j.

The effective number of samples of class j is ``E_j = (1 - beta ** n_j) / (1 - beta)``; a ROI
of class j is weighted by ``w_j ∝ 1 / E_j = (1 - beta) / (1 - beta ** n_j)``. As in Cui et al.
the foreground weights are normalised to sum to K (mean 1). Background ROIs have weight 1: the
background is not a class with a count, and giving it the weight of its (huge) ROI count would
switch its loss off. ``beta = 0`` gives w_j = 1 (the plain loss); beta -> 1 gives w_j ∝ 1 / n_j.

Per-ROI losses, with w_y the weight of the ROI's label (w_K = 1):

- ``class_balanced_softmax``: ``w_y * (-log softmax(z)[y])`` over the K + 1 columns.
- ``class_balanced_sigmoid``: ``w_y * sum_{j<K} BCE(z_j, [y == j])`` (column K unused).
- ``class_balanced_focal``: ``w_y * sum_{j<K} FL(z_j, [y == j])`` with the focal loss of Lin et
  al. (ICCV 2017), ``FL(x, t) = -(1 - p_t) ** gamma * log p_t``, p_t = sigmoid(x) if t else
  1 - sigmoid(x); gamma = 0 gives the sigmoid form.

"mean" reduction is the sum of weighted per-ROI losses divided by R (not by the sum of weights),
so that it equals the mean of the per-ROI losses. Inference applies no weight: softmax over
K + 1 (softmax form) or per-class sigmoids (sigmoid and focal forms).
"""
from typing import Any, Dict, Optional

import torch
from detectron2.config import CfgNode
from torch.nn import functional as F

from ._fused import FocalSigmoidCE
from .base import ClsLoss, check_logits_and_labels, check_reduction, empty_loss, reduce_per_roi
from .registry import register_cls_loss
from .sigmoid_ce import SigmoidCELoss

__all__ = [
    "effective_number_weights",
    "class_counts_from_prior",
    "class_balanced_softmax_loss",
    "class_balanced_sigmoid_loss",
    "class_balanced_focal_loss",
    "class_balanced_focal_per_roi",
    "ClassBalancedSoftmaxLoss",
    "ClassBalancedSigmoidLoss",
    "ClassBalancedFocalLoss",
]


def effective_number_weights(class_counts: torch.Tensor, beta: float) -> torch.Tensor:
    """(K + 1,) ROI weights ``[w_0 .. w_{K-1}, 1]`` with w_j ∝ (1 - beta) / (1 - beta ** n_j).

    Args:
        class_counts: (K,) positive per-class counts n_j (image counts; fractional counts, e.g.
            a zero-count floor of 0.5, are allowed).
        beta: in [0, 1).

    Returns:
        float64 tensor (K + 1,); the K foreground weights sum to K, the background weight is 1.

    Raises:
        ValueError: beta outside [0, 1) or a count <= 0.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"class-balanced beta must be in [0, 1), got {beta}")
    n = torch.as_tensor(class_counts, dtype=torch.float64)
    if not bool((n > 0).all()):
        raise ValueError("class-balanced weights need positive class counts")
    # 1 - beta ** n computed as -expm1(n * log beta): exact for beta close to 1 and small n.
    inv_effective = (1.0 - beta) / -torch.expm1(n * torch.log(torch.tensor(beta, dtype=n.dtype)))
    if beta == 0.0:
        inv_effective = torch.ones_like(n)
    w = inv_effective * (n.numel() / inv_effective.sum())
    return F.pad(w, (0, 1), value=1.0)


def class_counts_from_prior(class_prior: torch.Tensor, num_images: int) -> torch.Tensor:
    """(K,) per-class image counts ``class_prior * num_images`` (the prior is n_j / #images)."""
    if num_images <= 0:
        raise ValueError(f"num_images must be > 0, got {num_images}")
    return class_prior.to(torch.float64) * float(num_images)


def _roi_weights(gt_classes: torch.Tensor, class_counts: torch.Tensor, beta: float, dtype):
    return effective_number_weights(class_counts, beta).to(dtype=dtype, device=gt_classes.device)[
        gt_classes
    ]


def class_balanced_softmax_loss(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    class_counts: torch.Tensor,
    *,
    beta: float = 0.999,
    reduction: str = "mean",
) -> torch.Tensor:
    """Class-balanced softmax CE: ``w_y * CE(z, y)`` (see the module docstring).

    Args:
        logits: (R, K + 1) classifier outputs; column K is background.
        gt_classes: (R,) int64 labels in [0, K].
        class_counts: (K,) positive per-class training image counts.
        beta: effective-number hyper-parameter in [0, 1).
        reduction: "mean" (weighted sum / R) | "sum" | "none" ((R,) weighted per-ROI losses).
    """
    check_reduction(reduction)
    check_logits_and_labels(logits, gt_classes, class_counts.shape[0], owner="class_balanced_softmax_loss")
    if gt_classes.numel() == 0:
        return empty_loss(logits, reduction)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    ce = F.cross_entropy(logits.to(dtype), gt_classes, reduction="none")
    return reduce_per_roi(ce * _roi_weights(gt_classes, class_counts, beta, dtype), reduction)


def _binary_targets(gt_classes: torch.Tensor, k: int, dtype) -> torch.Tensor:
    """(R, K) one-hot of the foreground labels; background rows are all zero."""
    return F.one_hot(gt_classes, k + 1)[:, :k].to(dtype)


def class_balanced_focal_loss(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    class_counts: torch.Tensor,
    *,
    beta: float = 0.999,
    gamma: float = 2.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Class-balanced sigmoid focal loss ``w_y * sum_{j<K} FL_gamma(z_j, [y == j])``.

    Args:
        logits: (R, K + 1) classifier outputs; column K is background (unused).
        gt_classes: (R,) int64 labels in [0, K].
        class_counts: (K,) positive per-class training image counts.
        beta: effective-number hyper-parameter in [0, 1).
        gamma: focusing parameter >= 0; 0 gives :func:`class_balanced_sigmoid_loss`.
        reduction: "mean" (weighted per-ROI sums / R) | "sum" | "none".

    The training form: loss and gradient in one fused pass
    (:class:`~lt_det.modeling.losses._fused.FocalSigmoidCE`, differentiable once);
    :func:`class_balanced_focal_per_roi` gives the same values from plain ops.
    """
    check_reduction(reduction)
    check_logits_and_labels(logits, gt_classes, class_counts.shape[0], owner="class_balanced_focal_loss")
    if gamma < 0:
        raise ValueError(f"focal gamma must be >= 0, got {gamma}")
    if gt_classes.numel() == 0:
        return empty_loss(logits, reduction)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    weights = _roi_weights(gt_classes, class_counts, beta, dtype)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return FocalSigmoidCE.apply(logits, gt_classes, float(gamma), weights, reduction)


def class_balanced_focal_per_roi(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    class_counts: torch.Tensor,
    *,
    beta: float = 0.999,
    gamma: float = 2.0,
) -> torch.Tensor:
    """(R,) per-ROI losses of :func:`class_balanced_focal_loss` from plain torch ops (twice
    differentiable; the reference that the fused training form is tested against). Arguments
    as :func:`class_balanced_focal_loss`; no input checks."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    k = logits.shape[1] - 1
    x = logits[:, :k].to(dtype)
    t = _binary_targets(gt_classes, k, dtype)
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")  # -log p_t
    if gamma:
        p = torch.sigmoid(x)
        one_minus_pt = p + t - 2 * p * t  # 1 - p_t
        bce = one_minus_pt.pow(gamma) * bce
    return bce.sum(dim=1) * _roi_weights(gt_classes, class_counts, beta, dtype)


def class_balanced_sigmoid_loss(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    class_counts: torch.Tensor,
    *,
    beta: float = 0.999,
    reduction: str = "mean",
) -> torch.Tensor:
    """Class-balanced sigmoid CE ``w_y * sum_{j<K} BCE(z_j, [y == j])`` (arguments as
    :func:`class_balanced_focal_loss` without gamma)."""
    check_logits_and_labels(
        logits, gt_classes, class_counts.shape[0], owner="class_balanced_sigmoid_loss"
    )
    return class_balanced_focal_loss(
        logits, gt_classes, class_counts, beta=beta, gamma=0.0, reduction=reduction
    )


class _CountsMixin:
    """Holds ``class_counts`` = prior x number of training images as a buffer, reads
    ``num_images`` and ``beta`` from the config, and gives :meth:`per_roi` as the forward pass
    without reduction (plain torch ops for the softmax form; the focal and sigmoid forms, whose
    forward pass is fused, override it with :func:`class_balanced_focal_per_roi`)."""

    needs_prior = True

    def _init_counts(self, num_images: Optional[int], beta: float) -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(
                f"MODEL.ROI_BOX_HEAD.CLASS_BALANCED.BETA must be in [0, 1), got {beta}"
            )
        self.beta = float(beta)
        if num_images is None:  # keyword use without the dataset size: rarest class = 1 image
            counts = self.class_prior.double() / self.class_prior.double().min()
            self.num_images = None
        else:
            self.num_images = int(num_images)
            counts = class_counts_from_prior(self.class_prior, self.num_images)
        self.register_buffer("class_counts", counts.float())

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        return {
            **super().from_config(cfg),
            "num_images": num_train_images_for_counts(cfg),
            "beta": cfg.MODEL.ROI_BOX_HEAD.CLASS_BALANCED.BETA,
        }

    def per_roi(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """(R,) per-ROI losses, plain torch ops (twice differentiable)."""
        return self.forward(logits, gt_classes, reduction="none")


def num_train_images_for_counts(cfg: CfgNode) -> int:
    """Number of training images, so that ``prior * it`` gives per-class image counts.

    Raises:
        LTDetError: PRIOR.SOURCE is "instance_count" (its prior is not an image fraction).
    """
    from ...errors import LTDetError
    from ..priors import _num_train_images

    if cfg.MODEL.ROI_BOX_HEAD.PRIOR.SOURCE == "instance_count":
        raise LTDetError(
            f"MODEL.ROI_BOX_HEAD.CLS_LOSS {cfg.MODEL.ROI_BOX_HEAD.CLS_LOSS!r} needs per-class "
            "image counts, but PRIOR.SOURCE is 'instance_count' (instance shares); use "
            "'image_count', 'cat_info' or 'metadata'."
        )
    return _num_train_images(list(cfg.DATASETS.TRAIN))


@register_cls_loss("class_balanced_softmax")
class ClassBalancedSoftmaxLoss(_CountsMixin, ClsLoss):
    """Module form of :func:`class_balanced_softmax_loss`; scores are softmax over K + 1."""

    def __init__(
        self,
        *,
        num_classes: int,
        class_prior: torch.Tensor,
        num_images: Optional[int] = None,
        beta: float = 0.999,
    ):
        """
        Args:
            num_classes: K.
            class_prior: (K,) image fractions n_j / num_images (saved as a buffer).
            num_images: number of training images (class_counts = class_prior * num_images; the
                config passes it). None: counts relative to the rarest class, taken as 1 image.
            beta: MODEL.ROI_BOX_HEAD.CLASS_BALANCED.BETA, in [0, 1).
        """
        super().__init__(num_classes=num_classes, class_prior=class_prior)
        self._init_counts(num_images, beta)

    def forward(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, *, reduction: str = "mean"
    ) -> torch.Tensor:
        return class_balanced_softmax_loss(
            logits, gt_classes, self.class_counts, beta=self.beta, reduction=reduction
        )

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, beta={self.beta}"


@register_cls_loss("class_balanced_focal")
class ClassBalancedFocalLoss(_CountsMixin, SigmoidCELoss):
    """Module form of :func:`class_balanced_focal_loss`; scores are per-class sigmoids."""

    def __init__(
        self,
        *,
        num_classes: int,
        class_prior: torch.Tensor,
        num_images: Optional[int] = None,
        beta: float = 0.999,
        gamma: float = 2.0,
        bias_prior_prob: float = 0.01,
    ):
        """
        Args:
            num_classes, class_prior, num_images, beta: as :class:`ClassBalancedSoftmaxLoss`.
            gamma: MODEL.ROI_BOX_HEAD.CLASS_BALANCED.FOCAL_GAMMA, >= 0.
            bias_prior_prob: initial foreground score p (SIGMOID_BIAS_PRIOR_PROB); 0 disables.
        """
        super().__init__(
            num_classes=num_classes, class_prior=class_prior, bias_prior_prob=bias_prior_prob
        )
        if gamma < 0:
            raise ValueError(
                f"MODEL.ROI_BOX_HEAD.CLASS_BALANCED.FOCAL_GAMMA must be >= 0, got {gamma}"
            )
        self.gamma = float(gamma)
        self._init_counts(num_images, beta)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        ret = super().from_config(cfg)
        ret["gamma"] = cfg.MODEL.ROI_BOX_HEAD.CLASS_BALANCED.FOCAL_GAMMA
        return ret

    def forward(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, *, reduction: str = "mean"
    ) -> torch.Tensor:
        return class_balanced_focal_loss(
            logits,
            gt_classes,
            self.class_counts,
            beta=self.beta,
            gamma=self.gamma,
            reduction=reduction,
        )

    def per_roi(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """(R,) per-ROI losses, plain torch ops (twice differentiable)."""
        return class_balanced_focal_per_roi(
            logits, gt_classes, self.class_counts, beta=self.beta, gamma=self.gamma
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beta={self.beta}, gamma={self.gamma}"


@register_cls_loss("class_balanced_sigmoid")
class ClassBalancedSigmoidLoss(ClassBalancedFocalLoss):
    """Module form of :func:`class_balanced_sigmoid_loss` (the focal form with gamma = 0)."""

    def __init__(
        self,
        *,
        num_classes: int,
        class_prior: torch.Tensor,
        num_images: Optional[int] = None,
        beta: float = 0.999,
        bias_prior_prob: float = 0.01,
    ):
        """Arguments as :class:`ClassBalancedFocalLoss` without ``gamma``."""
        super().__init__(
            num_classes=num_classes,
            class_prior=class_prior,
            num_images=num_images,
            beta=beta,
            gamma=0.0,
            bias_prior_prob=bias_prior_prob,
        )

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        ret = super().from_config(cfg)
        del ret["gamma"]
        return ret
