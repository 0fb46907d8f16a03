"""detectron2 ``DatasetEvaluator`` for LVIS-format datasets (bbox and segm).

Compared with detectron2's ``LVISEvaluator`` it keeps predictions in columns (see
:mod:`lt_det.evaluation.detections`), evaluates with a selectable backend (hotcoco by
default, lvis-api as reference), optionally by class chunks and under the AP-fixed protocol, and
writes per-class AP with each class's training frequency.
"""
import itertools
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.evaluation.evaluator import DatasetEvaluator
from detectron2.structures import BoxMode
from detectron2.utils import comm
from detectron2.utils.logger import create_small_table
from pycocotools import mask as mask_util

from ..class_stats import class_stats_from_metadata, union_class_stats
from ..errors import LTDetError
from .ap_pool import AP_POOL_NAMES
from .backends import get_lvis_backend
from .detections import DetectionTable
from .ground_truth import LVISGroundTruth
from .lvis_eval import METRIC_NAMES, evaluate_lvis, recall_key
from .per_class import write_per_class

__all__ = ["LTLVISEvaluator", "build_lvis_evaluator"]

logger = logging.getLogger(__name__)


def _class_stats(metadata) -> Dict[str, Dict[int, object]]:
    """{"frequency": {lvis id: r/c/f}, "image_count": {lvis id: n}} from lt_det dataset metadata."""
    counts = metadata.get("class_image_count", None)
    groups = metadata.get("class_frequency", None)
    if counts is None:
        return {}
    ids = [int(c["id"]) for c in counts]
    out = {"image_count": {i: int(c["image_count"]) for i, c in zip(ids, counts)}}
    if groups is not None:
        out["frequency"] = dict(zip(ids, groups))
    return out


def _union_class_stats(names: Sequence[str]) -> Dict[str, Dict[int, object]]:
    """:func:`_class_stats` of one training set, or of the union of several ({} if one lacks
    the registration's statistics)."""
    metas = [MetadataCatalog.get(n) for n in names]
    if len(metas) == 1:
        return _class_stats(metas[0])
    parts = [class_stats_from_metadata(m) for m in metas]
    if any(p is None for p in parts):
        return {}
    union = union_class_stats(parts, names=names)
    ids = [int(c["id"]) for c in metas[0].class_image_count]
    return {
        "image_count": dict(zip(ids, union.image_counts)),
        "frequency": dict(zip(ids, union.frequency)),
    }


