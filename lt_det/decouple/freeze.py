"""Freeze a model by explicit parameter-name prefixes and keep its frozen parts in eval mode.

A prefix names a module path or a parameter (``"roi_heads.box_predictor.cls_score"``,
``"roi_heads.box_predictor.cls_score.scale"``). It matches a parameter name when the name equals
the prefix or continues it after a ``"."``; it never matches inside a name component, so
``"roi_heads.box_predictor.cls"`` matches nothing (and is reported as an error).

Eval mode: every *maximal* module without a trainable parameter (the frozen backbone, RPN, box
head, mask head, ...) is switched to eval mode now and again by a forward pre-hook at each of its
forward calls. The trainer may call ``model.train()`` (detectron2's ``SimpleTrainer`` and
evaluation hooks do), which sets ``.training`` back to True on those modules until their next
forward; their forward itself always runs in eval mode, so BatchNorm statistics never drift and
dropout stays off. Modules that hold a trainable parameter follow ``model.train()/eval()``.
"""
import difflib
from typing import List, Sequence

from torch import nn

from ..errors import LTDetError

__all__ = [
    "prefix_matches",
    "freeze_all_but",
    "keep_frozen_in_eval",
    "frozen_module_roots",
]

# Attribute of the model holding the hook handles installed by keep_frozen_in_eval.
_HANDLES_ATTR = "_lt_frozen_eval_handles"


def prefix_matches(name: str, prefix: str) -> bool:
    """Whether ``prefix`` names ``name`` or one of its ancestors ("." boundaries only)."""
    return name == prefix or name.startswith(prefix + ".")


def _check_prefixes(model: nn.Module, prefixes: Sequence[str], key: str) -> None:
    names = [n for n, _ in model.named_parameters()]
    for prefix in prefixes:
        if any(prefix_matches(n, prefix) for n in names):
            continue
        candidates = sorted(
            set(names) | {m for m, _ in model.named_modules() if m}, key=lambda s: (len(s), s)
        )
        near = difflib.get_close_matches(prefix, candidates, n=8, cutoff=0.5)
        raise LTDetError(
            f"{key} entry '{prefix}' matches no parameter of the model (prefixes match whole "
            f"name components, e.g. 'roi_heads.box_predictor.cls_score'). Nearby names: "
            f"{near or candidates[:8]}."
        )


def freeze_all_but(
    model: nn.Module, prefixes: Sequence[str], *, key: str = "MODEL.DECOUPLE.TRAINABLE"
) -> List[str]:
    """Set ``requires_grad`` True exactly for parameters named by ``prefixes``.

    Args:
        model: the model (not wrapped in DistributedDataParallel; names are its own).
        prefixes: parameter-name prefixes that stay trainable; may be empty (freeze everything).
        key: config key the prefixes come from (used in error messages).

    Returns:
        The names of the trainable parameters.

    Raises:
        LTDetError: if a prefix matches no parameter; the message lists nearby names.
    """
    _check_prefixes(model, prefixes, key)
    trainable = []
    for name, param in model.named_parameters():
        keep = any(prefix_matches(name, p) for p in prefixes)
        param.requires_grad_(keep)
        if keep:
            trainable.append(name)
    return trainable


def frozen_module_roots(model: nn.Module) -> List[str]:
    """Names of the maximal submodules without any trainable parameter ("" = the model itself)."""

    def frozen(m: nn.Module) -> bool:
        return not any(p.requires_grad for p in m.parameters())

    roots: List[str] = []

    def visit(prefix: str, m: nn.Module) -> None:
        if frozen(m):
            roots.append(prefix)
            return
        for child_name, child in m.named_children():
            visit(f"{prefix}.{child_name}" if prefix else child_name, child)

    visit("", model)
    return roots


def _eval_pre_hook(module: nn.Module, inputs) -> None:
    if module.training:
        module.train(False)


def keep_frozen_in_eval(model: nn.Module) -> List[str]:
    """Put the frozen parts of ``model`` in eval mode, now and at each of their forward calls.

    Call after :func:`freeze_all_but`. Calling it again replaces the earlier hooks.

    Returns:
        The names of the modules kept in eval mode (see :func:`frozen_module_roots`).
    """
    for handle in getattr(model, _HANDLES_ATTR, []):
        handle.remove()
    roots = frozen_module_roots(model)
    handles = []
    for name in roots:
        module = model.get_submodule(name) if name else model
        module.train(False)
        handles.append(module.register_forward_pre_hook(_eval_pre_hook))
    # A plain list attribute (not a module, not in the state dict).
    object.__setattr__(model, _HANDLES_ATTR, handles)
    return roots
