"""The fast backend's own paths (hotcoco's LVIS mode behind lt_det's rules): ids handed over as
positions, class chunks, more than 300 detections per image (AP-fixed), and a loud refusal of a
hotcoco release it was not built for."""
import copy

import numpy as np
import pytest
from test_evaluation import _lvis_api, _random_data

import lt_det.evaluation.backends.fast as fast_backend
from lt_det.errors import LTDetError
from lt_det.evaluation import evaluate_lvis, get_lvis_backend


def _renumbered(gt, dets, img_base, cat_base):
    """The same data with image ids ``img_base + i`` and category ids ``cat_base + c``."""
    gt, dets = copy.deepcopy(gt), copy.deepcopy(dets)
    for img in gt["images"]:
        img["id"] += img_base
        img["neg_category_ids"] = [c + cat_base for c in img["neg_category_ids"]]
        img["not_exhaustive_category_ids"] = [
            c + cat_base for c in img["not_exhaustive_category_ids"]
        ]
    for a in gt["annotations"]:
        a["image_id"] += img_base
        a["category_id"] += cat_base
    for c in gt["categories"]:
        c["id"] += cat_base
    for d in dets:
        d["image_id"] += img_base
        d["category_id"] += cat_base
    return gt, dets


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_ids_beyond_float64_precision_change_nothing(iou_type):
    """Ids of 2**60 and more (lt_det accepts int64 ids; a float64 holds integers exactly only up
    to 2**53) give lvis-api's metrics of the small ids, in every class."""
    gt, dets = _random_data(3, segm=iou_type == "segm")
    ref = _lvis_api(gt, dets, iou_type)
    big_gt, big_dets = _renumbered(gt, dets, 2**62, 2**60)
    r = evaluate_lvis(big_gt, big_dets, iou_type=iou_type, backend="fast")
    small = evaluate_lvis(gt, dets, iou_type=iou_type, backend="fast")
    assert np.array_equal(r.precision, small.precision)
    for k, v in ref.items():
        assert r.metrics[k] == pytest.approx(v, abs=1e-9), k


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_class_chunks_change_nothing(iou_type):
    gt, dets = _random_data(0, segm=iou_type == "segm")
    runs = [
        evaluate_lvis(gt, dets, iou_type=iou_type, backend="fast", class_chunk=c)
        for c in (0, 1, 5)
    ]
    for r in runs[1:]:
        assert np.array_equal(r.precision, runs[0].precision)
        assert np.array_equal(r.recall, runs[0].recall)


def test_more_than_300_detections_per_image_under_ap_fixed():
    """AP-fixed has no per-image cap: an image with 400 evaluated detections keeps them all (the
    backend's own cap is set above every image's count), as the lvis backend does."""
    gt, dets = _random_data(2, num_images=3)
    rng = np.random.default_rng(0)
    img, cat = gt["images"][0]["id"], gt["annotations"][0]["category_id"]
    assert gt["annotations"][0]["image_id"] == img
    for k in range(400):
        w, h = rng.uniform(3, 30, 2)
        dets.append({"image_id": img, "category_id": cat, "score": float(rng.random()) * 0.5,
                     "bbox": [float(rng.uniform(0, 60)), float(rng.uniform(0, 60)), w, h]})
    fast = evaluate_lvis(gt, dets, backend="fast", ap_fixed=True)
    ref = evaluate_lvis(gt, dets, backend="lvis", ap_fixed=True)
    assert fast.info["num_detections_evaluated"] > 400
    assert np.allclose(fast.precision, ref.precision, atol=1e-12, rtol=0)
    assert np.allclose(fast.recall, ref.recall, atol=1e-12, rtol=0)


def test_a_hotcoco_release_it_was_not_built_for_is_refused(monkeypatch):
    import hotcoco

    monkeypatch.setattr(fast_backend, "_CHECKED", [])
    monkeypatch.setattr(hotcoco, "__version__", "9.0.0")
    with pytest.raises(LTDetError) as e:
        get_lvis_backend("fast")
    msg = str(e.value)
    assert "hotcoco 9.0.0" in msg and "hotcoco==1.3.0" in msg and "'lvis' backend" in msg


def test_mask_areas_of_many_results_equal_each_masks_own_area():
    """Mask areas are computed in chunks (pycocotools under numpy 2 overflows from 256 RLEs in
    one call): 600 masks of known pixel counts keep their own areas and order."""
    import numpy as np
    from pycocotools import mask as mask_util

    from lt_det.evaluation.detections import DetectionTable

    results = []
    for i in range(600):
        m = np.zeros((20, 30), dtype=np.uint8, order="F")
        m[: 1 + i % 20, : 1 + i % 30] = 1  # (1 + i % 20) * (1 + i % 30) pixels
        rle = mask_util.encode(m)
        rle["counts"] = rle["counts"].decode()
        results.append({"image_id": 1, "category_id": 1, "score": 0.5, "segmentation": rle})
    area = DetectionTable.from_results(results).with_area("segm").area
    assert area.tolist() == [(1 + i % 20) * (1 + i % 30) for i in range(600)]


