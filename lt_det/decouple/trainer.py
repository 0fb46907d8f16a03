"""Stage-2 training: classifier-only steps, the Meta Sampler, and loading stage-1 weights.

The decoupled step (:class:`DecoupledTrainer`, a ``SimpleTrainer`` subclass) replaces
``SimpleTrainer.run_step``: the frozen detector (backbone, RPN, box
pooler and box head; eval mode) runs under ``torch.no_grad()`` and only the box predictor's
forward and losses build a graph, so backward touches the trainable classifier parameters alone.
The mask head is not run (no mask loss in stage 2).
"""
import contextlib
import os
import time
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from detectron2.config import CfgNode
from detectron2.engine import SimpleTrainer
from detectron2.layers import cat
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch import nn

from ..data.samplers import MetaSampler
from ..data.train_stats import train_class_frequency
from ..errors import LTDetError
from ..modeling.roi_heads import LTCascadeROIHeads
from .balms import MetaSamplerLearner
from .classifiers import find_box_predictors
from .features import frozen_box_batch, unwrap_model
from .freeze import prefix_matches
from .registry import build_decouple_method

__all__ = [
    "DecoupledStep",
    "DecoupledTrainer",
    "build_decoupled_trainer",
    "check_decoupled_training",
    "check_stage1_weights",
    "stage1_load_guard",
]


def check_stage2_classifier(cfg: CfgNode) -> None:
    """Fail early on a stage-2 method that cannot act on the configured classifier: tau-norm on a
    cosine classifier (``CLS_SCORE: normed_linear``, whose weights every forward pass
    normalises, so tau-normalisation would change nothing). Training and evaluation alike."""
    if (
        cfg.MODEL.DECOUPLE.METHOD == "tau_norm"
        and cfg.MODEL.ROI_BOX_HEAD.CLS_SCORE == "normed_linear"
    ):
        raise LTDetError(
            "MODEL.DECOUPLE.METHOD 'tau_norm' with MODEL.ROI_BOX_HEAD.CLS_SCORE 'normed_linear': "
            "a cosine classifier's weights are normalised in every forward pass, so "
            "tau-normalisation changes nothing. Use 'lws' or 'crt' for this model."
        )


def check_decoupled_training(cfg: CfgNode) -> None:
    """Fail early (before anything is built or written) on a stage-2 config that cannot train,
    and on a Meta Sampler outside a decoupled stage 2."""
    method = cfg.MODEL.DECOUPLE.METHOD
    if method == "none":
        if cfg.DATALOADER.SAMPLER_TRAIN == "MetaSampler":
            raise LTDetError(
                "DATALOADER.SAMPLER_TRAIN='MetaSampler' learns its class rates on the frozen box "
                "features of a decoupled stage 2, but MODEL.DECOUPLE.METHOD is 'none', so its "
                "rates would never change. Set MODEL.DECOUPLE.METHOD (e.g. 'finetune', as in "
                "configs/synthetic/stage2_balms.yaml), or use 'ClassPowerSampler' for fixed "
                "class rates in stage 1."
            )
        return
    if not build_decouple_method(cfg).trains:
        raise LTDetError(
            f"MODEL.DECOUPLE.METHOD={method!r} trains nothing. Evaluate it with "
            "'tools/train_net.py --eval-only MODEL.WEIGHTS <stage-1 model_final.pth>' or sweep "
            "tau with tools/tau_sweep.py."
        )
    if cfg.TEST.PRECISE_BN.ENABLED:
        raise LTDetError(
            "TEST.PRECISE_BN.ENABLED would re-estimate the frozen BatchNorm statistics in "
            "stage 2 (MODEL.DECOUPLE.METHOD != 'none'); set it to False."
        )


class MetaInputs(NamedTuple):
    """What the Meta Sampler learner needs from one stage-2 batch."""

    classifier: nn.Module  # the box predictor's cls_score
    features: torch.Tensor  # (R, D) box features
    gt_classes: torch.Tensor  # (R,) labels in [0, K]


