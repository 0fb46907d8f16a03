"""LazyConfig (``.py`` config) training and evaluation, the path ``tools/train_net.py`` takes for a
``.py`` ``--config-file``.

What detectron2's ``tools/lazyconfig_train_net.py`` does, composed from detectron2's public API
(``LazyConfig``, ``instantiate``, ``SimpleTrainer`` / ``AMPTrainer``, ``hooks``,
``default_writers``, ``create_ddp_model``, ``inference_on_dataset``), plus what lt_det's yaml path
guarantees: every input is checked before anything is written (one line ``lt_det: error: ...``,
exit status 2), one run per output folder (:mod:`lt_det.engine.lock`), an OUTPUT_DIR holding a run
is refused unless ``--resume`` / ``--overwrite-output``, loads go through
:class:`~lt_det.checkpoint.LTCheckpointer` (``--resume`` and ``--eval-only`` must load every
parameter), the last evaluation is saved to ``eval_results.json``, and ``--eval-only`` writes into
``train.output_dir/inference`` (the training run's own files stay as they are).

A LazyConfig has detectron2's root keys: ``model``; ``dataloader.train``, ``dataloader.test`` and
``dataloader.evaluator``; ``optimizer`` (its ``params.model`` is set to the built model);
``lr_multiplier`` (an fvcore ``ParamScheduler``); ``train`` (detectron2's
``configs/common/train.py``: ``output_dir``, ``init_checkpoint``, ``max_iter``, ``amp.enabled``,
``ddp``, ``checkpointer``, ``eval_period``, ``log_period``, ``device``, optional ``seed``). lt_det
reads one more, optional: ``datasets.lvis_format``, a list of ``[name, json_file, image_root]``
registered with :func:`lt_det.data.register_lvis_format` before anything is built (the yaml path's
``DATASETS.LVIS_FORMAT``). detectron2's own tool ignores that key; register such datasets in the
process that runs it. Overrides are ``path.key=value`` (detectron2's
``LazyConfig.apply_overrides``); a key that the config does not have and that its node does not
take is refused (``+path.key=value`` adds one on purpose). See docs/lazyconfig.md.
"""
import copy
import difflib
import inspect
import logging
import os
from typing import Any, Dict, List, Optional, Sequence

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import AMPTrainer, SimpleTrainer, default_setup, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from omegaconf import DictConfig, ListConfig, OmegaConf

from ..data import register_lvis_format
from ..errors import LTDetError
from ..evaluation import save_eval_results
from ..checkpoint import LTCheckpointer
from .defaults import check_output_dir
from .lock import lock_output_dir, release_output_dir
from .log_setup import setup_lt_logging
from .trainer import create_ddp_model_any_device, reported_errors_kept_out_of_log

__all__ = [
    "is_lazy_config",
    "load_lazy_config",
    "check_lazy_config",
    "register_lazy_datasets",
    "check_lazy_launch",
    "lazy_eval_dir",
    "do_test",
    "do_train",
    "lazy_main",
]

logger = logging.getLogger(__name__)

_ABSENT = object()  # OmegaConf.select's default: tells a missing key from a None value

#: Root keys a LazyConfig needs for training / for ``--eval-only``.
TRAIN_KEYS = ("model", "dataloader.train", "optimizer", "lr_multiplier", "train.output_dir",
              "train.max_iter", "train.device")
EVAL_KEYS = ("model", "dataloader.test", "dataloader.evaluator", "train.output_dir",
             "train.init_checkpoint", "train.device")


def is_lazy_config(path: str) -> bool:
    """Whether ``path`` names a LazyConfig (a ``.py`` file) rather than a yaml config."""
    return str(path).endswith(".py")


