"""Class priors for the balanced losses, computed from data (never from tables in code).

A prior is a (K,) float tensor in contiguous class order. Sources (``PRIOR.SOURCE``):

- ``image_count``: fraction of training images that contain the class,
  (#images with at least one instance of c) / (#images), over the union of ``DATASETS.TRAIN``
  (images without annotations count in the denominator). The counts are those registration stored
  in the metadata (:func:`lt_det.data.register_lvis_format`); datasets registered otherwise are
  counted from their dataset dicts (:mod:`lt_det.class_stats`; crowd annotations excluded).
- ``instance_count``: the class's share of all (non-crowd) training instances, same sources.
- ``cat_info``: ``image_count`` of each entry of the json at ``PRIOR.CAT_INFO_PATH`` (a list of
  ``{"id", "image_count", "instance_count"}``, LVIS category ids mapped to contiguous ids through
  the train dataset's ``thing_dataset_id_to_contiguous_id`` when present, else by sorted id),
  divided by the number of training images.
- ``metadata``: the sum over ``DATASETS.TRAIN`` of ``MetadataCatalog.get(n).class_image_count``
  (a list of ``{"id", "image_count"}`` in contiguous order) divided by the number of training
  images; an error when a training dataset has no such metadata.
- ``checkpoint``: the prior buffer (``...cls_loss.class_prior``) saved in the ``MODEL.WEIGHTS``
  checkpoint, as it was when that model was trained; nothing is counted (evaluation of a trained
  model does not need the training set).

For ``cat_info`` and ``metadata`` the number of training images is the sum of the train datasets'
``num_images`` metadata when every one has it, else the length of their dataset dicts.

A class with zero count is given ``PRIOR.ZERO_COUNT_FLOOR`` (> 0) instead, with a warning listing
the classes, so that log(prior) stays finite. Image fractions of 1 are kept (the sigmoid loss
clamps them); fractions never exceed 1.
"""
import json
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..data.train_stats import train_class_stats
from ..errors import LTDetError  # a ValueError: bad user input, reported without traceback

__all__ = [
    "class_prior_from_cfg",
    "class_prior_from_counts",
    "PRIOR_SOURCES",
    "checkpoint_class_prior",
    "class_prior_from_checkpoint",
    "class_prior_from_dataset",
]

logger = logging.getLogger(__name__)

PRIOR_SOURCES = ("image_count", "instance_count", "cat_info", "metadata", "checkpoint")


def class_prior_from_counts(
    counts: Sequence[float],
    total: float,
    *,
    zero_count_floor: float = 0.5,
    class_names: Optional[Sequence[str]] = None,
    source: str = "counts",
) -> torch.Tensor:
    """(K,) prior ``counts / total``, zero counts replaced by ``zero_count_floor`` (with a warning).

    Args:
        counts: K non-negative per-class counts.
        total: the denominator (number of images, or of instances); > 0.
        zero_count_floor: count given to zero-count classes; must be > 0.
        class_names: K names, used in the warning.
        source: a description of where the counts came from, used in messages.
    """
    if zero_count_floor <= 0:
        raise LTDetError(
            f"MODEL.ROI_BOX_HEAD.PRIOR.ZERO_COUNT_FLOOR must be > 0, got {zero_count_floor}"
        )
    if total <= 0:
        raise LTDetError(f"Class prior from {source}: the total count is {total}, expected > 0.")
    c = torch.as_tensor([float(x) for x in counts], dtype=torch.float64)
    if bool((c < 0).any()):
        raise LTDetError(f"Class prior from {source}: negative counts for classes "
                         f"{torch.nonzero(c < 0).flatten().tolist()}.")
    zero = torch.nonzero(c == 0).flatten().tolist()
    if zero:
        names = [class_names[i] for i in zero] if class_names is not None else None
        listed = ", ".join(
            f"{i} ({names[j]})" if names else str(i) for j, i in enumerate(zero[:50])
        )
        more = f" and {len(zero) - 50} more" if len(zero) > 50 else ""
        logger.warning(
            f"Class prior from {source}: {len(zero)} class(es) have no training examples and "
            f"are counted as {zero_count_floor} (MODEL.ROI_BOX_HEAD.PRIOR.ZERO_COUNT_FLOOR): "
            f"{listed}{more}"
        )
        c[c == 0] = zero_count_floor
    return (c / total).clamp(max=1.0).to(torch.float32)


