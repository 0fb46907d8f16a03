"""Per-class AP against training frequency, with the LVIS r/c/f bands (matplotlib, Agg)."""
import math
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..class_stats import COMMON_MAX_IMAGES, RARE_MAX_IMAGES
from ..errors import LTDetError

__all__ = ["plot_ap_vs_frequency"]

# LVIS groups by training image count (lt_det.class_stats): rare <= 10 < common <= 100 < frequent.
_BANDS = [
    ("rare", 0.5, RARE_MAX_IMAGES + 0.5, "#f4cccc"),
    ("common", RARE_MAX_IMAGES + 0.5, COMMON_MAX_IMAGES + 0.5, "#fff2cc"),
    ("frequent", COMMON_MAX_IMAGES + 0.5, None, "#d9ead3"),
]


def plot_ap_vs_frequency(
    runs: Sequence[Dict],
    labels: Sequence[str],
    out_png: str,
    *,
    bin_edges: Optional[Sequence[float]] = None,
    title: str = "",
) -> str:
    """Scatter per-class AP (percent) against training image count (log x) for several runs,
    each with its binned mean as a line, over shaded r/c/f bands.

    Args:
        runs: per-class documents as written by :func:`lt_det.evaluation.write_per_class`
            (dicts with a "classes" list of {"image_count", "AP", ...}).
        labels: one legend label per run.
        out_png: output path.
        bin_edges: image-count bin edges of the mean curves (default: log-spaced).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(runs) != len(labels):
        raise LTDetError(f"{len(runs)} result sets but {len(labels)} labels.")
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    xmax = 1.0
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
        x, y = np.array(pts, dtype=np.float64).T
        xmax = max(xmax, x.max())
        series.append((x, y))
    for name, lo, hi, color in _BANDS:
        ax.axvspan(lo, hi if hi is not None else xmax * 1.5, color=color, alpha=0.6, lw=0)
        ax.text(
            math.sqrt(lo * (hi or xmax * 1.5)),
            1.0,
            name,
            ha="center",
            va="bottom",
            transform=ax.get_xaxis_transform(),
            fontsize=8,
        )
    edges = np.asarray(bin_edges) if bin_edges is not None else np.geomspace(1, xmax * 1.01, 13)
    for (x, y), label in zip(series, labels):
        pts = ax.scatter(x, y, s=6, alpha=0.35, label=None)
        idx = np.digitize(x, edges)
        centers, means = [], []
        for b in np.unique(idx):
            sel = idx == b
            centers.append(np.exp(np.mean(np.log(x[sel]))))
            means.append(y[sel].mean())
        ax.plot(
            centers,
            means,
            "-o",
            ms=3,
            color=pts.get_facecolor()[0][:3],
            label=f"{label} (mean AP {y.mean():.1f})",
        )
    ax.set_xscale("log")
    ax.set_xlim(0.8, xmax * 1.5)
    ax.set_ylim(-2, 102)
    ax.set_xlabel("training images containing the class (log scale)")
    ax.set_ylabel("per-class AP (%)")
    if title:
        ax.set_title(title, pad=14)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
