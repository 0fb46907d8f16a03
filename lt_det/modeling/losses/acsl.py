"""Adaptive Class Suppression Loss, ACSL (Wang et al., "Adaptive Class Suppression Loss for
Long-Tail Object Detection", CVPR 2021; the formulas below are those of the authors' code,
CASIA-IVA-Lab/ACSL ``mmdet/models/losses/acsl.py`` and ``mmdet/models/bbox_heads/bbox_head.py``
at commit dd84144a, which the paper points to).

Shape shorthand: R ROIs, K foreground classes, logits (R, K + 1) with column K = background,
gt_classes (R,) in [0, K], class_group (K,) the LVIS frequency group of each class (0 rare,
1 common, 2 frequent), G = 3 groups.

Sigmoid cross-entropy over all K + 1 columns (column K, the background, is a sigmoid trained
with target [y = K]) with 0/1 weights::

    l_i = sum_{c <= K} w_ic * BCE(sigmoid(z_ic), [y_i == c]),

- foreground ROI (y_i < K): w = 1 on its own class; on every other column c (the background
  column included) w = [sigmoid(z_ic) >= xi]: a negative class is suppressed only where its
  score exceeds the threshold xi (0.7, the paper's default);
- background ROI (y_i = K), as the reference code treats it (the threshold is not used there):
  w = 1 on the background column; on the classes of group g, w = 1 on a random subset of
  ``floor(fraction_g * #background ROIs)`` of the batch's background ROIs drawn without
  replacement, one draw per group, 0 on the others. The reference's fractions are 0.01 (rare),
  0.1 (common) and 1.0 (frequent: every background ROI suppresses every frequent class).

"mean" divides the sum by R (the reference's ``sum / n_i``). The weights are constants of the
gradient (computed from detached scores). At inference: the K class sigmoids (the reference's
``use_sigmoid`` test path, background column dropped). The reference initialises every bias of
the classifier, background included, to -log((1 - p) / p) with p = 0.01.

Background draws use the module's own ``torch.Generator`` (seeded by ``seed``): ``forward``
advances it, ``per_roi`` draws from a copy of its state (the draws of the next ``forward``). Its
state is saved in checkpoints (:class:`~lt_det.modeling.losses._state.SavedGenerator`).
Differences from the reference: docs/peers.md.
"""
import math
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from ...errors import LTDetError
from ._fused import _reduce, _row_scale, _softplus, _subtract_at
from ._state import SavedGenerator
from .base import check_logits_and_labels, check_reduction, empty_loss
from .registry import register_cls_loss
from .sigmoid_ce import SigmoidCELoss

__all__ = [
    "ACSL_GROUPS",
    "acsl_class_groups",
    "acsl_background_draw",
    "acsl_loss",
    "acsl_per_roi",
    "ACSLLoss",
]

#: The class groups of the background draw, in the order of ``bg_fractions``.
ACSL_GROUPS = ("r", "c", "f")
#: The reference's fractions of background ROIs that suppress rare, common, frequent classes.
BG_FRACTIONS = (0.01, 0.1, 1.0)

_CHUNK_ELEMS = 1 << 16


def acsl_class_groups(frequency: Sequence[str]) -> torch.Tensor:
    """(K,) int64 group index (0 "r", 1 "c", 2 "f") of K LVIS frequency letters.

    Raises:
        ValueError: a letter other than "r", "c", "f".
    """
    bad = sorted({f for f in frequency if f not in ACSL_GROUPS})
    if bad:
        raise ValueError(f"ACSL: class frequency groups must be 'r', 'c' or 'f', got {bad}")
    return torch.tensor([ACSL_GROUPS.index(f) for f in frequency], dtype=torch.long)


