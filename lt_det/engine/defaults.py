"""Config set-up shared by the command-line tools: every check of the inputs (config, datasets,
weights, output folder) that can run before a model is built or anything is written to
OUTPUT_DIR."""
import difflib
import functools
import logging
import math
import os
import re
from typing import Dict, List, Optional, Set, Tuple

import torch
import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_setup
from detectron2.utils import comm

from ..config import add_lt_config
from ..data import register_datasets_from_cfg
from ..errors import LTDetError
from .evaluators import EVALUATOR_BUILDERS
from .lock import lock_output_dir, refuse_if_in_use
from .log_setup import setup_lt_logging, strip_colour_from_setup_logs

__all__ = [
    "load_config",
    "setup_cfg",
    "check_num_classes",
    "check_datasets",
    "check_device",
    "check_cls_loss_heads",
    "check_cascade_box_reg",
    "check_weights_file",
    "check_start_weights",
    "check_config_values",
    "check_config",
    "check_launch",
    "check_solver",
    "check_eval_weights",
    "check_eval_ground_truth",
    "check_image_files",
    "check_test_categories",
    "check_output_dir",
    "config_choices",
    "eval_output_dir",
    "eval_only_config",
    "check_dataset_files",
]


def load_config(config_file: str, opts: Optional[List[str]] = None) -> CfgNode:
    """detectron2 config + lt_det keys, merged from ``config_file`` and ``KEY VALUE`` overrides.

    Raises :class:`LTDetError` for a missing file or an unknown key.
    """
    cfg = add_lt_config(get_cfg())
    if not os.path.isfile(config_file):
        raise LTDetError(f"config file not found: '{config_file}'.")
    try:
        cfg.merge_from_file(config_file)
    except KeyError as e:
        raise LTDetError(
            f"'{config_file}' sets a key detectron2 and lt_det do not have: {e.args[0]}."
            f"{_did_you_mean(cfg, str(e.args[0]))} Check the spelling against lt_det/config.py."
        ) from None
    except (ValueError, AssertionError) as e:
        raise LTDetError(f"'{config_file}': {e}") from None
    except OSError as e:  # a _BASE_ that does not resolve (the file itself exists)
        raise LTDetError(_base_error(config_file, e)) from None
    except yaml.YAMLError as e:
        raise LTDetError(
            f"'{config_file}' (or a _BASE_ it names) is not valid YAML: "
            f"{' '.join(str(e).split())}."
        ) from None
    try:
        cfg.merge_from_list(list(opts or []))
    except (KeyError, AssertionError) as e:  # yacs asserts on unknown keys and odd lists
        message = str(e.args[0] if e.args else e)
        raise LTDetError(
            f"command-line KEY VALUE overrides: {message}.{_did_you_mean(cfg, message)} "
            "Overrides come "
            "in KEY VALUE pairs after the options (--num-gpus etc. go first); keys are listed "
            "in lt_det/config.py and detectron2's defaults."
        ) from None
    except ValueError as e:
        raise LTDetError(f"command-line KEY VALUE overrides: {e}") from None
    return cfg


def _resolve_base(base: str, yaml_file: str) -> str:
    """The path detectron2's ``CfgNode.load_yaml_with_base`` opens for ``_BASE_: base`` in
    ``yaml_file``: ``~`` expanded; relative to the folder of ``yaml_file`` unless absolute or a
    URL."""
    if base.startswith("~"):
        base = os.path.expanduser(base)
    if not base.startswith(("/", "https://", "http://")):
        base = os.path.join(os.path.dirname(yaml_file), base)
    return base


def _base_error(config_file: str, error: OSError) -> str:
    """One line for a config whose ``_BASE_`` chain breaks: the yaml that names the missing
    base, the base as written and the path it resolved to."""
    current, seen = config_file, set()
    while current not in seen and os.path.isfile(current):
        seen.add(current)
        try:
            with open(current) as f:
                base = (yaml.safe_load(f) or {}).get("_BASE_")
        except (OSError, yaml.YAMLError, AttributeError):
            break
        if not isinstance(base, str):
            break
        resolved = _resolve_base(base, current)
        if not os.path.isfile(resolved):
            return (
                f"'{current}' sets _BASE_ '{base}', which does not exist ('{resolved}'; a "
                "relative _BASE_ is taken from the folder of the yaml that names it). Fix the "
                f"_BASE_ line of '{current}'."
            )
        current = resolved
    return f"'{config_file}' cannot be read: {error.strerror or error} ('{error.filename}')."


def _did_you_mean(cfg: CfgNode, message: str) -> str:
    """`` Did you mean KEY?`` for the closest existing key to the unknown one a yacs error names
    (``Non-existent key: A.B``); empty if nothing is close."""
    match = re.search(r"Non-existent (?:config )?key: (\S+)", message)
    if not match:
        return ""

    def keys(node: CfgNode, prefix: str = ""):
        for name, value in node.items():
            if isinstance(value, CfgNode):
                yield from keys(value, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}"

    close = difflib.get_close_matches(match.group(1).rstrip("."), list(keys(cfg)), n=1, cutoff=0.8)
    return f" Did you mean {close[0]}?" if close else ""


