"""Stage-2 training: classifier-only steps, the Meta Sampler, and loading stage-1 weights.

The decoupled step replaces ``SimpleTrainer.run_step``: the frozen detector (backbone, RPN, box
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
from detectron2.data import MetadataCatalog
from detectron2.engine import SimpleTrainer
from detectron2.layers import cat
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch import nn

from ..errors import LTDetError
from .classifiers import find_box_predictors
from .features import frozen_box_batch, unwrap_model
from .freeze import prefix_matches
from .registry import build_decouple_method

__all__ = [
    "DecoupledStep",
    "DecoupledTrainer",
    "build_decoupled_step",
    "check_decoupled_training",
    "stage1_load_guard",
]


def check_decoupled_training(cfg: CfgNode) -> None:
    """Fail early (before anything is built or written) on a stage-2 config that cannot train,
    and on a Meta Sampler outside a decoupled stage 2."""
    method = cfg.MODEL.DECOUPLE.METHOD
    if method == "none":
        if cfg.DATALOADER.SAMPLER_TRAIN == "MetaSampler":
            raise LTDetError(
                "DATALOADER.SAMPLER_TRAIN='MetaSampler' learns its class rates on the frozen box "
                "features of a decoupled stage 2, but MODEL.DECOUPLE.METHOD is 'none', so its "
                "rates would never change. Set MODEL.DECOUPLE.METHOD (e.g. 'crt', as in "
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
    """One stage-2 iteration on a detectron2 ``SimpleTrainer`` (or ``AMPTrainer``).

    Uses the trainer's model, optimizer, data iterator and metric writer; see the module
    docstring. With a Meta Sampler learner, the same box features and labels then update the
    sampling rates (BALMS), and the rate statistics go to the event storage.
    """

    def __init__(
        self,
        *,
        meta_learner=None,
        class_frequency: Optional[Sequence[str]] = None,
        amp: bool = False,
    ):
        """
        Args:
            meta_learner: a ``lt_det.data.samplers.MetaSamplerLearner`` or None.
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
        with self._autocast(model.device):
            batch = frozen_box_batch(model, data, sample=True, box_features=not cascade)
        if cascade:
            # Cascade stages pool the boxes of the previous stage; detectron2's own loop runs
            # them. Features do not require grad and the frozen box heads build no graph.
            features = {k: v.float() for k, v in batch.features.items()}
            return roi_heads._forward_box(features, batch.proposals, batch.gt_instances), None
        predictor = roi_heads.box_predictor
        box_features = batch.box_features.float()
        loss_dict = predictor.losses(predictor(box_features), batch.proposals)
        gt_classes = cat([p.gt_classes for p in batch.proposals], dim=0)
        return loss_dict, MetaInputs(predictor.cls_score, box_features, gt_classes)

    def __call__(self, trainer: SimpleTrainer) -> None:
        """Run one iteration on ``trainer`` (in place of ``trainer.run_step()``)."""
        assert trainer.model.training, "[DecoupledStep] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(trainer._data_loader_iter)
        data_time = time.perf_counter() - start

        loss_dict, meta_inputs = self.losses(trainer.model, data)
        trained = [v for v in loss_dict.values() if v.requires_grad]
        if not trained:
            raise LTDetError(
                "no stage-2 loss depends on a trainable parameter; check "
                "MODEL.DECOUPLE.TRAINABLE (e.g. roi_heads.box_predictor.cls_score)."
            )
        trainer.optimizer.zero_grad()
        sum(trained).backward()
        _all_reduce_grads(trainer.optimizer)
        trainer._write_metrics(loss_dict, data_time)
        if self.meta_learner is not None and self.meta_learner.should_update(trainer.iter):
            if meta_inputs is None:
                raise LTDetError("the Meta Sampler needs standard (not cascade) ROI heads.")
            # Before the classifier step, on the same (detached) features and labels. The
            # gradients of the plain training loss were just computed by backward(): handing them
            # over spares the learner recomputing them (same result, ~2x cheaper update).
            params = dict(meta_inputs.classifier.named_parameters())
            grads = {n: p.grad for n, p in params.items() if p.requires_grad}
            weight = getattr(unwrap_model(trainer.model).roi_heads.box_predictor, "loss_weight", {})
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
        trainer.optimizer.step()


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
    """``SimpleTrainer`` whose ``run_step`` is a :class:`DecoupledStep` (for custom loops)."""

    def __init__(self, model, data_loader, optimizer, *, step: Optional[DecoupledStep] = None):
        super().__init__(model, data_loader, optimizer)
        self.step = step or DecoupledStep()
        DecoupledStep.check_model(model)

    def run_step(self) -> None:
        self.step(self)


