"""LVIS evaluation: hand-derived APs, LVIS's negative / not-exhaustive rules, the per-image and
AP-fixed cuts, both backends against each other and lvis-api, chunking, and the detectron2
evaluator end to end on a registered tiny dataset."""
import copy
import csv
import json

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances
from lvis import LVISEval, LVISResults
from pycocotools import mask as mask_util

from lt_det import add_lt_config
from lt_det.errors import LTDetError
from lt_det.evaluation import (
    LTLVISEvaluator,
    build_lvis_evaluator,
    evaluate_lvis,
    read_per_class,
    top_k_per_group,
)
from lt_det.evaluation.backends.lvis_api import _lvis_from_dict

BACKENDS = ["fast", "lvis"]
H = W = 100


def _img(i, neg=(), not_exh=()):
    return {
        "id": i,
        "height": H,
        "width": W,
        "neg_category_ids": list(neg),
        "not_exhaustive_category_ids": list(not_exh),
    }


def _ann(aid, img, cat, box):
    x, y, w, h = box
    return {
        "id": aid,
        "image_id": img,
        "category_id": cat,
        "bbox": list(box),
        "area": float(w * h),
        "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
    }


def _cats(*ids, freq="f"):
    return [{"id": c, "name": f"c{c}", "frequency": freq, "image_count": 500} for c in ids]


def _det(img, cat, box, score, segm=False):
    d = {"image_id": img, "category_id": cat, "bbox": list(box), "score": score}
    if segm:
        x, y, w, h = box
        rles = mask_util.frPyObjects([[x, y, x + w, y, x + w, y + h, x, y + h]], H, W)
        d["segmentation"] = mask_util.merge(rles)
    return d


def _lvis_api(gt, results, iou_type="bbox", max_dets=300):
    """Metrics of the untouched official lvis-api."""
    lvis_gt = _lvis_from_dict(copy.deepcopy(gt))
    res = copy.deepcopy(results)
    if iou_type == "segm":
        for r in res:
            r.pop("bbox", None)
    ev = LVISEval(lvis_gt, LVISResults(lvis_gt, res, max_dets=max_dets), iou_type)
    ev.run()
    return ev.get_results()


def _ap(result, cat_id):
    for row in result.per_class():
        if row["id"] == cat_id:
            return row["AP"]
    raise KeyError(cat_id)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_perfect_detector_has_ap_one(backend, iou_type):
    gt = {
        "images": [_img(1, neg=[3]), _img(2)],
        "annotations": [
            _ann(1, 1, 1, (10, 10, 20, 20)),
            _ann(2, 1, 2, (50, 50, 40, 30)),
            _ann(3, 2, 1, (5, 60, 60, 35)),
        ],
        "categories": _cats(1, 2, 3),
    }
    dets = [
        _det(a["image_id"], a["category_id"], a["bbox"], 0.9, iou_type == "segm")
        for a in gt["annotations"]
    ]
    r = evaluate_lvis(gt, dets, iou_type=iou_type, backend=backend)
    assert r.metrics["AP"] == pytest.approx(1.0)
    assert r.metrics["AR@300"] == pytest.approx(1.0)
    assert _ap(r, 1) == pytest.approx(1.0) and _ap(r, 2) == pytest.approx(1.0)
    assert _ap(r, 3) is None  # class 3 has no gt: not evaluated (-1 in lvis-api)
    ref = _lvis_api(gt, dets, iou_type)
    for k, v in ref.items():
        assert r.metrics[k] == pytest.approx(v, abs=1e-12), k


@pytest.mark.parametrize("backend", BACKENDS)
def test_class_without_detections_has_ap_zero_and_class_without_gt_is_ignored(backend):
    # class 1: perfect; class 2: gt, no detection -> 0; class 3: no gt anywhere, a detection
    # in an image listing it as negative -> not evaluated, not in the mean.
    gt = {
        "images": [_img(1, neg=[3]), _img(2)],
        "annotations": [_ann(1, 1, 1, (10, 10, 20, 20)), _ann(2, 2, 2, (30, 30, 30, 30))],
        "categories": _cats(1, 2) + _cats(3, freq="r"),
    }
    dets = [_det(1, 1, (10, 10, 20, 20), 0.9), _det(1, 3, (0, 0, 10, 10), 0.8)]
    r = evaluate_lvis(gt, dets, backend=backend)
    assert _ap(r, 1) == pytest.approx(1.0)
    assert _ap(r, 2) == 0.0
    assert _ap(r, 3) is None
    assert r.metrics["AP"] == pytest.approx(0.5)
    assert r.metrics["APr"] == -1  # the only rare class has no gt
    ref = _lvis_api(gt, dets)
    for k, v in ref.items():
        assert r.metrics[k] == pytest.approx(v, abs=1e-12), k


