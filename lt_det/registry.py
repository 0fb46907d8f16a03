"""The one registry helper behind every method-selecting config key.

A :class:`Registry` maps the value a config key takes (``MODEL.ROI_BOX_HEAD.CLS_LOSS:
balanced_softmax``, ``DATALOADER.SAMPLER_TRAIN: MetaSampler``, ...) to the object that
implements it. Entries are registered under an explicit name (the config value), not under the
Python name of the object, so renaming a class never changes a config. Looking up an unknown name
raises :class:`UnknownChoiceError`, whose message names the config key and lists the choices;
:meth:`Registry.choices` feeds ``lt_det.engine.config_choices`` and the tools' ``choices=``.

Pure Python (no torch, no detectron2), so every layer of lt_det can use it.
"""
from types import MappingProxyType
from typing import Any, Callable, Dict, Iterator, List, Mapping, Tuple, TypeVar

from .errors import LTDetError

__all__ = ["Registry", "UnknownChoiceError"]

T = TypeVar("T")


class UnknownChoiceError(LTDetError, KeyError):
    """A registry lookup of a name that is not registered.

    Also a ``KeyError`` (a lookup that failed), so ``except KeyError`` keeps working.
    """

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


class Registry:
    """Name -> object, for the values of one config key.

    Args:
        name: the registry's name (e.g. ``"LT_CLS_LOSS"``).
        config_key: the config key whose values are the registered names, for error messages.
        what: what an entry is, in words (e.g. ``"box-classification loss"``).
    """

    def __init__(self, name: str, *, config_key: str, what: str):
        self.name = name
        self.config_key = config_key
        self.what = what
        self._entries: Dict[str, Any] = {}

    def register(self, name: str, *, name_attr: str = "") -> Callable[[T], T]:
        """Decorator registering its argument under ``name`` (returned unchanged, except that
        with ``name_attr`` the registered name is also set as that attribute of it).

        Raises:
            LTDetError: ``name`` is already registered (to another object).
        """
        if not isinstance(name, str) or not name:
            raise LTDetError(f"{self.name}: a registered name must be a non-empty string.")

        def deco(obj: T) -> T:
            if self._entries.get(name, obj) is not obj:
                raise LTDetError(
                    f"{self.what} {name!r} ({self.config_key}) is already registered "
                    f"({self._entries[name]!r}); choose another name."
                )
            self._entries[name] = obj
            if name_attr:
                setattr(obj, name_attr, name)
            return obj

        return deco

    def get(self, name: str) -> Any:
        """The object registered as ``name``.

        Raises:
            UnknownChoiceError: ``name`` is not registered; the message lists the choices.
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownChoiceError(
                f"Unknown {self.what} {name!r} ({self.config_key}). Valid names: "
                f"{self.choices()}."
            ) from None

    def choices(self) -> List[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def mapping(self) -> Mapping[str, Any]:
        """A live read-only ``{name: object}`` view, in registration order."""
        return MappingProxyType(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Tuple[str, Any]]:
        """(name, object) pairs, like detectron2's ``Registry``."""
        return iter(list(self._entries.items()))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.name!r}, {self.config_key}: {self.choices()})"
