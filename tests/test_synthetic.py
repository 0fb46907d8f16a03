"""Tests of the synthetic long-tailed LVIS-format generator (tiny preset, a few seconds in all)."""
import hashlib
import json
import math
import os
from collections import defaultdict

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from lvis import LVIS, LVISEval, LVISResults

from lt_det.data.synthetic import (
    PRESETS,
    class_image_counts,
    generate_synthetic_lvis,
    register_synthetic_lvis,
)
from lt_det.errors import LTDetError


# the fields of real LVIS v1 records that lt_det and the lvis-api read
CATEGORY_KEYS = {
    "id",
    "name",
    "synonyms",
    "def",
    "synset",
    "frequency",
    "image_count",
    "instance_count",
}
IMAGE_KEYS = {
    "id",
    "file_name",
    "height",
    "width",
    "neg_category_ids",
    "not_exhaustive_category_ids",
}


def _lvis_group(n: int) -> str:
    return "r" if n <= 10 else ("c" if n <= 100 else "f")


def _tree_digest(root: str) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tiny"))
    result = generate_synthetic_lvis(out, seed=0, preset="tiny")
    with open(result["train_json"]) as f:
        train = json.load(f)
    with open(result["val_json"]) as f:
        val = json.load(f)
    return out, result, train, val


def test_deterministic_from_seed(tiny, tmp_path):
    out, result, _, _ = tiny
    again = generate_synthetic_lvis(str(tmp_path / "a"), seed=0, preset="tiny")
    assert _tree_digest(str(tmp_path / "a")) == _tree_digest(out)
    assert {k: v for k, v in again["summary"].items() if k != "seconds"} == {
        k: v for k, v in result["summary"].items() if k != "seconds"
    }
    generate_synthetic_lvis(str(tmp_path / "b"), seed=1, preset="tiny")
    assert _tree_digest(str(tmp_path / "b")) != _tree_digest(out)


def test_layout_and_lvis_fields(tiny):
    out, result, train, val = tiny
    assert result["train_json"] == os.path.join(out, "lvis_v1_train.json")
    assert result["val_json"] == os.path.join(out, "lvis_v1_val.json")
    p = PRESETS["tiny"]
    k = p.num_shapes * p.num_colours * p.num_textures
    assert [c["id"] for c in train["categories"]] == list(range(1, k + 1))
    assert train["categories"] == val["categories"]  # val carries the train statistics
    for c in train["categories"]:
        assert CATEGORY_KEYS <= set(c)
    assert len({c["name"] for c in train["categories"]}) == k
    for data, root in ((train, result["train_image_root"]), (val, result["val_image_root"])):
        for img in data["images"]:
            assert IMAGE_KEYS <= set(img)
            assert os.path.isfile(os.path.join(root, img["file_name"]))
            assert img["height"] == img["width"] == p.image_size
    train_ids = {i["id"] for i in train["images"]}
    assert not train_ids & {i["id"] for i in val["images"]}


def test_counts_and_frequency_follow_lvis_rules(tiny):
    _, result, train, _ = tiny
    images_of, instances = defaultdict(set), defaultdict(int)
    for a in train["annotations"]:
        images_of[a["category_id"]].add(a["image_id"])
        instances[a["category_id"]] += 1
    for c in train["categories"]:
        assert c["image_count"] == len(images_of[c["id"]]) >= 1
        assert c["instance_count"] == instances[c["id"]]
        assert c["frequency"] == _lvis_group(c["image_count"])
    ranked = sorted((c["image_count"] for c in train["categories"]), reverse=True)
    tiny_max = PRESETS["tiny"].max_train_images
    assert ranked == class_image_counts(len(ranked), max_train_images=tiny_max).tolist()
    groups = {g: sum(c["frequency"] == g for c in train["categories"]) for g in "rcf"}
    assert groups == result["summary"]["groups"]
    assert groups["r"] > 0 and groups["c"] > 0  # the tiny preset has a tail and a head


