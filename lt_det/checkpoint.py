"""The checkpointer of every lt_det load and save: honest loads, atomic saves, clear failures.

:class:`LTCheckpointer` is detectron2's ``DetectionCheckpointer`` with

- **one load guard** for every load (training, ``--resume``, ``--eval-only``, stage 2): after a
  load, the parameters named by :attr:`LTCheckpointer.must_load` must all have been loaded
  (present in the file, same shape), else :class:`~lt_det.errors.LTDetError` names the file, the
  parameters and what to do. ``"all"`` (evaluation, resume): every parameter and persistent
  buffer; a list of names (stage 2: the frozen parameters); ``None`` (a new stage-1 run from a
  pretrained model): detectron2's fine-tuning rule (mismatched layers stay initialised, with
  detectron2's warning).
- **one class prior**: the config's. A loaded file's ``class_prior`` buffers (a stage-1
  checkpoint trained with another prior) are not loaded; the log says so when they differ, so
  the loss and the Meta Sampler's inner loss read the same tensor. A file without them (a
  softmax stage 1) is not reported as missing them.
- **a file that names its path**: a missing file (also one named by ``last_checkpoint``), a
  truncated or corrupt ``.pth``, a text file as ``.pth``/``.pkl``, a torch file that is not a
  checkpoint (``[1, 2, 3]``, ``{"a": 1}``) give one message with the path.
- **atomic saves**: ``<name>.pth`` and ``last_checkpoint`` are written to a temporary file of this
  writer (``.<name>.pth.<pid>-<random>.tmp``) in the same folder, fsynced and moved into place
  with ``os.replace``, so the file is always the previous complete one or the new complete one.
  Files get mode 0o666 less the umask, as every other file of the run. A full disk or a
  read-only folder is reported as one line naming the file and the cause; the previous
  checkpoint is left intact. Temporary files a killed save left behind are removed when the next
  run takes the folder (:func:`remove_stale_temporaries`). Remote folders (``://``) keep
  fvcore's behaviour.
- **the optimizer state in every trainer checkpoint**: :meth:`LTCheckpointer.from_trainer`
  saves a ``DefaultTrainer``'s state with its inner trainer's (``"_trainer"``: optimizer
  momentum, AMP grad scaler) where detectron2 leaves it out (0.6), in the layout newer
  detectron2 writes itself, so checkpoints resume across the two.
"""
import logging
import os
import shutil
from typing import IO, Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer

from .errors import LTDetError
from .files import TMP_NAME, open_temporary

__all__ = [
    "LTCheckpointer",
    "AtomicDetectionCheckpointer",
    "TrainerWithInnerState",
    "atomic_torch_save",
    "remove_stale_temporaries",
    "write_failure_cause",
    "PRIOR_BUFFER",
]

logger = logging.getLogger(__name__)

# Name of the class-prior buffer of lt_det's loss modules (see lt_det/modeling/losses/base.py).
PRIOR_BUFFER = "class_prior"


def write_failure_cause(path: str, error: BaseException) -> str:
    """The cause of a failed write, for a message: the OS's words (``No space left on device``)
    and, when the disk is nearly full, its free space."""
    folder = os.path.dirname(os.path.abspath(path))
    if isinstance(error, OSError) and error.errno is not None:
        cause = os.strerror(error.errno)
    else:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        cause = f"{type(error).__name__}: {first[:200]}"
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if free is not None and free < 64 * 2**20:
        cause += f"; the disk holding it has {free / 2**20:.1f} MiB free"
    return cause


def _write_error(path: str, error: BaseException) -> LTDetError:
    """One line for a failed checkpoint write: the file, the cause, what to do."""
    return LTDetError(
        f"cannot write '{path}' ({write_failure_cause(path, error)}). Nothing older was lost: "
        "the previous checkpoint and last_checkpoint are intact. Free disk space or make the "
        "folder writable, then continue with --resume (or choose another OUTPUT_DIR)."
    )


