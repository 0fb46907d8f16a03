"""MODEL.DECOUPLE.METHOD "cbd": Class-Balanced Distillation (Iscen et al., BMVC 2021).

Stage 2 trains the box representation (the box head) and the box predictor with class-balanced
sampling, while a frozen copy of the stage-1 box head (the teacher) keeps the student's box
features close to the stage-1 ones:

    loss = (1 - ALPHA) * (box-predictor losses) + ALPHA * BETA * mean_r (1 - cos(s_r, t_r))

(Iscen et al. 2021; google-research/google-research
``class_balanced_distillation/train.py`` ``train_step`` and ``compute_feat_distillation`` at
1d4d2f1a; ``configs/stage_two_cbd.py``: ALPHA 0.4, BETA 100).

Shape shorthand: R sampled ROIs over the batch (foreground and background), D box-feature
dimension (the box head's output, i.e. the classifier's input: ``MODEL.ROI_BOX_HEAD.FC_DIM``).

How the classification method maps onto a detector (docs/decouple.md):

- **features**: the box head's output for each sampled ROI, the input of the box classifier, as
  the reference distils the pooled penultimate features its classifier reads. Distilled on every
  sampled ROI (foreground and background).
- **teacher**: a frozen copy of the stage-1 box head, held by the model as ``cbd_teacher``
  (:class:`BoxFeatureTeacher`; in the state dict, so every stage-2 checkpoint carries it and a
  resumed run gets the stage-1 teacher back from its own checkpoint). It is copied from the
  stage-1 weights after they are loaded (:meth:`ClassBalancedDistillation.after_stage1_load`).
  The backbone, RPN and box pooler stay frozen, so the teacher's backbone and pooler *are* the
  student's and both heads read the same pooled features.
- **student**: the stage-1 detector with ``MODEL.DECOUPLE.TRAINABLE`` (the box head and box
  predictor) trained on; ``MODEL.DECOUPLE.REINIT`` re-initialised after loading (the configs:
  ``cls_score``). The reference trains a new network from random initialisation.
- **task loss**: every box-predictor loss (``loss_cls`` and ``loss_box_reg``) takes the place of
  the reference's cross-entropy and is weighted by ``1 - ALPHA``.
"""
import copy
import logging
from typing import Any, Dict, List, Optional, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.layers import cat
from torch import nn
from torch.autograd.function import once_differentiable

from ..errors import LTDetError
from .features import frozen_box_batch, unwrap_model
from .freeze import prefix_matches
from .method_crt import ClassifierRetraining
from .registry import register_decouple_method
from .trainer import DecoupledStep, MetaInputs

__all__ = [
    "cbd_distillation_loss",
    "BoxFeatureTeacher",
    "ClassBalancedDistillation",
    "DistilledStep",
    "TEACHER_ATTR",
]

#: Attribute of the model (and state-dict prefix) holding the :class:`BoxFeatureTeacher`.
TEACHER_ATTR = "cbd_teacher"
# The student modules: the box head is the representation CBD trains on.
_BOX_HEAD = "roi_heads.box_head"
_BOX_PREDICTOR = "roi_heads.box_predictor"
# TensorFlow's tf.nn.l2_normalize floor, 1e-12 on the squared norm, i.e. 1e-6 on the norm.
_NORM_EPS = 1e-6


class _CosineDistance(torch.autograd.Function):
    """Per-ROI ``1 - <s, t> / (max(||s||, 1e-6) max(||t||, 1e-6))`` for (R, D) s and a constant t.

    No (R, D) temporary in the forward pass (row norms and a batched row dot product); the
    backward pass writes the gradient into one (R, D) buffer:
    ``d/ds = cos * s / ||s||^2 - t / (||s|| ||t||)`` (the first term 0 where ||s|| is floored).
    """

    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        inv_s = 1.0 / torch.linalg.vector_norm(student, dim=1).clamp(min=_NORM_EPS)
        inv_t = 1.0 / torch.linalg.vector_norm(teacher, dim=1).clamp(min=_NORM_EPS)
        dot = torch.bmm(student.unsqueeze(1), teacher.unsqueeze(2)).view(-1)
        cos = dot * inv_s * inv_t
        ctx.save_for_backward(student, teacher, inv_s, inv_t, cos)
        return 1.0 - cos

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        student, teacher, inv_s, inv_t, cos = ctx.saved_tensors
        floored = inv_s >= 1.0 / _NORM_EPS  # the norm's floor: no gradient through it
        radial = torch.where(floored, torch.zeros_like(cos), cos * inv_s * inv_s)
        grad = student * (grad_out * radial).unsqueeze(1)
        grad.addcmul_(teacher, (grad_out * inv_s * inv_t).unsqueeze(1), value=-1.0)
        return grad, None


