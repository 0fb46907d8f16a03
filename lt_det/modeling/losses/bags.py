"""Balanced Group Softmax, BAGS (Li et al., "Overcoming Classifier Imbalance for Long-tail
Object Detection with Balanced Group Softmax", CVPR 2020, Sec. 3.2-3.3).

Shape shorthand: R ROIs, K foreground classes, gt_classes (R,) in [0, K] (K = background),
G non-empty foreground groups, logits (R, K + 2 + G):

    columns [0, K)        the K classes
    column  K             background (group 0)
    column  K + 1         "foreground" (group 0)
    column  K + 1 + g     "others" of foreground group g = 1..G

Classes are binned by training instance count into groups with edges ``bins`` (default 10, 100,
1000: [0, 10), [10, 100), [100, 1000), [1000, inf); empty bins are dropped). Group 0 is a 2-way
softmax {background, foreground}; each foreground group g is a softmax over its classes plus its
"others". A ROI's target in group g is its class when the class belongs to g, else "others"
(background ROIs: "others" in every foreground group, "background" in group 0). Training loss:

    L = sum_g  sum_i w_ig CE_g(i) / max(1, sum_i w_ig),

w_i0 = 1; in a foreground group w = 1 for its own ROIs and, for "others" ROIs,
``min(1, beta * n_g / n_others)`` with n_g the ROIs of g in the batch (0 when n_g = 0) and beta =
``others_ratio`` (8 in the paper). This is the expected value of the reference's random
subsampling of beta * n_g "others" ROIs, deterministic so that ``per_roi`` equals ``forward``.

Inference (the reference's ``_merge_score``): class c of group g scores
``P_0(foreground) * softmax_g(c)``, background ``P_0(background)``; "others" are dropped.
With one foreground group (``bins=()``) and every "others" ROI kept (beta large), the loss is
the group-0 term plus exactly softmax CE over K + 1 columns in which "others" plays background.
"""
import bisect
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from .base import ClsLoss, check_logits_and_labels, check_reduction, empty_loss, reduce_per_roi
from .registry import register_cls_loss

__all__ = ["bags_groups", "bags_per_roi", "bags_loss", "bags_probs", "BAGSLoss"]


def bags_groups(
    instance_counts: Sequence[float], bins: Sequence[float] = (10, 100, 1000)
) -> List[List[int]]:
    """Class ids of each non-empty group, from per-class training instance counts.

    Group of class c: the number of edges <= count_c (edges ascending), i.e. [0, e1), [e1, e2),
    ...; empty groups are dropped. Returns lists in ascending group order.
    """
    edges = sorted(float(b) for b in bins)
    groups: List[List[int]] = [[] for _ in range(len(edges) + 1)]
    for c, n in enumerate(instance_counts):
        groups[bisect.bisect_right(edges, float(n))].append(c)
    return [g for g in groups if g]


def _tables(
    groups: List[List[int]], num_classes: int, device
) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """Column index and label-to-target lookups of every foreground group."""
    k = num_classes
    out = []
    for gi, classes in enumerate(groups):
        cols = torch.tensor([k + 2 + gi] + list(classes), device=device)
        target = torch.zeros(k + 1, dtype=torch.long, device=device)  # 0 = "others"
        ids = torch.tensor(classes, device=device)
        target[ids] = torch.arange(1, len(classes) + 1, device=device)
        out.append((cols, target))
    return out


def _group_inputs(
    logits: torch.Tensor, gt_classes: torch.Tensor, groups: List[List[int]], others_ratio: float
):
    """Column order (group 0 first, then each group's [others, classes]), group sizes, and per
    group the (R,) local targets and (R,) per-ROI factors ``w_ig * R / max(1, W_g)``."""
    r = gt_classes.numel()
    k = logits.shape[1] - 2 - len(groups)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    tables = _tables(groups, k, logits.device)
    order = torch.cat([torch.tensor([k, k + 1], device=logits.device)] + [c for c, _ in tables])
    sizes = [2] + [len(c) for c, _ in tables]
    targets = [(gt_classes < k).long()]
    factors = [torch.ones(r, dtype=dtype, device=logits.device)]
    for _, target in tables:
        t = target[gt_classes]
        own = t > 0
        n_own = int(own.sum())
        n_others = r - n_own
        w_others = min(1.0, others_ratio * n_own / n_others) if n_others and n_own else 0.0
        w = torch.where(own, torch.ones((), dtype=dtype, device=logits.device),
                        torch.full((), w_others, dtype=dtype, device=logits.device))
        # a group without own ROIs contributes nothing (the reference's weights are all zero)
        factors.append(w * (r / max(1.0, n_own + w_others * n_others)) if n_own else w * 0)
        targets.append(t)
    return order, sizes, targets, factors


