"""LTTrainer: detectron2's DefaultTrainer with lt_det's data loading, evaluation and model hooks.

Only the small ``build_*`` hooks of DefaultTrainer are overridden; the training loop is detectron2's.
"""
import os
from typing import Callable, Dict

from detectron2.data import (
    MetadataCatalog,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator

from ..data.samplers import build_train_sampler
from ..decouple import (
    apply_decoupling,
    build_decoupled_step,
    check_decoupled_training,
    stage1_load_guard,
)
from ..errors import LTDetError
from ..evaluation import build_lvis_evaluator

__all__ = ["LTTrainer", "EVALUATOR_BUILDERS"]


def _coco_evaluator(cfg, dataset_name: str, output_dir: str) -> DatasetEvaluator:
    # The C++ fast COCO evaluation is not part of every detectron2 build (see setup_env.sh).
    return COCOEvaluator(dataset_name, output_dir=output_dir, use_fast_impl=False)


# evaluator_type (dataset metadata) -> builder(cfg, dataset_name, output_dir)
EVALUATOR_BUILDERS: Dict[str, Callable[..., DatasetEvaluator]] = {
    "lvis": build_lvis_evaluator,
    "coco": _coco_evaluator,
}


class LTTrainer(DefaultTrainer):
    """DefaultTrainer + lt_det samplers (``DATALOADER.SAMPLER_TRAIN``) + LVIS evaluation.

    With ``MODEL.DECOUPLE.METHOD != "none"`` (stage 2, see lt_det/decouple): the model is frozen
    and adapted when built, stage-1 weights are checked and re-initialised after loading, and
    each iteration is a classifier-only :class:`~lt_det.decouple.DecoupledStep`.
    """

    def __init__(self, cfg):
        check_decoupled_training(cfg)  # fail before building anything
        super().__init__(cfg)
        # Stage-2 iteration strategy (None: detectron2's own run_step).
        self._decoupled_step = build_decoupled_step(cfg, self)

    @classmethod
    def build_model(cls, cfg):
        return apply_decoupling(super().build_model(cfg), cfg)

    def resume_or_load(self, resume=True):
        if self.cfg.MODEL.DECOUPLE.METHOD == "none":
            return super().resume_or_load(resume=resume)
        with stage1_load_guard(self.cfg, self.model, self.checkpointer, resume):
            super().resume_or_load(resume=resume)

    def run_step(self):
        if self._decoupled_step is None:
            return super().run_step()
        self._trainer.iter = self.iter
        self._decoupled_step(self._trainer)

    @classmethod
    def build_train_loader(cls, cfg):
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        sampler = build_train_sampler(cfg, dataset)
        return build_detection_train_loader(cfg, dataset=dataset, sampler=sampler)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: str = None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluator_type = getattr(MetadataCatalog.get(dataset_name), "evaluator_type", None)
        if evaluator_type not in EVALUATOR_BUILDERS:
            raise LTDetError(
                f"dataset '{dataset_name}' has evaluator_type {evaluator_type!r}; lt_det evaluates "
                f"{sorted(EVALUATOR_BUILDERS)}. Register LVIS-format data with "
                "DATASETS.LVIS_FORMAT or lt_det.data.register_lvis_format."
            )
        return EVALUATOR_BUILDERS[evaluator_type](cfg, dataset_name, output_folder)
