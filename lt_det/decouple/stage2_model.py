"""Stage 2 of decoupled training as a model: what a LazyConfig's ``model`` needs, for any trainer.

:class:`DecoupledGeneralizedRCNN` is detectron2's ``GeneralizedRCNN`` that, when built, applies a
stage-2 method of :data:`~lt_det.decouple.LT_DECOUPLE_REGISTRY` (freezing, LWS / tau-norm layers),
loads the stage-1 checkpoint and runs the method's post-load step (cRT re-initialises
``cls_score``); in training mode its ``forward`` is the classifier-only step of
:class:`~lt_det.decouple.DecoupledStep` (frozen detector under ``torch.no_grad()``, box
predictor losses only, mask head not run), so detectron2's ``SimpleTrainer`` / ``AMPTrainer``
(and ``tools/lazyconfig_train_net.py``) train the same objective as the yaml path's
``DecoupledTrainer``. In eval mode it is ``GeneralizedRCNN.forward``. Its state dict is the
detector's (checkpoints load into a plain ``GeneralizedRCNN`` and back).
"""
import os
from typing import Dict, List

from detectron2.modeling import GeneralizedRCNN

from ..checkpoint import LTCheckpointer
from ..errors import LTDetError
from .registry import DecoupleMethod
from .trainer import DecoupledStep

__all__ = ["DecoupledGeneralizedRCNN"]


class DecoupledGeneralizedRCNN(GeneralizedRCNN):
    """``GeneralizedRCNN`` for stage 2 (see the module docstring). Built from arguments (a
    LazyConfig), not from a yaml config; the yaml path uses ``MODEL.DECOUPLE`` instead::

        model = L(DecoupledGeneralizedRCNN)(
            backbone=..., proposal_generator=..., roi_heads=..., pixel_mean=..., pixel_std=...,
            decouple=L(ClassifierRetraining)(
                trainable=["roi_heads.box_predictor.cls_score"],
                reinit=["roi_heads.box_predictor.cls_score"],
            ),
            stage1_weights="output/lazy/lvis_rfs/model_final.pth",
        )
    """

    def __init__(self, *, decouple: DecoupleMethod, stage1_weights: str, **kwargs):
        """
        Args:
            decouple: the stage-2 method (e.g. :class:`~lt_det.decouple.ClassifierRetraining`);
                its ``trains`` must be True; its ``step_class`` (if set, e.g. CBD's
                ``DistilledStep``) replaces the classifier-only step.
            stage1_weights: the stage-1 checkpoint (a local ``.pth`` or a URL); every frozen
                parameter must load from it (same architecture and class count).
            kwargs: the arguments of detectron2's ``GeneralizedRCNN``.

        Raises:
            LTDetError: a method that trains nothing, an empty or missing ``stage1_weights``,
                a checkpoint that leaves a frozen parameter unloaded, trainable parameters
                outside the box predictor.
        """
        if not decouple.trains:
            raise LTDetError(
                f"decouple={decouple!r} trains nothing; evaluate the stage-1 model with it "
                "instead (tools/tau_sweep.py for tau-normalisation)."
            )
        if not stage1_weights:
            raise LTDetError(
                "model.stage1_weights is empty: set it to the stage-1 model_final.pth "
                "(e.g. model.stage1_weights=output/lazy/lvis_rfs/model_final.pth)."
            )
        if "://" not in stage1_weights and not os.path.isfile(stage1_weights):
            raise LTDetError(
                f"model.stage1_weights '{stage1_weights}' does not exist: train stage 1 first "
                "(e.g. configs/lazy/lvis_rfs.py) or fix the path."
            )
        super().__init__(**kwargs)
        self.decouple = decouple
        decouple.apply(self)
        frozen = decouple.stage1_parameters(self)
        # Only the model is read from the file (not its optimizer or iteration); the load guard
        # refuses a checkpoint that leaves any frozen parameter at its random value.
        LTCheckpointer(self, must_load=frozen).load(stage1_weights, checkpointables=[])
        decouple.after_stage1_load(self)
        step_class = decouple.step_class or DecoupledStep
        step_class.check_model(self)
        self._step = step_class()

    def forward(self, batched_inputs: List[Dict]):
        """Training: the stage-2 losses of :meth:`DecoupledStep.losses` (those that do not
        depend on a trainable parameter are logged only). Eval:
        ``GeneralizedRCNN.forward`` (detections)."""
        if not self.training:
            return super().forward(batched_inputs)
        loss_dict, _ = self._step.losses(self, batched_inputs)
        if not any(v.requires_grad for v in loss_dict.values()):
            raise LTDetError(
                "no stage-2 loss depends on a trainable parameter; check the decouple method's "
                "trainable prefixes (e.g. roi_heads.box_predictor.cls_score)."
            )
        return loss_dict
