"""Per-class box-classifier weight norms against training frequency (Kang et al. 2020, Fig. 2).

Used by ``tools/plot_classifier_norms.py`` and the synthetic benchmark. Shape shorthand: K
foreground classes; ``cls_score.weight`` is (K + 1, D) with row K = background (not plotted).
"""
import json
import os
import pickle
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..class_stats import class_stats_from_lvis_json
from ..errors import LTDetError

__all__ = [
    "load_state_dict",
    "classifier_norms",
    "frequencies_from_json",
    "parse_spec",
    "plot_norms",
    "plot_classifier_norms",
]

DEFAULT_KEY = "roi_heads.box_predictor.cls_score"


def load_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The model weights of a .pth (this project / detectron2) or .pkl (model zoo) file."""
    if not os.path.isfile(path):
        raise LTDetError(f"checkpoint '{path}' does not exist.")
    if path.endswith(".pkl"):
        with open(path, "rb") as f:
            data = pickle.load(f, encoding="latin1")
    else:
        data = torch.load(path, map_location="cpu", weights_only=False)
    model = data.get("model", data) if isinstance(data, dict) else data
    return {k: torch.as_tensor(v) for k, v in model.items() if hasattr(v, "shape")}


def classifier_norms(state: Dict[str, torch.Tensor], num_classes: int, key: str, tau: float):
    """(K,) effective per-class norms of ``key``.weight (LWS scale and tau applied)."""
    wkey = key + ".weight"
    if wkey not in state:
        near = [k for k in state if k.endswith("cls_score.weight")]
        raise LTDetError(f"no '{wkey}' in the checkpoint; classifier weights found: {near}.")
    w = state[wkey].float()
    if w.shape[0] not in (num_classes, num_classes + 1):
        raise LTDetError(
            f"'{wkey}' has {w.shape[0]} rows, the dataset has {num_classes} classes (+1 bg)."
        )
    norms = w[:num_classes].norm(dim=1)
    if key + ".scale" in state:
        norms = norms * state[key + ".scale"].float()[:num_classes].abs()
    return norms.pow(1.0 - tau).numpy()


def frequencies_from_json(path: str) -> Tuple[List[int], List[str]]:
    """(image counts, r/c/f) in contiguous order (categories sorted by id) of an LVIS json or a
    ``*_cat_info.json`` list (:func:`lt_det.class_stats.class_stats_from_lvis_json`)."""
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict):
        data = {"categories": data}
    if not all("image_count" in c for c in data["categories"]) and "annotations" not in data:
        raise LTDetError(f"'{path}' has neither image_count per category nor annotations.")
    _, stats, groups = class_stats_from_lvis_json(data)
    return list(stats.image_counts), groups


def parse_spec(spec: str) -> Tuple[str, str, float]:
    """``NAME=PATH[@tau=T]`` -> (name, path, tau)."""
    if "=" not in spec:
        raise LTDetError(f"--checkpoints entry '{spec}' is not NAME=PATH.")
    name, rest = spec.split("=", 1)
    tau = 0.0
    if "@tau=" in rest:
        rest, t = rest.rsplit("@tau=", 1)
        tau = float(t)
    return name, rest, tau


def plot_norms(curves: Dict[str, np.ndarray], counts: List[int], freq: List[str], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(-np.asarray(counts), kind="stable")
    x = np.arange(len(order))
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax2 = ax.twinx()  # bands and image counts behind the curves
    band_colour = {"f": "#dbe9f6", "c": "#fdf0d5", "r": "#f9d9d9"}
    sorted_freq = [freq[i] for i in order]
    start = 0
    for i in range(1, len(order) + 1):
        if i == len(order) or sorted_freq[i] != sorted_freq[start]:
            g = sorted_freq[start]
            ax2.axvspan(start - 0.5, i - 0.5, color=band_colour.get(g, "#eeeeee"), lw=0)
            ax.text(
                (start + i - 1) / 2,
                1.0,
                g,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                fontsize=8,
            )
            start = i
    for name, norms in curves.items():
        ax.plot(x, norms[order], marker=".", ms=3, lw=1, label=name)
    ax.set_xlabel("classes sorted by training image count (most frequent first)")
    ax.set_ylabel("classifier weight norm")
    ax2.bar(x, np.asarray(counts)[order], color="gray", alpha=0.3, width=0.8)
    ax2.set_yscale("log")
    ax2.set_ylabel("training images (log)", color="gray")
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


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
        out: PNG path.
        key: classifier module in the state dict.

    Returns:
        {curve name: {"f": mean norm, "c": ..., "r": ...}}.
    """
    if isinstance(frequencies, str):
        counts, freq = frequencies_from_json(frequencies)
    else:
        counts, freq = list(frequencies[0]), list(frequencies[1])
    curves = {}
    for name, spec in checkpoints.items():
        _, path, tau = parse_spec(f"{name}={spec}")
        curves[name] = classifier_norms(load_state_dict(path), len(counts), key, tau)
    plot_norms(curves, counts, freq, out)
    return {
        name: {
            g: float(np.mean([n[i] for i in range(len(counts)) if freq[i] == g] or [np.nan]))
            for g in "fcr"
        }
        for name, n in curves.items()
    }