def setup_cfg(args) -> CfgNode:
    """Load, check, freeze and register datasets; lock OUTPUT_DIR; then detectron2's
    ``default_setup``.

    Everything that can be checked before a model is built is checked here, before
    ``default_setup`` writes anything to OUTPUT_DIR: the config alone (:func:`check_config`,
    unless :func:`check_launch` already checked these ``args``:
    method-selecting values, ranges, the stage-2 / sampler combination, the learning-rate
    schedule, AMP, the device and the process count), datasets (LVIS_FORMAT files fully,
    detectron2's builtin names by their files; test sets against what LVIS evaluation needs and
    against the training set's categories), NUM_CLASSES, the weights to start from or to evaluate
    and (unless ``--eval-only``) that OUTPUT_DIR does not hold a run that would be overwritten.
    Then the main process takes the lock of the folder it writes to (one run per folder; see
    :mod:`lt_det.engine.lock`).

    Files: training writes ``config.yaml`` and ``log.txt`` (detectron2's and lt_det's loggers,
    :func:`~lt_det.engine.log_setup.setup_lt_logging`) into OUTPUT_DIR. ``--eval-only`` writes
    them into :func:`eval_output_dir` (OUTPUT_DIR/inference), so that evaluating a training
    folder's checkpoint leaves that run's own files as they are.
    """
    cfg = load_config(args.config_file, args.opts)
    if _config_checked_for(args) not in _CHECKED_CONFIGS:
        check_config(cfg, eval_only=args.eval_only, num_gpus=getattr(args, "num_gpus", 1))
    cfg.freeze()
    check_dataset_files(cfg)
    register_datasets_from_cfg(cfg)
    check_datasets(cfg)
    check_num_classes(cfg)
    check_test_categories(cfg)
    check_eval_ground_truth(cfg)
    check_mask_annotations(cfg, eval_only=args.eval_only)
    check_image_files(cfg, eval_only=args.eval_only)
    check_run_folder = functools.partial(
        check_output_dir,
        cfg.OUTPUT_DIR,
        resume=args.resume or args.eval_only,
        overwrite=getattr(args, "overwrite_output", False),
    )
    check_run_folder()
    check_start_weights(cfg, resume=args.resume, eval_only=args.eval_only)
    # The folder this run writes to: OUTPUT_DIR, or OUTPUT_DIR/inference for --eval-only (which
    # may evaluate a checkpoint of a training run that is still going on).
    write_dir = eval_output_dir(cfg) if args.eval_only else cfg.OUTPUT_DIR
    if comm.is_main_process():
        lock_output_dir(write_dir)
        check_run_folder()  # again under the lock: a run that finished meanwhile
    strip_colour_from_setup_logs()  # default_setup logs the config coloured, even into log.txt
    if args.eval_only:
        setup_dir = cfg.clone()
        setup_dir.defrost()
        setup_dir.OUTPUT_DIR = write_dir
        setup_dir.freeze()
        default_setup(setup_dir, args)
    else:
        default_setup(cfg, args)
    setup_lt_logging(write_dir)
    return cfg


def check_config(cfg: CfgNode, *, eval_only: bool = False, num_gpus: int = 1) -> None:
    """The checks of the config alone (no dataset is read, nothing is written; milliseconds):
    :func:`check_config_values`, the stage-2 combination (training), :func:`check_solver`
    (training), :func:`check_cls_loss_heads`, :func:`check_cascade_box_reg`,
    :func:`check_device` for ``num_gpus`` processes per machine, the MobileNetV2 ImageNet
    file when it is used and the LVIS evaluation backend's library (``TEST.LVIS.BACKEND``).

    Raises:
        LTDetError: the first problem found, naming the key, its value and what to do.
    """
    from ..decouple import check_decoupled_training, check_stage2_classifier
    from ..evaluation.backends import get_lvis_backend

    check_config_values(cfg)
    check_stage2_classifier(cfg)
    get_lvis_backend(cfg.TEST.LVIS.BACKEND)  # one whose optional library cannot run is refused
    if not eval_only:
        check_decoupled_training(cfg)
        check_solver(cfg)
    check_cls_loss_heads(cfg)
    check_cascade_box_reg(cfg)
    check_device(cfg, num_processes=num_gpus)
    check_mnv2_pretrained(cfg)


def check_launch(args) -> None:
    """:func:`check_config` of ``args`` (``--config-file``, ``KEY VALUE`` overrides,
    ``--eval-only``, ``--num-gpus``) in the launching process, before any worker process starts:
    a config that cannot run is one line, not one line per process after they all started.

    Raises:
        LTDetError: as :func:`load_config` and :func:`check_config`.
    """
    cfg = load_config(args.config_file, args.opts)
    check_config(cfg, eval_only=args.eval_only, num_gpus=args.num_gpus)
    _CHECKED_CONFIGS.add(_config_checked_for(args))


# What check_launch checked in this process (not recorded on ``args``: detectron2 logs them).
_CHECKED_CONFIGS: Set[Tuple] = set()


def _config_checked_for(args) -> Tuple:
    """What :func:`check_config` was run on for ``args``: :func:`check_launch` records it in this
    process, :func:`setup_cfg` skips the checks for the same arguments there, so a start checks
    its config once (a worker process started by the launcher checks it again: milliseconds).
    Another config or other overrides (each stage of a two-stage config) do not match and are
    checked."""
    return (args.config_file, tuple(args.opts), bool(args.eval_only),
            getattr(args, "num_gpus", 1))


def check_weights_file(weights: str, *, trained: bool = False) -> None:
    """A local ``MODEL.WEIGHTS`` must exist (fvcore would fail with a bare assertion); a URL
    (``detectron2://``, ``https://``, ...) is fetched now, into detectron2's download cache where
    the later load finds it, so that a machine without internet is told before anything is
    written; empty (the backbone's own initialisation) passes.

    Args:
        weights: MODEL.WEIGHTS.
        trained: the weights must be a trained model (``--eval-only``, drawing predictions): the
            message of a missing file does not offer ``""`` (random initialisation).

    Raises:
        LTDetError: a local path that is not a file, or a URL that cannot be fetched.
    """
    if weights and "://" in weights:
        from detectron2.utils.file_io import PathManager

        try:
            PathManager.get_local_path(weights)
        except Exception as e:  # noqa: BLE001  (urllib, http and handler errors alike)
            raise LTDetError(
                f"MODEL.WEIGHTS '{weights}' cannot be fetched ({type(e).__name__}: "
                f"{' '.join(str(e).split())[:200]}). Offline, download the file on a machine with "
                "internet, copy it here and pass its path (MODEL.WEIGHTS /path/to/file)."
            ) from None
    elif weights and not os.path.isfile(weights):
        if trained:
            raise LTDetError(
                f"MODEL.WEIGHTS '{weights}' does not exist. Pass the trained model's checkpoint "
                "(e.g. OUTPUT_DIR/model_final.pth of its training run)."
            )
        raise LTDetError(
            f"MODEL.WEIGHTS '{weights}' does not exist. Fix the path, or set MODEL.WEIGHTS \"\" "
            "to start from the backbone's own initialisation."
        )


