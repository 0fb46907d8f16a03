"""The frequent-only representation probe on a hand-made pair whose answer is known, and the
feature-neighbour count on hand-placed features."""
import json

import numpy as np
import pytest
from PIL import Image

from lt_det.data.transfer_probe import feature_neighbours, transfer_probe
from lt_det.errors import LTDetError


def _split(root, name, plan):
    """Images of 32 px, one 16 px square each: red for class 1, blue for class 2."""
    (root / name).mkdir()
    images, anns = [], []
    for i, cat in enumerate(plan, start=1):
        px = np.full((32, 32, 3), 128, np.uint8)
        px[8:24, 8:24] = (220, 30, 30) if cat == 1 else (30, 30, 220)
        Image.fromarray(px).save(root / name / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "height": 32, "width": 32})
        anns.append({"id": i, "image_id": i, "category_id": cat, "bbox": [8, 8, 16, 16],
                     "area": 256, "segmentation": [[8, 8, 24, 8, 24, 24, 8, 24]]})
    cats = [{"id": 1, "name": "red_square"}, {"id": 2, "name": "blue_square"}]
    path = root / f"{name}.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return str(path), str(root / name)


def test_probe_recognises_a_separable_rare_class(tmp_path):
    # class 1: 101 training images (frequent); class 2: 2 (rare); val 3 + 3
    train, train_root = _split(tmp_path, "train", [1] * 101 + [2] * 2)
    val, val_root = _split(tmp_path, "val", [1, 2] * 3)
    out = transfer_probe(train, val, train_root, val_root, iters=5, batch=16, probe_iters=20)
    # the colours alone separate the classes, so the probe is right on every val crop
    assert out["accuracy"] == {"f": 100.0, "r": 100.0}
    assert out["rare_to_frequent"] == 1.0 and out["chance"] == 50.0
    assert out["equal_shots"]["shots"] == 2
    assert out["train_crops"] == 103 and out["val_crops"] == 6
    # without a frequent class there is nothing to learn the representation from
    few, few_root = _split(tmp_path, "few", [1] * 5 + [2] * 2)
    with pytest.raises(LTDetError, match="no frequent class"):
        transfer_probe(few, val, few_root, val_root, iters=1)


def test_feature_neighbours_hand_placed():
    # class 0 around (0, 0) with RMS spread 1; class 1 centred at (0.5, 0) with spread 1 (inside
    # each other's radius); class 2 at (10, 0), spread 1 (nobody's neighbour)
    offsets = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    feats = np.concatenate([offsets, offsets + (0.5, 0.0), offsets + (10.0, 0.0)])
    labels = np.repeat([0, 1, 2], 4)
    nb = feature_neighbours(feats, labels)
    assert nb["median_neighbours"] == 1.0  # counts 1, 1, 0
    assert nb["share_with_neighbour"] == round(2 / 3, 3)
    assert nb["median_nearest_to_spread"] == 0.5  # ratios 0.5, 0.5, 9.5
