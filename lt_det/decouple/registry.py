"""Registry of stage-2 (decoupled) methods, selected by ``MODEL.DECOUPLE.METHOD``.

A method is a small class registered with ``@register_decouple_method("name")``. It is built from
the config and acts on a model at two moments:

1. :meth:`DecoupleMethod.apply` right after the model is built (``LTTrainer.build_model``): swap
   classifier layers (LWS, tau-norm), freeze by ``MODEL.DECOUPLE.TRAINABLE`` and keep the frozen
   parts in eval mode. Stage-1 checkpoints load into the result unchanged.
2. :meth:`DecoupleMethod.after_stage1_load` after the stage-1 weights were loaded for a *new*
   stage-2 run (never when a stage-2 run resumes from its own checkpoint): cRT re-initialises;
   CBD copies its teacher. :meth:`DecoupleMethod.stage1_parameters` names what that load must
   provide.

Training runs the method's ``step_class`` (None: the classifier-only
:class:`~lt_det.decouple.trainer.DecoupledStep`).

Adding a method is one new module plus one registration.
"""
from typing import Any, Callable, Dict, List, Optional

from detectron2.config import CfgNode
from torch import nn

from ..registry import Registry
from .freeze import freeze_all_but, keep_frozen_in_eval

__all__ = [
    "LT_DECOUPLE_REGISTRY",
    "DecoupleMethod",
    "register_decouple_method",
    "build_decouple_method",
    "apply_decoupling",
]

#: Stage-2 methods of decoupled training (Kang et al. 2020), keyed by MODEL.DECOUPLE.METHOD.
#: Each entry is a DecoupleMethod subclass whose ``from_config(cfg)`` returns its constructor's
#: keyword arguments (detectron2's ``from_config`` contract).
LT_DECOUPLE_REGISTRY = Registry(
    "LT_DECOUPLE", config_key="MODEL.DECOUPLE.METHOD", what="stage-2 method"
)


class DecoupleMethod:
    """Base class: freeze everything except ``trainable``; nothing else.

    Attributes:
        name: the registry name.
        trains: whether stage 2 trains anything (tau_norm does not).
        step_class: the ``DecoupledStep`` subclass that trains it (None: ``DecoupledStep``).
    """

    name: str = ""
    trains: bool = True
    step_class: Optional[type] = None

    def __init__(self, *, trainable: List[str]):
        """
        Args:
            trainable: parameter-name prefixes that stay trainable (``MODEL.DECOUPLE.TRAINABLE``).
        """
        self.trainable = list(trainable)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        """Constructor keyword arguments read from ``cfg`` (detectron2's ``from_config(cfg) ->
        kwargs`` contract; :func:`build_decouple_method` calls ``cls(**cls.from_config(cfg))``).
        """
        return {"trainable": list(cfg.MODEL.DECOUPLE.TRAINABLE)}

    def apply(self, model: nn.Module) -> nn.Module:
        """Prepare ``model`` (in place, before any weights are loaded) and return it."""
        freeze_all_but(model, self.trainable)
        keep_frozen_in_eval(model)
        return model

    def stage1_parameters(self, model: nn.Module) -> List[str]:
        """Names of the parameters a stage-1 checkpoint must provide: the frozen ones."""
        return [n for n, p in model.named_parameters() if not p.requires_grad]

    def after_stage1_load(self, model: nn.Module) -> None:
        """Called once the stage-1 weights are in ``model`` for a new (not resumed) stage-2 run."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(trainable={self.trainable})"


def register_decouple_method(name: str) -> Callable[[type], type]:
    """Class decorator: register a :class:`DecoupleMethod` as a MODEL.DECOUPLE.METHOD name
    (also set as its ``name``)."""
    return LT_DECOUPLE_REGISTRY.register(name, name_attr="name")


def build_decouple_method(cfg: CfgNode) -> DecoupleMethod:
    """The method named by ``MODEL.DECOUPLE.METHOD``.

    Raises:
        lt_det.registry.UnknownChoiceError: for an unknown name; the message lists the
            registered ones.
    """
    method_cls = LT_DECOUPLE_REGISTRY.get(cfg.MODEL.DECOUPLE.METHOD)
    return method_cls(**method_cls.from_config(cfg))


def apply_decoupling(model: nn.Module, cfg: CfgNode) -> nn.Module:
    """Apply ``MODEL.DECOUPLE.METHOD`` to a freshly built model (before loading weights).

    ``"none"`` returns the model untouched. Returns the model.
    """
    return build_decouple_method(cfg).apply(model)