def check_start_weights(cfg: CfgNode, *, resume: bool, eval_only: bool) -> None:
    """The weights a run starts from must be there before anything is written: MODEL.WEIGHTS,
    unless ``--resume`` finds OUTPUT_DIR's ``last_checkpoint`` (detectron2 then loads that file
    instead). Stage 2 (``MODEL.DECOUPLE.METHOD`` other than none) needs a stage-1 checkpoint;
    ``--eval-only`` a trained model (:func:`check_eval_weights`).

    Raises:
        LTDetError: the file to start from is missing (or empty for stage 2 and --eval-only).
    """
    from ..decouple import check_stage1_weights

    if resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        return
    if eval_only:
        check_eval_weights(cfg)
    elif cfg.MODEL.DECOUPLE.METHOD != "none":
        check_stage1_weights(cfg)
    else:
        check_weights_file(cfg.MODEL.WEIGHTS)


def check_eval_weights(cfg: CfgNode) -> None:
    """``--eval-only`` (without a checkpoint for ``--resume``) evaluates ``MODEL.WEIGHTS``; it
    must be a trained model, and must not replace a training run's results with another model's.

    ``MODEL.WEIGHTS ""`` means "the backbone's own initialisation" for training; the checkpointer
    then loads nothing (so its check that every parameter was loaded never runs) and the
    evaluation would score a randomly initialised detector: refused. When OUTPUT_DIR holds a
    training run (``model_final.pth`` / ``last_checkpoint``), the weights must be one of its own
    checkpoints (a file in OUTPUT_DIR): evaluating other weights there would overwrite that run's
    detections and per-class AP in OUTPUT_DIR/inference/<dataset>/.

    Raises:
        LTDetError: empty or missing weights, or weights from outside a training run's folder;
            the message names the run's ``model_final.pth`` to pass instead.
    """
    weights, out = cfg.MODEL.WEIGHTS, cfg.OUTPUT_DIR
    suggestion = os.path.join(out, "model_final.pth")
    if not weights:
        raise LTDetError(
            f'--eval-only with MODEL.WEIGHTS "" would evaluate a randomly initialised model. Pass '
            f"the checkpoint to evaluate, e.g. MODEL.WEIGHTS {suggestion} (or --resume for "
            "OUTPUT_DIR's last checkpoint)."
        )
    run = [m for m in RUN_MARKERS if out and os.path.exists(os.path.join(out, m))]
    inside = "://" not in weights and os.path.dirname(os.path.realpath(weights)) == (
        os.path.realpath(out)
    )
    if run and not inside:
        raise LTDetError(
            f"--eval-only: OUTPUT_DIR '{out}' holds a training run ({', '.join(run)}), but "
            f"MODEL.WEIGHTS is '{weights}', not one of its checkpoints; evaluating it there would "
            f"replace that run's detections and per-class AP in '{eval_output_dir(cfg)}'. Pass "
            f"MODEL.WEIGHTS {suggestion} (or --resume) to evaluate the run, or another OUTPUT_DIR "
            "to evaluate these weights."
        )
    check_weights_file(weights, trained=True)


def check_solver(cfg: CfgNode) -> None:
    """Training-only solver keys, checked with detectron2's own code on a one-parameter
    optimizer: the learning-rate schedule (``SOLVER.LR_SCHEDULER_NAME``, ``SOLVER.STEPS``,
    ``SOLVER.MAX_ITER``, ``SOLVER.WARMUP_*``; fvcore's ``MultiStepParamScheduler`` refuses
    steps that do not increase, a step at 0 and a step equal to MAX_ITER; detectron2 drops steps
    beyond MAX_ITER with a warning) and ``SOLVER.AMP.ENABLED``, which needs CUDA (detectron2's
    ``AMPTrainer`` asserts it at the first iteration).

    Raises:
        LTDetError: naming the keys, their values and detectron2's / fvcore's reason.
    """
    from detectron2.solver import build_lr_scheduler

    solver = cfg.SOLVER
    if solver.AMP.ENABLED and not str(cfg.MODEL.DEVICE).startswith("cuda"):
        raise LTDetError(
            f"SOLVER.AMP.ENABLED is True but MODEL.DEVICE is '{cfg.MODEL.DEVICE}': detectron2's "
            "mixed-precision training (AMPTrainer) needs CUDA. Add SOLVER.AMP.ENABLED False, or "
            "train on a GPU (MODEL.DEVICE cuda)."
        )
    if solver.MAX_ITER < 1:
        raise LTDetError(f"SOLVER.MAX_ITER is {solver.MAX_ITER}; it must be >= 1.")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    quiet = _DropRecords()  # the "steps beyond MAX_ITER" warning comes again when training
    build_logger = logging.getLogger(build_lr_scheduler.__module__)
    build_logger.addFilter(quiet)
    try:
        build_lr_scheduler(cfg, optimizer)
    except (ValueError, AssertionError, ZeroDivisionError) as e:
        keys = (
            f"SOLVER.STEPS {tuple(solver.STEPS)} with SOLVER.MAX_ITER {solver.MAX_ITER}"
            if solver.LR_SCHEDULER_NAME == "WarmupMultiStepLR"
            else f"SOLVER.LR_SCHEDULER_NAME '{solver.LR_SCHEDULER_NAME}'"
        )
        raise LTDetError(
            f"the learning-rate schedule ({keys}, SOLVER.WARMUP_METHOD "
            f"'{solver.WARMUP_METHOD}') is refused by detectron2: {e}. SOLVER.STEPS must "
            "increase, each > 0 and < SOLVER.MAX_ITER; SOLVER.LR_SCHEDULER_NAME is "
            "WarmupMultiStepLR or WarmupCosineLR; SOLVER.WARMUP_METHOD linear or constant."
        ) from None
    finally:
        build_logger.removeFilter(quiet)


