"""Per-class box-classifier weight norms against training frequency (Kang et al. 2020, Fig. 2).

Used by ``tools/plot_classifier_norms.py`` and the synthetic benchmark; the figure itself is
drawn by :func:`lt_det.evaluation.plot.classifier_norms_figure`. Shape shorthand: K foreground
classes; ``cls_score.weight`` is (K + 1, D) with row K = background (not plotted).

torch is imported only by the functions that read checkpoints.
"""
import os
import pickle
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..class_stats import class_stats_from_lvis_json, frequency_groups
from ..errors import LTDetError
from ._json import load_json

__all__ = [
    "DEFAULT_KEY",
    "load_state_dict",
    "classifier_norms",
    "frequencies_from_json",
    "frequencies_from_metadata",
    "parse_spec",
    "plot_classifier_norms",
]

DEFAULT_KEY = "roi_heads.box_predictor.cls_score"


def load_state_dict(path: str) -> Dict[str, "torch.Tensor"]:  # noqa: F821
    """The model weights of a .pth (this project / detectron2) or .pkl (model zoo) file.

    Raises:
        LTDetError: the file does not exist.
    """
    import torch

    if not os.path.isfile(path):
        raise LTDetError(f"checkpoint '{path}' does not exist.")
    if path.endswith(".pkl"):
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="latin1")
    else:
        data = torch.load(path, map_location="cpu", weights_only=False)
    model = data.get("model", data) if isinstance(data, dict) else data
    return {k: torch.as_tensor(v) for k, v in model.items() if hasattr(v, "shape")}


def classifier_norms(state: Dict, num_classes: int, key: str, tau: float) -> np.ndarray:
    """(K,) effective per-class norms ``(|s_c| * ||w_c||) ** (1 - tau)`` of ``key``.weight.

    ``s_c`` is the LWS scale (``key``.scale) when the checkpoint has one, else 1; ``tau`` is
    the tau-normalisation exponent (0 = raw norms).

    Raises:
        LTDetError: the weight is missing or its row count is neither K nor K + 1.
    """
    wkey = key + ".weight"
    if wkey not in state:
        near = [k for k in state if k.endswith("cls_score.weight")]
        raise LTDetError(f"no '{wkey}' in the checkpoint; classifier weights found: {near}.")
    w = state[wkey].float()
    if w.shape[0] < num_classes:  # more rows: background and a loss's extra logits (BAGS)
        raise LTDetError(
            f"'{wkey}' has {w.shape[0]} rows, the dataset has {num_classes} classes (+1 bg)."
        )
    norms = w[:num_classes].norm(dim=1)
    if key + ".scale" in state:
        norms = norms * state[key + ".scale"].float()[:num_classes].abs()
    return norms.pow(1.0 - tau).numpy()


def frequencies_from_json(path: str) -> Tuple[List[int], List[str]]:
    """(K training image counts, K "r"/"c"/"f") in contiguous order (categories sorted by id).

    Args:
        path: a LVIS-format json (counts from its categories' ``image_count`` or from its
            annotations) or a ``*_cat_info.json`` list of ``{"id", "image_count", ...}``
            (:func:`lt_det.class_stats.class_stats_from_lvis_json`).

    Raises:
        LTDetError: the file is missing, not JSON, or has neither counts nor annotations.
    """
    if not os.path.isfile(path):
        raise LTDetError(f"'{path}' does not exist; pass a LVIS json or a cat_info json.")
    data = load_json(path, "class-count json")
    if not isinstance(data, dict):
        data = {"categories": data}
    cats = data.get("categories")
    if not isinstance(cats, list) or not all(isinstance(c, dict) and "id" in c for c in cats):
        raise LTDetError(f"'{path}' has no categories; pass a LVIS json or a cat_info json.")
    if not all("image_count" in c for c in cats) and "annotations" not in data:
        raise LTDetError(f"'{path}' has neither image_count per category nor annotations.")
    _, stats, groups = class_stats_from_lvis_json(data)
    return list(stats.image_counts), list(groups)