class DecoupledStep:
    """The classifier-only update of one stage-2 batch (see the module docstring).

    With a Meta Sampler learner, the same box features and labels then update the sampling rates
    (BALMS), and the rate statistics go to the event storage.
    """

    def __init__(
        self,
        *,
        meta_learner: Optional[MetaSamplerLearner] = None,
        class_frequency: Optional[Sequence[str]] = None,
        amp: bool = False,
    ):
        """
        Args:
            meta_learner: the Meta Sampler's :class:`~lt_det.decouple.balms.MetaSamplerLearner`
                or None.
            class_frequency: K strings in {"r", "c", "f"} for the rate statistics.
            amp: run the frozen part under autocast (the classifier stays in float32).
        """
        self.meta_learner = meta_learner
        self.class_frequency = list(class_frequency) if class_frequency is not None else None
        self.amp = bool(amp)

    @staticmethod
    def check_model(model: nn.Module) -> None:
        """Every trainable parameter must live in a box predictor (the only part that gets
        gradients in a decoupled step)."""
        model = unwrap_model(model)
        predictors = list(find_box_predictors(model))
        outside = [
            n
            for n, p in model.named_parameters()
            if p.requires_grad and not any(prefix_matches(n, q) for q in predictors)
        ]
        if outside:
            raise LTDetError(
                f"stage 2 trains only the box predictor ({predictors}), but "
                f"MODEL.DECOUPLE.TRAINABLE also makes {outside[:8]} trainable."
            )
        if not any(p.requires_grad for p in model.parameters()):
            raise LTDetError("MODEL.DECOUPLE.TRAINABLE leaves no trainable parameter.")

    def _autocast(self, device: torch.device):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type)

    def losses(
        self, model: nn.Module, data: List[Dict]
    ) -> Tuple[Dict[str, torch.Tensor], Optional[MetaInputs]]:
        """Stage-2 losses of one batch.

        Returns:
            All box-predictor losses (those that do not depend on a trainable parameter are
            only logged), and what the Meta Sampler learns from: (classifier, (R, D) box
            features, (R,) gt classes); None for cascade heads.
        """
        model = unwrap_model(model)
        roi_heads = model.roi_heads
        cascade = isinstance(roi_heads.box_predictor, (nn.ModuleList, list, tuple))
        if cascade and not isinstance(roi_heads, LTCascadeROIHeads):
            raise LTDetError(
                f"stage 2 of a cascade model needs MODEL.ROI_HEADS.NAME 'LTCascadeROIHeads', "
                f"got {type(roi_heads).__name__}."
            )
        with self._autocast(model.device):
            batch = frozen_box_batch(model, data, sample=True, box_features=not cascade)
        if cascade:
            # Cascade stages pool the boxes of the previous stage; detectron2's own loop runs
            # them. Features do not require grad and the frozen box heads build no graph.
            features = {k: v.float() for k, v in batch.features.items()}
            return roi_heads.box_losses(features, batch.proposals, batch.gt_instances), None
        predictor = roi_heads.box_predictor
        box_features = batch.box_features.float()
        loss_dict = predictor.losses(predictor(box_features), batch.proposals)
        gt_classes = cat([p.gt_classes for p in batch.proposals], dim=0)
        return loss_dict, MetaInputs(predictor.cls_score, box_features, gt_classes)

    def __call__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, data: List[Dict], iteration: int
    ) -> Dict[str, torch.Tensor]:
        """Losses and gradients of one batch, then the Meta Sampler's update (when due).

        Leaves the gradients in the trainable parameters (averaged over ranks); the caller takes
        the optimizer step. Returns the loss dict (for the metrics).
        """
        loss_dict, meta_inputs = self.losses(model, data)
        trained = [v for v in loss_dict.values() if v.requires_grad]
        if not trained:
            raise LTDetError(
                "no stage-2 loss depends on a trainable parameter; check "
                "MODEL.DECOUPLE.TRAINABLE (e.g. roi_heads.box_predictor.cls_score)."
            )
        optimizer.zero_grad()
        sum(trained).backward()
        _all_reduce_grads(optimizer)
        if self.meta_learner is not None and self.meta_learner.should_update(iteration):
            if meta_inputs is None:
                raise LTDetError("the Meta Sampler needs standard (not cascade) ROI heads.")
            # Before the classifier step, on the same (detached) features and labels. The
            # gradients of the plain training loss were just computed by backward(): handing them
            # over spares the learner recomputing them (same result, ~2x cheaper update).
            params = dict(meta_inputs.classifier.named_parameters())
            grads = {n: p.grad for n, p in params.items() if p.requires_grad}
            weight = getattr(unwrap_model(model).roi_heads.box_predictor, "loss_weight", {})
            if not grads or any(g is None for g in grads.values()) or (
                isinstance(weight, dict) and weight.get("loss_cls", 1.0) != 1.0
            ):
                grads = None  # not the plain loss's gradients: let the learner compute them
            stats = self.meta_learner.step(
                meta_inputs.classifier, meta_inputs.features.detach(), meta_inputs.gt_classes,
                train_grads=grads,
            )
            stats.update(self.meta_learner.log_stats(self.class_frequency))
            get_event_storage().put_scalars(**stats, smoothing_hint=False)
        return loss_dict


def _all_reduce_grads(optimizer: torch.optim.Optimizer) -> None:
    # The decoupled step calls submodules directly, not the DDP wrapper's forward, so DDP does
    # not average the gradients; do it here.
    world = comm.get_world_size()
    if world == 1:
        return
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(world)


class DecoupledTrainer(SimpleTrainer):
    """``SimpleTrainer`` whose ``run_step`` is a classifier-only :class:`DecoupledStep`.

    ``LTTrainer`` uses it as its inner trainer in stage 2; it also serves custom loops.
    """

    def __init__(self, model, data_loader, optimizer, *, step: Optional[DecoupledStep] = None):
        super().__init__(model, data_loader, optimizer)
        self.step = step or DecoupledStep()
        self.step.check_model(model)

    @property
    def meta_learner(self) -> Optional[MetaSamplerLearner]:
        return self.step.meta_learner

    def run_step(self) -> None:
        assert self.model.training, "[DecoupledTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        loss_dict = self.step(self.model, self.optimizer, data, self.iter)
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()