def cbd_distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, *, reduction: str = "mean"
) -> torch.Tensor:
    """Cosine feature distillation ``1 - <s / ||s||, t / ||t||>`` (CBD, Iscen et al. 2021).

    Both feature sets are L2-normalised as TensorFlow's ``tf.nn.l2_normalize`` does
    (``x * rsqrt(max(||x||^2, 1e-12))``), as the reference's ``compute_feat_distillation``
    (google-research ``class_balanced_distillation/train.py`` at 1d4d2f1a). The maths run in
    ``promote_types(student.dtype, float32)``; the gradient (student only) comes from
    :class:`_CosineDistance` in closed form.

    Args:
        student: (R, D) student features (gradients flow into them).
        teacher: (R, D) teacher features (treated as constants: detached here).
        reduction: "mean" (over R, the reference's) | "sum" | "none" ((R,) per-ROI values).

    Returns:
        Scalar (or (R,)) in [0, 2]: 0 where the student's feature points along the teacher's, 1
        where it is orthogonal (or all-zero). An empty batch gives ``student.sum() * 0``.

    Raises:
        ValueError: the shapes differ or are not (R, D), or an unknown reduction.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(
            f"cbd_distillation_loss: reduction must be mean|sum|none, got {reduction!r}."
        )
    if student.dim() != 2 or student.shape != teacher.shape:
        raise ValueError(
            f"cbd_distillation_loss: student and teacher features must both be (R, D); got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}."
        )
    if student.shape[0] == 0:
        zero = student.sum() * 0.0
        return student.sum(dim=1) * 0.0 if reduction == "none" else zero
    dtype = torch.promote_types(student.dtype, torch.float32)
    per_roi = _CosineDistance.apply(
        student.to(dtype).contiguous(), teacher.detach().to(dtype).contiguous()
    )
    if reduction == "none":
        return per_roi
    return per_roi.mean() if reduction == "mean" else per_roi.sum()


class BoxFeatureTeacher(nn.Module):
    """The frozen stage-1 box head of CBD and the stage-2 loss it defines.

    Always in eval mode, never trained (its parameters have ``requires_grad=False`` and are kept
    out of the optimizer); its weights are part of the model's state dict (``cbd_teacher.*``).
    """

    def __init__(self, box_head: nn.Module, *, alpha: float, beta: float):
        """
        Args:
            box_head: the module copied as the teacher (a deep copy is kept, frozen).
            alpha: ``MODEL.DECOUPLE.CBD.ALPHA`` in [0, 1): weight of the distillation against
                the box-predictor losses.
            beta: ``MODEL.DECOUPLE.CBD.BETA`` >= 0: scale of the distillation term.

        Raises:
            LTDetError: alpha or beta out of range.
        """
        super().__init__()
        check_cbd_weights(alpha, beta)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.box_head = copy.deepcopy(box_head)
        self.box_head.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "BoxFeatureTeacher":
        return super().train(False)  # the teacher's forward is always its eval forward

    def copy_from(self, box_head: nn.Module) -> None:
        """Set the teacher's weights to ``box_head``'s (the stage-1 weights just loaded)."""
        self.box_head.load_state_dict(box_head.state_dict())

    @torch.no_grad()
    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(R, C, P, P) pooled box features -> (R, D) teacher box features (no graph)."""
        return self.box_head(pooled)

    @property
    def distill_weight(self) -> float:
        """``ALPHA * BETA``: the weight of ``loss_distill``."""
        return self.alpha * self.beta

    def losses(
        self,
        task_losses: Dict[str, torch.Tensor],
        student_features: torch.Tensor,
        pooled: torch.Tensor,
    ) -> Dict[str, torch.Tensor]:
        """The CBD losses: each of ``task_losses`` times ``1 - alpha``, plus ``loss_distill`` =
        ``alpha * beta *`` :func:`cbd_distillation_loss` (absent, and the teacher not run, when
        ``alpha * beta`` is 0: then the result equals ``task_losses``).

        Args:
            task_losses: the box predictor's losses on ``student_features``.
            student_features: (R, D) student box-head outputs.
            pooled: the (R, C, P, P) pooled features both heads read.
        """
        out = {k: v * (1.0 - self.alpha) for k, v in task_losses.items()}
        if self.distill_weight > 0:
            teacher = self(pooled).to(student_features.dtype)
            out["loss_distill"] = self.distill_weight * cbd_distillation_loss(
                student_features, teacher
            )
        return out

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}"


