"""One source of class statistics (lt_det.class_stats): image / instance counts, r/c/f groups,
crowd annotations excluded from every count, several training datasets taken as their union.

Hand-made data; every expected number is counted in the comments."""
import json
import uuid

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from lt_det import add_lt_config
from lt_det.class_stats import (
    class_stats_from_dicts,
    class_stats_from_lvis_json,
    frequency_group,
    union_class_stats,
)
from lt_det.data import register_lvis_format
from lt_det.data.samplers import ClassImageIndex
from lt_det.errors import LTDetError
from lt_det.modeling import class_prior_from_cfg


def _ann(c, crowd=0):
    return {"bbox": [1, 1, 5, 5], "bbox_mode": BoxMode.XYWH_ABS, "category_id": c, "iscrowd": crowd}


def _dicts():
    """img0: class 0 twice; img1: class 1 and a crowd region of class 0; img2: only a crowd
    region of class 1; img3: nothing. Non-crowd: class 0 in 1 image (2 instances), class 1 in
    1 image (1 instance)."""
    return [
        {"image_id": 0, "annotations": [_ann(0), _ann(0)]},
        {"image_id": 1, "annotations": [_ann(1), _ann(0, crowd=1)]},
        {"image_id": 2, "annotations": [_ann(1, crowd=1)]},
        {"image_id": 3, "annotations": []},
    ]


def test_frequency_group_boundaries():
    assert [frequency_group(n) for n in (0, 10, 11, 100, 101)] == ["r", "r", "c", "c", "f"]


def test_crowd_annotations_are_not_counted():
    stats = class_stats_from_dicts(_dicts(), 2)
    assert stats.image_counts == (1, 1) and stats.instance_counts == (2, 1)
    assert stats.num_images == 4 and stats.frequency == ["r", "r"]
    index = ClassImageIndex.from_dataset_dicts(_dicts(), num_classes=2)
    assert index.image_counts.tolist() == [1, 1]
    assert index.images_of(0).tolist() == [0] and index.images_of(1).tolist() == [1]


def test_lvis_json_counts_without_crowd_and_declared_counts_win():
    data = {
        "images": [{"id": 1}, {"id": 2}, {"id": 3}],
        "categories": [{"id": 7}, {"id": 3}],
        "annotations": [
            {"image_id": 1, "category_id": 7},
            {"image_id": 2, "category_id": 7},
            {"image_id": 2, "category_id": 3, "iscrowd": 1},
            {"image_id": 3, "category_id": 3},
        ],
    }
    ids, stats, groups = class_stats_from_lvis_json(data)
    assert ids == [3, 7] and stats.image_counts == (1, 2) and stats.instance_counts == (1, 2)
    assert stats.num_images == 3 and groups == ["r", "r"]
    for c, n in zip(data["categories"], (500, 50)):
        c.update(image_count=n, instance_count=n, frequency=None)
    _, declared, groups = class_stats_from_lvis_json(data)
    assert declared.image_counts == (50, 500) and groups == ["c", "f"]


def test_union_adds_counts_and_images():
    a = class_stats_from_dicts(_dicts(), 2)
    b = class_stats_from_dicts([{"annotations": [_ann(1)]}], 2)
    u = union_class_stats([a, b])
    assert u.image_counts == (1, 2) and u.instance_counts == (2, 2) and u.num_images == 5
    with pytest.raises(LTDetError, match="different class counts"):
        union_class_stats([a, class_stats_from_dicts([], 3)])


# ----------------------------------------------------------------------------- priors


def _write_lvis(tmp_path, name, images):
    """An LVIS-format json with categories 1, 2 and ``images`` = lists of category ids."""
    data = {"images": [], "annotations": [], "categories": [{"id": 1}, {"id": 2}]}
    for i, cats in enumerate(images):
        data["images"].append({"id": i + 1, "file_name": f"{i}.png", "height": 8, "width": 8})
        for c in cats:
            data["annotations"].append(
                {"id": len(data["annotations"]) + 1, "image_id": i + 1, "category_id": c,
                 "bbox": [1, 1, 4, 4], "area": 16}
            )  # fmt: skip
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    (tmp_path / "img").mkdir(exist_ok=True)
    return str(path), str(tmp_path / "img")