def _atomic_write(path: str, write: Callable[[IO], None], binary: bool) -> None:
    """Write ``path`` through a temporary file of this writer, fsync it, and ``os.replace`` it
    onto ``path``: the file is always the previous complete one or the new complete one.

    Raises:
        LTDetError: the file cannot be written (disk full, read-only folder, ...).
    """
    tmp = None
    try:
        f, tmp = open_temporary(path, binary)
        with f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except (OSError, RuntimeError) as e:  # torch reports ENOSPC as a RuntimeError
        raise _write_error(path, e) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` through a temporary file of this writer and ``os.replace``.

    Raises:
        LTDetError: the file cannot be written (disk full, read-only folder, ...).
    """
    _atomic_write(path, lambda f: torch.save(obj, f), binary=True)


def _atomic_write_text(path: str, text: str) -> None:
    _atomic_write(path, lambda f: f.write(text), binary=False)


def remove_stale_temporaries(folder: str) -> List[str]:
    """Remove the temporary files that interrupted atomic writes (``kill -9`` during a save)
    left in ``folder``; returns their names. Call only while holding the folder's lock
    (:mod:`lt_det.engine.lock`): a live writer's temporary file would be removed too."""
    removed = []
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return removed
    for name in names:
        m = TMP_NAME.fullmatch(name)
        target = m.group("target") if m else ""
        if target.endswith(".pth") or target == "last_checkpoint":
            try:
                os.remove(os.path.join(folder, name))
                removed.append(name)
            except OSError:
                pass
    if removed:
        logger.warning(
            f"Removed {len(removed)} temporary file(s) an interrupted save left in '{folder}': "
            f"{removed[:5]}"
        )
    return removed


def _not_a_checkpoint(loaded: Any) -> str:
    """What makes a loaded file unusable as a checkpoint ("" if nothing): detectron2 wraps any
    object without a "model" key as ``{"model": obj}``; fvcore then needs a mapping of names to
    tensors (or numpy arrays)."""
    if not isinstance(loaded, dict):
        return f"it holds a {type(loaded).__name__}"
    model = loaded.get("model")
    if not isinstance(model, dict):
        return f"it holds a {type(model).__name__} where the weights (a dict) belong"
    if not model:
        return "it holds no weights"
    for key, value in model.items():
        if not isinstance(key, str):
            return f"it holds the key {key!r} ({type(key).__name__}) where parameter names belong"
        if not isinstance(value, (torch.Tensor, np.ndarray)):
            return (f"its entry '{key}' is a {type(value).__name__} ({str(value)[:40]}), not a "
                    "tensor")
    return ""


class LTCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with the load guard, the prior rule, path-naming load errors and
    atomic saves described in the module docstring.

    Args:
        model, save_dir, save_to_disk, **checkpointables: as ``DetectionCheckpointer``.
        must_load: "all" | sequence of parameter names | None (see the module docstring); may
            be changed before each load.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        save_dir: str = "",
        *,
        save_to_disk: Optional[bool] = None,
        must_load: Union[str, Sequence[str], None] = "all",
        **checkpointables: Any,
    ):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.must_load = must_load
        #: Names of the model entries the last load did not set (missing or of another shape).
        self.not_loaded: List[str] = []
        self._loading: Optional[str] = None

    @classmethod
    def from_trainer(cls, checkpointer: DetectionCheckpointer, trainer) -> "LTCheckpointer":
        """The LTCheckpointer that replaces the ``checkpointer`` a ``DefaultTrainer`` built: the
        same model, folder, and checkpointables. The trainer's checkpointable saves its inner
        trainer's state too; where detectron2's ``DefaultTrainer.state_dict`` has no
        ``"_trainer"`` entry (0.6: the optimizer momentum would be lost on ``--resume``) it is
        wrapped in :class:`TrainerWithInnerState` (a feature test, made here only).

        Args:
            checkpointer: the checkpointer ``DefaultTrainer.__init__`` built.
            trainer: the ``DefaultTrainer`` (with its inner trainer ``_trainer`` built).
        """
        checkpointables = dict(checkpointer.checkpointables)
        if "trainer" in checkpointables and "_trainer" not in trainer.state_dict():
            checkpointables["trainer"] = TrainerWithInnerState(checkpointables["trainer"])
        return cls(checkpointer.model, checkpointer.save_dir,
                   save_to_disk=checkpointer.save_to_disk, **checkpointables)

    # ------------------------------------------------------------------ load
    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        if not path:
            return super().load(path, checkpointables)
        if "://" not in path and not os.path.isfile(path):
            raise LTDetError(
                f"checkpoint '{path}' does not exist. Fix MODEL.WEIGHTS, or (for --resume) the "
                f"name in '{os.path.join(self.save_dir, 'last_checkpoint')}'."
            )
        self._loading = path
        self.not_loaded = []
        try:
            ret = super().load(path, checkpointables)
            self._guard(set(self.not_loaded))  # after detectron2's warnings are logged
            return ret
        finally:
            self._loading = None

    def _load_file(self, filename: str) -> Dict[str, Any]:
        try:
            loaded = super()._load_file(filename)
        except Exception as e:  # noqa: BLE001 - unpickling garbage fails in many ways
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise LTDetError(
                f"checkpoint '{filename}' cannot be read: it is truncated, corrupt or not a "
                f"checkpoint ({type(e).__name__}: {first}). Use a complete .pth written by "
                "lt_det/detectron2 (or a detectron2 .pkl), e.g. an earlier model_*.pth."
            ) from None
        problem = _not_a_checkpoint(loaded)
        if problem:
            raise LTDetError(
                f"checkpoint '{filename}' is not a model checkpoint: {problem}. Use a .pth "
                "written by lt_det/detectron2 ({'model': {name: tensor}, ...}) or a detectron2 "
                ".pkl, e.g. an earlier model_*.pth."
            )
        return loaded

    def _load_model(self, checkpoint: Any):
        model_state = checkpoint.get("model", {}) if isinstance(checkpoint, dict) else {}
        self._keep_config_prior(model_state)
        incompatible = super()._load_model(checkpoint)
        not_loaded = set(incompatible.missing_keys)
        not_loaded.update(k for k, *_ in incompatible.incorrect_shapes)
        self.not_loaded = sorted(not_loaded)
        # The prior buffers keep the config's values by design (above): not reported as missing
        # (e.g. a stage-1 softmax checkpoint loaded for a Balanced Softmax stage 2).
        return incompatible._replace(missing_keys=[
            k for k in incompatible.missing_keys if k.split(".")[-1] != PRIOR_BUFFER
        ])

    def _keep_config_prior(self, model_state: Dict[str, Any]) -> None:
        """Drop the file's class-prior buffers: the config's prior (already in the model) wins."""
        own = dict(self.model.state_dict())
        for key in [k for k in model_state if k.split(".")[-1] == PRIOR_BUFFER and k in own]:
            theirs, mine = model_state.pop(key), own[key]
            theirs = torch.as_tensor(theirs)
            if theirs.shape != mine.shape or not torch.allclose(
                theirs.float().cpu(), mine.float().cpu(), rtol=1e-5, atol=0
            ):
                logger.warning(
                    f"'{self._loading}' holds another {key} than this config's; the config's "
                    "(MODEL.ROI_BOX_HEAD.PRIOR) is used by the loss and the Meta Sampler."
                )

    def _required(self) -> Iterable[str]:
        if self.must_load is None:
            return ()
        if self.must_load == "all":
            return [
                k for k in self.model.state_dict() if k.split(".")[-1] != PRIOR_BUFFER
            ]
        return list(self.must_load)

    def _guard(self, not_loaded: set) -> None:
        required = list(self._required())
        missed = [k for k in required if k in not_loaded]
        if missed:
            raise LTDetError(
                f"checkpoint '{self._loading}' does not fit this model: {len(missed)} of "
                f"{len(required)} parameters that must be loaded were not (missing or of another "
                f"shape, e.g. {missed[:6]}), so they would keep random values. Use a checkpoint "
                "of the same architecture and MODEL.ROI_HEADS.NUM_CLASSES (the checkpointer's "
                "warnings above list the shapes)."
            )

    # ------------------------------------------------------------------ save
    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        if "://" in self.save_dir:
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if "://" in self.save_dir:
            return super().tag_last_checkpoint(last_filename_basename)
        _atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)


class TrainerWithInnerState:
    """Checkpointable of a ``DefaultTrainer`` whose ``state_dict`` leaves out its inner
    trainer (detectron2 0.6): the trainer's state plus ``"_trainer"`` (the inner
    ``SimpleTrainer`` / ``AMPTrainer``: optimizer, grad scaler), as newer detectron2 saves it.

    Args:
        trainer: the ``DefaultTrainer`` (or a weak proxy of it); its inner trainer is read at
            each save and load (stage 2 replaces it after construction).
    """

    def __init__(self, trainer):
        self.trainer = trainer

    def state_dict(self) -> Dict[str, Any]:
        ret = self.trainer.state_dict()
        ret["_trainer"] = self.trainer._trainer.state_dict()
        return ret

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.trainer.load_state_dict(state)
        if "_trainer" in state:  # not in a checkpoint detectron2 0.6 wrote itself
            self.trainer._trainer.load_state_dict(state["_trainer"])


# The former name (atomic saves only); the same class.
AtomicDetectionCheckpointer = LTCheckpointer