@pytest.mark.parametrize("offset", [0, 2**16, -5, 2**40])  # radix path (16-bit keys), lexsort
def test_top_k_per_group_keeps_what_a_stable_sort_per_group_keeps(offset):
    """The rows lvis-api keeps: per group, Python's stable ``sorted(..., reverse=True)`` by score
    (ties in row order), the first k; on many ties, for both sorting paths."""
    from lt_det.evaluation.detections import top_k_per_group

    rng = np.random.default_rng(3)
    group = rng.integers(0, 40, 3000) + offset
    score = rng.integers(0, 6, 3000) / 5.0  # many ties
    for k in (1, 7, 100):
        expected = []
        for g in np.unique(group):
            rows = np.flatnonzero(group == g).tolist()
            expected += sorted(rows, key=lambda i: score[i], reverse=True)[:k]
        assert top_k_per_group(group, score, k).tolist() == sorted(expected)


def test_the_progress_bar_counts_every_class_from_where_it_appears(capsys):
    from lt_det.evaluation.lvis_eval import _progress_bar

    assert list(_progress_bar(range(0, 10, 3), "LVIS bbox", 3, 10, after_s=-1)) == [0, 3, 6, 9]
    err = capsys.readouterr().err
    assert "LVIS bbox" in err and "10/10" in err


def test_gc_paused_nests_and_restores_the_collector_state():
    import gc

    from lt_det.evaluation._json import gc_paused

    was = gc.isenabled()
    try:
        for start in (True, False):
            gc.enable() if start else gc.disable()
            with gc_paused():
                assert not gc.isenabled()
                with gc_paused():
                    assert not gc.isenabled()
                assert not gc.isenabled()  # the inner block does not re-enable it
            assert gc.isenabled() == start
        gc.enable()
        with pytest.raises(ValueError):
            with gc_paused():
                raise ValueError
        assert gc.isenabled()  # restored on an error too
    finally:
        gc.enable() if was else gc.disable()


def test_reading_results_leaves_the_collector_enabled(tmp_path):
    import gc
    import json

    from lt_det.evaluation.detections import DetectionTable

    path = tmp_path / "r.json"
    path.write_text(json.dumps([{"image_id": 1, "category_id": 1, "score": 0.5,
                                 "bbox": [0, 0, 2, 2]}]))
    assert gc.isenabled()
    table = DetectionTable.from_results(str(path))
    assert gc.isenabled() and len(table) == 1


@pytest.mark.parametrize("lo, span", [(1, 1203), (-5, 40), (2**62, 2**40), (-(2**63), 2**63)])
def test_id_positions_table_and_search_agree(lo, span):
    """positions(): a table lookup where ids span few integers, a sorted search beyond; both
    give np.searchsorted's positions, and not-found for ids outside or between the known ones."""
    from lt_det.evaluation.ground_truth import POSITION_TABLE_SIZE, positions

    rng = np.random.default_rng(0)
    known = np.unique(np.r_[lo, lo + span - 1, lo + rng.integers(0, span, 300, dtype=np.int64)])
    probe = np.r_[known, known[:-1] + 1, lo - 1 if lo > -(2**63) else lo, 2**63 - 1, -(2**63)]
    pos, found = positions(known, probe)
    expected = np.isin(probe, known)
    assert np.array_equal(found, expected)
    assert np.array_equal(pos[found], np.searchsorted(known, probe[found]))
    assert (pos[~found] == 0).all()
    assert (span <= POSITION_TABLE_SIZE) == (int(known[-1]) - int(known[0]) < POSITION_TABLE_SIZE)


def test_evaluated_pairs_table_and_sorted_search_agree(monkeypatch):
    """is_evaluated(): the (images x classes) table and the sorted search of the pair keys that
    replaces it on very large ground truths answer the same."""
    import lt_det.evaluation.ground_truth as ground_truth

    gt = ground_truth.LVISGroundTruth(_random_data(4, num_images=12)[0])
    img = np.repeat(np.arange(len(gt.img_ids)), len(gt.cat_ids))
    cat = np.tile(np.arange(len(gt.cat_ids)), len(gt.img_ids))
    expected = np.isin(img * len(gt.cat_ids) + cat, gt.evaluated_pairs())
    assert 0 < expected.sum() < expected.size
    table = gt.is_evaluated(img, cat)
    assert gt._evaluated_table is not None and np.array_equal(table, expected)
    monkeypatch.setattr(ground_truth, "EVALUATED_TABLE_CELLS", 0)
    gt._evaluated_table = None
    assert np.array_equal(gt.is_evaluated(img, cat), expected) and gt._evaluated_table is None