def frequencies_from_metadata(name: str) -> Tuple[List[int], List[str]]:
    """(K training image counts, K "r"/"c"/"f") of a registered dataset.

    Looked up in this order: the ``class_image_count`` metadata (set by lt_det's
    ``register_lvis_format`` / ``DATASETS.LVIS_FORMAT``, and by detectron2 after v0.6 for its
    builtin ``lvis_v1_*`` datasets); for detectron2 0.6's builtin ``lvis_v1_*`` names, which lack
    it, the LVIS v1 train category counts (cat_info, see :mod:`lt_det.data.lvis_v1_stats`); the
    json the dataset was registered with.

    Raises:
        LTDetError: the name is not registered, or none of the sources is available.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name not in DatasetCatalog.list():
        raise LTDetError(
            f"dataset '{name}' is not registered; pass --config-file with DATASETS.LVIS_FORMAT "
            "naming it, one of detectron2's builtin names (e.g. lvis_v1_train), or --json."
        )
    meta = MetadataCatalog.get(name)
    counts = meta.get("class_image_count", None)
    if counts is not None:
        counts = [int(c["image_count"]) for c in counts]
        return counts, list(meta.get("class_frequency", None) or frequency_groups(counts))
    builtin = _builtin_lvis_v1(name)
    if builtin is not None:
        return builtin
    json_file = meta.get("json_file", None)
    if json_file and os.path.isfile(json_file):
        return frequencies_from_json(json_file)
    raise LTDetError(
        f"dataset '{name}' has no class_image_count metadata and its json "
        f"{json_file!r} is not readable; register it with lt_det (--config-file with "
        "DATASETS.LVIS_FORMAT), set DETECTRON2_DATASETS to the folder holding lvis/, or pass "
        "--json."
    )


def _builtin_lvis_v1(name: str) -> Optional[Tuple[List[int], List[str]]]:
    """Counts of detectron2's builtin ``lvis_v1_*`` datasets from the LVIS v1 train cat_info
    (installed by tools/setup_env.sh); None when the file is not there."""
    from ..data.lvis_v1_stats import default_cat_info_path, load_lvis_v1_cat_info

    if not name.startswith("lvis_v1") or not os.path.isfile(default_cat_info_path()):
        return None
    info = load_lvis_v1_cat_info()
    counts = [int(c["image_count"]) for c in info]
    groups = frequency_groups(counts)
    return counts, [c.get("frequency") or g for c, g in zip(info, groups)]


def parse_spec(spec: str) -> Tuple[str, str, float]:
    """``NAME=PATH[@tau=T]`` -> (name, path, tau).

    Raises:
        LTDetError: no ``=``, or a tau that is not a number.
    """
    if "=" not in spec:
        raise LTDetError(f"--checkpoints entry '{spec}' is not NAME=PATH.")
    name, rest = spec.split("=", 1)
    tau = 0.0
    if "@tau=" in rest:
        rest, t = rest.rsplit("@tau=", 1)
        try:
            tau = float(t)
        except ValueError:
            raise LTDetError(f"--checkpoints entry '{spec}': tau '{t}' is not a number.") from None
    return name, rest, tau


def plot_classifier_norms(
    checkpoints: Dict[str, str],
    frequencies: Union[str, Tuple[Sequence[int], Sequence[str]]],
    out: str,
    *,
    key: str = DEFAULT_KEY,
) -> Dict[str, Dict[str, float]]:
    """Plot every checkpoint's per-class classifier norms into one PNG.

    Args:
        checkpoints: {curve name: path}; a path may end in ``@tau=T`` (tau-normalised norms).
        frequencies: a LVIS json / cat_info json path, or (K image counts, K "r"/"c"/"f").
        out: PNG path (its folder is created).
        key: classifier module in the state dict.

    Returns:
        {curve name: {"f": mean norm, "c": ..., "r": ...}} (NaN for an empty group).
    """
    from .plot import save_figure, classifier_norms_figure

    if isinstance(frequencies, str):
        counts, freq = frequencies_from_json(frequencies)
    else:
        counts, freq = list(frequencies[0]), list(frequencies[1])
    curves = {}
    for name, spec in checkpoints.items():
        _, path, tau = parse_spec(f"{name}={spec}")
        curves[name] = classifier_norms(load_state_dict(path), len(counts), key, tau)
    save_figure(classifier_norms_figure(curves, counts, freq), out)
    freq_arr = np.asarray(freq)
    return {
        name: {
            g: float(n[freq_arr == g].mean()) if (freq_arr == g).any() else float("nan")
            for g in "fcr"
        }
        for name, n in curves.items()
    }
