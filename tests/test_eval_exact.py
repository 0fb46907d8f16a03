"""The evaluator equals lvis-api where users check it, and refuses what lvis-api would refuse or
misread.

* Area 0: lvis-api leaves ground truth and detections of area 0 out of the evaluation
  (``LVIS.get_ann_ids`` keeps 0 < area < inf; the area of a result is the box's ``w * h`` for
  bbox, the mask's pixel count for segm). Each case runs the untouched lvis-api on the same
  hand-made files in the test and compares every metric of both lt_det backends to it.
* Ids: one rule set (:mod:`lt_det.lvis_json`) for training registration and evaluation; each
  refusal is checked in process and, for ``tools/lvis_eval.py``, as the user sees it (exit 2,
  one ``lt_det: error:`` line, no traceback, nothing written).
* Files written: strict JSON (``null``, never a bare ``NaN``) and UTF-8 per-class reports under
  the C locale.
"""
import copy
import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from lvis import LVIS, LVISEval, LVISResults
from pycocotools import mask as mask_util

from lt_det.data import register_lvis_format
from lt_det.data.lvis_format import read_lvis_json
from lt_det.errors import LTDetError
from lt_det.evaluation import evaluate_lvis, json_ready, read_per_class

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "lvis_eval.py")
COCO_100 = os.path.join(ROOT, "tests", "data", "coco_val2014_100.json.gz")
BACKENDS = ["fast", "lvis"]
H = W = 100


# ------------------------------------------------------------------ hand-made files
def _img(i, neg=(), not_exh=()):
    return {"id": i, "height": H, "width": W, "neg_category_ids": list(neg),
            "not_exhaustive_category_ids": list(not_exh)}


