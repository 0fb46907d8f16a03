"""LTTrainer: detectron2's DefaultTrainer with lt_det's data loading, evaluation and model hooks.

DefaultTrainer's parts are built through its ``build_*`` hooks; the training loop is detectron2's.
On top of DefaultTrainer (see docs/robustness.md):

- every load goes through one guard and saves are atomic (:class:`LTCheckpointer`);
- ``--resume`` continues the sampler stream after the images already consumed and, with
  ``SEED >= 0``, every iteration's random state is a function of (SEED, iteration, rank) (the
  loader is wrapped in :class:`SeededBatches`), so a resumed run repeats the uninterrupted one
  (:mod:`lt_det.engine.resume`);
- a NaN/inf loss stops training with an :class:`LTDetError` naming the iteration and the newest
  checkpoint verified to continue training (:func:`checkpoint_health`), or saying that none
  does and to start anew; bad input met during training is reported without a training
  traceback;
- a metrics / log file that cannot be written (disk full) stops training with a checkpoint (if
  the disk takes it) and one line, instead of OSError tracebacks;
- SIGTERM / SIGINT save a checkpoint after the current step and stop (:class:`StopOnSignal`);
- a resumed run trains at the config's SOLVER.BASE_LR.
"""
import logging
import os
import re
import threading
import weakref
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional

import torch
import torch.distributed as dist
from detectron2.data import (
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data.detection_utils import SizeMismatchError
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
)
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data.samplers import build_train_sampler
from ..decouple import (
    apply_decoupling,
    build_decoupled_trainer,
    check_decoupled_training,
    stage1_load_guard,
)
from ..errors import LTDetError
from ..checkpoint import LTCheckpointer, remove_stale_temporaries, write_failure_cause
from .launch import is_peer_lost
from .defaults import check_config_values, check_weights_file
from .evaluators import EVALUATOR_BUILDERS
from .init_check import warn_frozen_bn_at_random_init
from .log_setup import log_class_summary, log_write_failure
from .resume import ResumableSampler, SeededBatches, StreamCheckpoint
from .signals import StopOnSignal

__all__ = [
    "LTTrainer",
    "EVALUATOR_BUILDERS",
    "ReportUnreadableImages",
    "reported_errors_kept_out_of_log",
]


class _DropUserErrors(logging.Filter):
    """Keep detectron2's "Exception during training" traceback out of the log for bad input
    and for a lost peer process: the entry point (``launch``) reports them as one message."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, LTDetError) or (exc is not None and is_peer_lost(exc)))


@contextmanager
def reported_errors_kept_out_of_log() -> Iterator[None]:
    """While training: detectron2's training loop logs the traceback of every exception it
    re-raises ("Exception during training"); an :class:`LTDetError` or a lost peer process is
    reported by the entry point as one line instead, so its traceback is kept out of the log.
    The filter is on detectron2's ``detectron2.engine.train_loop`` logger for the duration only.
    """
    log = logging.getLogger("detectron2.engine.train_loop")
    drop = _DropUserErrors()
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


def create_ddp_model_any_device(model, **kwargs):
    """detectron2's ``create_ddp_model``, also for a CPU model (gloo).

    detectron2 passes ``device_ids=[local_rank]``, which DistributedDataParallel refuses for a
    module on the CPU; a CPU model gets ``device_ids=None`` instead.
    """
    if comm.get_world_size() > 1 and next(model.parameters()).device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return create_ddp_model(model, **kwargs)


class ReportUnreadableImages:
    """A dataset mapper that turns an image it cannot read (or whose size is not the one its record
    gives) into an :class:`LTDetError` naming the file (detectron2's mapper raises deep inside
    PIL/iopath, without the dataset record).

    Args:
        mapper: the mapper to wrap (e.g. ``DatasetMapper(cfg, is_train=True)``).
    """

    def __init__(self, mapper: Callable[[Dict], Dict]):
        self.mapper = mapper

    def __call__(self, dataset_dict: Dict) -> Dict:
        try:
            return self.mapper(dataset_dict)
        except OSError as e:  # missing, unreadable, truncated or not an image (PIL)
            reason = e.strerror if isinstance(e, FileNotFoundError) else f"{type(e).__name__}: {e}"
            raise LTDetError(
                f"cannot read image '{dataset_dict.get('file_name')}' (image id "
                f"{dataset_dict.get('image_id')}): {reason}. Restore the file, or fix the image "
                "folder / remove the image's record in the dataset json."
            ) from None
        except SizeMismatchError as e:
            raise LTDetError(
                f"image id {dataset_dict.get('image_id')} is not the size its dataset record "
                f"gives: {e} (sizes as (width, height)). Fix 'width'/'height' of the image in the "
                "dataset json, or the image."
            ) from None


def _strip_worker_traceback(message: str) -> str:
    """A data-loader worker re-raises our error with its traceback in the message; keep the
    error's own line."""
    if "Original Traceback" not in message:
        return message
    last = message.rstrip().splitlines()[-1]
    return last.split("LTDetError: ", 1)[-1]