def build_decoupled_step(cfg: CfgNode, trainer) -> Optional[DecoupledStep]:
    """The stage-2 step for an ``LTTrainer`` (None when ``MODEL.DECOUPLE.METHOD`` is "none").

    With ``DATALOADER.SAMPLER_TRAIN == "MetaSampler"`` it builds the Meta Sampler learner on the
    loader's sampler and registers it in ``trainer.checkpointer`` as "meta_sampler", so its state
    is saved with every checkpoint and restored on resume.
    """
    check_decoupled_training(cfg)
    if cfg.MODEL.DECOUPLE.METHOD == "none":
        return None
    model = unwrap_model(trainer.model)
    DecoupledStep.check_model(model)
    meta_learner, class_frequency = None, None
    if cfg.DATALOADER.SAMPLER_TRAIN == "MetaSampler":
        from ..data.samplers import MetaSampler, MetaSamplerLearner, find_train_sampler
        from .balms import per_roi_loss_for_meta

        sampler = find_train_sampler(trainer.data_loader, MetaSampler)
        if sampler is None:
            raise LTDetError("DATALOADER.SAMPLER_TRAIN is MetaSampler but the loader has none.")
        predictor = model.roi_heads.box_predictor
        if isinstance(predictor, (nn.ModuleList, list, tuple)):
            raise LTDetError("the Meta Sampler needs standard (not cascade) ROI heads.")
        loss_fn = per_roi_loss_for_meta(predictor.cls_loss)
        meta_learner = MetaSamplerLearner(cfg, sampler, loss_fn=loss_fn)
        trainer.checkpointer.checkpointables["meta_sampler"] = meta_learner
        class_frequency = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("class_frequency", None)
    return DecoupledStep(
        meta_learner=meta_learner, class_frequency=class_frequency, amp=cfg.SOLVER.AMP.ENABLED
    )


def _is_remote(path: str) -> bool:
    return "://" in path


@contextlib.contextmanager
def stage1_load_guard(cfg: CfgNode, model: nn.Module, checkpointer, resume: bool) -> Iterator:
    """Wrap the weight loading of a stage-2 run (``LTTrainer.resume_or_load``).

    A new run (not resuming from OUTPUT_DIR's last checkpoint) must load stage-1 weights from
    ``MODEL.WEIGHTS``: an empty or missing path is an error; a checkpoint that leaves any frozen
    parameter unloaded (missing or of another shape, e.g. another architecture or box-regression
    class count) is refused by the checkpointer's load guard (``checkpointer.must_load``, an
    ``lt_det.engine.checkpoint.LTCheckpointer``); then the method's ``after_stage1_load`` runs
    (cRT re-initialisation). A resumed run loads its own checkpoint and nothing is
    re-initialised.
    """
    model = unwrap_model(model)
    if resume and checkpointer.has_checkpoint():
        yield
        return
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
    # The checkpointer's load guard (lt_det.engine.checkpoint) refuses a file that leaves any
    # frozen parameter unloaded (missing or of another shape).
    if not hasattr(checkpointer, "must_load"):
        raise TypeError("stage1_load_guard needs an lt_det.engine.LTCheckpointer (its load guard).")
    previous = checkpointer.must_load
    checkpointer.must_load = [n for n, p in model.named_parameters() if not p.requires_grad]
    try:
        yield
    finally:
        checkpointer.must_load = previous
    build_decouple_method(cfg).after_stage1_load(model)