def _ann(aid, img, cat, box, area=None):
    x, y, w, h = box
    return {"id": aid, "image_id": img, "category_id": cat, "bbox": list(box),
            "area": float(w * h) if area is None else area,
            "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}


def _cats(*ids, freq="f"):
    return [{"id": c, "name": f"c{c}", "frequency": freq, "image_count": 500} for c in ids]


def _rle(box):
    """Compressed RLE (counts as str) of the box's pixels; an empty mask for w or h = 0."""
    x, y, w, h = (int(v) for v in box)
    m = np.zeros((H, W, 1), np.uint8, order="F")
    m[y : y + h, x : x + w] = 1
    rle = mask_util.encode(m)[0]
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _det(img, cat, box, score, segm=False):
    d = {"image_id": img, "category_id": cat, "score": score}
    if segm:
        d["segmentation"] = _rle(box)  # no box: segm areas are mask areas (detectron2's way)
    else:
        d["bbox"] = list(box)
    return d


def _two_images_class_1():
    """Class 1 with one box in each of two images (and class 2, negative in image 2)."""
    return {
        "images": [_img(1), _img(2, neg=[2])],
        "annotations": [_ann(1, 1, 1, (10, 10, 20, 20)), _ann(2, 2, 1, (30, 30, 20, 20))],
        "categories": _cats(1, 2),
    }


def _perfect(gt, segm=False, score=0.9):
    return [_det(a["image_id"], a["category_id"], a["bbox"], score - 0.01 * k, segm)
            for k, a in enumerate(gt["annotations"]) if a["area"] > 0]


def lvis_api(tmp_path, gt, results, iou_type, max_dets=300):
    """Metrics of the untouched lvis-api, reading the same files a user would give it."""
    gt_path, dt_path = tmp_path / "lvis_api_gt.json", tmp_path / "lvis_api_results.json"
    gt_path.write_text(json.dumps(gt))
    dt_path.write_text(json.dumps(results))
    lvis_gt = LVIS(str(gt_path))
    ev = LVISEval(lvis_gt, LVISResults(lvis_gt, str(dt_path), max_dets=max_dets), iou_type)
    ev.run()
    return ev.get_results()


def assert_equals_lvis_api(tmp_path, gt, results, iou_type, max_dets=300, closed_form=None):
    ref = lvis_api(tmp_path, gt, results, iou_type, max_dets)
    if closed_form is not None:
        assert ref["AP"] == pytest.approx(closed_form, abs=1e-12)
    for backend in BACKENDS:
        r = evaluate_lvis(copy.deepcopy(gt), copy.deepcopy(results), iou_type=iou_type,
                          backend=backend, max_dets_per_image=max_dets)
        for k, v in ref.items():
            k = k.replace("@300", f"@{max_dets}")  # lvis-api names AR@300 whatever its cap
            assert r.metrics[k] == pytest.approx(v, abs=1e-6), (backend, k, r.metrics[k], v)
    return ref


# ------------------------------------------------------------------ area 0, as lvis-api
def test_empty_masks_in_segm_results_are_not_evaluated(tmp_path):
    gt = _two_images_class_1()
    dets = _perfect(gt, segm=True)
    # Mask R-CNN writes empty masks for low-scoring boxes; here they even score highest.
    dets += [_det(1, 1, (60, 60, 0, 0), 0.99, segm=True), _det(2, 1, (5, 5, 0, 8), 0.98, True)]
    assert mask_util.area([d["segmentation"] for d in dets]).tolist() == [400, 400, 0, 0]
    assert_equals_lvis_api(tmp_path, gt, dets, "segm", closed_form=1.0)


def test_one_zero_width_detection_is_not_evaluated(tmp_path):
    gt = _two_images_class_1()
    dets = _perfect(gt) + [_det(2, 1, (30, 30, 0, 20), 0.99)]
    assert_equals_lvis_api(tmp_path, gt, dets, "bbox", closed_form=1.0)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_gt_box_of_width_0_and_area_0_is_not_ground_truth(tmp_path, iou_type):
    gt = _two_images_class_1()
    gt["annotations"].append(_ann(3, 1, 1, (60, 60, 0, 20)))  # area w * h = 0
    assert_equals_lvis_api(tmp_path, gt, _perfect(gt, iou_type == "segm"), iou_type,
                           closed_form=1.0)


def test_gt_box_of_width_0_with_a_positive_area_stays_ground_truth(tmp_path):
    # lvis-api filters on the json's area, not on the box: this gt stays, and is missed
    # (no box overlaps a box of width 0), so AP is that of recall 2/3.
    gt = _two_images_class_1()
    gt["annotations"].append(_ann(3, 1, 1, (60, 60, 0, 20), area=20.0))
    ref = assert_equals_lvis_api(tmp_path, gt, _perfect(gt), "bbox")
    assert ref["AP"] == pytest.approx(67 / 101)  # precision 1 at recall points 0 .. 0.66


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_gt_with_area_0_is_not_ground_truth(tmp_path, iou_type):
    gt = _two_images_class_1()
    gt["annotations"].append(_ann(3, 1, 1, (60, 60, 20, 20), area=0))
    assert_equals_lvis_api(tmp_path, gt, _perfect(gt, iou_type == "segm"), iou_type,
                           closed_form=1.0)


def test_gt_of_area_0_does_not_make_its_class_positive_in_the_image(tmp_path):
    # Image 3's only class-1 gt has area 0, so lvis-api does not evaluate class 1 there: the
    # high-scoring detection on it is neither a match nor a false positive.
    gt = _two_images_class_1()
    gt["images"].append(_img(3))
    gt["annotations"].append(_ann(3, 3, 1, (40, 40, 20, 20), area=0))
    dets = _perfect(gt) + [_det(3, 1, (40, 40, 20, 20), 0.99)]
    assert_equals_lvis_api(tmp_path, gt, dets, "bbox", closed_form=1.0)
    for backend in BACKENDS:
        assert evaluate_lvis(gt, dets, backend=backend).num_gt.tolist() == [2, 0]


def test_a_class_whose_only_gt_has_area_0_is_not_evaluated(tmp_path):
    gt = _two_images_class_1()
    gt["annotations"].append(_ann(3, 1, 2, (60, 60, 20, 20), area=0))  # class 2's only gt
    dets = _perfect(gt) + [_det(1, 2, (60, 60, 20, 20), 0.5)]
    assert_equals_lvis_api(tmp_path, gt, dets, "bbox", closed_form=1.0)
    r = evaluate_lvis(gt, dets)
    assert [row["AP"] for row in r.per_class()] == [pytest.approx(1.0), None]


def test_zero_area_detection_still_takes_a_place_of_the_per_image_cap(tmp_path):
    # lvis-api cuts to max_dets per image first (LVISResults), then drops area 0: with a cap of
    # 2 the empty box at 0.99 keeps its place and pushes out the second true box (0.5).
    gt = {"images": [_img(1)], "categories": _cats(1),
          "annotations": [_ann(1, 1, 1, (10, 10, 20, 20)), _ann(2, 1, 1, (50, 50, 30, 30))]}
    dets = [_det(1, 1, (70, 5, 0, 9), 0.99), _det(1, 1, (10, 10, 20, 20), 0.6),
            _det(1, 1, (50, 50, 30, 30), 0.5)]
    ref = assert_equals_lvis_api(tmp_path, gt, dets, "bbox", max_dets=2)
    assert ref["AP"] == pytest.approx(51 / 101)  # recall 1/2 at precision 1


def _coco_100():
    with gzip.open(COCO_100, "rt", encoding="utf-8") as f:
        return json.load(f)


def _coco_as_lvis(doc):
    """COCO ground truth with LVIS's fields: per image, classes detected there without gt are
    negative (every other one not exhaustive), groups r / c / f by category id; crowd regions
    left out (lvis-api has none)."""
    gt = copy.deepcopy(doc["ground_truth"])
    gt["annotations"] = [a for a in gt["annotations"] if not a["iscrowd"]]
    for a in gt["annotations"]:
        del a["iscrowd"]
    pos, det = {}, {}
    for a in gt["annotations"]:
        pos.setdefault(a["image_id"], set()).add(a["category_id"])
    for r in doc["bbox_results"]:
        det.setdefault(r["image_id"], set()).add(r["category_id"])
    for img in gt["images"]:
        neg = sorted(det.get(img["id"], set()) - pos.get(img["id"], set()))
        img["neg_category_ids"] = neg
        img["not_exhaustive_category_ids"] = sorted(pos.get(img["id"], set()))[1::2]
    for c in gt["categories"]:
        c["frequency"] = "rcf"[c["id"] % 3]
    return gt


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_real_coco_annotations_with_a_tenth_of_entries_of_area_0(tmp_path, iou_type):
    """COCO val2014 (100 images, the COCO API's test files): 10 % of the gt get area 0 and 10 %
    of the results an empty mask (segm) or a box of width 0 (bbox)."""
    doc = _coco_100()
    gt = _coco_as_lvis(doc)
    rng = np.random.default_rng(0)
    for k in np.flatnonzero(rng.random(len(gt["annotations"])) < 0.1):
        gt["annotations"][k]["area"] = 0
    results = copy.deepcopy(doc[f"{iou_type}_results"])
    emptied = np.flatnonzero(rng.random(len(results)) < 0.1)
    for k in emptied:
        r = results[k]
        if iou_type == "segm":
            h, w = r["segmentation"]["size"]
            empty = mask_util.encode(np.zeros((h, w, 1), np.uint8, order="F"))[0]
            r["segmentation"] = {"size": [h, w], "counts": empty["counts"].decode("ascii")}
        else:
            r["bbox"][2] = 0.0
    assert len(emptied) > 50
    ref = lvis_api(tmp_path, gt, results, iou_type)
    assert all(ref[k] > 0 for k in ("AP", "APr", "APc", "APf"))
    r = evaluate_lvis(gt, results, iou_type=iou_type, backend="fast")
    for k, v in ref.items():
        assert r.metrics[k] == pytest.approx(v, abs=1e-6), (k, r.metrics[k], v)


# ------------------------------------------------------------------ ids: one rule set
def run_tool(tmp_path, gt, results, *extra, env=None):
    """tools/lvis_eval.py on ``gt`` / ``results`` (dicts, or strings written as they are)."""
    paths = []
    for name, data in (("gt.json", gt), ("results.json", results)):
        p = tmp_path / name
        p.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
        paths.append(str(p))
    out = tmp_path / "metrics.json"
    per_class = tmp_path / "per_class"
    cmd = [sys.executable, TOOL, "--gt", paths[0], "--results", paths[1], "--iou-type", "bbox",
           "--output", str(out), "--per-class-dir", str(per_class), *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    return p, out, per_class, paths


def tool_refuses(tmp_path, gt, results, *needles):
    """The user's view: exit 2, one 'lt_det: error:' line naming the file, nothing written."""
    p, out, per_class, paths = run_tool(tmp_path, gt, results)
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stdout + p.stderr, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lt_det: error: "), p.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not out.exists() and not per_class.exists()
    return lines[0]


@pytest.mark.parametrize("target", ["results.json", "gt.json"])
def test_the_tool_never_writes_over_its_inputs_even_with_force(tmp_path, target):
    gt = _two_images_class_1()
    results = _perfect(gt)
    (tmp_path / "link.json").symlink_to(tmp_path / target)  # the input by another name
    p, out, per_class, paths = run_tool(tmp_path, gt, results, "--output",
                                        str(tmp_path / "link.json"), "--force")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    flag = "--results" if target == "results.json" else "--gt"
    assert f"which is the {flag} file this run reads" in p.stderr, p.stderr
    assert json.loads((tmp_path / target).read_text()) == (results if flag == "--results" else gt)


@pytest.mark.parametrize("size", ["wider", "other", "floats"])
def test_a_mask_not_of_its_images_size_is_refused(tmp_path, size):
    """An RLE of another size than its image would be scored against the ground truth's masks
    anyway (a transposed one gave AP 0 without a word): refused, naming the result."""
    gt = _two_images_class_1()
    results = _perfect(gt, segm=True)
    m = results[1]["segmentation"]
    m["size"] = {"wider": [H, 2 * W], "other": [10, 10], "floats": [float(H), float(W)]}[size]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    needle = "has a mask of size" if size == "floats" else "masks are not the size of their image"
    with pytest.raises(LTDetError, match=needle) as e:
        evaluate_lvis(gt, str(path), iou_type="segm")
    assert "result 1 (0-based)" in str(e.value)


def test_results_of_classes_not_in_the_ground_truth_are_a_warning(caplog):
    gt = _two_images_class_1()
    results = _perfect(gt) + [_det(1, 1000 + k, (10, 10, 20, 20), 0.5) for k in range(7)]
    with caplog.at_level("WARNING"):
        r = evaluate_lvis(gt, results)
    assert "7 of 9 results (after the cut) have category ids that are not categories" in caplog.text
    assert "[1000, 1001, 1002, 1003, 1004] ..." in caplog.text
    assert r.metrics["AP"] == pytest.approx(1.0)  # not evaluated, as in lvis-api
    caplog.clear()
    with caplog.at_level("WARNING"):
        evaluate_lvis(gt, _perfect(gt))
    assert "not categories" not in caplog.text


def test_no_per_image_cap_is_named_ar_at_minus_1(tmp_path):
    gt = _two_images_class_1()
    r = evaluate_lvis(gt, _perfect(gt), max_dets_per_image=-1)
    assert "AR@-1" in r.metrics and "AR@300" not in r.metrics
    p, out, _, _ = run_tool(tmp_path, gt, _perfect(gt), "--max-dets-per-image", "-1")
    assert p.returncode == 0 and "no per-image cap" in p.stdout and "AR@-1" in p.stdout


def test_two_json_values_in_one_file_are_named_so(tmp_path):
    gt = _two_images_class_1()
    text = json.dumps(_perfect(gt))
    tool_refuses(tmp_path, gt, text + "\n" + text, "results.json", "followed by more data")


def test_the_tool_never_replaces_its_earlier_output_without_force(tmp_path):
    gt = _two_images_class_1()
    p, out, per_class, _ = run_tool(tmp_path, gt, _perfect(gt))
    assert p.returncode == 0, p.stderr
    written = {f: f.read_bytes() for f in [out, *per_class.iterdir()]}
    for path in (out, per_class / "per_class_ap_bbox.json"):
        p, *_ = run_tool(tmp_path, gt, _perfect(gt))
        assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
        assert "--force" in p.stderr and str(path.parent if path != out else path) in p.stderr
        assert {f: f.read_bytes() for f in written} == written
        if path == out:
            out.unlink()
            written.pop(out)
    p, *_ = run_tool(tmp_path, gt, _perfect(gt), "--force")
    assert p.returncode == 0 and out.exists(), p.stderr


def test_results_of_another_split_are_one_line_naming_the_results(tmp_path):
    gt = _two_images_class_1()
    results = _perfect(gt) + [{"image_id": 77, "category_id": 1, "bbox": [1, 1, 5, 5],
                               "score": 0.5}]
    line = tool_refuses(tmp_path, gt, results, "results.json", "image_id 77", "gt.json")
    assert "same split" in line


def eval_refuses(gt, results, *needles):
    for backend in BACKENDS:
        with pytest.raises(LTDetError) as e:
            evaluate_lvis(copy.deepcopy(gt), copy.deepcopy(results), backend=backend)
        for needle in needles:
            assert needle in str(e.value), (backend, needle, str(e.value))


def train_refuses(tmp_path, gt, *needles):
    """Training registration (register_lvis_format, what DATASETS.LVIS_FORMAT runs) refuses."""
    js = tmp_path / "train.json"
    js.write_text(json.dumps(gt))
    (tmp_path / "images").mkdir(exist_ok=True)
    for call in (lambda: read_lvis_json(str(js)),
                 lambda: register_lvis_format("lt_exact_bad", str(js), str(tmp_path / "images"))):
        with pytest.raises(LTDetError) as e:
            call()
        assert str(js) in str(e.value)
        for needle in needles:
            assert needle in str(e.value), (needle, str(e.value))


def _gt_breaking(rule):
    gt = _two_images_class_1()
    if rule == "duplicate category id":
        gt["categories"].append({"id": 1, "name": "again", "frequency": "r", "image_count": 1})
    elif rule == "annotation id 0":
        gt["annotations"][0]["id"] = 0
    elif rule in ("category id 0", "category id -3", "category id 2**63"):
        new = {"category id 0": 0, "category id -3": -3, "category id 2**63": 2**63}[rule]
        gt["categories"][1]["id"] = new
        gt["images"][1]["neg_category_ids"] = [new]
    elif rule == "image id 2**63":
        gt["images"][1]["id"] = 2**63
        gt["annotations"][1]["image_id"] = 2**63
    elif rule == "annotation id 2**63":
        gt["annotations"][1]["id"] = 2**63
    elif rule == "negative area":
        gt["annotations"][1]["area"] = -4.0
    elif rule == "unknown neg id":
        gt["images"][1]["neg_category_ids"] = [9]
    elif rule == "iscrowd true":
        gt["annotations"][1]["iscrowd"] = True
    return gt


GT_RULES = {
    "duplicate category id": ["category id 1 appears twice", "Remove or renumber"],
    "annotation id 0": ["annotation number 0", "has id 0", "non-zero", "lvis-api"],
    "category id 0": ["has id 0", "category ids are integers from 1"],
    "category id -3": ["has id -3", "category ids are integers from 1"],
    "category id 2**63": [f"has id {2**63}", "category ids are integers from 1"],
    "image id 2**63": [f"has id {2**63}", "int64"],
    "annotation id 2**63": [f"has id {2**63}", "int64"],
    "negative area": ["annotation 2", "area -4.0", ">= 0"],
    "unknown neg id": ["image 2 lists 9 in 'neg_category_ids'"],
    "iscrowd true": ["annotation 2 has iscrowd True", "0 or 1"],
}


@pytest.mark.parametrize("rule", sorted(GT_RULES))
def test_ground_truth_rule_is_one_for_training_evaluation_and_the_tool(tmp_path, rule):
    gt = _gt_breaking(rule)
    needles = GT_RULES[rule]
    train_refuses(tmp_path, gt, *needles)
    eval_refuses(gt, _perfect(_two_images_class_1()), *needles)
    tool_refuses(tmp_path, gt, _perfect(_two_images_class_1()), "gt.json", *needles)


def test_what_lvis_api_does_with_an_annotation_id_0(tmp_path):
    # The reason for the refusal: lvis-api's matcher stores the matched gt's id, and 0 reads as
    # "no match", so a perfect detection of that gt is a false positive and the gt is missed.
    gt = _gt_breaking("annotation id 0")
    ref = lvis_api(tmp_path, gt, _perfect(gt), "bbox")
    assert ref["AP"] < 0.3


@pytest.mark.parametrize("field, value", [
    ("image_id", "1"), ("image_id", "000001"), ("image_id", 1.5), ("image_id", 2.7),
    ("image_id", "img_1"), ("image_id", True), ("image_id", 2**63), ("image_id", None),
    ("image_id", [1]),
    ("category_id", 1.9), ("category_id", "1"), ("category_id", 2**63), ("category_id", 2**64),
])
def test_result_ids_that_are_not_integers_are_refused(tmp_path, field, value):
    gt = _two_images_class_1()
    results = _perfect(gt)
    results[1][field] = value
    needles = [f"result 1 (0-based) has {field}", "JSON integer"]
    eval_refuses(gt, results, "<results list>", f"{field} {json.dumps(value)}", *needles)
    # orjson reads an integer beyond 64 bits as a float: the message shows what was read.
    tool_refuses(tmp_path, gt, results, "results.json", *needles)


@pytest.mark.parametrize("value", ["1", "000001", 1.5, 2.7, "img_1"])
def test_lvis_api_refuses_those_image_ids_too(tmp_path, value):
    gt = _two_images_class_1()
    results = _perfect(gt)
    results[0]["image_id"] = value
    with pytest.raises(AssertionError, match="Results do not correspond"):
        lvis_api(tmp_path, gt, results, "bbox")


def test_integer_valued_float_ids_are_the_integer_as_in_lvis_api(tmp_path):
    gt = _two_images_class_1()
    results = _perfect(gt) + [_det(1, 1, (60, 60, 20, 20), 0.95)]
    as_floats = copy.deepcopy(results)
    for r in as_floats:
        r["image_id"], r["category_id"] = float(r["image_id"]), float(r["category_id"])
    ref = assert_equals_lvis_api(tmp_path, gt, as_floats, "bbox")
    assert evaluate_lvis(gt, results).metrics["AP"] == pytest.approx(ref["AP"], abs=1e-12)


@pytest.mark.parametrize("what", ["results", "ground truth"])
def test_truncated_json_is_one_line(tmp_path, what):
    gt = _two_images_class_1()
    results = _perfect(gt)
    if what == "results":
        results = json.dumps(results)[:-25]
        name = "results.json"
    else:
        gt = json.dumps(gt)[:-25]
        name = "gt.json"
    line = tool_refuses(tmp_path, gt, results, name, "is not valid JSON", "cut short",
                        "Write the file again")
    assert "line 1, column" in line


def test_results_that_are_not_dicts_or_lack_numbers(tmp_path):
    gt = _two_images_class_1()
    results = _perfect(gt)
    eval_refuses(gt, results[:1] + [[1, 1, 0.5]], "result 1 (0-based) is [1, 1, 0.5]")
    bad_score = copy.deepcopy(results)
    bad_score[0]["score"] = "0.9"
    eval_refuses(gt, bad_score, 'result 0 (0-based) has score "0.9" (a JSON string)', "JSON number")
    bad_box = copy.deepcopy(results)
    bad_box[1]["bbox"] = [1, 2, 3]
    eval_refuses(gt, bad_box, "result 1 (0-based) has bbox [1, 2, 3]")


# ------------------------------------------------------------------ files written
def test_undefined_metrics_are_null_in_strict_json(tmp_path):
    gt = _two_images_class_1()  # all classes frequent: APr and APc are undefined
    p, out, per_class, _ = run_tool(tmp_path, gt, _perfect(gt))
    assert p.returncode == 0, p.stderr

    def refuse(token):
        raise AssertionError(f"bare {token} in a json file")

    for path in (out, per_class / "per_class_ap_bbox.json"):
        doc = json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)
        assert doc["metrics"]["APr"] is None and doc["metrics"]["APc"] is None
        assert doc["metrics"]["AP"] == pytest.approx(100.0)
    nested = {"bbox": {"AP": 12.5, "APr": float("nan")}, "segm": [float("inf"), 1.0]}
    assert json.dumps(json_ready(nested), allow_nan=False) == (
        '{"bbox": {"AP": 12.5, "APr": null}, "segm": [null, 1.0]}'
    )


def test_per_class_report_is_utf8_under_the_c_locale(tmp_path):
    gt = _two_images_class_1()
    gt["categories"][0]["name"] = "crème_brûlée"
    gt["categories"][1]["name"] = "日本酒"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "PYTHONIOENC"))}
    env.update(LC_ALL="C", LANG="C", PYTHONUTF8="0")
    probe = subprocess.run([sys.executable, "-c", "import locale; "
                            "print(locale.getpreferredencoding(False))"],
                           capture_output=True, text=True, env=env)
    assert "utf" not in probe.stdout.lower().replace("-", ""), probe.stdout  # really not UTF-8
    p, _, per_class, _ = run_tool(tmp_path, gt, _perfect(gt), env=env)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    csv_text = (per_class / "per_class_ap_bbox.csv").read_text(encoding="utf-8")
    assert "crème_brûlée" in csv_text and "日本酒" in csv_text
    doc = read_per_class(str(per_class / "per_class_ap_bbox.json"))
    names = [c["name"] for c in doc["classes"]]
    assert names == ["crème_brûlée", "日本酒"]


