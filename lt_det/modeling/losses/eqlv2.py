"""Equalization Loss v2, EQLv2 (Tan et al., "Equalization Loss v2: A New Gradient Balance
Approach for Long-tailed Object Detection", CVPR 2021, eq. 7-9; reference code
tztztztztz/eqlv2, ``mmdet/models/losses/eqlv2.py``).

Shape shorthand: R ROIs, K foreground classes, logits (R, K + 1) with column K = background,
gt_classes (R,) in [0, K].

Sigmoid cross-entropy over the K + 1 columns in which foreground class j's positive term has
weight ``1 + alpha * (1 - f(g_j))`` and its negative terms weight ``f(g_j)``, with

    f(x) = 1 / (1 + exp(-gamma * (x - mu))),    g_j = P_j / N_j,

P_j (N_j) the accumulated magnitude of the positive (negative) gradients of class j's logit over
all iterations so far, each term already multiplied by its weight: after a batch,

    P_j += sum_{i: y_i = j} w_pos_j * (1 - sigmoid(z_ij)),
    N_j += sum_{i: y_i != j} w_neg_j * sigmoid(z_ij).

Column K is the reference's "objectness" sigmoid: trained with plain BCE against [y = K]
(weight 1, no gradient statistics), as the reference does. At inference (``test_with_obj``,
the reference's default True) every class score is multiplied by 1 - sigmoid(z_K); with
``test_with_obj=False`` the scores are the K sigmoids alone.

Defaults gamma 12, mu 0.8, alpha 4 (the reference's and the paper's). Before any update the
ratio is 100, so the weights start at 1 (the reference's initial value).

State (the P, N and ratio buffers) is saved with checkpoints, updated under ``no_grad`` after the
batch's loss was computed with the state as it was, and summed over ranks only when the world
size is above one. The per-batch sums are those of the reference (magnitudes of the weighted
per-term gradients, not divided by R). Differences from the reference: docs/peers.md.
"""
from typing import Any, Dict, Tuple

import torch
from detectron2.config import CfgNode
from torch.nn import functional as F

from ._state import all_reduce_sum_
from ._weighted_sigmoid import weighted_sigmoid_ce, weighted_sigmoid_ce_per_roi
from .base import check_logits_and_labels, check_reduction, empty_loss, reduce_per_roi
from .registry import register_cls_loss
from .sigmoid_ce import SigmoidCELoss, sigmoid_probs

__all__ = [
    "eqlv2_loss",
    "eqlv2_weights",
    "eqlv2_gradient_sums",
    "eqlv2_probs",
    "EQLv2Loss",
]

INITIAL_RATIO = 100.0
_EPS = 1e-10