class _DropRecords(logging.Filter):
    """A logging filter that drops every record (used while an input check runs detectron2 code
    that logs what the run will log again)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return False


def check_mnv2_pretrained(cfg: CfgNode) -> None:
    """The MobileNetV2 backbone loads ``MODEL.MNV2.PRETRAINED_PATH`` when ``MODEL.WEIGHTS`` is
    empty: that file must exist (:func:`~lt_det.modeling.backbone.mobilenet_v2.
    resolve_mnv2_pretrained_path`).

    Raises:
        LTDetError: naming the key, the path and how to get the file.
    """
    from ..modeling.backbone.mobilenet_v2 import (
        build_mnv2_fpn_backbone,
        resolve_mnv2_pretrained_path,
    )

    if cfg.MODEL.BACKBONE.NAME == build_mnv2_fpn_backbone.__name__ and not cfg.MODEL.WEIGHTS:
        resolve_mnv2_pretrained_path(cfg.MODEL.MNV2.PRETRAINED_PATH)


def check_device(cfg: CfgNode, *, num_processes: int = 1) -> None:
    """``MODEL.DEVICE`` must be a device this machine has (checked before anything is built),
    and a CUDA run needs a GPU for each of its ``num_processes`` processes per machine
    (``--num-gpus``; CPU runs of several processes use gloo).

    Raises:
        LTDetError: naming the device, what this machine has and the way out.
    """
    device = str(cfg.MODEL.DEVICE)
    if device.startswith("cuda") and not torch.cuda.is_available():
        processes = (
            f" (with --num-gpus {num_processes}: {num_processes} CPU processes over gloo)"
            if num_processes > 1
            else ""
        )
        raise LTDetError(
            f"MODEL.DEVICE is '{device}' but this machine has no usable CUDA device (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}). Add MODEL.DEVICE cpu to the "
            f"command line{processes}, or run on a machine with a GPU."
        )
    if device.startswith("cuda:"):
        index = int(device.split(":", 1)[1])
        if index >= torch.cuda.device_count():
            raise LTDetError(
                f"MODEL.DEVICE is '{device}' but this machine has {torch.cuda.device_count()} "
                "CUDA device(s). Use MODEL.DEVICE cuda (one process per GPU with --num-gpus)."
            )
    if device.startswith("cuda") and num_processes > torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise LTDetError(
            f"--num-gpus {num_processes} starts one process per GPU, but this machine has "
            f"{count} CUDA device(s). Use --num-gpus {count}, or MODEL.DEVICE cpu for "
            f"{num_processes} CPU processes (gloo)."
        )


def check_cls_loss_heads(cfg: CfgNode) -> None:
    """``MODEL.ROI_BOX_HEAD.CLS_LOSS`` is read only by lt_det's ROI heads: refuse a non-default
    loss with one of detectron2's own heads, which would train plain softmax cross-entropy."""
    from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY

    loss, name = cfg.MODEL.ROI_BOX_HEAD.CLS_LOSS, cfg.MODEL.ROI_HEADS.NAME
    if loss == "softmax_ce" or name not in ROI_HEADS_REGISTRY:
        return
    if ROI_HEADS_REGISTRY.get(name).__module__.startswith("detectron2."):
        lt_name = "LTCascadeROIHeads" if "Cascade" in name else "LTStandardROIHeads"
        raise LTDetError(
            f"MODEL.ROI_BOX_HEAD.CLS_LOSS is '{loss}', but MODEL.ROI_HEADS.NAME '{name}' is "
            "detectron2's own head, which ignores it and trains plain softmax cross-entropy. Set "
            f"MODEL.ROI_HEADS.NAME {lt_name}."
        )


def check_cascade_box_reg(cfg: CfgNode) -> None:
    """Cascade R-CNN heads (detectron2's ``CascadeROIHeads`` and its subclasses, e.g.
    ``LTCascadeROIHeads``) regress boxes class-agnostically; detectron2 asserts it when the
    model is built. Checked here first, so the user gets the key to set instead of a traceback.

    Raises:
        LTDetError: a cascade head with ``MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG`` False.
    """
    from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads

    name = cfg.MODEL.ROI_HEADS.NAME
    if name not in ROI_HEADS_REGISTRY or cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG:
        return
    if issubclass(ROI_HEADS_REGISTRY.get(name), CascadeROIHeads):
        raise LTDetError(
            f"MODEL.ROI_HEADS.NAME '{name}' is a Cascade R-CNN head, which needs class-agnostic "
            "box regression. Add MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG True (as "
            "configs/lvis_cascade_balanced.yaml does)."
        )