# ------------------------------------------------------------------ results read in pieces
def _many_results(n, segm=False):
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        box = [float(v) for v in rng.uniform(1, 40, 4)]
        out.append(_det(1 + k % 2, 1 + k % 3, box, float(rng.random()), segm=segm))
    return out


def _table_equal(a, b):
    assert np.array_equal(a.image_id, b.image_id) and a.image_id.dtype == np.int64
    assert np.array_equal(a.category_id, b.category_id)
    assert np.array_equal(a.score, b.score)
    assert (a.bbox is None) == (b.bbox is None)
    if a.bbox is not None:
        assert np.array_equal(a.bbox, b.bbox)
    assert a.segmentation == b.segmentation


@pytest.mark.parametrize("segm", [False, True])
@pytest.mark.parametrize("style", ["json.dump", "compact", "indent"])
def test_a_file_read_in_pieces_gives_the_table_of_the_whole_list(tmp_path, segm, style):
    from lt_det.evaluation import DetectionTable

    results = _many_results(300, segm)
    path = tmp_path / "results.json"
    seps = {"json.dump": {}, "compact": {"separators": (",", ":")}, "indent": {"indent": 1}}
    path.write_text(json.dumps(results, **seps[style]))
    whole = DetectionTable.from_results(results)
    for piece_bytes in (1, 97, 1000, 1 << 26):  # from one result per piece to one piece
        _table_equal(DetectionTable.from_results(str(path), piece_bytes=piece_bytes), whole)


