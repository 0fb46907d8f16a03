"""Federated loss (Zhou et al., "Joint COCO and LVIS workshop at ECCV 2020: LVIS Challenge
Track Technical Report: CenterNet2"; detectron2's ``USE_FED_LOSS`` in versions after 0.6).

Shape shorthand: R ROIs, K foreground classes, logits (R, K + 1) with column K = background
(ignored, as in every sigmoid loss of lt_det), gt_classes (R,) in [0, K], B images, class_prior
(K,) fraction of training images containing each class.

Sigmoid cross-entropy restricted to a class set S: the labels present among the ROIs plus
negatives drawn without replacement with probability proportional to ``class_prior ** power``
(power 0.5: image_count ** 0.5) until ``|S| = num_classes_sampled`` (50 by default; no negatives
are drawn once the present labels reach it). Columns outside S get weight 0.

Counting convention (detectron2's ``get_fed_loss_classes``, main branch, and CenterNet2's): the
background label K counts among the present labels when a background ROI is in the set's ROIs,
and is then dropped with column K, so such a set trains ``num_classes_sampled - 1`` foreground
classes (49 of 50). ``class_sets``: "image" draws one S per image from that image's ROIs (the
report's "classes present in the image"), "batch" one S for the whole batch (what detectron2 and
CenterNet2 implement). With ``num_classes_sampled > K`` every class is in S and the loss is plain
sigmoid CE. Per-ROI sums are averaged over ROIs.

Negatives are drawn with the module's own ``torch.Generator`` (seeded by ``seed``): ``forward``
advances it, ``per_roi`` draws from a copy of its current state (same sets as the next
``forward``, no state change). Its state is saved in checkpoints
(:class:`~lt_det.modeling.losses._state.SavedGenerator`).
"""
from typing import Any, Dict, List, Optional, Sequence

import torch
from detectron2.config import CfgNode

from ._state import SavedGenerator
from ._weighted_sigmoid import weighted_sigmoid_ce, weighted_sigmoid_ce_per_roi
from .base import check_logits_and_labels, check_reduction, empty_loss, reduce_per_roi
from .registry import register_cls_loss
from .sigmoid_ce import SigmoidCELoss

__all__ = ["federated_class_mask", "federated_loss", "FederatedLoss"]

CLASS_SETS = ("image", "batch")