def test_polygons_inside_and_boxes_tight(tiny):
    _, _, train, val = tiny
    for data in (train, val):
        size = {i["id"]: (i["width"], i["height"]) for i in data["images"]}
        for a in data["annotations"]:
            (poly,) = a["segmentation"]
            assert len(poly) % 2 == 0 and len(poly) >= 6
            xy = np.array(poly).reshape(-1, 2)
            w, h = size[a["image_id"]]
            assert xy.min() >= 0 and (xy[:, 0] <= w).all() and (xy[:, 1] <= h).all()
            x0, y0 = xy.min(0)
            x1, y1 = xy.max(0)
            assert a["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0], abs=1e-6)
            x, y = xy[:, 0], xy[:, 1]
            shoelace = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
            assert a["area"] == pytest.approx(shoelace, abs=0.01) and a["area"] > 0


def test_objects_do_not_overlap(tiny):
    _, _, train, _ = tiny
    boxes = defaultdict(list)
    for a in train["annotations"]:
        boxes[a["image_id"]].append(a["bbox"])
    for bs in boxes.values():
        for i in range(len(bs)):
            for j in range(i):
                (ax, ay, aw, ah), (bx, by, bw, bh) = bs[i], bs[j]
                ix = min(ax + aw, bx + bw) - max(ax, bx)
                iy = min(ay + ah, by + bh) - max(ay, by)
                assert ix <= 0 or iy <= 0


def test_every_class_in_val_and_negatives_absent(tiny):
    _, _, train, val = tiny
    per_class = PRESETS["tiny"].val_images_per_class
    images_of = defaultdict(set)
    for a in val["annotations"]:
        images_of[a["category_id"]].add(a["image_id"])
    assert all(len(images_of[c["id"]]) >= per_class for c in val["categories"])
    for data in (train, val):
        present = defaultdict(set)
        for a in data["annotations"]:
            present[a["image_id"]].add(a["category_id"])
        for img in data["images"]:
            assert present[img["id"]], "every image has objects"
            assert not set(img["neg_category_ids"]) & present[img["id"]]
            assert img["not_exhaustive_category_ids"] == []


def _perfect_detections(gt: LVIS, with_masks: bool):
    dets = []
    for a in gt.dataset["annotations"]:
        d = {k: a[k] for k in ("image_id", "category_id", "bbox")}
        d["score"] = 1.0
        if with_masks:
            rle = gt.ann_to_rle(a)
            d["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
        dets.append(d)
    return dets


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_lvis_api_loads_and_scores_perfect_detections(tiny, split, iou_type):
    _, result, _, _ = tiny
    gt = LVIS(result[f"{split}_json"])
    ev = LVISEval(gt, LVISResults(gt, _perfect_detections(gt, iou_type == "segm")), iou_type)
    ev.run()
    res = ev.get_results()
    assert res["AP"] == pytest.approx(1.0)
    for g, key in (("r", "APr"), ("c", "APc"), ("f", "APf")):
        has_group = any(c["frequency"] == g for c in gt.dataset["categories"])
        assert res[key] == pytest.approx(1.0 if has_group else -1.0)


def test_detectron2_stock_loader_and_registration(tiny):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets.lvis import load_lvis_json

    out, result, train, _ = tiny
    dicts = load_lvis_json(result["train_json"], out + os.sep)
    assert len(dicts) == len(train["images"])
    assert all(os.path.isfile(d["file_name"]) for d in dicts)

    names = register_synthetic_lvis(out, prefix="test_synthetic_tiny")
    assert names == ("test_synthetic_tiny_train", "test_synthetic_tiny_val")
    dicts = DatasetCatalog.get(names[0])
    assert len(dicts) == len(train["images"])
    assert all(os.path.isfile(d["file_name"]) for d in dicts)
    meta = MetadataCatalog.get(names[0])
    assert meta.class_frequency == [c["frequency"] for c in train["categories"]]
    assert [c["image_count"] for c in meta.class_image_count] == [
        c["image_count"] for c in train["categories"]
    ]


def test_class_image_counts_profiles():
    k, hi = 48, 350
    for profile, t in (
        ("loglinear", [(k - r) / (k - 1) for r in range(1, k + 1)]),
        ("zipf", [1 - math.log(r) / math.log(k) for r in range(1, k + 1)]),
    ):
        expected = [max(1, round(hi ** x)) for x in t]
        counts = class_image_counts(k, max_train_images=hi, count_profile=profile)
        assert counts.tolist() == expected
    # 350 -> 1 over 48 classes: 19 rare, 18 common, 11 frequent
    counts = class_image_counts(k, max_train_images=hi)
    assert [sum(_lvis_group(n) == g for n in counts) for g in "rcf"] == [19, 18, 11]


def test_count_source_keeps_tail_and_compresses_head(tmp_path):
    values = [1] + list(range(100, 1001, 100))
    source = [{"id": i + 1, "image_count": n} for i, n in enumerate(values)]
    path = tmp_path / "cat_info.json"
    path.write_text(json.dumps(source))
    counts = class_image_counts(11, max_train_images=350, count_source=str(path))
    # K = 11 picks every source count; the head (100, 1000] is mapped onto (100, 350]
    assert counts[0] == 350 and counts[-2] == 100 and counts[-1] == 1
    assert all(100 < n < 350 for n in counts[1:-2]) and list(counts) == sorted(counts)[::-1]
    expected_second = round(100 * 3.5 ** (math.log(9) / math.log(10)))
    assert counts[1] == expected_second
    with pytest.raises(LTDetError, match="not found"):
        class_image_counts(5, max_train_images=10, count_source=str(tmp_path / "missing.json"))


def test_refuses_non_empty_out_dir_unless_overwrite(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    with pytest.raises(LTDetError, match="not empty"):
        generate_synthetic_lvis(str(out), preset="tiny")
    generate_synthetic_lvis(str(out), preset="tiny", overwrite=True)
    assert (out / "keep.txt").read_text() == "user file"
    assert (out / "lvis_v1_train.json").is_file()


def test_bad_knobs_are_reported():
    with pytest.raises(LTDetError, match="num_shapes"):
        generate_synthetic_lvis("/nonexistent/never_written", preset="tiny", num_shapes=0)
    with pytest.raises(LTDetError, match="preset"):
        generate_synthetic_lvis("/nonexistent/never_written", preset="huge")


def test_cli(tmp_path, capsys):
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(
        "make_synthetic_lvis", os.path.join(root, "tools", "make_synthetic_lvis.py")
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = str(tmp_path / "cli")
    assert cli.main(["--out", out, "--preset", "tiny", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "rare" in printed and "train" in printed and "val" in printed
    assert cli.main(["--out", out, "--preset", "tiny"]) == 2  # refuses to overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["--out", out, "--preset", "tiny", "--overwrite"]) == 0


def test_val_profile_train_follows_the_training_distribution(tmp_path):
    """val_profile="train": every class is still scored, and the val image counts follow the
    train image counts (Kendall tau-b, tiny preset: 6 classes from 20 down to 1 train images)."""
    import json

    from lt_det.data.dataset_stats import measure_dataset
    from lt_det.data.synthetic import generate_synthetic_lvis

    out = generate_synthetic_lvis(str(tmp_path / "d"), preset="tiny", seed=0,
                                  val_profile="train", val_fraction=0.5, max_objects=8,
                                  appearance_jitter=2.0)
    val = json.load(open(out["val_json"]))
    assert {a["category_id"] for a in val["annotations"]} == set(range(1, 7))
    m = measure_dataset(out["train_json"], out["val_json"])
    assert m["val"]["tau_train_vs_val_image_counts"] > 0.5
    per_class = generate_synthetic_lvis(str(tmp_path / "e"), preset="tiny", seed=0)
    assert measure_dataset(per_class["train_json"], per_class["val_json"])["val"][
        "instances_per_class"][0] >= 2  # per_class: 2 val images led by every class


def test_new_knobs_are_checked(tmp_path):
    import pytest

    from lt_det.data.synthetic import generate_synthetic_lvis
    from lt_det.errors import LTDetError

    for bad, msg in ((dict(val_profile="lvis"), "val_profile must be one of"),
                     (dict(val_fraction=0.0), "val_fraction must be in"),
                     (dict(appearance_jitter=6.0), "appearance_jitter must be in"),
                     (dict(max_objects=2), "max_objects must be >= max_classes_per_image")):
        with pytest.raises(LTDetError, match=msg):
            generate_synthetic_lvis(str(tmp_path / "x"), preset="tiny", **bad)
    assert not (tmp_path / "x").exists()


def test_presets_are_specs_with_documented_knobs():
    """Every preset resolves to a frozen spec dataclass whose every knob carries a help line;
    "default" is the spec's own defaults; overrides are ``dataclasses.replace`` (None keeps the
    preset's value) and a knob the spec lacks is refused by name."""
    import dataclasses

    from lt_det.data.synthetic import SyntheticSpec, preset_spec

    assert PRESETS["default"] == SyntheticSpec()
    for name in PRESETS:
        spec = preset_spec(name)
        assert dataclasses.is_dataclass(spec)
        for f in dataclasses.fields(spec):
            assert f.metadata["help"].strip(), (name, f.name)
        with pytest.raises(dataclasses.FrozenInstanceError):
            spec.image_size = 1
    tiny = preset_spec("tiny", num_textures=2, co_occurrence=None)
    assert tiny == dataclasses.replace(PRESETS["tiny"], num_textures=2)
    assert preset_spec("icons_tiny", num_classes=4).num_classes == 4
    with pytest.raises(LTDetError, match=r"no knob\(s\) \['num_classes'\]"):
        generate_synthetic_lvis("/nonexistent/never_written", preset="tiny", num_classes=4)


def test_plan_render_write_steps(tmp_path):
    """plan() draws no pixels and is a function of (spec, seed); render() draws from the plan
    without changing it; the written annotations are the planned objects, class k is in
    exactly counts[k] train images, and the three steps write what generate_synthetic_lvis
    writes."""
    from lt_det.data.synthetic import plan, preset_spec, render, write_dataset

    spec = preset_spec("tiny")
    first, again = plan(spec, 0), plan(spec, 0)
    assert first.counts.tolist() == again.counts.tolist()
    assert len(first.images) == len(again.images)
    for a, b in zip(first.images, again.images):
        assert (a.split, a.classes, a.rng_state) == (b.split, b.classes, b.rng_state)
        assert all(ca == cb and np.array_equal(pa, pb)
                   for (ca, pa), (cb, pb) in zip(a.objects, b.objects))
    assert not list(tmp_path.iterdir())  # nothing written so far
    train = [im for im in first.images if im.split == "train"]
    assert [im.split for im in first.images] == ["train"] * len(train) + ["val"] * (
        len(first.images) - len(train))
    assert [sum(k in im.classes for im in train) for k in range(first.counts.size)] == (
        first.counts.tolist())
    for im in first.images:  # every required class placed, only planned classes
        assert set(im.classes) == {c for c, _ in im.objects}

    drawn = list(render(spec, first))
    redrawn = list(render(spec, first))  # the plan is not used up
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(drawn, redrawn))
    for im, r in zip(first.images, drawn):
        assert r.pixels.shape == (spec.image_size, spec.image_size, 3)
        assert [a["category_id"] - 1 for a in r.annotations] == [c for c, _ in im.objects]
        assert [a["segmentation"][0] for a in r.annotations] == [
            p.reshape(-1).tolist() for _, p in im.objects]
        assert not {n - 1 for n in r.neg_category_ids} & set(im.classes)
        assert len(r.neg_category_ids) == min(spec.neg_per_image, first.counts.size - len(
            set(im.classes)))

    reference = generate_synthetic_lvis(str(tmp_path / "one"), seed=0, preset="tiny")
    with open(reference["train_json"]) as f:
        info = json.load(f)["info"]
    written = write_dataset(str(tmp_path / "three"), iter(drawn), categories=first.categories,
                            planned_counts=first.counts, info=info, licenses=[])
    assert _tree_digest(str(tmp_path / "three")) == _tree_digest(str(tmp_path / "one"))
    assert written["summary"] == {k: v for k, v in reference["summary"].items()
                                  if k != "seconds"}
    with pytest.raises(LTDetError, match="not empty"):
        write_dataset(str(tmp_path / "three"), iter(()), categories=first.categories,
                      planned_counts=first.counts, info=info, licenses=[])


def test_cli_flags_are_the_spec_fields(tmp_path):
    """One flag per knob of either spec, named after the field with its help line (the shapes
    spec's where both have the knob); a flag given on the command line writes what the same
    keyword writes from Python."""
    import dataclasses
    import importlib.util

    from lt_det.data.synthetic import SyntheticSpec
    from lt_det.data.synthetic_icons import IconSpec

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(
        "make_synthetic_lvis", os.path.join(root, "tools", "make_synthetic_lvis.py")
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    actions = {a.dest: a for a in cli.build_parser()._actions}
    shapes = {f.name for f in dataclasses.fields(SyntheticSpec)}
    for f in dataclasses.fields(SyntheticSpec) + tuple(
            f for f in dataclasses.fields(IconSpec) if f.name not in shapes):
        action = actions[f.name]
        assert action.option_strings == ["--" + f.name.replace("_", "-")]
        assert action.help.startswith(f.metadata["help"])
    # the flags the tool has always had
    for flag in ("num-shapes", "num-colours", "num-textures", "image-size", "max-train-images",
                 "min-train-images", "count-profile", "count-source", "val-images-per-class",
                 "co-occurrence", "max-classes-per-image", "max-instances-per-class",
                 "neg-per-image", "max-objects", "val-profile", "val-fraction",
                 "appearance-jitter"):
        assert "--" + flag in actions[flag.replace("-", "_")].option_strings
    out = str(tmp_path / "cli")
    assert cli.main(["--out", out, "--preset", "tiny", "--object-size", "0.2", "0.4",
                     "--num-textures", "2", "--val-profile", "train"]) == 0
    generate_synthetic_lvis(str(tmp_path / "py"), preset="tiny", object_size=(0.2, 0.4),
                            num_textures=2, val_profile="train")
    assert _tree_digest(out) == _tree_digest(str(tmp_path / "py"))