def _check_length(n: int, num_classes: int, source: str) -> None:
    if n != num_classes:
        raise LTDetError(
            f"Class prior from {source} has {n} classes but MODEL.ROI_HEADS.NUM_CLASSES is "
            f"{num_classes}. Use the prior of the training set the model is built for."
        )


def _thing_classes(name: str) -> Optional[List[str]]:
    meta = MetadataCatalog.get(name)
    return list(meta.thing_classes) if hasattr(meta, "thing_classes") else None


def _num_train_images(train_names: Sequence[str]) -> int:
    metas = [MetadataCatalog.get(n) for n in train_names]
    return int(
        sum(
            m.num_images if hasattr(m, "num_images") else len(DatasetCatalog.get(n))
            for n, m in zip(train_names, metas)
        )
    )


def _metadata_image_counts(train_names: Sequence[str], num_classes: int) -> Tuple[List[int], str]:
    """Sum over the training datasets of their ``class_image_count`` metadata."""
    counts = [0] * num_classes
    for n in train_names:
        meta = MetadataCatalog.get(n)
        desc = f"MetadataCatalog[{n!r}].class_image_count"
        if not hasattr(meta, "class_image_count"):
            raise LTDetError(
                f'PRIOR.SOURCE="metadata" but {desc} is not set; register the dataset with '
                "lt_det.data.register_lvis_format or choose another PRIOR.SOURCE."
            )
        _check_length(len(meta.class_image_count), num_classes, desc)
        counts = [a + int(e["image_count"]) for a, e in zip(counts, meta.class_image_count)]
    return counts, f"the class_image_count metadata of DATASETS.TRAIN {list(train_names)}"


def _cat_info_counts(
    path: str, train_name: str
) -> Tuple[List[int], str]:
    if not path:
        raise LTDetError(
            'MODEL.ROI_BOX_HEAD.PRIOR.SOURCE is "cat_info" but PRIOR.CAT_INFO_PATH is empty.'
        )
    try:
        with open(path) as f:
            entries = json.load(f)
    except FileNotFoundError:
        raise LTDetError(
            f"MODEL.ROI_BOX_HEAD.PRIOR.CAT_INFO_PATH '{path}' does not exist."
        ) from None
    except json.JSONDecodeError as e:
        raise LTDetError(
            f"MODEL.ROI_BOX_HEAD.PRIOR.CAT_INFO_PATH '{path}' is not valid JSON ({e.msg} at "
            f"line {e.lineno})."
        ) from None
    if isinstance(entries, dict) and "categories" in entries:  # a full LVIS json also works
        entries = entries["categories"]
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and "id" in e and "image_count" in e for e in entries
    ):
        raise LTDetError(
            f"PRIOR.CAT_INFO_PATH '{path}': expected a list of {{'id', 'image_count', ...}} "
            "entries (LVIS *_cat_info.json) or an LVIS json with such 'categories'."
        )
    source = f"cat_info {path}"
    meta = MetadataCatalog.get(train_name)
    if hasattr(meta, "thing_dataset_id_to_contiguous_id"):
        id_map: Dict[int, int] = {
            int(k): v for k, v in meta.thing_dataset_id_to_contiguous_id.items()
        }
        file_ids = {int(e["id"]) for e in entries}
        missing, extra = sorted(set(id_map) - file_ids), sorted(file_ids - set(id_map))
        if missing:  # extra ids are ignored (e.g. a full LVIS cat_info for a subset)
            raise LTDetError(
                f"PRIOR.CAT_INFO_PATH '{path}' does not describe the categories of "
                f"DATASETS.TRAIN[0] '{train_name}': category ids missing from the file "
                f"{missing[:10]} (ids in the file but not in the dataset: {extra[:10]}). Use the "
                "cat_info file of the training set (or PRIOR.SOURCE image_count)."
            )
    else:
        id_map = {int(e["id"]): i for i, e in enumerate(sorted(entries, key=lambda e: e["id"]))}
    counts = [0] * len(id_map)
    for e in entries:
        i = id_map.get(int(e["id"]))
        if i is not None:
            counts[i] = int(e["image_count"])
    return counts, source