def federated_class_mask(
    gt_classes: torch.Tensor,
    sample_weight: torch.Tensor,
    num_classes_sampled: int,
    *,
    rois_per_image: Optional[Sequence[int]] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """(G, K) float 0/1 mask of the class sets S, one row per group of ROIs.

    A group's S starts with its unique labels, background K included when present (it counts
    toward ``num_classes_sampled``, as in detectron2), and is filled up with negatives; column K
    is then dropped.

    Args:
        gt_classes: (R,) labels in [0, K].
        sample_weight: (K,) non-negative weights of the negative draws (class_prior ** power).
        num_classes_sampled: |S| to reach; >= 1.
        rois_per_image: B ROI counts summing to R (G = B groups, contiguous rows); None: one
            group (G = 1).
        generator: a CPU ``torch.Generator`` for the draws (None: torch's global one).
    """
    k = sample_weight.shape[0]
    sizes: List[int] = [gt_classes.numel()] if rois_per_image is None else list(rois_per_image)
    labels = gt_classes.detach().to("cpu")
    weight = sample_weight.detach().to("cpu", torch.float64)
    mask = torch.zeros(len(sizes), k, dtype=torch.float32)
    start = 0
    for g, n in enumerate(sizes):
        labels_g = torch.unique(labels[start : start + n])  # background K included
        present = labels_g[labels_g < k]
        start += n
        mask[g, present] = 1.0
        need = num_classes_sampled - labels_g.numel()
        if need <= 0:
            continue
        prob = weight.clone()
        prob[present] = 0.0
        available = int((prob > 0).sum())
        if available <= need:  # every remaining class with weight > 0 is taken
            mask[g, prob > 0] = 1.0
            continue
        mask[g, torch.multinomial(prob, need, replacement=False, generator=generator)] = 1.0
    return mask.to(gt_classes.device)


def _row_group(rois_per_image: Optional[Sequence[int]], device) -> Optional[torch.Tensor]:
    if rois_per_image is None:
        return None
    sizes = torch.as_tensor(list(rois_per_image), device=device)
    return torch.repeat_interleave(torch.arange(len(sizes), device=device), sizes)


def federated_loss(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    class_mask: torch.Tensor,
    *,
    rois_per_image: Optional[Sequence[int]] = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Sigmoid CE over the class sets of :func:`federated_class_mask`.

    Args:
        logits: (R, K + 1) classifier outputs; column K is ignored. Not modified.
        gt_classes: (R,) int64 labels in [0, K].
        class_mask: (G, K) 0/1 class sets; G = 1, or B with ``rois_per_image``.
        rois_per_image: B ROI counts summing to R (contiguous rows per image), or None.
        reduction: "mean" (per-ROI sums averaged over R) | "sum" | "none" ((R,)).

    Returns:
        Scalar loss, or (R,) for ``reduction="none"``; an empty batch gives ``logits.sum() * 0``.
    """
    check_reduction(reduction)
    check_logits_and_labels(logits, gt_classes, class_mask.shape[1], owner="federated_loss")
    if gt_classes.numel() == 0:
        return empty_loss(logits, reduction)
    group = _row_group(rois_per_image, logits.device)
    ones = torch.ones(class_mask.shape[1], device=logits.device)
    per_roi = weighted_sigmoid_ce(logits, gt_classes, class_mask, ones, group)
    return reduce_per_roi(per_roi, reduction)


@register_cls_loss("federated")
class FederatedLoss(SavedGenerator, SigmoidCELoss):
    """Module form of :func:`federated_loss`; scores are per-class sigmoids.

    Its loss needs the ROIs' image grouping: the box predictor passes ``rois_per_image`` because
    :attr:`needs_rois_per_image` is set.
    """

    needs_prior = True
    #: The predictor passes ``rois_per_image`` (ROI counts of the batch's images) to the loss.
    needs_rois_per_image = True

    def __init__(
        self,
        *,
        num_classes: int,
        class_prior: torch.Tensor,
        num_classes_sampled: int = 50,
        power: float = 0.5,
        class_sets: str = "image",
        seed: int = 0,
        bias_prior_prob: float = 0.01,
    ):
        """
        Args:
            num_classes: K.
            class_prior: (K,) image fractions (saved as a buffer); negatives are drawn with
                probability proportional to ``class_prior ** power``.
            num_classes_sampled: |S| (MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES), >= 1.
            power: MODEL.ROI_BOX_HEAD.FED_LOSS_FREQ_WEIGHT_POWER, >= 0.
            class_sets: "image" | "batch" (MODEL.ROI_BOX_HEAD.FED_LOSS_CLASS_SETS).
            seed: seed of the negative draws (detectron2's SEED when >= 0, else 0).
            bias_prior_prob: initial foreground score p (bias -log((1 - p) / p)); 0 disables.
        """
        super().__init__(
            num_classes=num_classes, class_prior=class_prior, bias_prior_prob=bias_prior_prob
        )
        if num_classes_sampled < 1 or power < 0:
            raise ValueError(
                "MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES must be >= 1 and "
                f"FED_LOSS_FREQ_WEIGHT_POWER >= 0, got {num_classes_sampled}, {power}"
            )
        if class_sets not in CLASS_SETS:
            raise ValueError(
                f"Unknown MODEL.ROI_BOX_HEAD.FED_LOSS_CLASS_SETS {class_sets!r}; choices: "
                f"{list(CLASS_SETS)}."
            )
        self.num_classes_sampled = int(num_classes_sampled)
        self.power = float(power)
        self.class_sets = class_sets
        self.generator = torch.Generator().manual_seed(int(seed))

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        ret = super().from_config(cfg)
        head = cfg.MODEL.ROI_BOX_HEAD
        ret.update(
            num_classes_sampled=head.FED_LOSS_NUM_CLASSES,
            power=head.FED_LOSS_FREQ_WEIGHT_POWER,
            class_sets=head.FED_LOSS_CLASS_SETS,
            seed=max(int(cfg.SEED), 0),
        )
        return ret

    def _mask(self, gt_classes, rois_per_image, generator):
        groups = rois_per_image if self.class_sets == "image" else None
        weight = self.class_prior.pow(self.power)
        mask = federated_class_mask(
            gt_classes, weight, self.num_classes_sampled, rois_per_image=groups,
            generator=generator,
        )
        return mask, groups

    def forward(
        self,
        logits: torch.Tensor,
        gt_classes: torch.Tensor,
        rois_per_image: Optional[Sequence[int]] = None,
        *,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """
        Args:
            logits, gt_classes, reduction: as :func:`federated_loss`.
            rois_per_image: ROI counts of the batch's images (contiguous rows); None treats the
                batch as one image.
        """
        check_reduction(reduction)
        if gt_classes.numel() == 0:
            return empty_loss(logits, reduction)
        mask, groups = self._mask(gt_classes, rois_per_image, self.generator)
        return federated_loss(logits, gt_classes, mask, rois_per_image=groups, reduction=reduction)

    def per_roi(
        self,
        logits: torch.Tensor,
        gt_classes: torch.Tensor,
        rois_per_image: Optional[Sequence[int]] = None,
    ) -> torch.Tensor:
        """(R,) losses with plain differentiable ops; the class sets are drawn from a copy of the
        generator (those of the next ``forward``), which is left unchanged."""
        copy = torch.Generator().manual_seed(0)
        copy.set_state(self.generator.get_state())
        mask, groups = self._mask(gt_classes, rois_per_image, copy)
        group = _row_group(groups, logits.device)
        ones = torch.ones(self.num_classes, device=logits.device)
        return weighted_sigmoid_ce_per_roi(logits, gt_classes, mask.to(logits.device), ones, group)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, num_classes_sampled={self.num_classes_sampled}, "
            f"power={self.power:g}, class_sets={self.class_sets!r}"
        )