def eqlv2_weights(
    pos_neg_ratio: torch.Tensor, *, gamma: float = 12.0, mu: float = 0.8, alpha: float = 4.0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(pos_weight (K,), neg_weight (K,)) from the accumulated ratio g (K,) (eq. 8-9)."""
    neg = torch.sigmoid(gamma * (pos_neg_ratio - mu))
    return 1.0 + alpha * (1.0 - neg), neg


def _objectness_bce(logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
    """(R,) plain BCE of the background column K against [y = K] (the reference's objectness
    term, weight 1), in at least float32."""
    k = logits.shape[1] - 1
    dtype = torch.promote_types(logits.dtype, torch.float32)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        z_bg = logits[:, k].to(dtype)
        return F.binary_cross_entropy_with_logits(
            z_bg, (gt_classes == k).to(dtype), reduction="none"
        )


def eqlv2_loss(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    pos_weight: torch.Tensor,
    neg_weight: torch.Tensor,
    *,
    reduction: str = "mean",
) -> torch.Tensor:
    """Weighted sigmoid CE with per-class positive / negative weights (module docstring).

    Args:
        logits: (R, K + 1) classifier outputs; column K (background) gets plain BCE against
            [y = K]. Not modified.
        gt_classes: (R,) int64 labels in [0, K].
        pos_weight / neg_weight: (K,) weights from :func:`eqlv2_weights` (constants).
        reduction: "mean" (per-ROI sums over the K + 1 columns averaged over R, the
            reference's ``sum / n_i``) | "sum" | "none" ((R,)).

    Returns:
        Scalar loss, or (R,) for ``reduction="none"``; an empty batch gives ``logits.sum() * 0``.
        Weights of 1 give plain sigmoid cross-entropy over the K + 1 columns.

    Raises:
        ValueError: logits not (R, K + 1) for the K of the weights, or a label outside [0, K].
    """
    check_reduction(reduction)
    check_logits_and_labels(logits, gt_classes, pos_weight.shape[0], owner="eqlv2_loss")
    if gt_classes.numel() == 0:
        return empty_loss(logits, reduction)
    per_roi = weighted_sigmoid_ce(logits, gt_classes, neg_weight.view(1, -1), pos_weight)
    return reduce_per_roi(per_roi + _objectness_bce(logits, gt_classes), reduction)


def eqlv2_probs(logits: torch.Tensor, *, test_with_obj: bool = True) -> torch.Tensor:
    """(R, K + 1) inference scores; column K is 0 (detectron2's inference drops it).

    ``test_with_obj`` (the reference's default): ``sigmoid(z_j) * (1 - sigmoid(z_K))``, the
    reference's ``get_activation``; False: ``sigmoid(z_j)``.
    """
    probs = sigmoid_probs(logits)
    if test_with_obj:
        k = logits.shape[1] - 1
        probs = probs * torch.sigmoid(-logits[:, k : k + 1])
    return probs


@torch.no_grad()
def eqlv2_gradient_sums(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    pos_weight: torch.Tensor,
    neg_weight: torch.Tensor,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """This batch's (positive (K,), negative (K,)) weighted gradient magnitudes (float32).

    positive_j = sum_{i: y_i = j} pos_weight_j (1 - sigmoid(z_ij)),
    negative_j = sum_{i: y_i != j} neg_weight_j sigmoid(z_ij).
    """
    k = logits.shape[1] - 1
    p = torch.sigmoid(logits[:, :k].float())
    fg = gt_classes < k
    y = gt_classes[fg]
    p_y = p[fg].gather(1, y.view(-1, 1)).squeeze(1)
    pos = torch.zeros(k, dtype=torch.float32, device=logits.device).index_add_(0, y, 1.0 - p_y)
    at_gt = torch.zeros(k, dtype=torch.float32, device=logits.device).index_add_(0, y, p_y)
    neg = p.sum(dim=0) - at_gt
    return pos * pos_weight.float(), neg * neg_weight.float()


def objectness_product_nll(logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
    """(R,) Bernoulli negative log-likelihood of the scores ``s_j = sigmoid(z_j) (1 -
    sigmoid(z_K))`` (the objectness-product scores of :func:`eqlv2_probs` with ``test_with_obj``,
    also ECM's), from plain torch ops: logits (R, K + 1), gt_classes (R,) in [0, K]."""
    k = logits.shape[1] - 1
    dtype = torch.promote_types(logits.dtype, torch.float32)
    z = logits.to(dtype)
    log_s = F.logsigmoid(z[:, :k]) + F.logsigmoid(-z[:, k : k + 1])
    target = F.one_hot(gt_classes, k + 1)[:, :k].to(dtype)
    log_not_s = torch.log1p(-torch.exp(log_s))
    return -(target * log_s + (1 - target) * log_not_s).sum(dim=1)


@register_cls_loss("eqlv2")
class EQLv2Loss(SigmoidCELoss):
    """Module form of :func:`eqlv2_loss` holding the accumulated gradients as buffers
    (``pos_grad``, ``neg_grad``, ``pos_neg``, each (K,) float32); scores are per-class sigmoids.

    ``forward`` computes the loss with the current state, then adds this batch's gradient
    magnitudes (:func:`eqlv2_gradient_sums`, summed over ranks) to it whenever the loss is
    computed for training (grad enabled and the logits require grad; the module itself may be
    in eval mode, as in a decoupled stage 2).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        class_prior=None,
        gamma: float = 12.0,
        mu: float = 0.8,
        alpha: float = 4.0,
        bias_prior_prob: float = 0.01,
        test_with_obj: bool = True,
    ):
        """
        Args:
            num_classes: K.
            class_prior: unused (stored when given).
            gamma, mu, alpha: the mapping f and the positive up-weighting
                (MODEL.ROI_BOX_HEAD.EQLV2.{GAMMA, MU, ALPHA}); gamma, alpha >= 0.
            bias_prior_prob: initial foreground score p (bias -log((1 - p) / p)); 0 disables.
            test_with_obj: scores multiplied by 1 - sigmoid(z_K) (MODEL.ROI_BOX_HEAD.EQLV2.
                TEST_WITH_OBJ; the reference's default True).
        """
        super().__init__(
            num_classes=num_classes, class_prior=class_prior, bias_prior_prob=bias_prior_prob
        )
        if gamma < 0 or alpha < 0:
            raise ValueError(
                f"MODEL.ROI_BOX_HEAD.EQLV2: GAMMA and ALPHA must be >= 0, got {gamma}, {alpha}"
            )
        self.gamma, self.mu, self.alpha = float(gamma), float(mu), float(alpha)
        self.test_with_obj = bool(test_with_obj)
        k = self.num_classes
        self.register_buffer("pos_grad", torch.zeros(k))
        self.register_buffer("neg_grad", torch.zeros(k))
        self.register_buffer("pos_neg", torch.full((k,), INITIAL_RATIO))

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        ret = super().from_config(cfg)
        node = cfg.MODEL.ROI_BOX_HEAD.EQLV2
        ret.update(
            gamma=node.GAMMA, mu=node.MU, alpha=node.ALPHA, test_with_obj=node.TEST_WITH_OBJ
        )
        return ret

    def weights(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(pos_weight (K,), neg_weight (K,)) from the current state."""
        return eqlv2_weights(self.pos_neg, gamma=self.gamma, mu=self.mu, alpha=self.alpha)

    def forward(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, *, reduction: str = "mean"
    ) -> torch.Tensor:
        pos_w, neg_w = self.weights()
        loss = eqlv2_loss(logits, gt_classes, pos_w, neg_w, reduction=reduction)
        if torch.is_grad_enabled() and logits.requires_grad:  # a loss that will be trained on
            self.update_state_(logits, gt_classes, pos_w, neg_w)
        return loss

    @torch.no_grad()
    def update_state_(self, logits, gt_classes, pos_weight, neg_weight) -> None:
        """Add one batch's weighted gradient magnitudes (summed over ranks) to the state."""
        pos, neg = eqlv2_gradient_sums(logits.detach(), gt_classes, pos_weight, neg_weight)
        both = all_reduce_sum_(torch.cat([pos, neg]))
        k = self.num_classes
        self.pos_grad += both[:k]
        self.neg_grad += both[k:]
        self.pos_neg.copy_(self.pos_grad / (self.neg_grad + _EPS))

    def per_roi(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """(R,) losses with the current state and plain differentiable ops (no state change)."""
        pos_w, neg_w = self.weights()
        fg = weighted_sigmoid_ce_per_roi(logits, gt_classes, neg_w.view(1, -1), pos_w)
        k = logits.shape[1] - 1
        bg = F.binary_cross_entropy_with_logits(
            logits[:, k], (gt_classes == k).to(logits.dtype), reduction="none"
        )
        return fg + bg

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return eqlv2_probs(logits, test_with_obj=self.test_with_obj)

    def plain_per_roi(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """(R,) Bernoulli negative log-likelihood of the K scores of :meth:`predict_probs`."""
        if not self.test_with_obj:
            return super().plain_per_roi(logits, gt_classes)
        return objectness_product_nll(logits, gt_classes)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, gamma={self.gamma:g}, mu={self.mu:g}, alpha={self.alpha:g}, "
            f"test_with_obj={self.test_with_obj}"
        )