def _fed_gt():
    """Class 1 positive in images 1 and 3 (3: not exhaustive), negative in 2, unknown in 4."""
    return {
        "images": [_img(1), _img(2, neg=[1]), _img(3, not_exh=[1]), _img(4)],
        "annotations": [
            _ann(1, 1, 1, (10, 10, 30, 30)),
            _ann(2, 3, 1, (50, 50, 30, 30)),
            _ann(3, 4, 2, (10, 10, 30, 30)),
        ],
        "categories": _cats(1, 2),
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_negative_and_not_exhaustive_categories(backend):
    """Ranked: 0.99 img 4 (class neither positive nor negative there: dropped), 0.95 img 3
    unmatched (not exhaustive: ignored), 0.9 img 1 TP, 0.8 img 2 FP (negative), 0.7 img 3 TP.
    With 2 gt: recall .5, .5, 1 and precision 1, 1/2, 2/3 -> interpolated 1, 2/3, 2/3. The 101
    recall points 0..0.5 (51 of them) get 1, the 50 above get 2/3: AP = (51 + 50 * 2/3) / 101."""
    gt = _fed_gt()
    dets = [
        _det(4, 1, (10, 10, 30, 30), 0.99),
        _det(3, 1, (0, 0, 20, 20), 0.95),
        _det(1, 1, (10, 10, 30, 30), 0.9),
        _det(2, 1, (10, 10, 30, 30), 0.8),
        _det(3, 1, (50, 50, 30, 30), 0.7),
    ]
    r = evaluate_lvis(gt, dets, backend=backend)
    expected = (51 + 50 * 2 / 3) / 101
    assert _ap(r, 1) == pytest.approx(expected, abs=1e-12)
    assert _ap(r, 2) == 0.0
    assert _lvis_api(gt, dets)["AP"] == pytest.approx((expected + 0) / 2, abs=1e-12)
    assert r.metrics["AP"] == pytest.approx((expected + 0) / 2, abs=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_image_cap_is_across_classes(backend):
    """Image 1: class 2 perfect (0.9), class 1 wrong box (0.8), class 1 perfect (0.3).
    A cap of 2 per image drops the 0.3 detection (a per-(image, class) cap of 2 would not):
    AP_1 = 0. A cap of 3 keeps it: FP then TP, precision 1/2 at recall 1: AP_1 = 0.5."""
    gt = {
        "images": [_img(1)],
        "annotations": [_ann(1, 1, 1, (10, 10, 30, 30)), _ann(2, 1, 2, (60, 60, 30, 30))],
        "categories": _cats(1, 2),
    }
    dets = [
        _det(1, 2, (60, 60, 30, 30), 0.9),
        _det(1, 1, (0, 50, 20, 20), 0.8),
        _det(1, 1, (10, 10, 30, 30), 0.3),
    ]
    r2 = evaluate_lvis(gt, dets, backend=backend, max_dets_per_image=2)
    r3 = evaluate_lvis(gt, dets, backend=backend, max_dets_per_image=3)
    assert _ap(r2, 1) == 0.0 and _ap(r2, 2) == pytest.approx(1.0)
    assert _ap(r3, 1) == pytest.approx(0.5, abs=1e-12)
    assert r2.metrics["AP"] == pytest.approx(_lvis_api(gt, dets, max_dets=2)["AP"], abs=1e-12)
    assert r3.metrics["AP"] == pytest.approx(_lvis_api(gt, dets, max_dets=3)["AP"], abs=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ap_fixed_caps_per_class_not_per_image(backend):
    """Class 1 dets: 0.9 img 2 FP, 0.8 img 2 FP, 0.5 img 1 TP. AP-fixed with 2 per class keeps
    only the FPs (AP 0); with 3 per class all, even with a per-image cap of 1 that the standard
    protocol would apply: precision 1/3 at recall 1, AP = 1/3."""
    gt = {
        "images": [_img(1), _img(2, neg=[1])],
        "annotations": [_ann(1, 1, 1, (10, 10, 30, 30)), _ann(2, 2, 2, (10, 10, 30, 30))],
        "categories": _cats(1, 2),
    }
    dets = [
        _det(2, 1, (10, 10, 30, 30), 0.9),
        _det(2, 1, (50, 50, 30, 30), 0.8),
        _det(1, 1, (10, 10, 30, 30), 0.5),
    ]
    kw = dict(backend=backend, ap_fixed=True, max_dets_per_image=1)
    assert _ap(evaluate_lvis(gt, dets, max_dets_per_class=2, **kw), 1) == 0.0
    fixed = evaluate_lvis(gt, dets, max_dets_per_class=3, **kw)
    assert _ap(fixed, 1) == pytest.approx(1 / 3)
    # No per-image cap: the recall key is AR@-1, as the AP-fixed reference names it.
    assert "AR@-1" in fixed.metrics and "AR@1" not in fixed.metrics
    # The standard protocol with the same per-image cap keeps one det per image.
    std = evaluate_lvis(gt, dets, backend=backend, max_dets_per_image=1)
    assert _ap(std, 1) == pytest.approx(0.5)


def test_top_k_per_group_breaks_ties_by_order():
    group = np.array([1, 1, 1, 2, 2, 1])
    score = np.array([0.5, 0.9, 0.5, 0.1, 0.2, 0.5])
    assert top_k_per_group(group, score, 2).tolist() == [0, 1, 3, 4]
    assert top_k_per_group(group, score, -1).tolist() == list(range(6))


def _random_data(seed, segm=False, num_images=15, num_classes=12):
    rng = np.random.default_rng(seed)
    cats = [
        {"id": 10 * (k + 1), "name": f"c{k}", "frequency": "rcf"[k % 3]} for k in range(num_classes)
    ]
    ids = [c["id"] for c in cats]
    images, anns, dets = [], [], []
    for i in range(1, num_images + 1):
        chosen = rng.choice(ids, size=6, replace=False)
        pos, neg = chosen[: rng.integers(1, 4)], chosen[4:]
        images.append(
            _img(i, neg=neg.tolist(), not_exh=[int(c) for c in pos if rng.random() < 0.3])
        )
        for c in pos:
            for _ in range(rng.integers(1, 4)):
                w, h = rng.uniform(3, 60, 2)
                x, y = rng.uniform(0, W - w), rng.uniform(0, H - h)
                anns.append(_ann(len(anns) + 1, i, int(c), (x, y, w, h)))
                for _ in range(2):
                    j = rng.normal(0, 4, 4)
                    box = (x + j[0], y + j[1], max(2, w + j[2]), max(2, h + j[3]))
                    cls = int(c) if rng.random() < 0.8 else int(rng.choice(ids))
                    dets.append(_det(i, cls, box, float(np.float32(rng.random())), segm))
        for _ in range(rng.integers(3, 12)):
            w, h = rng.uniform(3, 50, 2)
            box = (rng.uniform(0, W - w), rng.uniform(0, H - h), w, h)
            dets.append(
                _det(i, int(rng.choice(ids)), box, float(np.float32(rng.random() * 0.6)), segm)
            )
    return {"images": images, "annotations": anns, "categories": cats}, dets


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_backends_agree_with_lvis_api_and_chunking_changes_nothing(iou_type):
    gt, dets = _random_data(0, segm=iou_type == "segm")
    ref = _lvis_api(gt, dets, iou_type, max_dets=12)
    runs = {
        (b, c): evaluate_lvis(
            gt, dets, iou_type=iou_type, backend=b, class_chunk=c, max_dets_per_image=12
        )
        for b in BACKENDS
        for c in (0, 5)
    }
    for (b, c), r in runs.items():
        for k, v in ref.items():
            assert r.metrics[k.replace("@300", "@12")] == pytest.approx(v, abs=1e-9), (b, c, k)
    for b in BACKENDS:
        assert np.array_equal(runs[b, 0].precision, runs[b, 5].precision)
        assert np.array_equal(runs[b, 0].recall, runs[b, 5].recall)
        assert runs[b, 0].metrics == runs[b, 5].metrics
    assert np.allclose(runs["fast", 0].precision, runs["lvis", 0].precision, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_segm_size_ranges_use_mask_area(backend):
    """An unmatched detection with a small mask but a large box: it counts as an FP among small
    objects (APs 0.5), as it would not if its box area were used (lvis-api with boxes: 1)."""
    gt = {
        "images": [_img(1)],
        "annotations": [_ann(1, 1, 1, (10, 10, 10, 10))],
        "categories": _cats(1),
    }
    fp = _det(1, 1, (60, 60, 8, 8), 0.9, segm=True)
    fp["bbox"] = [0, 0, 90, 90]
    dets = [fp, _det(1, 1, (10, 10, 10, 10), 0.5, segm=True)]
    r = evaluate_lvis(gt, dets, iou_type="segm", backend=backend)
    assert r.metrics["APs"] == pytest.approx(0.5, abs=1e-12)
    lvis_gt = _lvis_from_dict(copy.deepcopy(gt))
    ev = LVISEval(lvis_gt, LVISResults(lvis_gt, copy.deepcopy(dets)), "segm")
    ev.run()
    assert ev.get_results()["APs"] == pytest.approx(1.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("key", ["neg_category_ids", "not_exhaustive_category_ids"])
def test_ground_truth_without_federated_keys_is_rejected(tmp_path, backend, key):
    gt = _fed_gt()
    del gt["images"][2][key]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    with pytest.raises(LTDetError) as e:
        evaluate_lvis(str(path), [_det(1, 1, (10, 10, 30, 30), 0.9)], backend=backend)
    msg = str(e.value)
    assert str(path) in msg and "image id 3" in msg and key in msg


def test_unknown_backend_and_foreign_image_fail_clearly():
    gt = _fed_gt()
    with pytest.raises(LTDetError, match="fast"):
        evaluate_lvis(gt, [_det(1, 1, (10, 10, 30, 30), 0.9)], backend="nope")
    with pytest.raises(LTDetError, match="image ids not in"):
        evaluate_lvis(gt, [_det(99, 1, (10, 10, 30, 30), 0.9)])


def test_results_of_another_split_or_task_name_the_results_file(tmp_path):
    """A results file of another split names itself, its first foreign result and the gt; box
    results evaluated as segm (and masks as bbox) name the other iou type."""
    gt = _fed_gt()
    dets = [_det(1, 1, (10, 10, 30, 30), 0.9), _det(99, 1, (10, 10, 30, 30), 0.8)]
    path = tmp_path / "dt.json"
    path.write_text(json.dumps(dets))
    with pytest.raises(LTDetError) as e:
        evaluate_lvis(gt, str(path))
    assert f"'{path}': 1 results have image ids not in" in str(e.value)
    assert "result 1 (0-based), image_id 99" in str(e.value)
    with pytest.raises(LTDetError) as e:
        evaluate_lvis(gt, str(path), iou_type="segm")
    assert f"'{path}': 'segm' evaluation needs 'segmentation'" in str(e.value)
    assert "--iou-type bbox" in str(e.value)
    masks = [{k: v for k, v in d.items() if k != "bbox"} for d in dets[:1]]
    masks[0]["segmentation"] = {"size": [64, 64], "counts": "0"}
    path.write_text(json.dumps(masks))
    with pytest.raises(LTDetError, match="--iou-type segm"):
        evaluate_lvis(gt, str(path), iou_type="bbox")


# ------------------------------------------------------------------ detectron2 evaluator


def _register_tiny(tmp_path, name):
    """Two classes with LVIS ids 10 and 20 (contiguous 0, 1), registered with the metadata
    lt_det.data.register_lvis_format sets."""
    gt = {
        "images": [_img(1, neg=[20]), _img(2)],
        "annotations": [
            _ann(1, 1, 10, (10, 10, 30, 30)),
            _ann(2, 2, 10, (50, 40, 30, 40)),
            _ann(3, 2, 20, (5, 60, 20, 20)),
        ],
        "categories": [{"id": 10, "name": "a"}, {"id": 20, "name": "b"}],
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(gt))
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [])
    MetadataCatalog.get(name).set(
        json_file=str(path),
        image_root=str(tmp_path),
        evaluator_type="lvis",
        thing_classes=["a", "b"],
        thing_dataset_id_to_contiguous_id={10: 0, 20: 1},
        class_image_count=[{"id": 10, "image_count": 250}, {"id": 20, "image_count": 7}],
        class_instance_count=[400, 9],
        class_frequency=["f", "r"],
    )
    return gt


def _instances(anns, scores):
    inst = Instances((H, W))
    boxes = [
        [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
        for a in anns
    ]
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor([{10: 0, 20: 1}[a["category_id"]] for a in anns])
    masks = torch.zeros(len(anns), H, W, dtype=torch.bool)
    for k, a in enumerate(anns):
        x, y, w, h = [int(v) for v in a["bbox"]]
        masks[k, y : y + h, x : x + w] = True
    inst.pred_masks = masks
    return inst


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluator_end_to_end(tmp_path, backend):
    name = f"lt_eval_tiny_{backend}"
    gt = _register_tiny(tmp_path, name)
    out = tmp_path / "out"
    ev = LTLVISEvaluator(name, output_dir=str(out), backend=backend, class_chunk=1)
    ev.reset()
    by_img = {1: [], 2: []}
    for a in gt["annotations"]:
        by_img[a["image_id"]].append(a)
    # image 1: the class-10 box perfect, plus a class-20 FP (class 20 is negative there).
    # image 2: both perfect.
    fp = {"bbox": [60, 60, 20, 20], "category_id": 20}
    ev.process(
        [{"image_id": 1}, {"image_id": 2}],
        [
            {"instances": _instances(by_img[1] + [fp], [0.9, 0.95])},
            {"instances": _instances(by_img[2], [0.8, 0.7])},
        ],
    )
    res = ev.evaluate()
    assert set(res) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        m = res[task]
        assert list(m) == ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf", "AR@300"]
        # class 10: AP 100; class 20: FP (0.95) above its TP: precision 1/2 at recall 1 -> 50.
        assert m["APf"] == pytest.approx(100.0)
        assert m["APr"] == pytest.approx(50.0)
        assert m["AP"] == pytest.approx(75.0)
        assert np.isnan(m["APc"])
        doc = read_per_class(str(out / f"per_class_ap_{task}.json"))
        rows = {c["id"]: c for c in doc["classes"]}
        assert rows[10]["image_count"] == 250 and rows[20]["frequency"] == "r"
        assert rows[20]["AP"] == pytest.approx(50.0)
        with open(out / f"per_class_ap_{task}.csv") as f:
            csv_rows = list(csv.DictReader(f))
        assert [r["id"] for r in csv_rows] == ["10", "20"] and csv_rows[1]["image_count"] == "7"
    # The dumped results file evaluates offline to the same numbers.
    for task in ("bbox", "segm"):  # segm: RLE counts come back from json as str
        offline = evaluate_lvis(gt, str(out / "lvis_instances_results.json"), iou_type=task)
        assert offline.metrics_percent()["AP"] == pytest.approx(res[task]["AP"])


def test_build_lvis_evaluator_reads_config(tmp_path):
    _register_tiny(tmp_path, "lt_eval_cfg_train")
    _register_tiny(tmp_path, "lt_eval_cfg_test")
    cfg = add_lt_config(get_cfg())
    cfg.DATASETS.TRAIN = ("lt_eval_cfg_train",)
    cfg.TEST.LVIS.BACKEND = "lvis"
    cfg.TEST.LVIS.AP_FIXED = True
    cfg.TEST.LVIS.CLASS_CHUNK = 7
    cfg.TEST.DETECTIONS_PER_IMAGE = 300
    ev = build_lvis_evaluator(cfg, "lt_eval_cfg_test", str(tmp_path))
    assert (ev._backend, ev._ap_fixed, ev._class_chunk, ev._max_dets) == ("lvis", True, 7, 300)
    assert ev._tasks == ("bbox",)
    assert ev._class_stats["image_count"] == {10: 250, 20: 7}
    cfg.TEST.LVIS.BACKEND = "nope"
    with pytest.raises(LTDetError, match="'fast', 'lvis'"):
        build_lvis_evaluator(cfg, "lt_eval_cfg_test")
