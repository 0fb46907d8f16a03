"""Dataset properties measured on a hand-made LVIS-format pair whose answers are counted by hand."""
import json
import math

import numpy as np

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


def test_sampler_rates_closed_forms():
    from lt_det.data.dataset_stats import sampler_exposure, sampler_image_rates

    # 4 images, 2 classes: class 0 in images 0, 1, 2 (n=3); class 1 in image 2 only (n=1);
    # image 3 has no class.
    images = [[0], [0], [0, 1], []]
    r = sampler_image_rates(images, 2, repeat_thresh=1.0)
    assert r["uniform"].tolist() == [0.25] * 4
    # RFS: f_0 = 3/4 -> r_0 = sqrt(4/3); f_1 = 1/4 -> r_1 = 2; image 2 takes the max, image 3 1
    rf = np.array([math.sqrt(4 / 3), math.sqrt(4 / 3), 2.0, 1.0])
    assert r["rfs"] == pytest.approx(rf / rf.sum())
    # class-balanced: each class 1/2, then one of its images: 1/6, 1/6, 1/6 + 1/2, 0
    assert r["class_balanced"] == pytest.approx([1 / 6, 1 / 6, 2 / 3, 0.0])
    # square root: pi ~ (sqrt 3, 1)
    pi0, pi1 = math.sqrt(3) / (math.sqrt(3) + 1), 1 / (math.sqrt(3) + 1)
    assert r["sqrt"] == pytest.approx([pi0 / 3, pi0 / 3, pi0 / 3 + pi1, 0.0])
    assert r["progressive"] == pytest.approx(0.5 * r["uniform"] + 0.5 * r["class_balanced"])
    for v in r.values():
        assert v.sum() == pytest.approx(1.0)
    e = sampler_exposure(images, 2, iters=3, batch=4, repeat_thresh=1.0, stage2_iters=2)
    assert e["draws"] == 12 and e["epochs"] == 3.0
    # both classes are rare (<= 10 images): images 0-2 are rare images, seen 12 x (1/6, 1/6,
    # 2/3) = (2, 2, 8) times class-balanced; no frequent-only image
    assert e["class_balanced"]["rare_image_views"] == [2.0, 8.0]
    assert e["class_balanced"]["frequent_only_image_views"] == []
    assert e["stage2_class_balanced"]["rare_image_views"] == [round(8 / 6, 1), round(8 * 2 / 3, 1)]


def test_lvis_exposure_bounds_and_names():
    from lt_det.data.dataset_stats import lvis_v1_exposure, name_neighbours

    info = [{"image_count": 1, "name": "golf_ball"}, {"image_count": 4, "name": "tennis_ball"},
            {"image_count": 1000, "name": "dog"}]
    e = lvis_v1_exposure(info, iters=10, batch=10, repeat_thresh=0.01)
    n_img = 100170
    r = [math.sqrt(0.01 * n_img / 1), math.sqrt(0.01 * n_img / 4)]
    hi_sum = n_img + 1 * (r[0] - 1) + 4 * (r[1] - 1)
    # rare images: 1 of class 0 and 4 of class 1 -> weighted median is class 1's value
    assert e["rfs"]["rare_image_views_range"] == [round(100 * r[1] / hi_sum, 1),
                                                  round(100 * r[1] / n_img, 1)]
    assert e["class_balanced"]["rare_image_views_at_least"] == [round(100 / (3 * 4), 1)]
    assert e["epochs"] == round(100 / n_img, 2)
    nb = name_neighbours([c["name"] for c in info])
    assert nb == {"classes": 3, "median_same_head_word": 1.0, "share_with_same_head_word": 0.667}


def test_val_support_and_seed_spread(tmp_path):
    from lt_det.data.dataset_stats import apr_seed_spread, val_rare_support

    t, v = _write(tmp_path)
    s = val_rare_support(v, t)
    # the rare class b has one val instance: SD = 0.5 sqrt(1 / 1) -> 50 points
    assert s == {"rare_classes_scored": 1, "val_instances_per_rare_class": [1, 1.0, 1],
                 "apr_sd_from_val_sampling": 50.0}
    md = ("| method | stage | seeds | mask AP | mask APr | APc |\n|---|---|---|---|---|---|\n"
          "| A | 1 | 3 | 40.0 (39.0-41.0) | 14.3 (10.6-20.2) | 1 |\n"
          "| B | 2 | 3 | 50.0 (49.0-52.0) | 20.0 (19.0-21.4) | 1 |\n")
    sp = apr_seed_spread(md)
    assert sp["methods"] == {"A": 9.6, "B": 2.4} and sp["median"] == 6.0 and sp["max"] == 9.6
    with pytest.raises(LTDetError, match="mask APr"):
        apr_seed_spread("| a | b |\n|---|---|\n| 1 | 2 |\n")