def check_datasets(cfg: CfgNode) -> None:
    """Every name in ``DATASETS.TRAIN`` / ``DATASETS.TEST`` must be registered and readable.

    LVIS_FORMAT datasets were read and checked when registered; detectron2's builtin names
    (``lvis_v1_train``, ``coco_2017_val``, ...) are checked for the json and image folder they
    point at (detectron2 finds them under ``$DETECTRON2_DATASETS``). Test datasets must have an
    evaluator lt_det can build.

    Raises:
        LTDetError: naming the key, the dataset, the missing path and what to do.
    """
    registered = set(DatasetCatalog.list())
    root = os.environ.get("DETECTRON2_DATASETS")
    where = (
        f"DETECTRON2_DATASETS is '{root}'" if root else "DETECTRON2_DATASETS is unset (./datasets)"
    )
    for key in ("DATASETS.TRAIN", "DATASETS.TEST"):
        for name in cfg.DATASETS[key.split(".")[1]]:
            if name not in registered:
                raise LTDetError(
                    f"{key} names dataset '{name}', which is not registered. Add [name, json_file, "
                    "image_root] to DATASETS.LVIS_FORMAT, or use one of detectron2's builtin names "
                    "(e.g. lvis_v1_train) with DETECTRON2_DATASETS set."
                )
            meta = MetadataCatalog.get(name)
            for attr, isthere in (("json_file", os.path.isfile), ("image_root", os.path.isdir)):
                path = meta.get(attr, None)
                if path is None or "://" in str(path) or isthere(path):
                    continue
                raise LTDetError(
                    f"{key} dataset '{name}' reads {attr} '{path}', which does not exist ({where}; "
                    "detectron2's builtin datasets live under that folder, e.g. lvis/, coco/). Set "
                    "DETECTRON2_DATASETS to the folder that holds them, or register your files "
                    "with DATASETS.LVIS_FORMAT."
                )
            if key == "DATASETS.TEST":
                kind = meta.get("evaluator_type", None)
                if kind not in EVALUATOR_BUILDERS:
                    raise LTDetError(
                        f"DATASETS.TEST dataset '{name}' has evaluator_type {kind!r}; lt_det "
                        f"evaluates {sorted(EVALUATOR_BUILDERS)}. Register LVIS-format data with "
                        "DATASETS.LVIS_FORMAT or lt_det.data.register_lvis_format."
                    )


def _class_ids_and_names(name: str) -> Optional[List[Tuple[int, str]]]:
    """(dataset category id, name) of each contiguous class of a registered dataset, or None
    when its metadata has no ``thing_classes``. Without ``thing_dataset_id_to_contiguous_id``
    (detectron2's builtin LVIS) the ids are LVIS's 1..K, as the evaluators read them."""
    meta = MetadataCatalog.get(name)
    classes = meta.get("thing_classes", None)
    if classes is None:
        return None
    id_map = meta.get("thing_dataset_id_to_contiguous_id", None)
    if id_map:
        ids = {contiguous: dataset_id for dataset_id, contiguous in id_map.items()}
        return [(ids.get(i), c) for i, c in enumerate(classes)]
    return [(i + 1, c) for i, c in enumerate(classes)]


def check_test_categories(cfg: CfgNode) -> None:
    """Every ``DATASETS.TEST`` dataset must have the categories of every ``DATASETS.TRAIN``
    dataset: the same ids with the same names, class for class. The model's class i is scored
    as the test set's i-th category; other ids, or the same names in another order, would score
    each detection as another class without a word.

    Raises:
        LTDetError: naming both datasets and the first class whose id or name differs.
    """
    for test in cfg.DATASETS.TEST:
        test_classes = _class_ids_and_names(test)
        for train in cfg.DATASETS.TRAIN:
            train_classes = _class_ids_and_names(train)
            if test_classes is None or train_classes is None or test_classes == train_classes:
                continue
            where = (
                f"DATASETS.TEST dataset '{test}' does not have the categories of DATASETS.TRAIN "
                f"dataset '{train}'"
            )
            for i, (a, b) in enumerate(zip(train_classes, test_classes)):
                if a != b:
                    raise LTDetError(
                        f"{where}: class {i} is id {a[0]} '{a[1]}' in '{train}' but id {b[0]} "
                        f"'{b[1]}' in '{test}', so the model's detections would be scored as "
                        "other classes. Evaluate on a dataset with the training set's "
                        "categories (same ids and names)."
                    )
            raise LTDetError(
                f"{where}: {len(train_classes)} classes in '{train}', {len(test_classes)} in "
                f"'{test}'. Evaluate on a dataset with the training set's categories (same ids "
                "and names)."
            )


def check_eval_ground_truth(cfg: CfgNode) -> None:
    """Every ``DATASETS.TEST`` dataset of ``DATASETS.LVIS_FORMAT`` is read as the LVIS evaluator
    will read it (:class:`~lt_det.evaluation.ground_truth.LVISGroundTruth`: every image has
    ``neg_category_ids`` and ``not_exhaustive_category_ids``, every annotation an ``area``, ...),
    so that a COCO-style json is refused before training, not after it. detectron2's builtin
    LVIS / COCO names are read by their own loaders and not re-read here. Training sets need none
    of these keys (a training json without them trains: no negative or not-exhaustive labels).

    Cost: one more read of each such json.

    Raises:
        LTDetError: the evaluator's message (file, image or annotation, key), prefixed with the
            dataset's name.
    """
    from ..evaluation.ground_truth import LVISGroundTruth

    lvis_format = {entry[0] for entry in cfg.DATASETS.LVIS_FORMAT if len(entry) == 3}
    for name in cfg.DATASETS.TEST:
        meta = MetadataCatalog.get(name)
        if name not in lvis_format or meta.get("evaluator_type", None) != "lvis":
            continue
        try:
            LVISGroundTruth(meta.json_file)
        except LTDetError as e:
            hint = ""
            if "neg_category_ids" in str(e):  # the per-image lists COCO does not have
                hint = (
                    f" A COCO-format json gets them from tools/coco_to_lvis.py --input "
                    f"{meta.json_file} --output <lvis json> (docs/own_data.md)."
                )
            raise LTDetError(
                f"DATASETS.TEST dataset '{name}' cannot be evaluated: {e}{hint}"
            ) from None