@pytest.fixture
def two_train_sets(tmp_path):
    # A: 2 images, class 1 (contiguous 0) in 1 of them, class 2 never.
    # B: 18 images: 7 x [1], 2 x [1, 2, 2], 9 x [2]; class 1 in 9 images (9 instances),
    #    class 2 in 11 images (2 * 2 + 9 = 13 instances).
    a_images = [[1], []]
    b_images = [[1]] * 7 + [[1, 2, 2]] * 2 + [[2]] * 9
    names = [f"union_a_{uuid.uuid4().hex[:6]}", f"union_b_{uuid.uuid4().hex[:6]}"]
    for name, images in zip(names, (a_images, b_images)):
        register_lvis_format(name, *_write_lvis(tmp_path, name, images))
    yield names
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _prior_cfg(train, source):
    cfg = add_lt_config(get_cfg())
    cfg.DATASETS.TRAIN = tuple(train)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    cfg.MODEL.ROI_BOX_HEAD.PRIOR.SOURCE = source
    return cfg


@pytest.mark.parametrize("source", ["image_count", "metadata"])
def test_prior_of_two_training_sets_is_their_union(two_train_sets, source):
    # class 0: (1 + 9) of (2 + 18) images = 0.5; class 1: (0 + 11) of 20 = 0.55.
    prior = class_prior_from_cfg(_prior_cfg(two_train_sets, source))
    torch.testing.assert_close(prior, torch.tensor([0.5, 0.55]))


def test_instance_prior_of_two_training_sets_is_their_union(two_train_sets):
    # instances: class 0: 1 + 9 = 10; class 1: 0 + 13 = 13.
    expected = torch.tensor([10, 13], dtype=torch.float64)
    prior = class_prior_from_cfg(_prior_cfg(two_train_sets, "instance_count"))
    torch.testing.assert_close(prior, (expected / expected.sum()).float())


def test_image_count_prior_reads_registration_counts(two_train_sets):
    # The metadata registration computed is enough: the dataset dicts are not loaded again.
    name = f"union_nodicts_{uuid.uuid4().hex[:6]}"

    def never_loaded():
        raise AssertionError("the training set was loaded a second time")

    DatasetCatalog.register(name, never_loaded)
    meta = MetadataCatalog.get(two_train_sets[1])
    MetadataCatalog.get(name).set(
        thing_classes=list(meta.thing_classes),
        class_image_count=list(meta.class_image_count),
        class_instance_count=list(meta.class_instance_count),
        num_images=meta.num_images,
    )
    try:
        prior = class_prior_from_cfg(_prior_cfg([name], "image_count"))
        torch.testing.assert_close(prior, torch.tensor([9 / 18, 11 / 18]))
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_evaluation_groups_of_two_training_sets_are_their_union(two_train_sets):
    from lt_det.evaluation.lvis_evaluator import _union_class_stats

    # Union image counts: category 1 in 1 + 9 = 10 images (rare), category 2 in 11 (common);
    # the first set alone would give 1 and 0 (both rare).
    stats = _union_class_stats(two_train_sets)
    assert stats == {"image_count": {1: 10, 2: 11}, "frequency": {1: "r", 2: "c"}}
    assert _union_class_stats(two_train_sets[:1])["image_count"] == {1: 1, 2: 0}


def test_meta_sampler_groups_of_two_training_sets_are_their_union(two_train_sets):
    from lt_det.data.train_stats import train_class_frequency

    assert train_class_frequency(two_train_sets, 2) == ["r", "c"]  # 10 and 11 images
    assert train_class_frequency(two_train_sets[:1], 2) == ["r", "r"]  # registration's groups