def check_cbd_weights(alpha: float, beta: float) -> None:
    """Refuse ALPHA outside [0, 1) and a negative BETA (one line naming the key)."""
    if not 0.0 <= float(alpha) < 1.0:
        raise LTDetError(
            f"MODEL.DECOUPLE.CBD.ALPHA is {alpha!r}; it must be in [0, 1) (0: no distillation; "
            "1 would drop the box-predictor losses)."
        )
    if not float(beta) >= 0.0:
        raise LTDetError(f"MODEL.DECOUPLE.CBD.BETA is {beta!r}; it must be >= 0.")


def check_cbd_trainable(trainable: List[str]) -> None:
    """The ``MODEL.DECOUPLE.TRAINABLE`` prefixes of CBD, from the config alone (before anything
    is built): each at or below ``roi_heads.box_head`` or ``roi_heads.box_predictor``, at least
    one at or below the box head. The parameter-level check of the built model follows in
    ``apply``.

    Raises:
        LTDetError: a prefix outside them (e.g. the backbone, which also feeds the frozen RPN and
            mask head, or ``roi_heads``, which holds the mask head), or none in the box head.
    """
    outside = [
        t for t in trainable
        if not (prefix_matches(t, _BOX_HEAD) or prefix_matches(t, _BOX_PREDICTOR))
    ]
    if outside:
        raise LTDetError(
            f"MODEL.DECOUPLE.METHOD 'cbd' trains the box head and box predictor only, but "
            f"MODEL.DECOUPLE.TRAINABLE also names {outside} (the backbone feeds the frozen RPN "
            f"and mask head). Use e.g. ['{_BOX_HEAD}', '{_BOX_PREDICTOR}']."
        )
    if not any(prefix_matches(t, _BOX_HEAD) for t in trainable):
        raise LTDetError(
            "MODEL.DECOUPLE.METHOD 'cbd' distils the box features, but MODEL.DECOUPLE.TRAINABLE "
            f"leaves {_BOX_HEAD} frozen (that is cRT). Add '{_BOX_HEAD}' to it."
        )


def find_teacher(model: nn.Module) -> BoxFeatureTeacher:
    """The model's :class:`BoxFeatureTeacher`.

    Raises:
        LTDetError: the model was not prepared by :class:`ClassBalancedDistillation`.
    """
    teacher = getattr(unwrap_model(model), TEACHER_ATTR, None)
    if not isinstance(teacher, BoxFeatureTeacher):
        raise LTDetError(
            "the CBD stage-2 step needs the model prepared by MODEL.DECOUPLE.METHOD 'cbd' "
            f"(its frozen teacher '{TEACHER_ATTR}' is missing)."
        )
    return teacher


def _check_student(model: nn.Module) -> None:
    """Standard ROI heads with a box head; trainable parameters in the box head (at least one)
    and box predictor only."""
    roi_heads = getattr(model, "roi_heads", None)
    predictor = getattr(roi_heads, "box_predictor", None)
    if isinstance(predictor, (nn.ModuleList, list, tuple)) or not isinstance(
        getattr(roi_heads, "box_head", None), nn.Module
    ):
        raise LTDetError(
            "MODEL.DECOUPLE.METHOD 'cbd' distils the box head of standard ROI heads "
            "(MODEL.ROI_HEADS.NAME 'LTStandardROIHeads'); cascade and box-head-less heads are "
            "not supported."
        )
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    outside = [
        n for n in names if not (prefix_matches(n, _BOX_HEAD) or prefix_matches(n, _BOX_PREDICTOR))
    ]
    if outside:
        raise LTDetError(
            f"MODEL.DECOUPLE.METHOD 'cbd' trains the box head and box predictor only, but "
            f"MODEL.DECOUPLE.TRAINABLE also makes {outside[:8]} trainable (the backbone feeds "
            "the frozen RPN and mask head). Use e.g. ['roi_heads.box_head', "
            "'roi_heads.box_predictor']."
        )
    if not any(prefix_matches(n, _BOX_HEAD) for n in names):
        raise LTDetError(
            "MODEL.DECOUPLE.METHOD 'cbd' distils the box features, but MODEL.DECOUPLE.TRAINABLE "
            f"leaves {_BOX_HEAD} frozen (that is cRT). Add '{_BOX_HEAD}' to it."
        )


