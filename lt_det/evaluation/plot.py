"""Long-tail plots: per-class AP and classifier norm against training frequency, r/c/f bands.

Both figures stay readable from a dozen classes to LVIS's 1203: the rare / common / frequent
bands are at most one per group, their labels never overlap (a label that would touch another
moves down a row), and the y-axis is fitted to the data. Figures are built with matplotlib's
object API and the Agg canvas (no pyplot, no global backend change).
"""
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..class_stats import COMMON_MAX_IMAGES, RARE_MAX_IMAGES
from ..errors import LTDetError

__all__ = [
    "ap_vs_frequency_figure",
    "classifier_norms_figure",
    "plot_ap_vs_frequency",
    "save_figure",
    "BAND_LABEL_GID",
]

# LVIS groups by training image count (lt_det.class_stats): rare <= 10 < common <= 100 < frequent.
_BANDS = [
    ("r", "rare", 0.5, RARE_MAX_IMAGES + 0.5, "#f4cccc"),
    ("c", "common", RARE_MAX_IMAGES + 0.5, COMMON_MAX_IMAGES + 0.5, "#fff2cc"),
    ("f", "frequent", COMMON_MAX_IMAGES + 0.5, math.inf, "#d9ead3"),
]
_GROUP_NAME = {g: name for g, name, _, _, _ in _BANDS}
_GROUP_COLOUR = {g: colour for g, _, _, _, colour in _BANDS}
_TASK_WORD = {"bbox": "box", "segm": "mask"}

#: ``gid`` of the band-label text artists (lets tests and callers find them).
BAND_LABEL_GID = "band-label"


def _new_figure(size: Tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, out_png: str) -> str:
    """Write ``fig`` to ``out_png`` (its folder is created); returns the path."""
    folder = os.path.dirname(os.path.abspath(out_png))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(out_png)
    return out_png


def _band_labels(fig, ax, labels: Sequence[Tuple[float, str]]) -> List:
    """Put each ``(x in data units, text)`` label at the top of ``ax``; a label that would
    overlap an earlier one (or leave the axes) is shifted inside / down one text row."""
    fig.canvas.draw()  # final layout, so that extents are those of the saved figure
    renderer = fig.canvas.get_renderer()
    ax_box = ax.get_window_extent(renderer)
    placed, texts = [], []
    for x, text in labels:
        t = ax.text(
            x,
            0.98,
            text,
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="top",
            fontsize=8,
            gid=BAND_LABEL_GID,
            zorder=5,
        )
        box = t.get_window_extent(renderer)
        if box.x0 < ax_box.x0:
            t.set_ha("left")
            t.set_x(ax.transData.inverted().transform((ax_box.x0 + 2, 0))[0])
        elif box.x1 > ax_box.x1:
            t.set_ha("right")
            t.set_x(ax.transData.inverted().transform((ax_box.x1 - 2, 0))[0])
        row_step = 1.25 * box.height / ax_box.height
        y = 0.98
        box = t.get_window_extent(renderer).padded(2)
        while any(box.overlaps(p) for p in placed) and y > 0.1:
            y -= row_step
            t.set_y(y)
            box = t.get_window_extent(renderer).padded(2)
        placed.append(box)
        texts.append(t)
    return texts


def _fitted_ylim(values: np.ndarray, *, floor: Optional[float], ceil: Optional[float]):
    """Y limits around ``values`` with room for the band labels at the top."""
    values = values[np.isfinite(values)]
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    span = max(hi - lo, abs(hi) * 0.1, 1e-6)
    lo, hi = lo - 0.05 * span, hi + 0.2 * span  # band labels sit in the top 20%
    if floor is not None:
        lo = max(lo, floor)
    if ceil is not None:
        hi = min(hi, ceil)
    return lo, hi