def test_a_cut_that_is_not_between_two_results_never_gives_other_entries(tmp_path):
    """A "}, {" inside a string or a nested list is no place to cut: such a piece is no valid
    JSON, and the reader goes on to a later boundary. Every piece size gives the list itself,
    in several pieces."""
    from lt_det.evaluation._json import load_json_list

    results = _many_results(60)
    results[20]["note"] = 'a}, {"b": 1}, {'  # extra keys are allowed (and ignored)
    results[40]["extra"] = [{"a": 1}, {"b": 2}]
    path = tmp_path / "results.json"
    for text in (json.dumps(results), json.dumps(results, separators=(",", ":"))):
        path.write_text(text)
        for piece_bytes in range(1, len(text) + 50, 37):
            pieces = list(load_json_list(str(path), piece_bytes))
            assert [r for p in pieces for r in p] == results, piece_bytes
            assert len(pieces) > 1 or piece_bytes > len(text) // 2, piece_bytes
        from lt_det.evaluation import DetectionTable

        _table_equal(DetectionTable.from_results(str(path), piece_bytes=50),
                     DetectionTable.from_results(results))


def test_an_indented_file_is_read_in_pieces(tmp_path):
    """json.dump(..., indent=2) puts newlines around the "," between results: still boundaries,
    so such a file comes in many pieces (not one, searched again after every block)."""
    from lt_det.evaluation._json import load_json_list

    results = _many_results(300)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results, indent=2))
    pieces = list(load_json_list(str(path), 2000))
    assert len(pieces) > 10 and [r for p in pieces for r in p] == results


