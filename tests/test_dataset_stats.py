"""Dataset properties measured on a hand-made LVIS-format pair whose answers are counted by hand."""
import json

import pytest

from lt_det.data.dataset_stats import lvis_v1_reference, measure_dataset
from lt_det.errors import LTDetError


def _ann(i, image, cat, box):
    x, y, w, h = box
    return {"id": i, "image_id": image, "category_id": cat, "bbox": [x, y, w, h],
            "area": w * h, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}


def _write(tmp_path):
    # class 1 "a": 20 train images (common), class 2 "b": 1 image (rare), class 3 "c": 101 (freq)
    cats = [{"id": c, "name": n, "frequency": None} for c, n in ((1, "red_a"), (2, "blue_a"),
                                                                  (3, "red_c"))]
    anns, images = [], []
    i = 0
    for im in range(1, 122):
        images.append({"id": im, "file_name": f"{im}.png", "height": 50, "width": 50})
    for im in range(1, 21):                   # a in images 1..20
        i += 1
        anns.append(_ann(i, im, 1, (0, 0, 10, 10)))
    i += 1
    anns.append(_ann(i, 1, 2, (5, 5, 10, 10)))  # b in image 1, overlapping a's box
    for im in range(21, 122):                 # c alone in images 21..121
        i += 1
        anns.append(_ann(i, im, 3, (20, 20, 10, 10)))
    train = {"images": images, "annotations": anns, "categories": cats}
    val = {"images": [{"id": 1, "file_name": "v.png", "height": 50, "width": 50},
                      {"id": 2, "file_name": "w.png", "height": 50, "width": 50}],
           "annotations": [_ann(1, 1, 1, (0, 0, 5, 5)), _ann(2, 1, 2, (10, 10, 5, 5)),
                           _ann(3, 2, 3, (0, 0, 5, 5)), _ann(4, 2, 3, (20, 20, 5, 5))],
           "categories": cats}
    (tmp_path / "t.json").write_text(json.dumps(train))
    (tmp_path / "v.json").write_text(json.dumps(val))
    return str(tmp_path / "t.json"), str(tmp_path / "v.json")


def test_measure_dataset_counts(tmp_path):
    m = measure_dataset(*_write(tmp_path))
    tr = m["train"]
    assert tr["classes"] == 3
    assert tr["rcf_share"] == {"r": round(1 / 3, 3), "c": round(1 / 3, 3), "f": round(1 / 3, 3)}
    assert tr["classes_per_image"] == round(122 / 121, 2)   # 122 class-image pairs, 121 images
    assert tr["instances_per_image"] == round(122 / 121, 2)
    assert tr["overlapping_object_share"] == round(2 / 122, 3)  # a and b in image 1
    assert tr["head_to_tail_ratio"] == 101
    # the rare class's one image holds no frequent class and is not alone
    assert m["cooccurrence"]["r_images_with_frequent"] == 0.0
    assert m["cooccurrence"]["r_images_alone"] == 0.0
    # common class a: 20 images, one shared with b
    assert m["cooccurrence"]["c_images_alone"] == round(19 / 20, 3)
    va = m["val"]
    assert va["images"] == 2 and va["instances_per_class"] == [1, 1.0, 2]
    assert va["rare_share_of_val_instances"] == 0.25              # 1 of 4
    assert va["rare_share_of_train_instances"] == round(1 / 122, 3)
    # train image counts (20, 1, 101) vs val image counts (1, 1, 1): val constant -> 0
    assert va["tau_train_vs_val_image_counts"] == 0.0


def test_lvis_reference_and_bad_input(tmp_path):
    info = [{"id": 1, "image_count": 5, "instance_count": 10},
            {"id": 2, "image_count": 200, "instance_count": 800}]
    ref = lvis_v1_reference(info)["train"]
    assert ref["instances_per_image_of_class"] == {"r": 2.0, "f": 4.0}
    assert ref["head_to_tail_ratio"] == 40
    empty = tmp_path / "e.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(LTDetError, match="has no annotations"):
        measure_dataset(str(empty), str(empty))