def check_dataset_files(cfg: CfgNode) -> None:
    """Every json of ``DATASETS.LVIS_FORMAT`` must exist; a missing one is named with the folder
    relative paths are taken from and, for the synthetic data's file names, the command that
    creates it (the data command comes before training).

    Raises:
        LTDetError: naming the dataset, the file and what to do.
    """
    from ..data.synthetic import TRAIN_JSON, VAL_JSON

    for entry in cfg.DATASETS.LVIS_FORMAT:
        if len(entry) != 3 or os.path.isfile(entry[1]):
            continue  # malformed entries are reported by the registration
        name, json_file = entry[0], entry[1]
        hint = ""
        if os.path.basename(json_file) in (TRAIN_JSON, VAL_JSON):
            hint = (
                " If it is the synthetic benchmark's data, create it first: python "
                f"tools/make_synthetic_lvis.py --out {os.path.dirname(json_file) or '.'}"
            )
        raise LTDetError(
            f"DATASETS.LVIS_FORMAT dataset '{name}': json not found: '{json_file}' (relative "
            f"paths are taken from the current directory, '{os.getcwd()}').{hint}"
        )


def eval_only_config(cfg: CfgNode) -> CfgNode:
    """The config ``--eval-only`` builds its model with: when the loss needs a class prior and
    the ``MODEL.WEIGHTS`` checkpoint holds one, ``PRIOR.SOURCE "checkpoint"``, so that the
    training set (~1 GB of json for LVIS) is not loaded just to count a prior the checkpoint
    replaces anyway. Otherwise ``cfg`` unchanged."""
    from ..modeling.losses.registry import cls_loss_class
    from ..modeling.priors import checkpoint_class_prior

    head = cfg.MODEL.ROI_BOX_HEAD
    if head.PRIOR.SOURCE == "checkpoint" or not cls_loss_class(head.CLS_LOSS).needs_prior:
        return cfg
    if checkpoint_class_prior(cfg.MODEL.WEIGHTS) is None:
        return cfg
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.ROI_BOX_HEAD.PRIOR.SOURCE = "checkpoint"
    cfg.freeze()
    logging.getLogger(__name__).info(
        f"class prior read from '{cfg.MODEL.WEIGHTS}' (not recounted from DATASETS.TRAIN)"
    )
    return cfg


def eval_output_dir(cfg: CfgNode) -> str:
    """Where ``--eval-only`` writes config.yaml, log.txt and eval_results.json:
    OUTPUT_DIR/inference (the evaluator's per-dataset folders are under it too)."""
    return os.path.join(cfg.OUTPUT_DIR, "inference") if cfg.OUTPUT_DIR else ""


def config_choices() -> Dict[str, List[str]]:
    """The values each method-selecting key takes, read from the registries and the modules'
    choice constants: every key of ``lt_det/config.py`` whose comment lists "Choices:" (except
    booleans, which yacs type-checks, and ``MODEL.MNV2.PRETRAINED_PATH``, a path:
    :func:`check_mnv2_pretrained`), and detectron2's keys that name a registry entry (the
    registries hold lt_det's heads and backbones too).
    """
    from detectron2.modeling import (
        ANCHOR_GENERATOR_REGISTRY,
        BACKBONE_REGISTRY,
        META_ARCH_REGISTRY,
        PROPOSAL_GENERATOR_REGISTRY,
        ROI_BOX_HEAD_REGISTRY,
        ROI_HEADS_REGISTRY,
        ROI_KEYPOINT_HEAD_REGISTRY,
        ROI_MASK_HEAD_REGISTRY,
        RPN_HEAD_REGISTRY,
        SEM_SEG_HEADS_REGISTRY,
    )

    # Importing lt_det.modeling registers its heads and backbones in detectron2's registries.
    from ..modeling import roi_heads as _registration  # noqa: F401
    from ..data.samplers import LT_SAMPLER_REGISTRY
    from ..data.samplers.meta_sampler import INIT_POWERS
    from ..decouple import LT_DECOUPLE_REGISTRY
    from ..decouple.classifiers import TAU_BIAS_MODES
    from ..evaluation.backends.registry import LT_LVIS_EVAL_BACKEND_REGISTRY
    from ..modeling.backbone.mobilenet_v2 import MNV2_NORMS
    from ..modeling.calibration import CALIBRATION_METHODS, NORCAL_COUNTS
    from ..modeling.losses.balanced_softmax import BACKGROUND_CHOICES
    from ..modeling.losses.federated import CLASS_SETS
    from ..modeling.losses.pcb import PCB_BASES
    from ..modeling.losses.registry import LT_CLS_LOSS_REGISTRY
    from ..modeling.normed_linear import CLS_SCORE_CHOICES
    from ..modeling.priors import PRIOR_SOURCES

    def names(registry, *extra: str) -> List[str]:
        return sorted({name for name, _ in registry} | set(extra))

    return {
        # lt_det's keys (lt_det/config.py)
        "MODEL.ROI_BOX_HEAD.CLS_LOSS": LT_CLS_LOSS_REGISTRY.choices(),
        "MODEL.ROI_BOX_HEAD.CLS_SCORE": list(CLS_SCORE_CHOICES),
        "MODEL.ROI_BOX_HEAD.FED_LOSS_CLASS_SETS": list(CLASS_SETS),
        "MODEL.ROI_BOX_HEAD.CALIBRATION.METHOD": list(CALIBRATION_METHODS),
        "MODEL.ROI_BOX_HEAD.CALIBRATION.NORCAL_COUNTS": list(NORCAL_COUNTS),
        "MODEL.ROI_BOX_HEAD.PCB.BASE": list(PCB_BASES),
        "MODEL.ROI_BOX_HEAD.PRIOR.SOURCE": list(PRIOR_SOURCES),
        "MODEL.ROI_BOX_HEAD.BALANCED_SOFTMAX_BG": list(BACKGROUND_CHOICES),
        "DATALOADER.SAMPLER_TRAIN": LT_SAMPLER_REGISTRY.choices(),
        "DATALOADER.META_SAMPLER.INIT": sorted(INIT_POWERS),
        "MODEL.DECOUPLE.METHOD": LT_DECOUPLE_REGISTRY.choices(),
        "MODEL.DECOUPLE.TAU_BIAS": list(TAU_BIAS_MODES),
        "MODEL.MNV2.NORM": list(MNV2_NORMS),
        "TEST.LVIS.BACKEND": LT_LVIS_EVAL_BACKEND_REGISTRY.choices(),
        # detectron2's keys that name a registry entry (its build_* functions look them up)
        "MODEL.META_ARCHITECTURE": names(META_ARCH_REGISTRY),
        "MODEL.BACKBONE.NAME": names(BACKBONE_REGISTRY),
        "MODEL.ANCHOR_GENERATOR.NAME": names(ANCHOR_GENERATOR_REGISTRY),
        # "PrecomputedProposals": build_proposal_generator returns None (proposals from files)
        "MODEL.PROPOSAL_GENERATOR.NAME": names(PROPOSAL_GENERATOR_REGISTRY, "PrecomputedProposals"),
        "MODEL.RPN.HEAD_NAME": names(RPN_HEAD_REGISTRY),
        "MODEL.ROI_HEADS.NAME": names(ROI_HEADS_REGISTRY),
        # "": detectron2's default, for heads that build no box head (Res5ROIHeads)
        "MODEL.ROI_BOX_HEAD.NAME": names(ROI_BOX_HEAD_REGISTRY, ""),
        "MODEL.ROI_MASK_HEAD.NAME": names(ROI_MASK_HEAD_REGISTRY),
        "MODEL.ROI_KEYPOINT_HEAD.NAME": names(ROI_KEYPOINT_HEAD_REGISTRY),
        "MODEL.SEM_SEG_HEAD.NAME": names(SEM_SEG_HEADS_REGISTRY),
    }