def test_a_boundary_search_starts_where_the_last_one_stopped():
    """Bytes searched already are not searched again (a file with no boundary for long reads
    in linear time); a boundary straddling the two parts is still found."""
    from lt_det.evaluation._json import _OVERLAP, _last_boundary

    text = bytearray(b'[{"a": 1}, {"b": 2}' + b" " * 200 + b'}, {"c": 3}]')
    comma = text.rindex(b",")
    assert _last_boundary(text, 0) == comma
    assert _last_boundary(text, comma - 2) == comma  # straddles: found through the overlap
    assert _last_boundary(text, comma + 3 + _OVERLAP) == -1  # already searched: not again
    early = bytearray(b'[{"a": 1}, {"b": 2' + b" " * 200)
    assert _last_boundary(early, 0) == early.index(b",")
    assert _last_boundary(early, len(early)) == -1


@pytest.mark.parametrize("key", ["score", "image_id", "bbox"])
@pytest.mark.parametrize("piece_bytes", [300, 1 << 26])
def test_a_result_without_a_key_is_named_by_its_place(tmp_path, key, piece_bytes):
    """A result lacking a key the others have is named (its index in the file), whether the
    file is read in pieces or whole; a box missing from one result is not taken for mask
    results."""
    from lt_det.evaluation import DetectionTable

    results = _many_results(200)
    del results[173][key]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    with pytest.raises(LTDetError, match=rf"result 173 \(0-based\) has no '{key}'"):
        DetectionTable.from_results(str(path), piece_bytes=piece_bytes)