def _column_groups(groups: List[List[int]], num_classes: int, device) -> torch.Tensor:
    """(C,) group index of every logit column: 0 for background and "foreground", g for the
    "others" column and the classes of foreground group g (1-based)."""
    k = num_classes
    col_group = torch.zeros(k + 2 + len(groups), dtype=torch.long)
    for gi, classes in enumerate(groups):
        col_group[classes] = gi + 1
        col_group[k + 2 + gi] = gi + 1
    return col_group.to(device)


def _target_columns(gt_classes: torch.Tensor, groups: List[List[int]], num_classes: int):
    """(R, 1 + G) logit column of each ROI's target in every group (group 0 first)."""
    k = num_classes
    device = gt_classes.device
    lookup = torch.empty(k + 1, 1 + len(groups), dtype=torch.long, device=device)
    lookup[:, 0] = k + 1
    lookup[k, 0] = k
    for gi, classes in enumerate(groups):
        lookup[:, gi + 1] = k + 2 + gi  # "others"
        ids = torch.tensor(classes, dtype=torch.long, device=device)
        lookup[ids, gi + 1] = ids
    return lookup[gt_classes]


# Group sums of exp(z) outside [_MIN_SUM, _MAX_SUM] (a group's logits all below about -69, or
# some logit above about 69) are recomputed with the group's own maximum.
_MIN_SUM, _MAX_SUM = 1e-30, 1e30


class _GroupSoftmaxCE(torch.autograd.Function):
    """Per-ROI ``sum_g f_ig * CE_g(i)``: one ``exp(z)`` buffer for all groups, group sums by one
    (R, C) x (C, 1 + G) product, and the buffer becomes the gradient in place (differentiable
    once). Rows whose group sums leave [1e-30, 1e30] (where float32 would lose precision or
    overflow) are recomputed exactly with each group's own maximum (:func:`_group_lse_and_exp`)."""

    @staticmethod
    def forward(ctx, logits, col_group, onehot_t, target_cols, factors):
        e = logits.exp()
        # (R, 1 + G) group sums; (1 + G, C) x (C, R) runs about 1.8x faster on CPU than the
        # (R, C) x (C, 1 + G) product with its 5-column output
        sums = (onehot_t @ e.t()).t().contiguous()
        lse = sums.log()
        risky = ((sums < _MIN_SUM) | ~(sums <= _MAX_SUM)).any(dim=1)  # ~(<=) also catches NaN
        if bool(risky.any()):  # rare: exact group-wise values for those rows
            rows = risky.nonzero().squeeze(1)
            sub = logits.index_select(0, rows)
            glse, gexp = _group_lse_and_exp(sub, col_group, onehot_t.shape[0])
            lse.index_copy_(0, rows, glse)
            e.index_copy_(0, rows, gexp)
            sums.index_copy_(0, rows, torch.ones_like(glse))
        per_roi = (factors * (lse - logits.gather(1, target_cols))).sum(dim=1)
        ctx.save_for_backward(col_group, target_cols, factors, sums)
        ctx.buffer = e
        return per_roi

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        col_group, target_cols, factors, sums = ctx.saved_tensors
        if ctx.buffer is None:
            raise RuntimeError("bags_loss: the graph was already backpropagated once.")
        e, ctx.buffer = ctx.buffer, None
        w = factors * grad_out.view(-1, 1)  # (R, 1 + G)
        e.mul_((w / sums).index_select(1, col_group))
        e.scatter_add_(1, target_cols, -w)
        return e, None, None, None, None