class DistilledStep(DecoupledStep):
    """One CBD stage-2 batch: the frozen backbone, RPN, proposal sampling and box pooler under
    ``torch.no_grad()``; the student box head and box predictor with grad; the teacher head on
    the same pooled features (see the module docstring). The mask head is not run."""

    @staticmethod
    def check_model(model: nn.Module) -> None:
        model = unwrap_model(model)
        find_teacher(model)
        _check_student(model)

    def losses(
        self, model: nn.Module, data: List[Dict]
    ) -> Tuple[Dict[str, torch.Tensor], Optional[MetaInputs]]:
        """Stage-2 losses of one batch: ``(1 - alpha) *`` the box-predictor losses and
        ``loss_distill`` (:meth:`BoxFeatureTeacher.losses`), and the Meta Sampler's inputs
        (detached features are taken by the caller)."""
        model = unwrap_model(model)
        teacher = find_teacher(model)
        roi_heads = model.roi_heads
        with self._autocast(model.device):
            batch = frozen_box_batch(model, data, sample=True, box_features=False)
            with torch.no_grad():
                maps = [batch.features[f] for f in roi_heads.box_in_features]
                pooled = roi_heads.box_pooler(maps, [p.proposal_boxes for p in batch.proposals])
        pooled = pooled.float()
        student = roi_heads.box_head(pooled)
        predictor = roi_heads.box_predictor
        task = predictor.losses(predictor(student), batch.proposals)
        loss_dict = teacher.losses(task, student, pooled)
        gt_classes = cat([p.gt_classes for p in batch.proposals], dim=0)
        return loss_dict, MetaInputs(predictor.cls_score, student, gt_classes)


@register_decouple_method("cbd")
class ClassBalancedDistillation(ClassifierRetraining):
    """CBD: train the box head and predictor on, distilled toward the frozen stage-1 box head.

    ``apply`` adds the teacher (``model.cbd_teacher``) and freezes by ``trainable``;
    ``after_stage1_load`` copies the stage-1 box head into the teacher and re-initialises
    ``reinit`` (may be empty: then the stage-1 classifier trains on). Training runs
    :class:`DistilledStep`.
    """

    requires_reinit = False
    step_class = DistilledStep

    def __init__(self, *, trainable: List[str], reinit: List[str], alpha: float, beta: float):
        """
        Args:
            trainable: ``MODEL.DECOUPLE.TRAINABLE``: prefixes under ``roi_heads.box_head`` (at
                least one parameter) and ``roi_heads.box_predictor``.
            reinit: ``MODEL.DECOUPLE.REINIT``: modules re-initialised after the stage-1 load.
            alpha: ``MODEL.DECOUPLE.CBD.ALPHA`` in [0, 1).
            beta: ``MODEL.DECOUPLE.CBD.BETA`` >= 0.

        Raises:
            LTDetError: alpha or beta out of range.
        """
        super().__init__(trainable=trainable, reinit=reinit)
        check_cbd_weights(alpha, beta)
        check_cbd_trainable(self.trainable)
        self.alpha, self.beta = float(alpha), float(beta)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        return {
            **super().from_config(cfg),
            "alpha": cfg.MODEL.DECOUPLE.CBD.ALPHA,
            "beta": cfg.MODEL.DECOUPLE.CBD.BETA,
        }

    def apply(self, model: nn.Module) -> nn.Module:
        box_head = getattr(getattr(model, "roi_heads", None), "box_head", None)
        if not isinstance(box_head, nn.Module):
            _check_student(model)  # raises: no box head
        if any(prefix_matches(TEACHER_ATTR, t) or prefix_matches(t, TEACHER_ATTR)
               for t in self.trainable):
            raise LTDetError(
                f"MODEL.DECOUPLE.TRAINABLE names the CBD teacher '{TEACHER_ATTR}', which never "
                "trains."
            )
        # Before freezing: the teacher is frozen (and kept in eval mode) with the rest.
        if not isinstance(getattr(model, TEACHER_ATTR, None), BoxFeatureTeacher):
            model.add_module(
                TEACHER_ATTR, BoxFeatureTeacher(box_head, alpha=self.alpha, beta=self.beta)
            )
        super().apply(model)
        _check_student(model)
        return model

    def stage1_parameters(self, model: nn.Module) -> List[str]:
        # The teacher is not in a stage-1 checkpoint: it is copied after the load.
        return [
            n for n in super().stage1_parameters(model) if not prefix_matches(n, TEACHER_ATTR)
        ]

    def after_stage1_load(self, model: nn.Module) -> None:
        find_teacher(model).copy_from(model.roi_heads.box_head)
        logging.getLogger(__name__).info(
            f"CBD: the teacher '{TEACHER_ATTR}' is the stage-1 box head just loaded "
            f"(alpha {self.alpha}, beta {self.beta})."
        )
        super().after_stage1_load(model)

    def __repr__(self) -> str:
        return (
            f"ClassBalancedDistillation(trainable={self.trainable}, reinit={self.reinit}, "
            f"alpha={self.alpha}, beta={self.beta})"
        )