def test_masks_in_only_some_results_are_named(tmp_path):
    from lt_det.evaluation import DetectionTable

    results = _many_results(200, segm=True)
    for r in results[150:]:
        del r["segmentation"]  # a later piece without masks
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    with pytest.raises(LTDetError, match=r"result 150 \(0-based\) has no 'segmentation'"):
        DetectionTable.from_results(str(path), piece_bytes=300)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_an_empty_results_list_scores_0_with_a_warning(tmp_path, iou_type, caplog):
    gt = _two_images_class_1()
    path = tmp_path / "results.json"
    path.write_text("[]")
    with caplog.at_level("WARNING"):
        r = evaluate_lvis(gt, str(path), iou_type=iou_type)
    assert "holds no detections" in caplog.text
    assert r.metrics["AP"] == 0 and r.metrics["AR@300"] == 0


@pytest.mark.parametrize("key", ["max_dets_per_image", "max_dets_per_class"])
def test_a_cap_of_0_is_refused(key):
    gt = _two_images_class_1()
    with pytest.raises(LTDetError, match=rf"{key} \(--max-dets-per-\w+.*\) must be > 0"):
        evaluate_lvis(gt, _perfect(gt), ap_fixed=key == "max_dets_per_class", **{key: 0})


def test_ground_truth_given_as_results_is_named(tmp_path):
    gt = _two_images_class_1()
    tool_refuses(tmp_path, gt, gt, "results.json", "got dict", "looks like a ground-truth file")
    eval_refuses(gt, {"results": _perfect(gt)}, "got dict", "under the key 'results'")