def _group_lse_and_exp(logits: torch.Tensor, col_group: torch.Tensor, n_groups: int):
    """(R, 1 + G) per-group logsumexp and (R, C) ``exp(z - lse_group)`` (softmax within each
    group), each group with its own maximum."""
    lse = logits.new_empty(logits.shape[0], n_groups)
    probs = torch.empty_like(logits)
    for g in range(n_groups):
        cols = (col_group == g).nonzero().squeeze(1)
        z = logits.index_select(1, cols)
        lse[:, g] = torch.logsumexp(z, dim=1)
        probs.index_copy_(1, cols, (z - lse[:, g : g + 1]).exp())
    return lse, probs


def bags_per_roi(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    groups: List[List[int]],
    *,
    others_ratio: float = 8.0,
) -> torch.Tensor:
    """(R,) per-ROI losses whose mean is the BAGS loss (module docstring), plain ops.

    Args:
        logits: (R, K + 2 + G) as in the module docstring. Not modified.
        gt_classes: (R,) int64 labels in [0, K].
        groups: the G foreground groups (lists of class ids covering [0, K) once each).
        others_ratio: beta, "others" ROIs kept per ROI of the group (in expectation); > 0.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    order, sizes, targets, factors = _group_inputs(logits, gt_classes, groups, others_ratio)
    parts = logits.index_select(1, order).to(dtype).split(sizes, 1)
    total = 0
    for z_g, t, f in zip(parts, targets, factors):
        total = total + f * F.cross_entropy(z_g, t, reduction="none")
    return total


def bags_loss(
    logits: torch.Tensor,
    gt_classes: torch.Tensor,
    groups: List[List[int]],
    *,
    others_ratio: float = 8.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """BAGS training loss (module docstring); see :func:`bags_per_roi` for the arguments.

    Returns:
        Scalar loss, or (R,) for ``reduction="none"``; an empty batch gives ``logits.sum() * 0``.
    """
    check_reduction(reduction)
    check_logits_and_labels(logits, gt_classes, sum(len(g) for g in groups), owner="bags_loss", extra_logits=1 + len(groups))
    if gt_classes.numel() == 0:
        return empty_loss(logits, reduction)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    k = logits.shape[1] - 2 - len(groups)
    _, _, _, factors = _group_inputs(logits, gt_classes, groups, others_ratio)
    col_group = _column_groups(groups, k, logits.device)
    onehot_t = F.one_hot(col_group, 1 + len(groups)).to(dtype).t().contiguous()
    target_cols = _target_columns(gt_classes, groups, k)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        per_roi = _GroupSoftmaxCE.apply(
            logits.to(dtype), col_group, onehot_t, target_cols, torch.stack(factors, dim=1)
        )
    return reduce_per_roi(per_roi, reduction)


def bags_probs(logits: torch.Tensor, groups: List[List[int]]) -> torch.Tensor:
    """(R, K + 1) scores: P_0(fg) * softmax within the class's group; background P_0(bg)."""
    k = logits.shape[1] - 2 - len(groups)
    dtype = torch.promote_types(logits.dtype, torch.float32)
    p0 = F.softmax(logits[:, k : k + 2].to(dtype), dim=1)
    probs = logits.new_zeros((logits.shape[0], k + 1), dtype=dtype)
    for cols, _ in _tables(groups, k, logits.device):
        sm = F.softmax(logits.index_select(1, cols).to(dtype), dim=1)
        probs[:, cols[1:]] = sm[:, 1:] * p0[:, 1:2]
    probs[:, k] = p0[:, 0]
    return probs