PRIOR_BUFFER_SUFFIX = "cls_loss.class_prior"


def checkpoint_class_prior(path: str) -> Optional[torch.Tensor]:
    """The (K,) prior buffer saved in a local ``.pth`` checkpoint, or None when the file is not
    a local torch checkpoint or holds no prior (e.g. a model-zoo ``.pkl``, a softmax model).

    The checkpoint is memory-mapped where torch can, so only the prior is read from disk.
    """
    if not path or "://" in path or not path.endswith(".pth") or not os.path.isfile(path):
        return None
    try:
        data = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except (RuntimeError, ValueError):  # not a zip-format checkpoint: read it whole
        data = torch.load(path, map_location="cpu", weights_only=False)
    state = data.get("model", data) if isinstance(data, dict) else {}
    keys = sorted(k for k in state if k.endswith(PRIOR_BUFFER_SUFFIX))
    return state[keys[0]].detach().clone().float() if keys else None


def class_prior_from_checkpoint(path: str, num_classes: int) -> torch.Tensor:
    """``PRIOR.SOURCE "checkpoint"``: the prior saved in ``path`` (``MODEL.WEIGHTS``).

    Raises:
        LTDetError: the file holds no prior, or one of another length than ``num_classes``.
    """
    prior = checkpoint_class_prior(path)
    if prior is None:
        raise LTDetError(
            f'PRIOR.SOURCE is "checkpoint" but MODEL.WEIGHTS {path!r} is not a local .pth '
            f"checkpoint holding a '*.{PRIOR_BUFFER_SUFFIX}' buffer; choose another PRIOR.SOURCE."
        )
    _check_length(len(prior), num_classes, f"the checkpoint '{path}'")
    return prior


def class_prior_from_cfg(cfg: CfgNode) -> torch.Tensor:
    """The (K,) class prior selected by ``MODEL.ROI_BOX_HEAD.PRIOR`` (see the module docstring).

    Args:
        cfg: a config with lt_det's keys; reads DATASETS.TRAIN, MODEL.ROI_HEADS.NUM_CLASSES and
            MODEL.ROI_BOX_HEAD.PRIOR.{SOURCE, CAT_INFO_PATH, ZERO_COUNT_FLOOR}.

    Returns:
        float32 tensor (K,) with values in (0, 1].
    """
    pcfg = cfg.MODEL.ROI_BOX_HEAD.PRIOR
    source = pcfg.SOURCE
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    train = list(cfg.DATASETS.TRAIN)
    if source not in PRIOR_SOURCES:
        raise LTDetError(
            f"Unknown MODEL.ROI_BOX_HEAD.PRIOR.SOURCE {source!r}; choices: {list(PRIOR_SOURCES)}."
        )
    if source == "checkpoint":
        return class_prior_from_checkpoint(cfg.MODEL.WEIGHTS, num_classes)
    if not train:
        raise LTDetError(f"PRIOR.SOURCE={source!r} needs DATASETS.TRAIN, which is empty.")
    names = _thing_classes(train[0])
    if names is not None:
        _check_length(len(names), num_classes, f"the thing_classes of {train[0]!r}")
    floor = pcfg.ZERO_COUNT_FLOOR

    if source in ("image_count", "instance_count"):
        stats = train_class_stats(train, num_classes)
        desc = f"{source} of DATASETS.TRAIN {train}"
        if source == "image_count":
            counts, total = stats.image_counts, stats.num_images
        else:
            counts, total = stats.instance_counts, sum(stats.instance_counts)
        return class_prior_from_counts(
            counts, total, zero_count_floor=floor, class_names=names, source=desc
        )

    if source == "cat_info":
        counts, desc = _cat_info_counts(pcfg.CAT_INFO_PATH, train[0])
    else:  # metadata
        counts, desc = _metadata_image_counts(train, num_classes)
    _check_length(len(counts), num_classes, desc)
    return class_prior_from_counts(
        counts, _num_train_images(train), zero_count_floor=floor, class_names=names, source=desc
    )



