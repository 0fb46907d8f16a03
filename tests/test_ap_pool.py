"""AP-pool (lt_det.evaluation.ap_pool) against a direct implementation of its definition on a
tiny hand-made set, and against lvis-api's per-class AP for a pool of one class."""
import numpy as np
import pytest

from lt_det.evaluation import evaluate_lvis
from lt_det.evaluation.ap_pool import ap_pool_metrics
from lt_det.evaluation.detections import DetectionTable
from lt_det.evaluation.ground_truth import LVISGroundTruth


def _img(i, neg=(), not_exh=()):
    return {"id": i, "height": 100, "width": 100, "neg_category_ids": list(neg),
            "not_exhaustive_category_ids": list(not_exh)}


def _ann(aid, img, cat, box):
    return {"id": aid, "image_id": img, "category_id": cat, "bbox": list(box),
            "area": float(box[2] * box[3])}


# class 1 rare, class 2 common, class 3 frequent
GT = {
    "images": [_img(1, neg=[3]), _img(2, not_exh=[2]), _img(3, neg=[1, 2])],
    "annotations": [
        _ann(1, 1, 1, (10, 10, 20, 20)),
        _ann(2, 1, 2, (50, 50, 30, 30)),
        _ann(3, 2, 2, (0, 0, 40, 40)),
        _ann(4, 2, 3, (60, 10, 20, 30)),
        _ann(5, 3, 3, (5, 5, 50, 50)),
        _ann(6, 3, 3, (60, 60, 30, 30)),
    ],
    "categories": [
        {"id": 1, "name": "a", "frequency": "r", "image_count": 3},
        {"id": 2, "name": "b", "frequency": "c", "image_count": 30},
        {"id": 3, "name": "c", "frequency": "f", "image_count": 300},
    ],
}
DETS = [  # image, class, box, score: hits at various IoUs, misses, a not-exhaustive miss
    (1, 1, (11, 11, 20, 20), 0.9),
    (1, 1, (12, 10, 18, 21), 0.3),
    (1, 2, (52, 48, 30, 30), 0.6),
    (1, 3, (10, 10, 20, 20), 0.7),  # class 3 is negative in image 1: a false positive
    (2, 2, (0, 0, 30, 42), 0.5),
    (2, 2, (70, 70, 10, 10), 0.95),  # unmatched, class 2 not exhaustive in image 2: ignored
    (2, 3, (60, 12, 20, 26), 0.4),
    (3, 3, (5, 5, 45, 50), 0.8),
    (3, 3, (61, 58, 30, 33), 0.2),
    (3, 1, (0, 0, 10, 10), 0.85),  # class 1 negative in image 3: a false positive
]


def _iou(a, b):
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _reference_ap_pool(classes):
    """The definition, with plain loops: LVIS matching per (image, class), then one pooled
    precision-recall curve per IoU threshold, 101-point interpolated, averaged."""
    freq = {c["id"]: c["frequency"] for c in GT["categories"]}
    not_exh = {im["id"]: set(im["not_exhaustive_category_ids"]) for im in GT["images"]}
    dets = [d for d in DETS if d[1] in classes]
    num_gt = sum(1 for a in GT["annotations"] if a["category_id"] in classes)
    aps = []
    for t in np.linspace(0.5, 0.95, 10):
        outcome = {}  # det index -> "tp" | "fp" | "ignore"
        for img in {d[0] for d in dets}:
            for c in classes:
                idx = sorted((i for i, d in enumerate(dets) if d[0] == img and d[1] == c),
                             key=lambda i: -dets[i][3])
                gts = [a["bbox"] for a in GT["annotations"]
                       if a["image_id"] == img and a["category_id"] == c]
                taken = set()
                for i in idx:
                    best, best_iou = None, min(t, 1 - 1e-10)
                    for j, g in enumerate(gts):
                        if j not in taken and _iou(dets[i][2], g) >= best_iou:
                            best, best_iou = j, _iou(dets[i][2], g)
                    if best is not None:
                        taken.add(best)
                        outcome[i] = "tp"
                    else:
                        outcome[i] = "ignore" if c in not_exh[img] else "fp"
        ranked = [i for i in sorted(range(len(dets)), key=lambda i: -dets[i][3])
                  if outcome[i] != "ignore"]
        tp = fp = 0
        points = []
        for i in ranked:
            tp += outcome[i] == "tp"
            fp += outcome[i] == "fp"
            points.append((tp / num_gt, tp / (tp + fp)))
        q = []
        for r in np.linspace(0, 1, 101):
            reachable = [p for rec, p in points if rec >= r]
            q.append(max(reachable) if reachable else 0.0)
        aps.append(np.mean(q))
    assert freq  # classes of every group are present in the set
    return float(np.mean(aps))


def _table(dets):
    return DetectionTable.from_results(
        [{"image_id": i, "category_id": c, "bbox": list(b), "score": s} for i, c, b, s in dets]
    )


def test_ap_pool_matches_the_definition():
    gt = LVISGroundTruth(GT)
    got = ap_pool_metrics(gt, _table(DETS))
    assert got["APpool"] == pytest.approx(_reference_ap_pool([1, 2, 3]), abs=1e-12)
    for g, c in (("r", 1), ("c", 2), ("f", 3)):
        assert got[f"APpool_{g}"] == pytest.approx(_reference_ap_pool([c]), abs=1e-12)
    assert 0 < got["APpool"] < 1


@pytest.mark.parametrize("backend", ["lvis", "fast"])
def test_pool_of_one_class_is_that_class_ap(backend):
    # one class per frequency group: each group's pooled AP is that class's AP (lvis-api's
    # matching and summary), which cross-checks the matching rules
    res = evaluate_lvis(GT, [
        {"image_id": i, "category_id": c, "bbox": list(b), "score": s} for i, c, b, s in DETS
    ], backend=backend, ap_pool=True)
    m = res.metrics
    for g in ("r", "c", "f"):
        assert m[f"APpool_{g}"] == pytest.approx(m[f"AP{g}"], abs=1e-12)


def test_ap_pool_sees_cross_class_calibration_ap_does_not():
    scaled = [(i, c, b, s * (0.05 if c == 3 else 1.0)) for i, c, b, s in DETS]
    a = evaluate_lvis(GT, _table(DETS), ap_pool=True).metrics
    b = evaluate_lvis(GT, _table(scaled), ap_pool=True).metrics
    for k in ("AP", "APr", "APc", "APf", "APpool_r", "APpool_c", "APpool_f"):
        assert a[k] == pytest.approx(b[k], abs=1e-12), k  # per-class ranking unchanged
    assert abs(a["APpool"] - b["APpool"]) > 1e-3