def build_decoupled_trainer(
    cfg: CfgNode, trainer: SimpleTrainer, train_sampler=None
) -> Optional[DecoupledTrainer]:
    """The stage-2 inner trainer replacing ``trainer`` (None when ``MODEL.DECOUPLE.METHOD`` is
    "none").

    Args:
        cfg: the run's config, checked (:func:`check_decoupled_training`, which
            :func:`lt_det.engine.check_config` runs before anything is built).
        trainer: the inner trainer ``DefaultTrainer`` built (its model, loader and optimizer are
            taken over).
        train_sampler: the sampler the trainer built for its loader (a
            :class:`~lt_det.data.samplers.MetaSampler`, possibly inside a wrapper exposing it as
            ``.sampler``). A Meta Sampler gets a :class:`MetaSamplerLearner` (the trainer's
            ``meta_learner``, to be registered with the checkpointer).
    """
    sampler = getattr(train_sampler, "sampler", train_sampler)
    is_meta = isinstance(sampler, MetaSampler)
    if cfg.MODEL.DECOUPLE.METHOD == "none":
        return None
    model = unwrap_model(trainer.model)
    step_class = build_decouple_method(cfg).step_class or DecoupledStep
    step_class.check_model(model)
    meta_learner, class_frequency = None, None
    if is_meta:
        predictor = model.roi_heads.box_predictor
        if isinstance(predictor, (nn.ModuleList, list, tuple)):
            raise LTDetError("the Meta Sampler needs standard (not cascade) ROI heads.")
        meta_learner = MetaSamplerLearner(cfg, sampler, cls_loss=predictor.cls_loss)
        class_frequency = train_class_frequency(
            cfg.DATASETS.TRAIN, cfg.MODEL.ROI_HEADS.NUM_CLASSES
        )
    step = step_class(
        meta_learner=meta_learner, class_frequency=class_frequency, amp=cfg.SOLVER.AMP.ENABLED
    )
    return DecoupledTrainer(trainer.model, trainer.data_loader, trainer.optimizer, step=step)


def _is_remote(path: str) -> bool:
    return "://" in path


def check_stage1_weights(cfg: CfgNode) -> None:
    """Stage 2 (``MODEL.DECOUPLE.METHOD`` other than none) starts from a stage-1 checkpoint: a
    local ``MODEL.WEIGHTS`` must name an existing file (URLs are left to the checkpointer).

    Raises:
        LTDetError: MODEL.WEIGHTS is empty or a local file that does not exist.
    """
    weights = cfg.MODEL.WEIGHTS
    method = cfg.MODEL.DECOUPLE.METHOD
    if not weights:
        raise LTDetError(
            f"MODEL.DECOUPLE.METHOD={method!r} starts from stage-1 weights, but MODEL.WEIGHTS "
            "is empty. Set it to a stage-1 checkpoint, e.g. "
            "./output/synthetic/rfs/model_final.pth."
        )
    if not _is_remote(weights) and not os.path.isfile(weights):
        raise LTDetError(
            f"MODEL.WEIGHTS '{weights}' (stage-1 checkpoint for MODEL.DECOUPLE.METHOD="
            f"{method!r}) does not exist. Train stage 1 first or fix the path."
        )


@contextlib.contextmanager
def stage1_load_guard(cfg: CfgNode, model: nn.Module, checkpointer, resume: bool) -> Iterator:
    """Wrap the weight loading of a stage-2 run (``LTTrainer.resume_or_load``).

    A new run (not resuming from OUTPUT_DIR's last checkpoint) must load stage-1 weights from
    ``MODEL.WEIGHTS``: an empty or missing path is an error; a checkpoint that leaves any frozen
    parameter unloaded (missing or of another shape, e.g. another architecture or box-regression
    class count) is refused by the checkpointer's load guard (``checkpointer.must_load``, an
    ``lt_det.checkpoint.LTCheckpointer``; the method's ``stage1_parameters``); then the method's
    ``after_stage1_load`` runs (cRT re-initialisation, CBD's teacher copy). A resumed run loads
    its own checkpoint and nothing is re-initialised.
    """
    model = unwrap_model(model)
    if resume and checkpointer.has_checkpoint():
        yield
        return
    check_stage1_weights(cfg)
    # The checkpointer's load guard (lt_det.checkpoint) refuses a file that leaves any
    # frozen parameter unloaded (missing or of another shape).
    if not hasattr(checkpointer, "must_load"):
        raise TypeError("stage1_load_guard needs an lt_det.engine.LTCheckpointer (its load guard).")
    method = build_decouple_method(cfg)
    previous = checkpointer.must_load
    checkpointer.must_load = method.stage1_parameters(model)
    try:
        yield
    finally:
        checkpointer.must_load = previous
    method.after_stage1_load(model)