def class_prior_from_dataset(
    dataset_names: Union[str, Sequence[str]],
    source: str = "image_count",
    *,
    num_classes: Optional[int] = None,
    cat_info_path: str = "",
    zero_count_floor: float = 0.5,
) -> torch.Tensor:
    """The (K,) class prior of registered training dataset(s), without a yaml config: for
    LazyConfig files and own code, e.g.
    ``class_prior=L(class_prior_from_dataset)(dataset_names="lvis_v1_train")``.

    The same counts and rules as :func:`class_prior_from_cfg` (see the module docstring), which
    computes it from the equivalent ``DATASETS.TRAIN`` / ``MODEL.ROI_BOX_HEAD.PRIOR`` keys.

    Args:
        dataset_names: one registered dataset name or several (their union).
        source: "image_count" | "instance_count" | "cat_info" | "metadata". (The prior saved in
            a checkpoint: :func:`class_prior_from_checkpoint`.)
        num_classes: K; default: the length of the first dataset's ``thing_classes``.
        cat_info_path: the LVIS ``*_cat_info.json`` of ``source="cat_info"``.
        zero_count_floor: count given to classes without training examples; > 0.

    Returns:
        float32 tensor (K,) with values in (0, 1].

    Raises:
        LTDetError: an unknown source, an unregistered dataset, K unknown or not matching the
            dataset's classes, or any error of :func:`class_prior_from_cfg`.
    """
    names = [dataset_names] if isinstance(dataset_names, str) else [str(n) for n in dataset_names]
    choices = [s for s in PRIOR_SOURCES if s != "checkpoint"]
    if source not in choices:
        raise LTDetError(
            f"class_prior_from_dataset: unknown source {source!r}; choices: {choices} (the prior "
            "saved in a checkpoint: class_prior_from_checkpoint)."
        )
    if not names:
        raise LTDetError("class_prior_from_dataset: dataset_names is empty.")
    missing = [n for n in names if n not in DatasetCatalog.list()]
    if missing:
        raise LTDetError(
            f"class_prior_from_dataset: dataset(s) {missing} are not registered. Register them "
            "first (lt_det.data.register_lvis_format, or datasets.lvis_format in a LazyConfig)."
        )
    if num_classes is None:
        thing_classes = _thing_classes(names[0])
        if thing_classes is None:
            raise LTDetError(
                f"class_prior_from_dataset: dataset {names[0]!r} has no thing_classes metadata; "
                "pass num_classes."
            )
        num_classes = len(thing_classes)
    cfg = CfgNode(
        {
            "DATASETS": {"TRAIN": names},
            "MODEL": {
                "WEIGHTS": "",
                "ROI_HEADS": {"NUM_CLASSES": int(num_classes)},
                "ROI_BOX_HEAD": {
                    "PRIOR": {
                        "SOURCE": source,
                        "CAT_INFO_PATH": cat_info_path,
                        "ZERO_COUNT_FLOOR": float(zero_count_floor),
                    }
                },
            },
        }
    )
    return class_prior_from_cfg(cfg)