def check_config_values(cfg: CfgNode) -> None:
    """Every method-selecting lt_det key must name a registered choice.

    Raises:
        LTDetError: naming the key, the value and the valid values.
    """
    for key, valid in config_choices().items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        if node not in valid:
            raise LTDetError(f"{key} is {node!r}, which is not one of the valid values {valid}.")
    check_key_ranges(cfg)
    check_key_relations(cfg)


#: Valid ranges of the numeric method keys (losses, calibration, samplers, stage 2, end to end):
#: ``{key: (low, high, closed)}``, ``None`` for an open end; ``closed`` says whether (low, high)
#: belong to the range. Checked at the door for every config, whichever method it selects, so a
#: bad value is refused before anything is written (the modules check again when built).
KEY_RANGES: Dict[str, Tuple[Optional[float], Optional[float], Tuple[bool, bool]]] = {
    "MODEL.ROI_BOX_HEAD.LDAM.MAX_MARGIN": (0, None, (True, False)),
    "MODEL.ROI_BOX_HEAD.LDAM.SCALE": (0, None, (False, False)),
    "MODEL.ROI_BOX_HEAD.LDAM.DRW_BETA": (0, 1, (True, False)),
    "MODEL.ROI_BOX_HEAD.LOGIT_ADJUSTED.TAU": (0, None, (True, False)),
    "MODEL.ROI_BOX_HEAD.LOGIT_ADJUSTED.POSTHOC_TAU": (0, None, (True, False)),
    "MODEL.ROI_BOX_HEAD.CLASS_BALANCED.BETA": (0, 1, (True, False)),
    "MODEL.ROI_BOX_HEAD.CLASS_BALANCED.FOCAL_GAMMA": (0, None, (True, False)),
    "MODEL.ROI_BOX_HEAD.PCB.ALPHA": (0, 1, (True, True)),
    "MODEL.ROI_BOX_HEAD.PCB.MOMENTUM": (0, 1, (True, False)),
    "MODEL.ROI_BOX_HEAD.PCB.START": (0, 1, (True, True)),
    "MODEL.ROI_BOX_HEAD.WHITENING.GROUP_SIZE": (0, None, (True, False)),
    "MODEL.ROI_BOX_HEAD.WHITENING.EPS": (0, None, (False, False)),
    "MODEL.ROI_BOX_HEAD.WHITENING.MOMENTUM": (0, 1, (False, True)),
    "DATALOADER.GRBS.NUM_GROUPS": (1, None, (True, False)),
    "DATALOADER.GRBS.BALANCE": (0, 1, (True, True)),
    "DATALOADER.GRBS.BET_FRACTION": (0, 1, (True, True)),
    "MODEL.ROI_BOX_HEAD.GRW.RHO": (0, None, (True, False)),
    "MODEL.DECOUPLE.DISALIGN.GATE_INIT_STD": (0, None, (True, False)),
    "MODEL.DECOUPLE.CBD.ALPHA": (0, 1, (True, False)),
    "MODEL.DECOUPLE.CBD.BETA": (0, None, (True, False)),
    "MODEL.ROI_BOX_HEAD.ECM.FG_BG_RATIO": (0, None, (False, False)),
    "MODEL.ROI_BOX_HEAD.ACSL.SCORE_THR": (0, 1, (False, False)),
    "MODEL.ROI_BOX_HEAD.GOL.CLAMP_MIN": (-50, None, (True, False)),
    "MODEL.ROI_BOX_HEAD.GOL.MAX_LOSS": (0, None, (True, False)),
    "MODEL.ROI_BOX_HEAD.CALIBRATION.FRACAL_LAMBDA": (0, None, (True, False)),
    "MODEL.ROI_BOX_HEAD.CALIBRATION.FRACAL_FREQ_WEIGHT": (0, None, (True, False)),
    "MODEL.ROI_BOX_HEAD.CALIBRATION.FRACAL_MAX_GRID": (1, None, (True, False)),
}


