"""LVIS evaluation backends; importing this package registers them."""
from . import fast as _fast  # noqa: F401  (registration)
from . import lvis_api as _lvis_api  # noqa: F401  (registration)
from .registry import LT_LVIS_EVAL_BACKEND_REGISTRY, get_lvis_backend

__all__ = ["LT_LVIS_EVAL_BACKEND_REGISTRY", "get_lvis_backend"]