def test_a_bad_box_is_shown_as_the_json_it_was(tmp_path):
    gt = _two_images_class_1()
    results = _perfect(gt)
    results[1]["bbox"] = [1, True, 3, 4]
    tool_refuses(tmp_path, gt, results, "result 1 (0-based) has bbox [1, true, 3, 4]")


@pytest.mark.parametrize("field, value", [("image_id", "7"), ("category_id", 2.5),
                                          ("score", None), ("bbox", [1, 2, "3", 4])])
def test_a_bad_entry_in_a_later_piece_is_named_by_its_place_in_the_file(tmp_path, field, value):
    from lt_det.evaluation import DetectionTable

    results = _many_results(200)
    results[173][field] = value
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    with pytest.raises(LTDetError, match=rf"result 173 \(0-based\) has {field}"):
        DetectionTable.from_results(str(path), piece_bytes=300)


@pytest.mark.parametrize("bad", ["polygon", "counts list", "no size", "size of 3"])
def test_the_mask_rule_names_the_first_mask_that_is_no_compressed_rle(bad):
    from lt_det.evaluation import DetectionTable

    results = _many_results(50, segm=True)
    m = results[31]["segmentation"]
    if bad == "polygon":
        results[31]["segmentation"] = [[1, 1, 9, 1, 9, 9]]
    elif bad == "counts list":
        m["counts"] = [0, 10, 9990]
    elif bad == "no size":
        del m["size"]
    else:
        m["size"] = [H, W, 1]
    with pytest.raises(LTDetError, match="result 31 has segmentation"):
        DetectionTable.from_results(results)


@pytest.mark.parametrize("box", [[1, 2, "3", 4], [1, 2, None, 4], [1, 2, [3], 4], [1, 2, 3],
                                 "1234", 5, [1, 2, True, 4], [False, 2.5, 3, 4]])
def test_a_box_that_is_not_4_numbers_is_refused_by_name(box):
    from lt_det.evaluation import DetectionTable

    results = _many_results(10)
    results[6]["bbox"] = box
    with pytest.raises(LTDetError, match=r"result 6 \(0-based\) has bbox"):
        DetectionTable.from_results(results)
