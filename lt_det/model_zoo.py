"""The configs shipped with lt_det, by name, from a checkout or an installed package.

In detectron2's ``model_zoo`` terms: a config is named by its path under lt_det's ``configs/``
folder (``"lvis_balanced.yaml"``, ``"synthetic/rfs.yaml"``, ``"lazy/lvis_rfs.py"``; a leading
``"configs/"`` is accepted too, so the paths the README uses work unchanged)::

    from lt_det import model_zoo

    path = model_zoo.get_config_file("lvis_balanced.yaml")   # absolute path of the yaml
    cfg = model_zoo.get_config("synthetic/rfs.yaml")          # detectron2 CfgNode + lt_det keys
    lazy = model_zoo.get_config("lazy/lvis_rfs.py")           # a LazyConfig (omegaconf DictConfig)

Where the folder is (:func:`configs_dir`): a wheel or a regular install ships ``configs/`` as the
package data ``lt_det/configs/`` (setup.py maps it there); a checkout, and the editable install
``tools/setup_env.sh`` makes, use the checkout's own ``configs/`` folder beside ``lt_det/``. The
configs' ``_BASE_`` and ``MODEL.DECOUPLE.STAGE1_CONFIG`` entries and the LazyConfigs' relative
imports are relative to the config's own folder, so they resolve in either place. There are no
trained weights here (detectron2's ``model_zoo.get_checkpoint_url`` has no lt_det counterpart).
"""
import difflib
import os
from typing import Any, List

from .errors import LTDetError

__all__ = ["configs_dir", "get_config", "get_config_file", "list_configs"]

#: File name endings of configs: detectron2 yaml configs and LazyConfigs.
CONFIG_SUFFIXES = (".yaml", ".py")
# A file every configs folder of lt_det has; tells lt_det's folder from another "configs".
_MARKER = "Base-LVIS-v1-MaskRCNN-R50-FPN.yaml"


def configs_dir() -> str:
    """The absolute path of the folder holding lt_det's configs.

    Returns:
        ``<site-packages>/lt_det/configs`` in an installed package, else the ``configs`` folder
        of the checkout that holds this ``lt_det`` package (source tree or editable install).

    Raises:
        LTDetError: neither exists (an install built without its package data).
    """
    package = os.path.dirname(os.path.abspath(__file__))
    installed = os.path.join(package, "configs")
    checkout = os.path.join(os.path.dirname(package), "configs")
    for folder in (installed, checkout):
        if os.path.isfile(os.path.join(folder, _MARKER)):
            return folder
    raise LTDetError(
        f"lt_det's configs are neither at '{installed}' (installed package) nor at "
        f"'{checkout}' (checkout); reinstall lt_det from its wheel or sdist "
        "(pip install --force-reinstall lt_det), which ships them."
    )


def list_configs() -> List[str]:
    """Names of every shipped config (``/``-separated paths under :func:`configs_dir`), sorted."""
    root = configs_dir()
    names = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        rel = os.path.relpath(folder, root)
        for f in files:
            if f.endswith(CONFIG_SUFFIXES) and f != "__init__.py":
                names.append(f if rel == "." else f"{rel}/{f}".replace(os.sep, "/"))
    return sorted(names)


def get_config_file(config_path: str) -> str:
    """The absolute path of a shipped config.

    Args:
        config_path: its path under lt_det's ``configs/`` folder, e.g. ``"lvis_balanced.yaml"``,
            ``"synthetic/rfs.yaml"``, ``"lazy/lvis_rfs.py"`` (or ``"configs/lvis_balanced.yaml"``).

    Raises:
        LTDetError: no such config; the message names the closest shipped ones.
    """
    name = config_path.replace("\\", "/")
    if name.startswith("configs/"):
        name = name[len("configs/"):]
    root = configs_dir()
    path = os.path.join(root, *name.split("/"))
    if name.endswith(CONFIG_SUFFIXES) and os.path.isfile(path):
        return path
    shipped = list_configs()
    close = difflib.get_close_matches(name, shipped, n=3, cutoff=0.5)
    hint = f"did you mean {close}?" if close else f"the configs are {shipped}."
    raise LTDetError(
        f"lt_det ships no config '{config_path}' (looked in '{root}'); {hint} "
        "model_zoo.list_configs() lists them all."
    )


def get_config(config_path: str) -> Any:
    """A shipped config, loaded.

    Args:
        config_path: as for :func:`get_config_file`.

    Returns:
        For a ``.yaml``: a detectron2 ``CfgNode`` with lt_det's keys
        (:func:`lt_det.engine.defaults.load_config`: ``get_cfg()`` + ``add_lt_config`` +
        the file with its ``_BASE_`` chain). For a ``.py``: the LazyConfig that detectron2's
        ``LazyConfig.load`` returns (an omegaconf ``DictConfig``).

    Raises:
        LTDetError: no such config, or one that does not load.
    """
    path = get_config_file(config_path)
    if path.endswith(".py"):
        from detectron2.config import LazyConfig

        return LazyConfig.load(path)
    from .engine.defaults import load_config

    return load_config(path)
