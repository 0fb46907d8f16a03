"""The 1203-class paths at LVIS's test settings, end to end on CPU in seconds.

A Mask R-CNN built from ``configs/lvis_softmax.yaml`` (1203 classes, score threshold 1e-4, 300
detections per image, masks on; heads narrowed and images small so it runs in seconds) infers on
three tiny images of an LVIS v1-format set with 1203 categories (r / c / f), and lt_det's LVIS
evaluator scores the detections (bbox and segm).
"""
import json
import math
import os
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from lt_det.data import register_datasets_from_cfg
from lt_det.engine import LTTrainer, load_config
from lt_det.engine.defaults import check_datasets, check_mask_annotations, check_num_classes
from lt_det.modeling import fast_inference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 1203
H, W = 96, 128
FREQUENCIES = ("r", "c", "f")


def _lvis_1203(folder):
    """Three images with boxes and polygons of a rare, a common and a frequent class, and 1203
    categories (frequency cycling r, c, f). Returns (json path, image folder)."""
    images, annotations = [], []
    rng = np.random.RandomState(0)
    image_dir = os.path.join(folder, "images")
    os.makedirs(image_dir)
    for i in range(3):
        pixels = np.full((H, W, 3), 30, dtype=np.uint8)
        for j, cat in enumerate((1 + 3 * i, 2 + 3 * i, 3 + 3 * i)):  # r, c, f
            x, y = 8 + 38 * j, 10 + 20 * (j % 2)
            w, h = 30, 40
            pixels[y : y + h, x : x + w] = rng.randint(80, 255, size=3)
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": cat,
                "bbox": [x, y, w, h], "area": w * h,
                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
            })  # fmt: skip
        name = f"{i}.png"
        Image.fromarray(pixels).save(os.path.join(image_dir, name))
        images.append({
            "id": i + 1, "file_name": name, "height": H, "width": W,
            "not_exhaustive_category_ids": [], "neg_category_ids": [100 + i],
        })  # fmt: skip
    categories = [
        {"id": c, "name": f"class_{c}", "frequency": FREQUENCIES[(c - 1) % 3],
         "image_count": 1, "instance_count": 1}
        for c in range(1, NUM_CLASSES + 1)
    ]  # fmt: skip
    path = os.path.join(folder, "lvis_1203.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return path, image_dir


@pytest.fixture(scope="module")
def lvis_scale_cfg(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("lvis_scale"))
    json_file, image_root = _lvis_1203(folder)
    name = "lt_lvis_scale_1203"
    opts = [
        "DATASETS.LVIS_FORMAT", repr([[name, json_file, image_root]]),
        "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", f"('{name}',)",
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "OUTPUT_DIR", folder,
        "INPUT.MIN_SIZE_TEST", str(H), "INPUT.MAX_SIZE_TEST", str(W),
        "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.ROI_BOX_HEAD.FC_DIM", "32", "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", "4",
        "MODEL.ROI_MASK_HEAD.NUM_CONV", "1", "MODEL.ROI_MASK_HEAD.CONV_DIM", "8",
        "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", "4",
        "DATALOADER.NUM_WORKERS", "0",
    ]  # fmt: skip
    cfg = load_config(os.path.join(ROOT, "configs", "lvis_softmax.yaml"), opts)
    register_datasets_from_cfg(cfg)
    for check in (check_datasets, check_num_classes, check_mask_annotations):
        check(cfg)  # what tools/train_net.py checks before building the model
    return cfg


def test_lvis_settings_infer_and_evaluate_1203_classes(lvis_scale_cfg):
    cfg = lvis_scale_cfg
    # The LVIS test settings come from the config, not from this test.
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == NUM_CLASSES
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 300
    assert cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == pytest.approx(1e-4)
    assert cfg.MODEL.MASK_ON
    torch.manual_seed(0)
    model = LTTrainer.build_model(cfg).eval()
    name = cfg.DATASETS.TEST[0]
    loader = LTTrainer.build_test_loader(cfg, name)
    evaluator = LTTrainer.build_evaluator(cfg, name)
    evaluator.reset()
    candidates = []
    real_scores = model.roi_heads.box_predictor.predict_probs

    def count_candidates(predictions, proposals):
        scores = real_scores(predictions, proposals)
        candidates.extend(int((s[:, :-1] > 1e-4).sum()) for s in scores)
        return scores

    with torch.no_grad(), mock.patch.object(
        model.roi_heads.box_predictor, "predict_probs", side_effect=count_candidates
    ), mock.patch.object(
        fast_inference,
        "fast_rcnn_inference_single_image",
        wraps=fast_inference.fast_rcnn_inference_single_image,
    ) as detectron2_function:
        seen = 0
        for inputs in loader:
            outputs = model(inputs)
            evaluator.process(inputs, outputs)
            for out in outputs:
                inst = out["instances"]
                seen += 1
                assert len(inst) == 300
                assert bool(torch.isfinite(inst.pred_boxes.tensor).all())
                assert bool(((inst.scores > 1e-4) & (inst.scores <= 1)).all())
                assert bool((inst.scores[1:] <= inst.scores[:-1]).all())
                assert int(inst.pred_classes.min()) >= 0
                assert int(inst.pred_classes.max()) < NUM_CLASSES
                assert inst.pred_masks.shape == (300, H, W)
    assert seen == 3
    # Enough candidates for the top-k path (not detectron2's small-input function).
    assert min(candidates) >= fast_inference.PER_CLASS_NMS_MIN_CANDIDATES
    assert detectron2_function.call_count == 0
    results = evaluator.evaluate()
    for task in ("bbox", "segm"):
        metrics = results[task]
        for key in ("AP", "AP50", "APr", "APc", "APf"):
            assert math.isfinite(metrics[key]) and 0 <= metrics[key] <= 100, (task, key)


def test_mask_head_keeps_only_the_predicted_class_and_equals_detectron2(lvis_scale_cfg):
    # The LVIS configs' mask head computes each detection's predicted-class mask only; its masks
    # equal detectron2's head (same weights), which predicts all 1203 and keeps one.
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.roi_heads.mask_head import MaskRCNNConvUpsampleHead
    from detectron2.structures import Boxes, Instances

    from lt_det.modeling import LTMaskRCNNConvUpsampleHead

    assert lvis_scale_cfg.MODEL.ROI_MASK_HEAD.NAME == "LTMaskRCNNConvUpsampleHead"
    kwargs = dict(num_classes=NUM_CLASSES, conv_dims=[16, 16], conv_norm="")
    shape = ShapeSpec(channels=8, width=7, height=7)
    torch.manual_seed(0)
    ours = LTMaskRCNNConvUpsampleHead(shape, **kwargs).eval()
    theirs = MaskRCNNConvUpsampleHead(shape, **kwargs).eval()
    with torch.no_grad():
        ours.predictor.bias.normal_()  # a bias that matters
    theirs.load_state_dict(ours.state_dict())  # same parameters, same keys
    g = torch.Generator().manual_seed(1)
    per_image = [300, 0, 7]  # LVIS's 300, an image without detections, a few
    x = torch.randn(sum(per_image), 8, 7, 7, generator=g)

    def instances():
        out = []
        for n in per_image:
            inst = Instances((32, 32))
            inst.pred_boxes = Boxes(torch.tensor([[0.0, 0.0, 8.0, 8.0]]).repeat(n, 1))
            inst.pred_classes = torch.randint(0, NUM_CLASSES, (n,), generator=g)
            out.append(inst)
        return out

    a = instances()
    b = [Instances(i.image_size, **i.get_fields()) for i in a]
    with torch.no_grad():
        ours(x, a)
        theirs(x, b)
    for i, j, n in zip(a, b, per_image):
        assert i.pred_masks.shape == j.pred_masks.shape == (n, 1, 14, 14)
        torch.testing.assert_close(i.pred_masks, j.pred_masks, rtol=0, atol=1e-6)
    with torch.no_grad():  # no detections at all: detectron2's path
        assert len(ours(x[:0], [instances()[1]])[0].pred_masks) == 0
