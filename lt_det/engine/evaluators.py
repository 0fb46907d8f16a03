"""Which detectron2 evaluator a test dataset gets, by its ``evaluator_type`` metadata.

Read by ``LTTrainer.build_evaluator`` and, before anything is written, by ``check_datasets`` (a test dataset
without an evaluator is refused before training starts, not after it).
"""
from typing import Callable, Dict

from detectron2.evaluation import COCOEvaluator, DatasetEvaluator

from ..evaluation import build_lvis_evaluator

__all__ = ["EVALUATOR_BUILDERS"]


def _coco_evaluator(cfg, dataset_name: str, output_dir: str) -> DatasetEvaluator:
    # The C++ fast COCO evaluation is not part of every detectron2 build (see setup_env.sh).
    return COCOEvaluator(dataset_name, output_dir=output_dir, use_fast_impl=False)


# evaluator_type (dataset metadata) -> builder(cfg, dataset_name, output_dir)
EVALUATOR_BUILDERS: Dict[str, Callable[..., DatasetEvaluator]] = {
    "lvis": build_lvis_evaluator,
    "coco": _coco_evaluator,
}