class LTLVISEvaluator(DatasetEvaluator):
    """LVIS AP (AP, AP50, AP75, APs/m/l, APr/c/f, AR@N) for detectron2 ``Instances`` outputs.

    ``evaluate()`` returns ``OrderedDict(task -> {metric: value in percent})`` on the main
    process (NaN where undefined) and writes, when ``output_dir`` is set,
    ``lvis_instances_results.json`` and ``per_class_ap_<task>.{json,csv}``.
    """

    def __init__(
        self,
        dataset_name: str,
        *,
        tasks: Optional[Sequence[str]] = None,
        output_dir: Optional[str] = None,
        backend: str = "fast",
        ap_fixed: bool = False,
        ap_pool: bool = False,
        class_chunk: int = 100,
        max_dets_per_image: int = 300,
        distributed: bool = True,
        train_dataset_name: Union[str, Sequence[str], None] = None,
        dump_results: bool = True,
        processed_images_only: bool = False,
    ):
        """
        Args:
            dataset_name: a registered dataset whose metadata has ``json_file`` (LVIS format) and
                ``thing_dataset_id_to_contiguous_id``.
            tasks: subset of ("bbox", "segm"); None = "segm" too when predictions have masks.
            output_dir: where results and per-class reports are written (None = nowhere).
            backend: "fast" (hotcoco) | "lvis" (lvis-api).
            ap_fixed: AP-fixed protocol (no per-image cap, top 10,000 per class).
            ap_pool: also report AP-pool (all, r, c, f) for bbox (Dave et al. 2021).
            class_chunk: classes evaluated at a time (0 = all; default 100, as
                TEST.LVIS.CLASS_CHUNK); bounds memory only.
            max_dets_per_image: per-image cap of the standard protocol (LVIS: 300).
            distributed: gather predictions from all ranks (only when world size > 1).
            train_dataset_name: registered training set(s) whose ``class_image_count`` /
                ``class_frequency`` give the per-class training frequency and the r/c/f groups
                (several: their union, grouped by :mod:`lt_det.class_stats`'s rule); None = the
                evaluated dataset's metadata (for LVIS the json's own groups).
            dump_results: write ``lvis_instances_results.json`` to ``output_dir``.
            processed_images_only: score against the ground truth of the images passed to
                :meth:`process` only (e.g. a run over the first N images), instead of the whole
                dataset, where every image not processed would count as missed.
        """
        get_lvis_backend(backend)  # fail early on a bad name
        for t in tasks or ():
            if t not in ("bbox", "segm"):
                raise LTDetError(f"LVIS evaluator tasks are 'bbox' and/or 'segm', got {t!r}.")
        self._dataset_name = dataset_name
        self._tasks = tuple(tasks) if tasks else None
        self._output_dir = output_dir
        self._backend = backend
        self._ap_fixed = ap_fixed
        self._ap_pool = ap_pool
        self._class_chunk = class_chunk
        self._max_dets = max_dets_per_image
        self._distributed = distributed
        self._dump = dump_results
        self._processed_only = processed_images_only
        self._metadata = MetadataCatalog.get(dataset_name)
        if not hasattr(self._metadata, "json_file"):
            raise LTDetError(
                f"dataset '{dataset_name}' has no 'json_file' metadata; register it with "
                "lt_det.data.register_lvis_format(name, json_file, image_root)."
            )
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id", None)
        if id_map:
            lut = np.zeros(max(id_map.values()) + 1, dtype=np.int64)
            for dataset_id, contiguous in id_map.items():
                lut[contiguous] = dataset_id
            self._to_dataset_id = lut
        else:  # LVIS convention: contiguous 0..K-1 are ids 1..K
            self._to_dataset_id = None
        stats = _class_stats(self._metadata)
        if train_dataset_name is not None:
            names = train_dataset_name
            names = [names] if isinstance(names, str) else list(names)
            train_stats = _union_class_stats(names)
            if not train_stats:
                raise LTDetError(
                    f"training dataset(s) {names} have no 'class_image_count' "
                    "metadata; register them with lt_det.data.register_lvis_format."
                )
            if stats and set(train_stats["image_count"]) != set(stats["image_count"]):
                raise LTDetError(
                    f"'{train_dataset_name}' and '{dataset_name}' have different category ids; "
                    "per-class training frequencies cannot be matched."
                )
            stats = train_stats
        self._class_stats = stats
        self._gt: Optional[LVISGroundTruth] = None
        self.reset()

    def reset(self) -> None:
        self._predictions: List[DetectionTable] = []
        self._image_ids: List[int] = []

    def _dataset_ids(self, classes: np.ndarray) -> np.ndarray:
        if self._to_dataset_id is None:
            return classes + 1
        return self._to_dataset_id[classes]

    def process(self, inputs, outputs) -> None:
        """Store each image's ``instances`` compactly (boxes XYWH float32 values, scores,
        dataset category ids, mask RLEs), as detectron2's ``instances_to_coco_json`` would."""
        for inp, out in zip(inputs, outputs):
            self._image_ids.append(int(inp["image_id"]))
            if "instances" not in out:
                continue
            inst = out["instances"].to(torch.device("cpu"))
            n = len(inst)
            boxes = inst.pred_boxes.tensor.numpy().reshape(-1, 4)
            boxes = BoxMode.convert(boxes, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
            rles = None
            if inst.has("pred_masks"):
                rles = [
                    mask_util.encode(np.array(m[:, :, None], order="F", dtype="uint8"))[0]
                    for m in inst.pred_masks.numpy()
                ]
            self._predictions.append(
                DetectionTable(
                    image_id=np.full(n, inp["image_id"], dtype=np.int64),
                    category_id=self._dataset_ids(inst.pred_classes.numpy().astype(np.int64)),
                    score=inst.scores.numpy().astype(np.float64),
                    bbox=boxes.astype(np.float64),
                    segmentation=rles,
                )
            )

    def evaluate(self) -> "OrderedDict[str, Dict[str, float]]":
        if self._distributed and comm.get_world_size() > 1:
            comm.synchronize()
            gathered = comm.gather((self._predictions, self._image_ids), dst=0)
            if not comm.is_main_process():
                return OrderedDict()
            predictions = list(itertools.chain(*(p for p, _ in gathered)))
            image_ids = list(itertools.chain(*(i for _, i in gathered)))
        else:
            predictions, image_ids = self._predictions, self._image_ids
        if not predictions:
            logger.warning(f"[LTLVISEvaluator] no predictions for '{self._dataset_name}'.")
            return OrderedDict()
        table = DetectionTable.concatenate(predictions)
        tasks = self._tasks or (("bbox", "segm") if table.segmentation is not None else ("bbox",))
        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            if self._dump:
                table.write_json(os.path.join(self._output_dir, "lvis_instances_results.json"))
        if self._gt is None:
            self._gt = LVISGroundTruth(
                self._metadata.json_file,
                frequency=self._class_stats.get("frequency"),
                image_count=self._class_stats.get("image_count"),
            )
        gt = self._gt
        if self._processed_only and set(image_ids) != set(gt.img_ids.tolist()):
            gt = gt.subset(image_ids)
            logger.info(f"scoring the {len(gt.img_ids)} processed images only ({gt.source})")
        if sum(len(v) for v in gt.anns_by_cat.values()) == 0:
            logger.info(f"'{self._metadata.json_file}' has no annotations; nothing to evaluate.")
            return OrderedDict()
        results = OrderedDict()
        for task in sorted(tasks):
            res = evaluate_lvis(
                gt,
                table,
                iou_type=task,
                backend=self._backend,
                ap_fixed=self._ap_fixed,
                ap_pool=self._ap_pool and task == "bbox",
                max_dets_per_image=self._max_dets,
                class_chunk=self._class_chunk,
            )
            names = METRIC_NAMES + [recall_key(self._ap_fixed, self._max_dets)]
            if self._ap_pool and task == "bbox":
                names += AP_POOL_NAMES
            results[task] = dict(res.metrics_percent(names))
            protocol = "AP-fixed" if self._ap_fixed else f"{self._max_dets} dets/image"
            logger.info(
                f"LVIS {task} ({self._backend} backend, {protocol}, "
                f"{res.info['seconds_total']:.1f}s):\n" + create_small_table(results[task])
            )
            if self._output_dir:
                write_per_class(res, self._output_dir, info={"dataset": self._dataset_name})
        return results


def build_lvis_evaluator(
    cfg: CfgNode,
    dataset_name: str,
    output_dir: Optional[str] = None,
    *,
    processed_images_only: bool = False,
) -> LTLVISEvaluator:
    """An :class:`LTLVISEvaluator` configured by ``TEST.LVIS.*`` and ``TEST.DETECTIONS_PER_IMAGE``.

    Tasks are bbox (+ segm when ``MODEL.MASK_ON``). Per-class training frequencies come from
    ``DATASETS.TRAIN`` (their union) when every one is a registered lt_det dataset with the
    evaluated dataset's classes. ``processed_images_only``: see :class:`LTLVISEvaluator`.
    """
    test_ids = MetadataCatalog.get(dataset_name).get("thing_dataset_id_to_contiguous_id", None)

    def same_classes(name: str) -> bool:
        meta = MetadataCatalog.get(name)
        return meta.get("class_image_count", None) is not None and meta.get(
            "thing_dataset_id_to_contiguous_id", None
        ) == test_ids

    train = list(cfg.DATASETS.TRAIN)
    train_name = train if train and all(same_classes(n) for n in train) else None
    return LTLVISEvaluator(
        dataset_name,
        tasks=("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",),
        output_dir=output_dir,
        backend=cfg.TEST.LVIS.BACKEND,
        ap_fixed=cfg.TEST.LVIS.AP_FIXED,
        ap_pool=cfg.TEST.LVIS.AP_POOL,
        class_chunk=cfg.TEST.LVIS.CLASS_CHUNK,
        max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
        train_dataset_name=train_name,
        processed_images_only=processed_images_only,
    )