#: The learning rate of the health check's step, as a fraction of SOLVER.BASE_LR (the NaN
#: advice is to lower it).
HEALTH_CHECK_LR_FACTOR = 0.1


def _checkpoints_newest_first(folder: str) -> List[str]:
    """``model_<iteration>.pth`` files of ``folder``, highest iteration first."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    found = [(int(m.group(1)), n) for n in names for m in [_CHECKPOINT_NAME.fullmatch(n)] if m]
    return [os.path.join(folder, n) for _, n in sorted(found, reverse=True)]


_CHECKPOINT_NAME = re.compile(r"model_(\d+)\.pth")


def _all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors
               if torch.is_tensor(t) and t.is_floating_point())


def checkpoint_health(model: torch.nn.Module, path: str, batch, lr: float) -> str:
    """Why the weights in ``path`` cannot continue training ("" if they can).

    Loaded into ``model`` (a model built from the run's config, training mode), a checkpoint is
    healthy when its weights are finite, the loss on ``batch`` (the batch whose loss diverged)
    and its gradients are finite, and the loss stays finite after one plain gradient step of
    learning rate ``lr`` on that batch. ``model`` is changed.
    """
    try:
        LTCheckpointer(model, must_load="all").load(path)
    except LTDetError as e:
        return f"it cannot be loaded ({str(e)[:120]})"
    if not _all_finite(model.state_dict().values()):
        return "its weights hold NaN/inf"
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    try:  # detectron2 raises FloatingPointError where its proposals hold NaN/inf
        loss = sum(model(batch).values())
        if not bool(torch.isfinite(loss)):
            return f"its loss on that batch is {float(loss)}"
        loss.backward()
        if not _all_finite(p.grad for p in params if p.grad is not None):
            return "its gradients on that batch hold NaN/inf"
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p.sub_(lr * p.grad)
            after = sum(model(batch).values())
    except FloatingPointError:
        return "its forward pass on that batch gives NaN/inf"
    if not bool(torch.isfinite(after)):
        return f"one step at learning rate {lr:g} makes its loss {float(after)}"
    return ""


def _detectron2_can_wrap(cfg) -> bool:
    """Whether ``DefaultTrainer.__init__`` can build this run: its ``create_ddp_model`` passes
    ``device_ids=[local rank]``, which DistributedDataParallel refuses for a CPU model, so a CPU
    model in several processes (gloo) is the one case it cannot wrap (detectron2 0.6 and later)."""
    return comm.get_world_size() == 1 or torch.device(cfg.MODEL.DEVICE).type != "cpu"


class LTTrainer(DefaultTrainer):
    """DefaultTrainer + lt_det samplers (``DATALOADER.SAMPLER_TRAIN``) + LVIS evaluation.

    detectron2's constructor builds the parts through the ``build_*`` hooks; afterwards the
    sampler's stream state is registered with the checkpointer and, with
    ``MODEL.DECOUPLE.METHOD != "none"`` (stage 2, see lt_det/decouple), the inner trainer becomes
    the classifier-only :class:`~lt_det.decouple.DecoupledTrainer` (the model is frozen and
    adapted when built, stage-1 weights are checked and re-initialised after loading).
    """

    def __init__(self, cfg):
        check_config_values(cfg)  # fail before building anything
        check_decoupled_training(cfg)
        self._stop_on_signal = StopOnSignal()
        self._write_failure: Optional[OSError] = None
        self._thread_write_error: Optional[OSError] = None
        if _detectron2_can_wrap(cfg):
            super().__init__(cfg)
        else:
            self._init_cpu_processes(cfg)
        sampler = self.train_sampler
        if sampler is not None:  # the sampler's stream state goes into every checkpoint
            self.checkpointer.checkpointables["train_sampler"] = StreamCheckpoint(sampler)
        # Stage 2: the inner trainer's run_step is the classifier-only step (it takes over the
        # model, loader and optimizer the hooks were built with).
        decoupled = build_decoupled_trainer(cfg, self._trainer, sampler)
        if decoupled is not None:
            self._trainer = decoupled
            if decoupled.meta_learner is not None:  # saved with every checkpoint
                self.checkpointer.checkpointables["meta_sampler"] = decoupled.meta_learner

    def _init_cpu_processes(self, cfg) -> None:
        """``DefaultTrainer.__init__`` for a CPU model in several processes, which detectron2
        cannot wrap (:func:`_detectron2_can_wrap`): the same steps through the same hooks, the
        model wrapped by DistributedDataParallel without device ids."""
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model_any_device(model, broadcast_buffers=False)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR,
                                                  trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        """detectron2's hooks, with lt_det's checkpointer (:class:`LTCheckpointer`: the load
        guard, atomic saves; detectron2 builds its own just before, with no hook of its own) and
        :class:`~lt_det.engine.signals.StopOnSignal` last, so that a signal stop saves after the
        scheduler stepped and the metrics were written."""
        self.checkpointer = LTCheckpointer.from_trainer(self.checkpointer, self)
        return super().build_hooks() + [self._stop_on_signal]

    def train(self):
        """detectron2's training loop; SIGTERM / SIGINT save a checkpoint and stop it
        (:class:`~lt_det.engine.signals.StopOnSignal`); an error reported as one line keeps its
        traceback out of the log (:func:`reported_errors_kept_out_of_log`)."""
        self._stop_on_signal.install()
        previous_hook = threading.excepthook
        threading.excepthook = self._writer_thread_failed
        try:
            with reported_errors_kept_out_of_log():
                return super().train()
        finally:
            threading.excepthook = previous_hook
            self._stop_on_signal.uninstall()

    def _writer_thread_failed(self, args) -> None:
        """``threading.excepthook`` while training: a writer thread (tensorboard's event file
        writer) that dies on an OSError (disk full) is recorded for :meth:`after_step`, which
        stops training with one line; other thread errors keep Python's report."""
        if issubclass(args.exc_type, OSError) and isinstance(args.exc_value, OSError):
            if self._thread_write_error is None:
                self._thread_write_error = args.exc_value
            return
        threading.__excepthook__(args)

    @property
    def train_sampler(self) -> Optional[ResumableSampler]:
        """The resumable wrapper around the training sampler :meth:`build_train_loader` built
        (None for a custom loader)."""
        return getattr(self.data_loader, "train_sampler", None)

    @classmethod
    def build_model(cls, cfg):
        return apply_decoupling(super().build_model(cfg), cfg)

    def resume_or_load(self, resume=True):
        resuming = resume and self.checkpointer.has_checkpoint()
        # The load guard: a resumed run must get back every parameter; a new stage-1 run
        # fine-tunes from MODEL.WEIGHTS (detectron2's rule: mismatched layers stay initialised);
        # stage 2 requires the frozen parameters (stage1_load_guard).
        self.checkpointer.must_load = "all" if resuming else None
        if comm.is_main_process() and self.cfg.OUTPUT_DIR:
            # this process holds the folder's lock: no other writer's file is in progress there
            remove_stale_temporaries(self.cfg.OUTPUT_DIR)
        config_lrs = list(self.scheduler.base_lrs)
        if self.cfg.MODEL.DECOUPLE.METHOD == "none":
            if not resuming:
                check_weights_file(self.cfg.MODEL.WEIGHTS)
            super().resume_or_load(resume=resume)
        else:
            with stage1_load_guard(self.cfg, self.model, self.checkpointer, resume):
                super().resume_or_load(resume=resume)
        if resuming:
            self._apply_config_lrs(config_lrs)
        warn_frozen_bn_at_random_init(self.model, self.cfg.MODEL.WEIGHTS)
        if comm.get_world_size() > 1:
            # Parameters re-initialised after loading (cRT) drew from each rank's own generator
            # (seeded SEED + rank); DDP only synchronised the model when it was wrapped.
            # Parameters and buffers: a module's extra state (ACSL's generator, on the CPU)
            # is a copy in state_dict(), and not for the collective's device.
            for tensor in [*self.model.parameters(), *self.model.buffers()]:
                dist.broadcast(tensor.data, src=0)
        self._continue_sampler_stream()

    def _apply_config_lrs(self, config_lrs) -> None:
        """After a resume, train at the config's SOLVER.BASE_LR (and its per-group factors).

        The loaded scheduler and optimizer states carry the learning rates of the run that
        wrote the checkpoint; without this, a resume with a lowered BASE_LR (the usual answer to
        a diverged run) would keep training at the old one while config.yaml records the new.
        """
        loaded = list(self.scheduler.base_lrs)
        if loaded == config_lrs:
            return
        self.scheduler.base_lrs = list(config_lrs)
        for group, base in zip(self.optimizer.param_groups, config_lrs):
            group["initial_lr"] = base
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_lr()):
            group["lr"] = lr
        logging.getLogger(__name__).warning(
            f"The checkpoint was trained with base learning rates {sorted(set(loaded))}; this "
            f"config's are {sorted(set(config_lrs))} (SOLVER.BASE_LR {self.cfg.SOLVER.BASE_LR}). "
            "Training continues at the config's."
        )

    def _continue_sampler_stream(self) -> None:
        """After a resume, start the sampler after the images the first start_iter iterations
        consumed (per rank), and restart the loader so that it reads the new start."""
        if self.start_iter == 0:
            return
        sampler = self.train_sampler
        if sampler is not None:
            per_rank = self.cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
            stream = self.checkpointer.checkpointables.get("train_sampler")
            sampler.set_start(self.start_iter * per_rank, stream.loaded if stream else None)
        if isinstance(self.data_loader, SeededBatches):
            self.data_loader.restart(self.start_iter)

    def run_step(self):
        try:
            super().run_step()
        except FloatingPointError as e:
            raise LTDetError(self._nan_message(e)) from None
        except LTDetError as e:
            raise LTDetError(_strip_worker_traceback(str(e))) from None

    # ------------------------------------------------------------------ writes that fail
    def after_step(self):
        """detectron2's hooks; a run file (metrics.json, log.txt, events) that cannot be written
        (disk full, ...) stops training with a checkpoint and one line (:meth:`_write_failed`)."""
        try:
            super().after_step()
        except OSError as e:
            raise self._write_failed(getattr(e, "filename", None), e) from None
        failure = log_write_failure(self.cfg.OUTPUT_DIR)
        if failure is None and self._thread_write_error is not None:
            failure = (self._thread_write_error.filename, self._thread_write_error)
        if failure is not None:
            raise self._write_failed(*failure)

    def after_train(self):
        try:
            super().after_train()
        except OSError as e:
            if self._write_failure is None:  # else: already reported; the same disk again
                raise self._write_failed(getattr(e, "filename", None), e, save=False) from None

    def _write_failed(self, path: Optional[str], error: OSError, save: bool = True) -> LTDetError:
        """The one line of a run whose metrics / log files cannot be written: the file and the
        cause, and the checkpoint saved for this iteration (the main process tries; a full disk
        may refuse it too) or the one ``--resume`` loads."""
        self._write_failure = error
        what = f"'{path}'" if path else f"the run's metrics and logs in '{self.cfg.OUTPUT_DIR}'"
        cause = write_failure_cause(path or os.path.join(self.cfg.OUTPUT_DIR, "x"), error)
        when = (f"at iteration {self.iter}" if self.iter < self.max_iter
                else "after the training iterations")
        head = f"cannot write {what} {when} ({cause}); training stopped."
        saved = None
        if save and self.iter < self.max_iter and comm.is_main_process():
            name = f"model_{self.iter:07d}"
            try:
                self.checkpointer.save(name, iteration=self.iter)
                saved = os.path.join(self.checkpointer.save_dir, f"{name}.pth")
            except LTDetError:
                pass  # the disk is full for the checkpoint too
        if saved is not None:
            where = f"Checkpoint '{saved}' was saved: free disk space, then --resume continues " \
                    "from it."
        elif self.checkpointer.has_checkpoint():
            where = (f"{'No new checkpoint could be saved; ' if save else ''}--resume continues "
                     f"from '{self.checkpointer.get_checkpoint_file()}' once disk space is free.")
        else:
            where = "No checkpoint could be saved: free disk space and start anew."
        return LTDetError(f"{head} {where}")

    def _nan_message(self, error: FloatingPointError) -> str:
        detail = str(error).split("\n", 1)[-1].strip()
        head = (
            f"the training loss became NaN or infinite at iteration {self.iter} ({detail}); "
            "training stopped."
        )
        fix = ("lower SOLVER.BASE_LR (a resumed run trains at the BASE_LR given then) or raise "
               "SOLVER.WARMUP_ITERS, or check the data and the class prior")
        anew = (f"Start anew (--overwrite-output, or another OUTPUT_DIR) after you {fix}.")
        files = _checkpoints_newest_first(self.cfg.OUTPUT_DIR)
        if not files:
            return f"{head} No checkpoint was written yet (SOLVER.CHECKPOINT_PERIOD). {anew}"
        healthy, sick = self._healthy_checkpoint(files)
        last = (self.checkpointer.get_checkpoint_file()
                if self.checkpointer.has_checkpoint() else None)
        checked = "; ".join(f"{os.path.basename(p)}: {why}" for p, why in sick[:4])
        checked += "; ..." if len(sick) > 4 else ""
        if healthy is None:
            return (f"{head} No checkpoint of this run can continue it ({checked}). {anew}")
        lr = HEALTH_CHECK_LR_FACTOR * self.cfg.SOLVER.BASE_LR
        verified = (
            f"'{healthy}' is healthy (its weights are finite, and so are its loss and gradients "
            f"on the batch that diverged and its loss after one step at learning rate {lr:g} = "
            f"SOLVER.BASE_LR x {HEALTH_CHECK_LR_FACTOR:g})"
        )
        if last is not None and os.path.abspath(last) == os.path.abspath(healthy):
            return (f"{head} {verified}; it is the one --resume loads (named by "
                    f"last_checkpoint). Before continuing with --resume, {fix}.")
        pointer = os.path.join(self.cfg.OUTPUT_DIR, "last_checkpoint")
        newer = f" Newer checkpoints cannot continue the run ({checked})." if sick else ""
        return (
            f"{head} {verified}.{newer} To continue from it, point last_checkpoint at it "
            f"(echo {os.path.basename(healthy)} > {pointer}), {fix}, then --resume."
        )

    def _healthy_checkpoint(self, files: List[str]):
        """The newest of ``files`` that passes :func:`checkpoint_health` (None if none does) and
        the (file, reason) of those that failed before it. The check runs on a model built
        anew from the config (the training model holds the diverged weights), on the batch of
        the failed iteration."""
        from detectron2.modeling import build_model

        batch = getattr(self.data_loader, "last_batch", None)
        if batch is None:
            batch = next(iter(self.data_loader))
        lr = HEALTH_CHECK_LR_FACTOR * self.cfg.SOLVER.BASE_LR
        log = logging.getLogger(__name__)
        model = apply_decoupling(build_model(self.cfg), self.cfg)
        sick = []
        for path in files:
            log.info(f"NaN stop: checking whether '{path}' can continue training")
            why = checkpoint_health(model, path, batch, lr)
            if not why:
                return path, sick
            sick.append((path, why))
        return None, sick

    @classmethod
    def build_train_loader(cls, cfg):
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
        if meta.get("thing_classes", None) is not None:  # bounded table for many classes
            log_class_summary(dataset, meta.thing_classes, meta.get("class_frequency", None))
        sampler = ResumableSampler(build_train_sampler(cfg, dataset))
        mapper = ReportUnreadableImages(DatasetMapper(cfg, True))
        loader = build_detection_train_loader(cfg, mapper=mapper, dataset=dataset, sampler=sampler)
        return SeededBatches(loader, cfg.SEED if cfg.SEED >= 0 else None, sampler=sampler)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        mapper = ReportUnreadableImages(DatasetMapper(cfg, False))
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

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
