"""The pictograph preset (``icons``; ``icons_tiny`` here): LVIS v1 format, exact class counts,
visible-part masks, refusals, and a seconds-long end-to-end benchmark run on it."""
import hashlib
import json
import math
import os
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from lvis import LVIS, LVISEval, LVISResults

from lt_det.data.synthetic import PRESETS, class_image_counts, generate_synthetic_lvis
from lt_det.data.synthetic_icons import ICON_PRESETS, default_font_path, icon_vocabulary
from lt_det.errors import LTDetError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _digest(root):
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            with open(os.path.join(dirpath, name), "rb") as f:
                h.update(name.encode() + hashlib.sha256(f.read()).digest())
    return h.hexdigest()


@pytest.fixture(scope="module")
def icons(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("icons") / "d")
    result = generate_synthetic_lvis(out, seed=0, preset="icons_tiny")
    with open(result["train_json"]) as f:
        train = json.load(f)
    with open(result["val_json"]) as f:
        val = json.load(f)
    return out, result, train, val


def test_presets_are_offered_and_font_installed():
    assert {"icons", "icons_tiny"} <= set(PRESETS)
    assert os.path.isfile(default_font_path()), "make setup extracts the OpenMoji font"
    classes, clutter = icon_vocabulary(ICON_PRESETS["icons"].num_classes)
    assert len(set(classes)) == 200 and not set(classes) & set(clutter)


def test_counts_groups_and_fields(icons):
    out, result, train, val = icons
    k = ICON_PRESETS["icons_tiny"].num_classes
    assert [c["id"] for c in train["categories"]] == list(range(1, k + 1))
    assert train["categories"] == val["categories"]
    images_of, inst = defaultdict(set), defaultdict(int)
    for a in train["annotations"]:
        images_of[a["category_id"]].add(a["image_id"])
        inst[a["category_id"]] += 1
    for c in train["categories"]:
        n = len(images_of[c["id"]])
        assert c["image_count"] == n and c["instance_count"] == inst[c["id"]]
        assert c["frequency"] == ("r" if n <= 10 else "c" if n <= 100 else "f")
    ranked = sorted((c["image_count"] for c in train["categories"]), reverse=True)
    p = ICON_PRESETS["icons_tiny"]
    assert ranked == class_image_counts(k, max_train_images=p.max_train_images).tolist()
    # every class is in at least val_min_images validation images
    val_images_of = defaultdict(set)
    for a in val["annotations"]:
        val_images_of[a["category_id"]].add(a["image_id"])
    assert all(len(val_images_of[c]) >= p.val_min_images for c in range(1, k + 1))
    lo, hi = p.classes_per_image
    per_image = defaultdict(set)
    for a in train["annotations"]:
        per_image[a["image_id"]].add(a["category_id"])
    assert all(1 <= len(v) <= hi for v in per_image.values())
    for img in train["images"] + val["images"]:
        present = per_image.get(img["id"], set())
        assert not set(img["neg_category_ids"]) & present


def test_masks_are_visible_parts_and_boxes_tight(icons):
    _, _, train, _ = icons
    size = ICON_PRESETS["icons_tiny"].image_size
    for a in train["annotations"]:
        pts = np.concatenate([np.reshape(p, (-1, 2)) for p in a["segmentation"]])
        assert pts.min() >= 0 and pts.max() <= size
        x0, y0 = pts.min(0)
        x1, y1 = pts.max(0)
        assert a["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=0.011)
        rle = mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], size, size))
        assert a["area"] == pytest.approx(float(mask_utils.area(rle)), abs=0.01) and a["area"] > 0
    # objects may overlap (occlusion), but a visible part never lies under another's visible part
    by_image = defaultdict(list)
    for a in train["annotations"]:
        by_image[a["image_id"]].append(
            mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], size,
                                                                      size))).astype(bool))
    # A hidden part would overlap by up to half of the lower object (min_visible 0.5); two
    # visible parts share at most the pixels along their common outline.
    worst = 0.0
    for masks in by_image.values():
        for i in range(len(masks)):
            for j in range(i):
                shared = int((masks[i] & masks[j]).sum())
                worst = max(worst, shared / min(masks[i].sum(), masks[j].sum()))
    assert worst <= 0.15


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_lvis_api_scores_ground_truth_as_perfect(icons, iou_type):
    _, result, _, _ = icons
    gt = LVIS(result["val_json"])
    dets = []
    for a in gt.dataset["annotations"]:
        d = {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 1.0}
        if iou_type == "segm":
            rle = gt.ann_to_rle(a)
            d["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
        dets.append(d)
    ev = LVISEval(gt, LVISResults(gt, dets), iou_type)
    ev.run()
    assert ev.get_results()["AP"] == pytest.approx(1.0)


def test_deterministic_and_seeded(icons, tmp_path):
    out, _, _, _ = icons
    generate_synthetic_lvis(str(tmp_path / "a"), seed=0, preset="icons_tiny")
    assert _digest(str(tmp_path / "a")) == _digest(out)
    generate_synthetic_lvis(str(tmp_path / "b"), seed=1, preset="icons_tiny")
    assert _digest(str(tmp_path / "b")) != _digest(out)


def test_bad_knobs_refused_before_writing(tmp_path):
    target = tmp_path / "x"
    with pytest.raises(LTDetError, match=r"shape knob\(s\) \['num_shapes'\]"):
        generate_synthetic_lvis(str(target), preset="icons_tiny", num_shapes=3)
    with pytest.raises(LTDetError, match="object_size must be"):
        generate_synthetic_lvis(str(target), preset="icons_tiny", object_size=(0.5, 0.1))
    with pytest.raises(LTDetError, match="max_train_images < min_train_images"):
        generate_synthetic_lvis(str(target), preset="icons_tiny", max_train_images=0)
    assert not target.exists()


def test_missing_font_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("LT_DET_OPENMOJI_FONT", str(tmp_path / "none.ttf"))
    tool = os.path.join(ROOT, "tools", "make_synthetic_lvis.py")
    proc = subprocess.run([sys.executable, tool, "--out", str(tmp_path / "d"), "--preset",
                           "icons_tiny"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "OpenMoji font not found" in proc.stderr and "make setup" in proc.stderr


def test_benchmark_end_to_end_on_icons_tiny(tmp_path):
    """Generate the preset, train a stage-1 and a stage-2 method a few iterations and evaluate
    both (mask and box AP) through tools/lt_benchmark.py."""
    cmd = [sys.executable, os.path.join(ROOT, "tools", "lt_benchmark.py"), "--preset",
           "icons_tiny", "--iters", "3", "--stage2-iters", "2", "--stage1", "softmax",
           "--methods", "softmax", "crt", "--out", "bench"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=1800)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    summary = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert summary["preset"] == "icons_tiny"
    rows = {r["method"]: r for r in summary["methods"]}
    assert set(rows) == {"softmax", "crt"}
    for row in rows.values():
        for task in ("segm", "bbox"):
            assert math.isfinite(row[task]["AP"]) and 0 <= row[task]["AP"] <= 100
    data = json.loads((tmp_path / "bench" / "data" / "lvis_v1_train.json").read_text())
    assert data["info"]["generator"].endswith("generate_icons_lvis")