def _target(node: Any) -> Any:
    """The callable a LazyCall node (``{"_target_": ...}``) names, or None."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return None
    target = node._target_
    if isinstance(target, str):
        from detectron2.utils.registry import locate

        try:
            target = locate(target)
        except Exception:  # noqa: BLE001 - an unresolvable name: let instantiate report it
            return None
    return target


def _takes_argument(target: Any, name: str) -> bool:
    """Whether callable ``target`` accepts keyword ``name`` (True when it cannot be told)."""
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind is p.VAR_KEYWORD or p.name == name for p in params)


def _check_override_key(cfg: DictConfig, key: str) -> None:
    """An override may set an existing key, an argument its LazyCall node takes, or
    ``datasets.lvis_format``; anything else would be a silent no-op (a typo)."""
    if key == "datasets.lvis_format" or OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT:
        return
    parts = key.split(".")
    # The first component that does not exist, and the node that should hold it.
    depth = next(i for i in range(len(parts)) if OmegaConf.select(
        cfg, ".".join(parts[: i + 1]), default=_ABSENT) is _ABSENT)
    parent_key, name = ".".join(parts[:depth]), parts[depth]
    parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
    target = _target(parent)
    if depth == len(parts) - 1 and target is not None and _takes_argument(target, name):
        return
    names = [str(k) for k in parent.keys()] if isinstance(parent, DictConfig) else []
    if target is not None:
        names += [n for n in _parameter_names(target) if n != "self"]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    prefix = parent_key + "." if parent_key else ""
    hint = f" Did you mean {prefix}{close[0]}?" if close else ""
    where = f"'{parent_key}'" if parent_key else "the config's root"
    takes = f" and {getattr(target, '__name__', target)} takes no such argument" if target else ""
    raise LTDetError(f"override '{key}': {where} has no key '{name}'{takes}.{hint}")


def _parameter_names(target: Any) -> List[str]:
    try:
        return list(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return []


def load_lazy_config(path: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Load a LazyConfig and apply ``path.key=value`` overrides.

    Raises:
        LTDetError: a missing file, a file that does not load (the error's type and message),
            an override that is not ``key=value`` or names a key the config does not take.
    """
    if not os.path.isfile(path):
        raise LTDetError(f"config file not found: '{path}'.")
    try:
        cfg = LazyConfig.load(path)
    except Exception as e:  # noqa: BLE001 - user code: report what it raised, in one line
        where = f" (line {e.lineno})" if isinstance(e, SyntaxError) and e.lineno else ""
        raise LTDetError(
            f"LazyConfig '{path}' does not load{where}: {type(e).__name__}: {e}".rstrip()
        ) from None
    overrides = list(overrides or [])
    for o in overrides:
        key, eq, _ = o.partition("=")
        if o.startswith("--"):
            raise LTDetError(
                f"'{o}' comes after the config's overrides; options (--eval-only, --resume, "
                "--num-gpus, ...) go before them."
            )
        if not eq or not key or " " in key:
            raise LTDetError(
                f"override '{o}': a LazyConfig takes path.key=value overrides (e.g. "
                "train.device=cpu train.max_iter=100), not yaml-style KEY VALUE pairs."
            )
        if not key.startswith("+"):  # "+key=value" adds a key on purpose (hydra's grammar)
            _check_override_key(cfg, key.lstrip("~"))
    try:
        LazyConfig.apply_overrides(cfg, overrides)
    except Exception as e:  # noqa: BLE001 - hydra's parser and omegaconf raise many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LTDetError(f"LazyConfig overrides {overrides}: {first}") from None
    return cfg