def ap_vs_frequency_figure(
    runs: Sequence[Dict],
    labels: Sequence[str],
    *,
    bin_edges: Optional[Sequence[float]] = None,
    title: str = "",
):
    """Per-class AP (percent) against training image count (log x) for several runs, each with
    its binned mean as a line, over the r/c/f bands that the plotted counts reach.

    Args:
        runs: per-class documents as written by :func:`lt_det.evaluation.write_per_class`
            (``{"task": "bbox"|"segm", "classes": [{"image_count", "AP", ...}]}``), all of one
            task.
        labels: one legend label per run.
        bin_edges: image-count bin edges of the mean curves (default: log-spaced).
        title: added to the title, which always names the task (box or mask AP).

    Returns:
        a matplotlib ``Figure`` (Agg canvas).

    Raises:
        LTDetError: runs and labels differ in number, runs mix tasks, or a run has no class
            with both an AP and an image count > 0.
    """
    if len(runs) != len(labels):
        raise LTDetError(f"{len(runs)} result sets but {len(labels)} labels.")
    tasks = sorted({str(doc.get("task", "bbox")) for doc in runs})
    if len(tasks) > 1:
        raise LTDetError(f"per-class files of different tasks {tasks}; plot each task alone.")
    task = tasks[0] if tasks else "bbox"
    word = _TASK_WORD.get(task, task)
    series: List = []
    for doc in runs:
        pts = [
            (c["image_count"], c["AP"])
            for c in doc["classes"]
            if c.get("AP") is not None and c.get("image_count") not in (None, 0)
        ]
        if not pts:
            raise LTDetError(
                "a per-class file has no class with both an AP and an image_count > 0; the "
                "training image counts come from the dataset metadata / gt categories."
            )
        series.append(np.array(pts, dtype=np.float64).T)
    xmin = min(float(x.min()) for x, _ in series)
    xmax = max(float(x.max()) for x, _ in series)
    xlo, xhi = max(0.5, xmin / 1.5), xmax * 1.5

    fig = _new_figure((8, 4.8))
    ax = fig.add_subplot()
    ax.set_xscale("log")
    ax.set_xlim(xlo, xhi)
    band_labels = []
    for _, name, lo, hi, colour in _BANDS:
        lo, hi = max(lo, xlo), min(hi, xhi)
        if lo >= hi:
            continue  # no plotted class reaches this band
        ax.axvspan(lo, hi, color=colour, alpha=0.6, lw=0, zorder=0)
        band_labels.append((math.sqrt(lo * hi), name))
    edges = np.asarray(bin_edges) if bin_edges is not None else np.geomspace(1, xmax * 1.01, 13)
    handles = []
    for (x, y), label in zip(series, labels):
        pts = ax.scatter(x, y, s=6, alpha=0.35, zorder=2)
        idx = np.digitize(x, edges)
        centers = [float(np.exp(np.mean(np.log(x[idx == b])))) for b in np.unique(idx)]
        means = [float(y[idx == b].mean()) for b in np.unique(idx)]
        (line,) = ax.plot(
            centers,
            means,
            "-o",
            ms=3,
            zorder=3,
            color=pts.get_facecolor()[0][:3],
            label=f"{label} (mean AP {y.mean():.1f})",
        )
        handles.append(line)
    ax.set_ylim(*_fitted_ylim(np.concatenate([y for _, y in series]), floor=-2, ceil=102))
    ax.set_xlabel("training images containing the class (log scale)")
    ax.set_ylabel(f"per-class {word} AP (%)")
    ax.set_title(
        f"per-class {word} AP ({task}) vs training images" + (f": {title}" if title else "")
    )
    fig.legend(handles=handles, loc="outside lower center", ncols=min(3, len(handles)), fontsize=8)
    _band_labels(fig, ax, band_labels)
    return fig


def plot_ap_vs_frequency(
    runs: Sequence[Dict],
    labels: Sequence[str],
    out_png: str,
    *,
    bin_edges: Optional[Sequence[float]] = None,
    title: str = "",
) -> str:
    """Draw :func:`ap_vs_frequency_figure` into ``out_png``; returns the path."""
    return save_figure(
        ap_vs_frequency_figure(runs, labels, bin_edges=bin_edges, title=title), out_png
    )


def classifier_norms_figure(
    curves: Dict[str, np.ndarray], counts: Sequence[int], freq: Sequence[str]
):
    """Per-class classifier norms (one curve per entry of ``curves``) over classes sorted by
    frequency group (f, c, r) and, within a group, by training image count (most first); one
    shaded band per group, the image counts as grey bars on a log axis.

    Args:
        curves: {curve name: (K,) norms}.
        counts: (K,) training image counts.
        freq: (K,) "r" / "c" / "f" (anything else is drawn as an unlabelled fourth band).

    Returns:
        a matplotlib ``Figure`` (Agg canvas).
    """
    k = len(counts)
    if len(freq) != k or any(len(v) != k for v in curves.values()):
        raise LTDetError(
            f"{k} image counts, {len(freq)} groups and curves of lengths "
            f"{[len(v) for v in curves.values()]}: all must be K."
        )
    rank = {"f": 0, "c": 1, "r": 2}
    order = sorted(range(k), key=lambda i: (rank.get(freq[i], 3), -counts[i], i))
    sorted_freq = [freq[i] for i in order]
    x = np.arange(k)
    fig = _new_figure((8, 4.4))
    ax = fig.add_subplot()
    ax2 = ax.twinx()  # bands and image counts behind the curves
    band_labels = []
    start = 0
    for i in range(1, k + 1):
        if i == k or sorted_freq[i] != sorted_freq[start]:
            g = sorted_freq[start]
            ax2.axvspan(start - 0.5, i - 0.5, color=_GROUP_COLOUR.get(g, "#eeeeee"), lw=0)
            band_labels.append(((start + i - 1) / 2, f"{_GROUP_NAME.get(g, g)} ({i - start})"))
            start = i
    ax2.bar(
        x,
        np.maximum(np.asarray(counts, dtype=float)[order], 0.5),
        color="gray",
        alpha=0.3,
        width=1.0 if k > 100 else 0.8,
    )
    ax2.set_yscale("log")
    ax2.set_ylabel("training images (log)", color="gray")
    marker = {} if k > 100 else {"marker": ".", "ms": 3}
    handles = []
    for name, norms in curves.items():
        (line,) = ax.plot(
            x, np.asarray(norms)[order], lw=1 if k <= 100 else 0.7, label=name, **marker
        )
        handles.append(line)
    values = np.concatenate([np.asarray(v, dtype=float) for v in curves.values()] or [[0.0]])
    ax.set_ylim(*_fitted_ylim(values, floor=None, ceil=None))
    ax.set_xlim(-0.5, k - 0.5)
    ax.set_xlabel("classes by group (frequent, common, rare), then by training images")
    ax.set_ylabel("classifier weight norm")
    ax.set_title(f"box-classifier weight norm per class ({k} classes)")
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    if handles:
        fig.legend(
            handles=handles, loc="outside lower center", ncols=min(4, len(handles)), fontsize=8
        )
    _band_labels(fig, ax, band_labels)
    return fig
