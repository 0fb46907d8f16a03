"""LVIS-format registration: id mapping, metadata, and clear errors on malformed input."""
import json
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from lt_det.data import load_lvis_format_json, register_lvis_format
from lt_det.class_stats import frequency_group
from lt_det.errors import LTDetError


def _write(tmp_path, data, name="gt.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def _dataset(tmp_path, with_counts=False):
    """3 images (one without annotations), categories with ids 3 and 7 (ids skip numbers)."""
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    images = []
    for i in (1, 2, 3):
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(img_dir / f"{i}.png")
        images.append(
            {"id": i, "file_name": f"{i}.png", "height": 20, "width": 30,
             "neg_category_ids": [7] if i == 3 else [], "not_exhaustive_category_ids": []}
        )
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 5, 6], "area": 30,
         "segmentation": [[1, 2, 6, 2, 6, 8, 1, 8]]},
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [10, 2, 5, 6], "area": 30},
        {"id": 3, "image_id": 2, "category_id": 3, "bbox": [0, 0, 4, 4], "area": 16},
    ]
    cats = [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}]
    if with_counts:
        cats = [{"id": 7, "name": "seven", "image_count": 50, "instance_count": 60,
                 "frequency": "c"},
                {"id": 3, "name": "three", "image_count": 500, "instance_count": 900,
                 "frequency": "f"}]
    return {"images": images, "annotations": anns, "categories": cats}, str(img_dir)


def test_register_maps_ids_and_counts_from_annotations(tmp_path):
    data, img_dir = _dataset(tmp_path)
    register_lvis_format("lt_test_fmt", _write(tmp_path, data), img_dir)
    meta = MetadataCatalog.get("lt_test_fmt")
    assert meta.thing_classes == ["three", "seven"]  # sorted by LVIS id
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    # counted: class 3 is in image 2 only; class 7 in image 1 (twice)
    assert meta.class_image_count == [{"id": 3, "image_count": 1}, {"id": 7, "image_count": 1}]
    assert meta.class_instance_count == [1, 2]
    assert meta.class_frequency == ["r", "r"]
    assert meta.evaluator_type == "lvis"
    dicts = DatasetCatalog.get("lt_test_fmt")
    assert [len(d["annotations"]) for d in dicts] == [2, 1, 0]
    assert [a["category_id"] for a in dicts[0]["annotations"]] == [1, 1]
    assert dicts[2]["neg_category_ids"] == [1]
    assert "segmentation" in dicts[0]["annotations"][0]
    assert os.path.isfile(dicts[0]["file_name"])


def test_counts_from_json_categories(tmp_path):
    data, img_dir = _dataset(tmp_path, with_counts=True)
    register_lvis_format("lt_test_fmt_counts", _write(tmp_path, data), img_dir)
    meta = MetadataCatalog.get("lt_test_fmt_counts")
    assert [c["image_count"] for c in meta.class_image_count] == [500, 50]
    assert meta.class_instance_count == [900, 60]
    assert meta.class_frequency == ["f", "c"]


def test_frequency_group_follows_lvis_rules():
    assert [frequency_group(n) for n in (0, 1, 10, 11, 100, 101)] == ["r", "r", "r", "c", "c", "f"]


def test_coco_url_layout(tmp_path):
    data, _ = _dataset(tmp_path)
    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    for img in data["images"]:
        del img["file_name"]
        img["coco_url"] = f"http://images.example/val2017/{img['id']:012d}.jpg"
    dicts = load_lvis_format_json(_write(tmp_path, data), str(root))
    assert dicts[0]["file_name"] == os.path.join(str(root), "val2017", "000000000001.jpg")


@pytest.mark.parametrize(
    "breakage, expected",
    [
        ("missing_json", "json not found"),
        ("not_json", "is not valid JSON"),
        ("no_annotations", "has no key(s) ['annotations']"),
        ("no_categories", "has no key(s) ['categories']"),
        ("negative_width", "negative size"),
        ("unknown_category", "not in 'categories'"),
        ("missing_image_dir", "image folder not found"),
    ],
)
def test_bad_input_gives_clear_error(tmp_path, breakage, expected):
    data, img_dir = _dataset(tmp_path)
    path = str(tmp_path / "gt.json")
    if breakage == "not_json":
        path = _write(tmp_path, '{"images": [1, 2')
    elif breakage == "no_annotations":
        del data["annotations"]
    elif breakage == "no_categories":
        del data["categories"]
    elif breakage == "negative_width":
        data["annotations"][0]["bbox"] = [1, 2, -5, 6]
    elif breakage == "unknown_category":
        data["annotations"][0]["category_id"] = 99
    elif breakage == "missing_image_dir":
        img_dir = str(tmp_path / "nowhere")
    if breakage not in ("missing_json", "not_json"):
        _write(tmp_path, data)
    with pytest.raises(LTDetError) as err:
        load_lvis_format_json(path, img_dir)
    assert expected in str(err.value)
    if breakage != "missing_image_dir":
        assert "gt.json" in str(err.value)