def check_key_relations(cfg: CfgNode) -> None:
    """The method keys whose valid values are not one range: ACSL's three background fractions,
    GOL's clamp interval and bias (before anything is built or written).

    Raises:
        LTDetError: naming the key, its value and what it must be.
    """
    node = cfg.MODEL.ROI_BOX_HEAD
    fractions = list(node.ACSL.BG_FRACTIONS)
    if len(fractions) != 3 or not all(0.0 <= float(f) <= 1.0 for f in fractions):
        raise LTDetError(
            f"MODEL.ROI_BOX_HEAD.ACSL.BG_FRACTIONS is {fractions!r}; it must be three values in "
            "[0, 1] (rare, common, frequent), e.g. [0.01, 0.1, 1.0]."
        )
    if not node.GOL.CLAMP_MIN < node.GOL.CLAMP_MAX:
        raise LTDetError(
            f"MODEL.ROI_BOX_HEAD.GOL.CLAMP_MIN ({node.GOL.CLAMP_MIN!r}) must be below "
            f"MODEL.ROI_BOX_HEAD.GOL.CLAMP_MAX ({node.GOL.CLAMP_MAX!r})."
        )
    if not math.isfinite(node.GOL.BIAS_INIT):
        raise LTDetError(
            f"MODEL.ROI_BOX_HEAD.GOL.BIAS_INIT is {node.GOL.BIAS_INIT!r}; it must be finite."
        )


def _range_text(low, high, closed: Tuple[bool, bool]) -> str:
    """``>= 0``, ``> 0``, ``in [0, 1)``: the range as the error message states it."""
    if high is None:
        return f"{'>=' if closed[0] else '>'} {low}"
    return f"in {'[' if closed[0] else '('}{low}, {high}{']' if closed[1] else ')'}"


def _in_range(value, low, high, closed: Tuple[bool, bool]) -> bool:
    above = value >= low if closed[0] else value > low
    below = high is None or (value <= high if closed[1] else value < high)
    return above and below


def check_key_ranges(cfg: CfgNode) -> None:
    """Range checks of the end-to-end keys (:data:`KEY_RANGES`), before anything is built or
    written.

    Raises:
        LTDetError: naming the key, its value and the valid range.
    """
    for key, (low, high, closed) in KEY_RANGES.items():
        value = cfg
        for part in key.split("."):
            value = value[part]
        if not _in_range(value, low, high, closed):
            raise LTDetError(f"{key} is {value!r}; it must be {_range_text(low, high, closed)}.")


# Files that mark OUTPUT_DIR as holding a (finished or interrupted) training run.
RUN_MARKERS = ("model_final.pth", "last_checkpoint")


def check_output_dir(output_dir: str, *, resume: bool, overwrite: bool = False) -> None:
    """Refuse to start a new run in a folder that holds one (its checkpoints would be replaced).

    Args:
        output_dir: ``cfg.OUTPUT_DIR``.
        resume: ``--resume`` continues the run in the folder: allowed.
        overwrite: ``--overwrite-output``: start anew, replacing the files (explicit choice).

    Raises:
        LTDetError: naming the folder, what it holds and the three ways out.
    """
    if resume or overwrite or not output_dir:
        return
    found = [m for m in RUN_MARKERS if os.path.exists(os.path.join(output_dir, m))]
    if found:
        refuse_if_in_use(output_dir)  # a live run's folder: --resume / --overwrite would fail too
        state = "a finished run" if "model_final.pth" in found else "an interrupted run"
        raise LTDetError(
            f"OUTPUT_DIR '{output_dir}' already holds {state} ({', '.join(found)}). Nothing was "
            "changed. Continue it with --resume, choose another OUTPUT_DIR, or pass "
            "--overwrite-output to start a new run there (its checkpoints will be replaced)."
        )


def check_image_files(cfg: CfgNode, *, eval_only: bool = False) -> None:
    """The images of the LVIS_FORMAT datasets a run reads (DATASETS.TEST, and DATASETS.TRAIN
    unless ``eval_only``) must all be in their image folders (counted when registered), so that
    a missing image stops the run before anything is written, not in the middle of training.

    Raises:
        LTDetError: naming the dataset, the first missing image and how many are missing.
    """
    keys = ("DATASETS.TEST",) if eval_only else ("DATASETS.TRAIN", "DATASETS.TEST")
    for key in keys:
        for name in cfg.DATASETS[key.split(".")[1]]:
            count, first = MetadataCatalog.get(name).get("missing_images", (0, None))
            if count:
                raise LTDetError(
                    f"{key} dataset '{name}': {count} image(s) of its json are not in its image "
                    f"folder, the first {first} (No such file). Restore the files, point the "
                    "image folder at where they are, or remove their images from the json."
                )


def check_mask_annotations(cfg: CfgNode, *, eval_only: bool = False) -> None:
    """With ``MODEL.MASK_ON``, every annotation of the datasets the run trains on (unless
    ``eval_only``) and scores must carry a ``segmentation`` (LVIS_FORMAT datasets; detectron2's
    builtin LVIS / COCO data always does).

    Raises:
        LTDetError: naming the key, the dataset, its json, how many annotations lack a mask (one
            id) and the two ways out.
    """
    if not cfg.MODEL.MASK_ON:
        return
    keys = ("DATASETS.TEST",) if eval_only else ("DATASETS.TRAIN", "DATASETS.TEST")
    for key in keys:
        for name in cfg.DATASETS[key.split(".")[1]]:
            meta = MetadataCatalog.get(name)
            missing, example = meta.get("annotations_without_segmentation", (0, None))
            if missing:
                raise LTDetError(
                    f"MODEL.MASK_ON is True but {key} dataset '{name}' ('{meta.json_file}') has "
                    f"{missing} annotation(s) without 'segmentation' (e.g. id {example}). Set "
                    "MODEL.MASK_ON False to train and evaluate boxes only, or give every "
                    "annotation a polygon 'segmentation'."
                )


def check_num_classes(cfg: CfgNode) -> None:
    """``MODEL.ROI_HEADS.NUM_CLASSES`` must equal the class count of every configured dataset."""
    k = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes is not None and len(classes) != k:
            raise LTDetError(
                f"MODEL.ROI_HEADS.NUM_CLASSES is {k} but dataset '{name}' has {len(classes)} "
                f"classes. Set MODEL.ROI_HEADS.NUM_CLASSES {len(classes)}."
            )
