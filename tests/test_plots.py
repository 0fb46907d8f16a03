"""The long-tail plots stay readable at 12 and at LVIS's 1203 classes."""
import itertools

import numpy as np
import pytest

from lt_det.errors import LTDetError
from lt_det.evaluation.plot import (
    BAND_LABEL_GID,
    ap_vs_frequency_figure,
    classifier_norms_figure,
    save_figure,
)


def _classes(k: int, seed: int = 0):
    """k classes with log-uniform image counts 1..8000 and LVIS groups from the counts."""
    rng = np.random.default_rng(seed)
    counts = np.exp(rng.uniform(0, 9, k)).astype(int) + 1
    freq = ["r" if c <= 10 else "c" if c <= 100 else "f" for c in counts]
    return counts, freq, rng


def _band_labels(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.findobj(lambda a: a.get_gid() == BAND_LABEL_GID)]
    return texts, [t.get_window_extent(renderer) for t in texts]


def _check_readable(fig, tmp_path, name, max_labels=3):
    png = tmp_path / f"{name}.png"
    save_figure(fig, str(png))
    from matplotlib.image import imread

    h, w = imread(str(png)).shape[:2]
    assert (w, h) == tuple(round(v * fig.dpi) for v in fig.get_size_inches())
    texts, boxes = _band_labels(fig)
    assert 1 <= len(texts) <= max_labels
    for (ta, a), (tb, b) in itertools.combinations(zip(texts, boxes), 2):
        assert not a.overlaps(b), (ta.get_text(), tb.get_text())
    ax_box = fig.axes[0].get_window_extent()
    for t, box in zip(texts, boxes):
        assert ax_box.x0 <= box.x0 and box.x1 <= ax_box.x1, t.get_text()
    return [t.get_text() for t in texts]


@pytest.mark.parametrize("k", [12, 1203])
def test_classifier_norms_figure_one_band_per_group(k, tmp_path):
    counts, freq, rng = _classes(k)
    curves = {"joint": np.log1p(counts) / 9 + rng.normal(0, 0.02, k), "cRT": np.full(k, 0.5)}
    fig = classifier_norms_figure(curves, counts.tolist(), freq)
    labels = _check_readable(fig, tmp_path, f"norms_{k}")
    present = [g for g in ("frequent", "common", "rare") if g[0] in freq]
    assert [s.split(" (")[0] for s in labels] == present
    assert sum(int(s.split("(")[1].rstrip(")")) for s in labels) == k
    lo, hi = fig.axes[0].get_ylim()
    values = np.concatenate(list(curves.values()))
    assert lo <= values.min() and values.max() <= hi
    assert hi - lo < 2 * (values.max() - values.min())  # fitted, not anchored at zero


@pytest.mark.parametrize("k", [12, 1203])
def test_ap_vs_frequency_figure_fitted_and_titled_by_task(k, tmp_path):
    counts, _, rng = _classes(k, seed=1)
    ap = np.minimum(20.0, 3 * np.log1p(counts)) * rng.uniform(0.5, 1, k)
    titles = []
    for task in ("bbox", "segm"):
        doc = {
            "task": task,
            "classes": [{"image_count": int(c), "AP": float(a)} for c, a in zip(counts, ap)],
        }
        fig = ap_vs_frequency_figure([doc], ["run"])
        _check_readable(fig, tmp_path, f"ap_{k}_{task}")
        titles.append(fig.axes[0].get_title())
        lo, hi = fig.axes[0].get_ylim()
        assert lo <= ap.min() and ap.max() <= hi < 40  # low APs are not flattened by 0-100
    assert titles[0] != titles[1]


def test_ap_vs_frequency_narrow_count_range_labels_apart(tmp_path):
    # Evaluated classes spanning 8-12 training images: rare and common bands are both visible,
    # frequent is not drawn, and the two labels do not overlap.
    doc = {
        "task": "bbox",
        "classes": [
            {"image_count": c, "AP": a} for c, a in [(8, 3.0), (9, 4.0), (10, 2.0), (12, 6.0)]
        ],
    }
    labels = _check_readable(ap_vs_frequency_figure([doc], ["narrow"]), tmp_path, "narrow")
    assert labels == ["rare", "common"]


def test_band_labels_of_narrow_bands_do_not_overlap(tmp_path):
    # One frequent and one common class among twelve: two one-class bands side by side.
    counts = [500, 50] + [3] * 10
    freq = ["f", "c"] + ["r"] * 10
    fig = classifier_norms_figure({"joint": np.linspace(1, 0.2, 12)}, counts, freq)
    assert len(_check_readable(fig, tmp_path, "narrow_bands")) == 3


def test_ap_vs_frequency_refuses_mixed_tasks():
    doc = {"classes": [{"image_count": 5, "AP": 1.0}]}
    with pytest.raises(LTDetError, match="different tasks"):
        ap_vs_frequency_figure([dict(doc, task="bbox"), dict(doc, task="segm")], ["a", "b"])
