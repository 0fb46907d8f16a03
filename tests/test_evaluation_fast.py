"""The fast backend's own paths: classes evaluated in groups on their own images, and the garbage
collector paused while it runs (restored as it was)."""
import gc

import numpy as np
import pytest
from test_evaluation import _lvis_api, _random_data

import lt_det.evaluation.backends.fast as fast_backend
from lt_det.evaluation import evaluate_lvis
from lt_det.evaluation.ground_truth import LVISGroundTruth


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_class_groups_change_nothing(monkeypatch, iou_type):
    """One call per class (a call costs nothing) and one call for all classes (a call costs more
    than any grid) give the same tables, and lvis-api's metrics."""
    gt, dets = _random_data(0, segm=iou_type == "segm")
    lvis_gt = LVISGroundTruth(gt)
    ref = _lvis_api(gt, dets, iou_type, max_dets=12)
    runs = {}
    for cost, num_groups in ((0, len(lvis_gt.cat_ids)), (10**9, 1)):
        monkeypatch.setattr(fast_backend, "_CALL_COST_CELLS", cost)
        groups = fast_backend._class_groups(lvis_gt, lvis_gt.cat_ids, lvis_gt.img_ids)
        assert len(groups) == num_groups
        assert sorted(c for members, _ in groups for c in members) == lvis_gt.cat_ids.tolist()
        for members, images in groups:
            assert np.array_equal(images, lvis_gt.relevant_images(members))
        runs[cost] = evaluate_lvis(
            gt, dets, iou_type=iou_type, backend="fast", class_chunk=0, max_dets_per_image=12
        )
    assert np.array_equal(runs[0].precision, runs[10**9].precision)
    assert np.array_equal(runs[0].recall, runs[10**9].recall)
    for k, v in ref.items():
        assert runs[0].metrics[k.replace("@300", "@12")] == pytest.approx(v, abs=1e-9), k


@pytest.mark.parametrize("enabled", [True, False])
def test_garbage_collector_state_is_restored(enabled):
    gt, dets = _random_data(1)
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        evaluate_lvis(gt, dets, backend="fast")
        assert gc.isenabled() == enabled
    finally:
        gc.enable() if was else gc.disable()