def acsl_background_draw(
    gt_classes: torch.Tensor,
    num_classes: int,
    fractions: Sequence[float] = BG_FRACTIONS,
    *,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """(R, G) bool: for each background ROI, which class groups it suppresses.

    For group g, ``floor(fractions[g] * B)`` of the B background ROIs (y = K) are drawn without
    replacement (the reference's ``np.random.choice(..., replace=False)`` per group); foreground
    rows are all False.

    Args:
        gt_classes: (R,) labels in [0, K].
        num_classes: K.
        fractions: G values in [0, 1].
        generator: a CPU ``torch.Generator`` (None: torch's global one). A fraction giving 0
            or B ROIs draws nothing from it.
    """
    bg = torch.nonzero(gt_classes.detach().to("cpu") == num_classes).flatten()
    keep = torch.zeros(gt_classes.shape[0], len(fractions), dtype=torch.bool)
    for g, frac in enumerate(fractions):
        m = int(bg.numel() * float(frac))
        if m >= bg.numel():
            keep[bg, g] = True
        elif m > 0:
            keep[bg[torch.randperm(bg.numel(), generator=generator)[:m]], g] = True
    return keep.to(gt_classes.device)


def _weight_tables(
    gt_classes: torch.Tensor,
    class_group: torch.Tensor,
    bg_keep: torch.Tensor,
    score_thr: float,
    dtype: torch.dtype,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(col_group (K + 1,), row_table (R, G + 1), row_thr (R, 1)), the last two in ``dtype``,
    of the weights

        w_ic = max([p_ic >= row_thr_i], row_table[i, col_group[c]], [c == y_i]):

    column K is group G; background rows keep their drawn groups and group G (their own
    column) and never pass the threshold (row_thr 2); foreground rows have an all-zero table
    row and the threshold ``score_thr``."""
    k = class_group.shape[0]
    g = bg_keep.shape[1]
    col_group = torch.cat([class_group.to(gt_classes.device), class_group.new_full((1,), g)])
    is_bg = (gt_classes == k).view(-1, 1)
    row_table = torch.cat([bg_keep.to(torch.bool), torch.ones_like(is_bg)], dim=1) & is_bg
    row_table = row_table.to(dtype)
    row_thr = torch.where(
        is_bg,
        torch.tensor(2.0, dtype=dtype, device=gt_classes.device),
        torch.tensor(score_thr, dtype=dtype, device=gt_classes.device),
    )
    return col_group.to(gt_classes.device), row_table, row_thr


class _ThresholdedSigmoidCE(torch.autograd.Function):
    """Per-ROI ``sum_c w_ic * BCE(z_ic, [y_i == c])`` over all K + 1 columns, the 0/1 weights of
    :func:`_weight_tables` computed from the detached scores.

    ``apply(logits, gt_classes, col_group, row_table, row_thr, reduction)``. The forward pass
    runs over row chunks that stay in cache and leaves the gradient ``w * (sigmoid(z) - t)`` in
    one (R, K + 1) buffer, which the backward pass scales (the pattern of ``_fused.py``);
    differentiable once.
    """

    @staticmethod
    def _loss_and_grad(logits, gt_classes, col_group, row_table, row_thr):
        r, c = logits.shape
        dtype = row_thr.dtype
        grad = logits.new_empty((r, c), dtype=dtype)
        per_roi = logits.new_empty(r, dtype=dtype)
        idx = gt_classes.view(-1, 1)
        x_y = logits.gather(1, idx).squeeze(1).to(dtype)
        step = max(1, _CHUNK_ELEMS // max(c, 1))
        w_buf = logits.new_empty((min(step, r), c), dtype=dtype)
        for start in range(0, r, step):
            stop = min(r, start + step)
            x = grad[start:stop]
            x.copy_(logits[start:stop])
            sp = _softplus(x)
            p = x.sigmoid_()  # the buffer now holds the scores
            w = torch.index_select(row_table[start:stop], 1, col_group, out=w_buf[: stop - start])
            w.masked_fill_(torch.ge(p, row_thr[start:stop]), 1.0)
            w.scatter_(1, idx[start:stop], 1.0)
            torch.sum(sp.mul_(w), dim=1, out=per_roi[start:stop])
            p.mul_(w)
        per_roi -= x_y  # the target term: w = 1 at the label of every ROI
        _subtract_at(grad, gt_classes, 1.0)
        return per_roi, grad

    @staticmethod
    def forward(ctx, logits, gt_classes, col_group, row_table, row_thr, reduction="none"):
        per_roi, grad = _ThresholdedSigmoidCE._loss_and_grad(
            logits, gt_classes, col_group, row_table, row_thr
        )
        ctx.save_for_backward(logits, gt_classes, col_group, row_table, row_thr)
        ctx.buffer = grad  # handed over as the gradient by the first backward
        ctx.reduction = reduction
        return _reduce(per_roi, reduction)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        logits, gt_classes, col_group, row_table, row_thr = ctx.saved_tensors
        if ctx.buffer is not None:
            grad, ctx.buffer = ctx.buffer, None
        else:  # the buffer was used by an earlier backward: recompute it, same ops
            grad = _ThresholdedSigmoidCE._loss_and_grad(
                logits, gt_classes, col_group, row_table, row_thr
            )[1]
        grad.mul_(_row_scale(grad_out, logits.shape[0], ctx.reduction).to(grad.dtype))
        return grad.to(logits.dtype), None, None, None, None, None


def _check_score_thr(score_thr: float) -> None:
    if not 0.0 < score_thr < 1.0:
        raise ValueError(f"ACSL score_thr must be in (0, 1), got {score_thr}")


def acsl_loss(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    class_group: torch.Tensor,
    bg_keep: torch.Tensor,
    *,
    score_thr: float = 0.7,
    reduction: str = "mean",
) -> torch.Tensor:
    """ACSL (module docstring), training form: one fused pass, differentiable once
    (:func:`acsl_per_roi` gives the same values from plain ops).

    Args:
        logits: (R, K + 1) classifier outputs; column K (background) is trained too. Not
            modified.
        gt_classes: (R,) int64 labels in [0, K].
        class_group: (K,) int64 group of each class, in [0, G).
        bg_keep: (R, G) bool, which groups each background ROI suppresses
            (:func:`acsl_background_draw`); foreground rows are not read.
        score_thr: xi in (0, 1); on foreground ROIs a negative column is trained where its
            sigmoid is >= xi.
        reduction: "mean" (per-ROI sums averaged over R) | "sum" | "none" ((R,)).

    Returns:
        Scalar loss, or (R,) for ``reduction="none"``; an empty batch gives ``logits.sum() * 0``.

    Raises:
        ValueError: logits not (R, K + 1) for the K of ``class_group``, a label outside [0, K],
            ``bg_keep`` not (R, G), or ``score_thr`` outside (0, 1).
    """
    check_reduction(reduction)
    check_logits_and_labels(logits, gt_classes, class_group.shape[0], owner="acsl_loss")
    _check_score_thr(score_thr)
    if bg_keep.dim() != 2 or bg_keep.shape[0] != gt_classes.shape[0]:
        raise ValueError(
            f"acsl_loss: bg_keep must be (R, G) = ({gt_classes.shape[0]}, G), got shape "
            f"{tuple(bg_keep.shape)}."
        )
    if gt_classes.numel() == 0:
        return empty_loss(logits, reduction)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    tables = _weight_tables(gt_classes, class_group, bg_keep, score_thr, dtype)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return _ThresholdedSigmoidCE.apply(logits, gt_classes, *tables, reduction)


def acsl_per_roi(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    class_group: torch.Tensor,
    bg_keep: torch.Tensor,
    *,
    score_thr: float = 0.7,
) -> torch.Tensor:
    """(R,) per-ROI losses of :func:`acsl_loss` from plain torch ops (twice differentiable; the
    0/1 weights are constants). Arguments as :func:`acsl_loss`; no input checks."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    col_group, row_table, row_thr = _weight_tables(
        gt_classes, class_group, bg_keep, score_thr, dtype
    )
    x = logits.to(dtype)
    target = F.one_hot(gt_classes, logits.shape[1]).to(dtype)
    w = torch.maximum(
        (torch.sigmoid(x.detach()) >= row_thr).to(dtype), row_table.index_select(1, col_group)
    )
    w = torch.maximum(w, target)
    return (F.binary_cross_entropy_with_logits(x, target, reduction="none") * w).sum(dim=1)


@register_cls_loss("acsl")
class ACSLLoss(SavedGenerator, SigmoidCELoss):
    """Module form of :func:`acsl_loss`, drawing the background suppression with its own
    generator; scores are per-class sigmoids. Holds the class groups as the buffer
    ``class_group`` (K,) int64."""

    def __init__(
        self,
        *,
        num_classes: int,
        class_prior: Optional[torch.Tensor] = None,
        class_frequency: Optional[Sequence[str]] = None,
        score_thr: float = 0.7,
        bg_fractions: Sequence[float] = BG_FRACTIONS,
        seed: int = 0,
        bias_prior_prob: float = 0.01,
    ):
        """
        Args:
            num_classes: K.
            class_prior: unused (stored when given).
            class_frequency: K LVIS groups "r" / "c" / "f" (the training set's, when built from
                a config); None treats every class as frequent.
            score_thr: xi, MODEL.ROI_BOX_HEAD.ACSL.SCORE_THR, in (0, 1).
            bg_fractions: MODEL.ROI_BOX_HEAD.ACSL.BG_FRACTIONS, three values in [0, 1] for the
                rare, common and frequent groups.
            seed: seed of the background draws (detectron2's SEED when >= 0, else 0).
            bias_prior_prob: initial score p of every column, background included (bias
                -log((1 - p) / p)); 0 keeps detectron2's zero bias.

        Raises:
            LTDetError: a value out of its range, or groups of another length.
        """
        super().__init__(
            num_classes=num_classes, class_prior=class_prior, bias_prior_prob=bias_prior_prob
        )
        if not 0.0 < score_thr < 1.0:
            raise LTDetError(
                f"MODEL.ROI_BOX_HEAD.ACSL.SCORE_THR must be in (0, 1), got {score_thr}"
            )
        fractions = [float(f) for f in bg_fractions]
        if len(fractions) != len(ACSL_GROUPS) or not all(0.0 <= f <= 1.0 for f in fractions):
            raise LTDetError(
                "MODEL.ROI_BOX_HEAD.ACSL.BG_FRACTIONS must be three values in [0, 1] (rare, "
                f"common, frequent), got {list(bg_fractions)}"
            )
        frequency = ["f"] * self.num_classes if class_frequency is None else list(class_frequency)
        if len(frequency) != self.num_classes:
            raise LTDetError(
                f"ACSLLoss: {len(frequency)} class frequency groups for "
                f"num_classes={self.num_classes}."
            )
        try:
            groups = acsl_class_groups(frequency)
        except ValueError as e:
            raise LTDetError(str(e)) from None
        self.score_thr = float(score_thr)
        self.bg_fractions = tuple(fractions)
        self.register_buffer("class_group", groups)
        self.generator = torch.Generator().manual_seed(int(seed))

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        from ...data.train_stats import train_class_frequency, train_class_stats

        ret = super().from_config(cfg)
        train, k = list(cfg.DATASETS.TRAIN), cfg.MODEL.ROI_HEADS.NUM_CLASSES
        frequency = train_class_frequency(train, k)
        if frequency is None:  # no statistics metadata: count the training set
            frequency = train_class_stats(train, k).frequency
        node = cfg.MODEL.ROI_BOX_HEAD.ACSL
        ret.update(
            class_frequency=frequency,
            score_thr=node.SCORE_THR,
            bg_fractions=list(node.BG_FRACTIONS),
            seed=max(int(cfg.SEED), 0),
        )
        return ret

    def _draw(self, gt_classes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return acsl_background_draw(
            gt_classes, self.num_classes, self.bg_fractions, generator=generator
        )

    def forward(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, *, reduction: str = "mean"
    ) -> torch.Tensor:
        check_reduction(reduction)
        check_logits_and_labels(logits, gt_classes, self.num_classes, owner="ACSLLoss")
        if gt_classes.numel() == 0:
            return empty_loss(logits, reduction)
        bg_keep = self._draw(gt_classes, self.generator)
        return acsl_loss(
            logits,
            gt_classes,
            self.class_group,
            bg_keep,
            score_thr=self.score_thr,
            reduction=reduction,
        )

    def per_roi(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """(R,) losses with plain differentiable ops; the background draws are those of the next
        ``forward`` (from a copy of the generator, which is left unchanged)."""
        copy = torch.Generator().manual_seed(0)
        copy.set_state(self.generator.get_state())
        bg_keep = self._draw(gt_classes, copy)
        return acsl_per_roi(logits, gt_classes, self.class_group, bg_keep, score_thr=self.score_thr)

    @torch.no_grad()
    def init_cls_bias_(self, bias: torch.Tensor) -> None:
        """Every one of the K + 1 biases, background included (the reference's init_weights)."""
        p = self.bias_prior_prob
        if p > 0:
            bias[: self.num_classes + 1].fill_(-math.log((1 - p) / p))

    def extra_repr(self) -> str:
        sizes = [int((self.class_group == g).sum()) for g in range(len(ACSL_GROUPS))]
        return (
            f"{super().extra_repr()}, score_thr={self.score_thr:g}, "
            f"bg_fractions={list(self.bg_fractions)}, group_sizes={sizes}"
        )