def check_lazy_config(cfg: DictConfig, *, eval_only: bool = False) -> None:
    """The keys training (or ``--eval-only``) reads must be present.

    Raises:
        LTDetError: naming the missing keys.
    """
    missing = [
        k for k in (EVAL_KEYS if eval_only else TRAIN_KEYS)
        if OmegaConf.select(cfg, k, default=_ABSENT) is _ABSENT
    ]
    if missing:
        raise LTDetError(
            f"the LazyConfig has no {', '.join(missing)}, which "
            f"{'--eval-only' if eval_only else 'training'} reads (detectron2's layout: model, "
            "dataloader.{train,test,evaluator}, optimizer, lr_multiplier, train; see "
            "configs/lazy/)."
        )
    device = str(cfg.train.device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LTDetError(
            f"train.device is '{device}' but this machine has no CUDA device; add the override "
            "train.device=cpu."
        )


def check_lazy_launch(args) -> None:
    """The config alone (file, overrides, keys, device), in the launching process before any
    worker starts: a config that cannot run is one line, not one per process."""
    check_lazy_config(load_lazy_config(args.config_file, args.opts), eval_only=args.eval_only)


def register_lazy_datasets(cfg: DictConfig) -> List[str]:
    """Register every ``[name, json_file, image_root]`` of ``datasets.lvis_format``; the names."""
    entries = OmegaConf.select(cfg, "datasets.lvis_format", default=None) or []
    names = []
    for entry in entries:
        if not isinstance(entry, (list, tuple, ListConfig)) or len(entry) != 3:
            raise LTDetError(
                f"datasets.lvis_format entries are [name, json_file, image_root]; got {entry}."
            )
        register_lvis_format(*[str(x) for x in entry])
        names.append(str(entry[0]))
    return names


def _dataset_names(cfg: DictConfig, key: str) -> List[str]:
    names = OmegaConf.select(cfg, key, default=None)
    if names is None:
        return []
    return [str(names)] if isinstance(names, str) else [str(n) for n in names]


def _roi_heads(cfg: DictConfig) -> Optional[DictConfig]:
    node = OmegaConf.select(cfg, "model.roi_heads", default=None)
    return node if isinstance(node, DictConfig) else None


def check_lazy_datasets(cfg: DictConfig, *, eval_only: bool = False) -> None:
    """The datasets of ``dataloader.{train,test}.dataset.names`` are registered and their json
    files exist, and ``model.roi_heads.num_classes`` is the training set's class count.

    Raises:
        LTDetError: naming the key, the dataset and what to do.
    """
    keys = ["dataloader.test.dataset.names"]
    if not eval_only:
        keys.append("dataloader.train.dataset.names")
    registered = set(DatasetCatalog.list())
    for key in keys:
        for name in _dataset_names(cfg, key):
            if name not in registered:
                raise LTDetError(
                    f"{key}: dataset '{name}' is not registered. Register own LVIS-format data "
                    "with the override datasets.lvis_format=[[name,json_file,image_root]] (or "
                    "lt_det.data.register_lvis_format); builtin names are detectron2's "
                    "(e.g. lvis_v1_train)."
                )
            json_file = MetadataCatalog.get(name).get("json_file", None)
            if json_file and "://" not in json_file and not os.path.isfile(json_file):
                raise LTDetError(
                    f"{key}: dataset '{name}' reads '{json_file}', which does not exist. Set "
                    "DETECTRON2_DATASETS to the folder that holds detectron2's builtin datasets "
                    "(lvis/, coco/), or register your own files with \"datasets.lvis_format="
                    "[[my_train,train.json,images],[my_val,val.json,images]]\" and name them in "
                    "dataloader.train.dataset.names / dataloader.test.dataset.names "
                    "(docs/lazyconfig.md)."
                )
    heads = _roi_heads(cfg)
    train = _dataset_names(cfg, "dataloader.train.dataset.names")
    if heads is None or "num_classes" not in heads or not train or eval_only:
        return
    classes = MetadataCatalog.get(train[0]).get("thing_classes", None)
    if classes is not None and int(heads.num_classes) != len(classes):
        raise LTDetError(
            f"model.roi_heads.num_classes is {heads.num_classes} but the training set "
            f"'{train[0]}' has {len(classes)} classes; add the override "
            f"model.roi_heads.num_classes={len(classes)}."
        )


def lazy_eval_dir(cfg: DictConfig) -> str:
    """Where ``--eval-only`` writes its config.yaml, log.txt and eval_results.json."""
    return os.path.join(cfg.train.output_dir, "inference")


def do_test(cfg: DictConfig, model: torch.nn.Module) -> Optional[Dict]:
    """Evaluate ``model`` on ``dataloader.test`` with ``dataloader.evaluator`` (None without an
    evaluator), as detectron2's tool."""
    if "evaluator" not in cfg.dataloader:
        return None
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    if comm.is_main_process():
        print_csv_format(results)
    return results


def do_train(
    cfg: DictConfig, model: Optional[torch.nn.Module] = None, *, resume: bool = False
) -> Optional[Dict]:
    """Train as detectron2's ``lazyconfig_train_net.do_train`` (same hooks, in the same order),
    loading through :class:`LTCheckpointer`; returns the last evaluation's results (also saved to
    ``train.output_dir/eval_results.json``).

    Args:
        cfg: the LazyConfig.
        model: ``instantiate(cfg.model)`` when already built (:func:`lazy_main` builds it before
            anything is written); None builds it here.
        resume: continue from ``train.output_dir``'s last checkpoint when there is one.
    """
    if model is None:
        model = instantiate(cfg.model)
    logger.info(f"Model:\n{model}")
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model_any_device(model, **cfg.train.get("ddp", {}))
    trainer = (AMPTrainer if cfg.train.get("amp", {}).get("enabled", False) else SimpleTrainer)(
        model, train_loader, optimizer
    )
    out = cfg.train.output_dir
    # must_load None: a new run from pretrained weights follows detectron2's fine-tuning rule.
    checkpointer = LTCheckpointer(model, out, must_load=None, trainer=trainer)
    last: Dict[str, Any] = {}

    def test_and_keep():
        last["results"] = do_test(cfg, model)
        return last["results"]

    main = comm.is_main_process()
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if main else None,
        hooks.EvalHook(cfg.train.get("eval_period", 0), test_and_keep),
        hooks.PeriodicWriter(
            default_writers(out, cfg.train.max_iter), period=cfg.train.get("log_period", 20)
        ) if main else None,
    ])
    resuming = resume and checkpointer.has_checkpoint()
    if resuming:
        checkpointer.must_load = "all"  # the run's own checkpoint: everything must fit
    checkpointer.resume_or_load(cfg.train.get("init_checkpoint", ""), resume=resume)
    try:  # a checkpoint holds the iteration that just finished
        with reported_errors_kept_out_of_log():
            trainer.train(trainer.iter + 1 if resuming else 0, cfg.train.max_iter)
    except FloatingPointError as e:  # detectron2's check of the losses
        detail = str(e).split("\n", 1)[-1].strip()
        raise LTDetError(
            f"the training loss became NaN or infinite at iteration {trainer.iter} ({detail}); "
            "training stopped. Lower optimizer.lr or lengthen lr_multiplier.warmup_length, or "
            "check the data, the class prior and the starting weights (train.init_checkpoint, "
            "model.stage1_weights)."
        ) from None
    save_eval_results(out, last.get("results"))
    return last.get("results")