@register_cls_loss("bags")
class BAGSLoss(ClsLoss):
    """Module form of :func:`bags_loss`; scores from :func:`bags_probs`.

    The classifier needs ``num_extra_logits = 1 + G`` outputs beyond K + 1; the box predictor
    builds ``cls_score`` with ``K + 1 + num_extra_logits`` outputs (a stage-1 checkpoint's K + 1
    classifier does not load into it: train BAGS as a decoupled stage with the classifier
    re-initialised, ``configs/synthetic/stage2_bags.yaml``).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        class_prior: Optional[torch.Tensor] = None,
        instance_counts: Sequence[float],
        bins: Sequence[float] = (10, 100, 1000),
        others_ratio: float = 8.0,
    ):
        """
        Args:
            num_classes: K.
            class_prior: unused (stored when given).
            instance_counts: K training instance counts (counted from DATASETS.TRAIN when built
                from a config); the groups are fixed from them at construction.
            bins: ascending group edges (MODEL.ROI_BOX_HEAD.BAGS.BINS).
            others_ratio: beta (MODEL.ROI_BOX_HEAD.BAGS.OTHERS_RATIO), > 0.
        """
        super().__init__(num_classes=num_classes, class_prior=class_prior)
        counts = [float(c) for c in instance_counts]
        if len(counts) != self.num_classes:
            raise ValueError(
                f"BAGS: {len(counts)} instance counts for num_classes={self.num_classes}."
            )
        if others_ratio <= 0 or list(bins) != sorted(bins):
            raise ValueError(
                "MODEL.ROI_BOX_HEAD.BAGS: OTHERS_RATIO must be > 0 and BINS ascending, got "
                f"{others_ratio}, {list(bins)}"
            )
        self.bins = tuple(float(b) for b in bins)
        self.others_ratio = float(others_ratio)
        self.groups = bags_groups(counts, self.bins)
        self.num_extra_logits = 1 + len(self.groups)
        # the group of every class, saved so a checkpoint records which grouping it was trained with
        group_of = torch.zeros(self.num_classes, dtype=torch.long)
        for gi, classes in enumerate(self.groups):
            group_of[classes] = gi
        self.register_buffer("group_of_class", group_of)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        from ...data.train_stats import train_class_stats

        ret = super().from_config(cfg)
        node = cfg.MODEL.ROI_BOX_HEAD.BAGS
        stats = train_class_stats(list(cfg.DATASETS.TRAIN), cfg.MODEL.ROI_HEADS.NUM_CLASSES)
        ret.update(
            instance_counts=list(stats.instance_counts),
            bins=list(node.BINS),
            others_ratio=node.OTHERS_RATIO,
        )
        return ret

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # A checkpoint trained with other groups would be read with the wrong columns.
        key = prefix + "group_of_class"
        if key in state_dict:
            saved = state_dict[key]
            groups: Dict[int, List[int]] = {}
            for c, g in enumerate(saved.tolist()):
                groups.setdefault(g, []).append(c)
            self.groups = [groups[g] for g in sorted(groups)]

    def forward(
        self, logits: torch.Tensor, gt_classes: torch.Tensor, *, reduction: str = "mean"
    ) -> torch.Tensor:
        return bags_loss(
            logits, gt_classes, self.groups, others_ratio=self.others_ratio, reduction=reduction
        )

    def per_roi(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """(R,) losses with plain ops; ``forward`` is their mean (the "others" weights depend
        on the whole batch, so a sub-batch's per-ROI values differ)."""
        return bags_per_roi(logits, gt_classes, self.groups, others_ratio=self.others_ratio)

    def plain_per_roi(self, logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
        """(R,) ``-log`` of the inference score of the ground-truth column (plain ops):
        ``-log P_0(fg) - log softmax_g(y)`` for a class of group g, ``-log P_0(bg)`` for
        background."""
        k = self.num_classes
        log_p0 = F.log_softmax(logits[:, k : k + 2], dim=1)
        fg = gt_classes < k
        out = -torch.where(fg, log_p0[:, 1], log_p0[:, 0])
        for cols, target in _tables(self.groups, k, logits.device):
            t = target[gt_classes]
            log_g = F.log_softmax(logits.index_select(1, cols), dim=1)
            own = log_g.gather(1, t.view(-1, 1)).squeeze(1)
            out = out - torch.where(t > 0, own, torch.zeros_like(own))
        return out

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return bags_probs(logits, self.groups)

    def extra_repr(self) -> str:
        sizes = [len(g) for g in self.groups]
        return (
            f"num_classes={self.num_classes}, bins={list(self.bins)}, group_sizes={sizes}, "
            f"others_ratio={self.others_ratio:g}"
        )