def _check(cfg: DictConfig, args) -> None:
    """Every check that needs no model, before anything is written (datasets get registered)."""
    eval_only = bool(args.eval_only)
    check_lazy_config(cfg, eval_only=eval_only)
    register_lazy_datasets(cfg)
    check_lazy_datasets(cfg, eval_only=eval_only)
    if eval_only:
        weights = str(cfg.train.get("init_checkpoint", "") or "")
        if not weights or ("://" not in weights and not os.path.isfile(weights)):
            raise LTDetError(
                f"--eval-only evaluates train.init_checkpoint, which is {weights!r}"
                f"{'' if not weights else ' and does not exist'}; add the override "
                "train.init_checkpoint=<model_final.pth>."
            )
    _check_run_folder(cfg, args)


def _check_run_folder(cfg: DictConfig, args) -> None:
    check_output_dir(
        str(cfg.train.output_dir),
        resume=bool(args.resume or args.eval_only),
        overwrite=getattr(args, "overwrite_output", False),
    )


def _take_folder(cfg: DictConfig, args) -> str:
    """Lock the folder this run writes to, then detectron2's ``default_setup`` and lt_det's
    logging; the folder."""
    write_dir = lazy_eval_dir(cfg) if args.eval_only else str(cfg.train.output_dir)
    if comm.is_main_process():
        lock_output_dir(write_dir)
        _check_run_folder(cfg, args)  # again under the lock: a run that finished meanwhile
    setup_cfg = cfg
    if args.eval_only:  # config.yaml and log.txt go to the inference folder
        setup_cfg = copy.deepcopy(cfg)
        setup_cfg.train.output_dir = write_dir
    default_setup(setup_cfg, args)
    setup_lt_logging(write_dir)
    return write_dir


def lazy_main(args) -> Optional[Dict]:
    """``tools/train_net.py`` for a ``.py`` ``--config-file`` (``args``: its parsed arguments,
    ``args.opts`` the ``path.key=value`` overrides). Returns the evaluation results.

    The config, the datasets, the run folder and the model (its arguments: lt_det's predictor
    refuses detectron2's loss flags, a stage-2 model loads its stage-1 weights) are checked
    before anything is written.
    """
    cfg = load_lazy_config(args.config_file, args.opts)
    _check(cfg, args)
    model = instantiate(cfg.model)
    write_dir = _take_folder(cfg, args)
    try:
        if not args.eval_only:
            return do_train(cfg, model, resume=args.resume)
        model.to(cfg.train.device)
        model = create_ddp_model_any_device(model)
        LTCheckpointer(model, must_load="all").load(cfg.train.init_checkpoint)
        results = do_test(cfg, model)
        save_eval_results(write_dir, results)
        return results
    finally:
        release_output_dir(write_dir)
