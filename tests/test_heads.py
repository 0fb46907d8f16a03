"""Tests of the box-classification heads: priors from data, the keyword box predictor, the ROI
heads registered for configs (standard and cascade), one training step of a tiny Faster R-CNN
with each loss, and the torchvision adapter. Everything runs on CPU with hand-made data."""
import json
import logging
import uuid

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torch.nn import functional as F

from lt_det import add_lt_config
from lt_det.modeling import (
    LTFastRCNNOutputLayers,
    balanced_sigmoid_loss,
    balanced_softmax_loss,
    build_cls_loss,
    class_prior_from_cfg,
    use_cls_loss_in_torchvision,
)
from lt_det.modeling.normed_linear import NormedLinear

K = 3
LOSSES = ["softmax_ce", "sigmoid_ce", "balanced_softmax", "balanced_sigmoid"]


def _box(x0, y0, x1, y1, c):
    from detectron2.structures import BoxMode

    return {"bbox": [x0, y0, x1 - x0, y1 - y0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": c}


def _three_images():
    """img0: classes 0, 0, 1; img1: class 1; img2: no annotations. Class 2 never occurs."""
    return [
        {"file_name": "a.jpg", "image_id": 0, "height": 64, "width": 64,
         "annotations": [_box(4, 4, 30, 30, 0), _box(30, 30, 60, 60, 0), _box(8, 30, 28, 60, 1)]},
        {"file_name": "b.jpg", "image_id": 1, "height": 64, "width": 64,
         "annotations": [_box(10, 10, 50, 50, 1)]},
        {"file_name": "c.jpg", "image_id": 2, "height": 64, "width": 64, "annotations": []},
    ]  # fmt: skip


@pytest.fixture(scope="module")
def toy_dataset():
    name = f"lt_det_test_heads_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, _three_images)
    MetadataCatalog.get(name).set(
        thing_classes=["cat", "dog", "yak"],
        thing_dataset_id_to_contiguous_id={10: 0, 20: 1, 30: 2},
    )
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _cfg(train_name, *, loss="softmax_ce", roi_heads="LTStandardROIHeads"):
    cfg = add_lt_config(get_cfg())
    cfg.DATASETS.TRAIN = (train_name,)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = K
    cfg.MODEL.ROI_HEADS.NAME = roi_heads
    cfg.MODEL.ROI_BOX_HEAD.CLS_LOSS = loss
    return cfg


def _tiny_model_cfg(train_name, *, loss, roi_heads="LTStandardROIHeads"):
    """R18-FPN with small heads, for 64 x 64 images."""
    cfg = _cfg(train_name, loss=loss, roi_heads=roi_heads)
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16], [32], [64], [128]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 1
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 4
    if roi_heads == "LTCascadeROIHeads":
        cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 64
    return cfg


def _batch():
    """Two 64 x 64 images with drawn rectangles and their boxes."""
    items = []
    for boxes, classes in (([[4, 4, 30, 30], [34, 34, 60, 60]], [0, 1]), ([[10, 10, 50, 40]], [2])):
        img = torch.full((3, 64, 64), 20.0)
        for (x0, y0, x1, y1), c in zip(boxes, classes):
            img[c, y0:y1, x0:x1] = 230.0
        inst = Instances((64, 64))
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.gt_classes = torch.tensor(classes)
        items.append({"image": img, "instances": inst, "height": 64, "width": 64})
    return items


# ----------------------------------------------------------------------------- priors


def test_prior_image_count_and_zero_floor_warning(toy_dataset, caplog):
    cfg = _cfg(toy_dataset, loss="balanced_softmax")
    with caplog.at_level(logging.WARNING):
        prior = class_prior_from_cfg(cfg)
    # images containing: class 0 -> 1, class 1 -> 2, class 2 -> 0 (floored to 0.5); 3 images.
    torch.testing.assert_close(prior, torch.tensor([1 / 3, 2 / 3, 0.5 / 3]))
    assert "yak" in caplog.text and "ZERO_COUNT_FLOOR" in caplog.text
    cfg.MODEL.ROI_BOX_HEAD.PRIOR.ZERO_COUNT_FLOOR = 0.25
    assert class_prior_from_cfg(cfg)[2] == pytest.approx(0.25 / 3)


def test_prior_instance_count(toy_dataset):
    cfg = _cfg(toy_dataset)
    cfg.MODEL.ROI_BOX_HEAD.PRIOR.SOURCE = "instance_count"
    # instances: class 0 -> 2, class 1 -> 2, class 2 -> 0.5 (floor); share of the 4 instances.
    torch.testing.assert_close(class_prior_from_cfg(cfg), torch.tensor([0.5, 0.5, 0.125]))


def test_prior_cat_info_maps_ids(toy_dataset, tmp_path):
    path = tmp_path / "cat_info.json"
    # Dataset ids 30, 10, 20 (unordered) -> contiguous 2, 0, 1; an extra id 99 is ignored.
    path.write_text(json.dumps([
        {"id": 30, "image_count": 1, "instance_count": 1},
        {"id": 10, "image_count": 3, "instance_count": 9},
        {"id": 20, "image_count": 2, "instance_count": 2},
        {"id": 99, "image_count": 3, "instance_count": 3},
    ]))  # fmt: skip
    cfg = _cfg(toy_dataset)
    cfg.MODEL.ROI_BOX_HEAD.PRIOR.SOURCE = "cat_info"
    cfg.MODEL.ROI_BOX_HEAD.PRIOR.CAT_INFO_PATH = str(path)
    torch.testing.assert_close(class_prior_from_cfg(cfg), torch.tensor([1.0, 2 / 3, 1 / 3]))


def test_prior_metadata_and_length_error(toy_dataset):
    meta = MetadataCatalog.get(toy_dataset)
    meta.class_image_count = [{"id": 10, "image_count": 2}, {"id": 20, "image_count": 1},
                              {"id": 30, "image_count": 3}]  # fmt: skip
    meta.num_images = 6  # the denominator when present
    try:
        cfg = _cfg(toy_dataset)
        cfg.MODEL.ROI_BOX_HEAD.PRIOR.SOURCE = "metadata"
        torch.testing.assert_close(class_prior_from_cfg(cfg), torch.tensor([2 / 6, 1 / 6, 3 / 6]))
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = 5
        with pytest.raises(ValueError, match=r"3 classes but MODEL.ROI_HEADS.NUM_CLASSES is 5"):
            class_prior_from_cfg(cfg)
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = K
        cfg.MODEL.ROI_BOX_HEAD.PRIOR.SOURCE = "nope"
        with pytest.raises(ValueError, match="image_count"):
            class_prior_from_cfg(cfg)
    finally:
        del meta.class_image_count, meta.num_images


# ----------------------------------------------------------------------------- predictor


def _proposals(gen):
    """Two images, 6 + 4 proposals, with foreground and background labels."""
    out = []
    for n, labels in ((6, [0, 2, 3, 3, 1, 3]), (4, [3, 1, 3, 0])):
        xy = torch.rand(n, 2, generator=gen) * 30
        wh = torch.rand(n, 2, generator=gen) * 30 + 4
        p = Instances((64, 64))
        p.proposal_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        p.gt_boxes = Boxes(torch.cat([xy + 1, xy + wh - 1], dim=1))
        p.gt_classes = torch.tensor(labels)
        out.append(p)
    return out


@pytest.mark.parametrize("loss", LOSSES)
def test_keyword_predictor_losses_match_hand_computation(loss):
    gen = torch.Generator().manual_seed(0)
    prior = torch.tensor([0.4, 0.05, 0.2])
    kwargs = dict(box2box_transform=Box2BoxTransform(weights=(10, 10, 5, 5)), num_classes=K)
    torch.manual_seed(0)
    pred = LTFastRCNNOutputLayers(ShapeSpec(channels=8), cls_loss=loss, class_prior=prior, **kwargs)
    plain = FastRCNNOutputLayers(ShapeSpec(channels=8), **kwargs)
    plain.load_state_dict(pred.state_dict(), strict=False)
    x = torch.randn(10, 8, generator=gen)
    proposals = _proposals(gen)
    with EventStorage():
        got = pred.losses(pred(x), proposals)
        ref = plain.losses(plain(x), proposals)
    z = pred.cls_score(x).detach()
    y = torch.cat([p.gt_classes for p in proposals])
    # Hand computation from the definitions (see tests/test_losses.py).
    if loss == "softmax_ce":
        expected = F.cross_entropy(z, y)
    elif loss == "balanced_softmax":
        shift = torch.cat([torch.log(prior / prior.mean()), torch.zeros(1)])  # fg_mass
        expected = F.cross_entropy(z + shift, y)
    else:
        fg = (y < K).float()[:, None]
        shift = torch.log(prior / (1 - prior)) if loss == "balanced_sigmoid" else torch.zeros(K)
        target = F.one_hot(y, K + 1)[:, :K].float()
        expected = F.binary_cross_entropy_with_logits(
            z[:, :K] + fg * shift, target, reduction="sum"
        ) / len(y)
    torch.testing.assert_close(got["loss_cls"], expected)
    torch.testing.assert_close(got["loss_box_reg"], ref["loss_box_reg"])
    if loss.endswith("sigmoid"):
        assert torch.allclose(torch.sigmoid(pred.cls_score.bias[:K]), torch.tensor(0.01))
    probs = pred.predict_probs(pred(x), proposals)
    assert [p.shape for p in probs] == [(6, K + 1), (4, K + 1)]
    assert "cls_loss.class_prior" in pred.state_dict() or not loss.startswith("balanced")


@pytest.mark.parametrize("cls_score, loss", [
    ("linear", "softmax_ce"), ("normed_linear", "softmax_ce"), ("linear", "bags"),
    ("normed_linear", "bags"),
])
def test_classifier_is_detectron2s_layer_kept_or_extended(cls_score, loss):
    """The classifier is the layer detectron2's constructor built (same parameters, same
    draws under one seed, box regression untouched); a loss with extra logits (BAGS) gets rows
    appended below detectron2's K + 1, initialised as detectron2 does (N(0, 0.01^2))."""
    kwargs = dict(box2box_transform=Box2BoxTransform(weights=(10, 10, 5, 5)), num_classes=K)
    options = {"instance_counts": [5, 50, 500]} if loss == "bags" else None
    torch.manual_seed(0)
    plain = FastRCNNOutputLayers(ShapeSpec(channels=64), **kwargs)
    torch.manual_seed(0)
    pred = LTFastRCNNOutputLayers(ShapeSpec(channels=64), cls_loss=loss, cls_score=cls_score,
                                  cls_loss_kwargs=options, **kwargs)
    extra = getattr(pred.cls_loss, "num_extra_logits", 0)
    assert (extra > 0) == (loss == "bags")
    weight = pred.cls_score.weight
    assert type(pred.cls_score) is (NormedLinear if cls_score == "normed_linear" else torch.nn.Linear)
    assert weight.shape == (K + 1 + extra, 64) and pred.cls_score.bias.shape == (K + 1 + extra,)
    assert weight.device.type == "cpu" and weight.requires_grad
    assert torch.equal(weight[: K + 1], plain.cls_score.weight)
    assert torch.equal(pred.bbox_pred.weight, plain.bbox_pred.weight)
    if extra:
        rows = weight[K + 1:].detach()
        assert rows.abs().min() > 0 and 0.005 < float(rows.std()) < 0.02
    names = [n for n, _ in pred.named_parameters() if n.startswith("cls_score")]
    assert names == ["cls_score.weight", "cls_score.bias"]


def test_predictor_losses_log_detectron2s_classification_statistics():
    """loss_box_reg and the classification statistics come from detectron2's own losses();
    the classification loss's gradient is the loss module's alone."""
    gen = torch.Generator().manual_seed(1)
    kwargs = dict(box2box_transform=Box2BoxTransform(weights=(10, 10, 5, 5)), num_classes=K)
    pred = LTFastRCNNOutputLayers(ShapeSpec(channels=8), cls_loss="balanced_softmax",
                                  class_prior=torch.tensor([0.4, 0.05, 0.2]), **kwargs)
    x = torch.randn(10, 8, generator=gen)
    proposals = _proposals(gen)
    y = torch.cat([p.gt_classes for p in proposals])
    scores, deltas = pred(x)
    with EventStorage() as storage:
        got = pred.losses((scores, deltas), proposals)
    accuracy = storage.latest()["fast_rcnn/cls_accuracy"][0]
    assert accuracy == pytest.approx(float((scores.argmax(1) == y).float().mean()))
    assert set(got) == {"loss_cls", "loss_box_reg"}
    (grad,) = torch.autograd.grad(got["loss_cls"], scores)
    (expected,) = torch.autograd.grad(pred.cls_loss(scores, y), scores)
    torch.testing.assert_close(grad, expected)


def test_predictor_accepts_loss_module_and_rejects_mismatch():
    box = Box2BoxTransform(weights=(10, 10, 5, 5))
    module = build_cls_loss("balanced_softmax", num_classes=K, class_prior=torch.ones(K) / K)
    pred = LTFastRCNNOutputLayers(8, box2box_transform=box, num_classes=K, cls_loss=module)
    assert pred.cls_loss is module
    with pytest.raises(ValueError, match="num_classes"):
        LTFastRCNNOutputLayers(8, box2box_transform=box, num_classes=K + 1, cls_loss=module)


# ----------------------------------------------------------------------------- ROI heads


def _count_calls(modules):
    calls = [0] * len(modules)
    for i, m in enumerate(modules):
        m.register_forward_hook(lambda mod, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


def _train_step(model):
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with EventStorage():
        losses = model(_batch())
    total = sum(losses.values())
    assert all(torch.isfinite(v) for v in losses.values()), losses
    opt.zero_grad()
    total.backward()
    opt.step()
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())]
    return losses, changed


@pytest.mark.parametrize("loss", LOSSES)
def test_tiny_faster_rcnn_trains_one_step_with_each_loss(toy_dataset, loss):
    torch.manual_seed(0)
    model = build_model(_tiny_model_cfg(toy_dataset, loss=loss))
    pred = model.roi_heads.box_predictor
    assert isinstance(pred, LTFastRCNNOutputLayers) and pred.cls_loss.loss_name == loss
    calls = _count_calls([pred.cls_loss])
    losses, changed = _train_step(model)
    assert calls == [1]
    assert "roi_heads.box_predictor.cls_score.weight" in changed
    model.eval()
    with torch.no_grad():
        out = model([{"image": b["image"], "height": 64, "width": 64} for b in _batch()])
    assert len(out) == 2 and out[0]["instances"].scores.numel() >= 0


def test_cascade_from_config_uses_the_loss_in_every_stage(toy_dataset):
    torch.manual_seed(0)
    cfg = _tiny_model_cfg(toy_dataset, loss="balanced_softmax", roi_heads="LTCascadeROIHeads")
    cfg.MODEL.ROI_BOX_HEAD.BALANCED_SOFTMAX_BG = "unshifted"
    model = build_model(cfg)
    preds = model.roi_heads.box_predictor
    assert len(preds) == 3
    weights = [tuple(p.box2box_transform.weights) for p in preds]
    assert weights == [tuple(w) for w in cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS]
    expected_prior = torch.tensor([1 / 3, 2 / 3, 0.5 / 3])
    for p in preds:
        assert isinstance(p, LTFastRCNNOutputLayers)
        assert p.cls_loss.loss_name == "balanced_softmax" and p.cls_loss.background == "unshifted"
        torch.testing.assert_close(p.cls_loss.class_prior, expected_prior)
    calls = _count_calls([p.cls_loss for p in preds])
    _, changed = _train_step(model)
    assert calls == [1, 1, 1]
    for s in range(3):
        assert f"roi_heads.box_predictor.{s}.cls_score.weight" in changed


def test_mask_rcnn_with_balanced_sigmoid_trains_and_infers(toy_dataset):
    from detectron2.structures import BitMasks

    torch.manual_seed(0)
    cfg = _tiny_model_cfg(toy_dataset, loss="balanced_sigmoid", roi_heads="LTCascadeROIHeads")
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 1
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 8
    cfg.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 4
    model = build_model(cfg)
    batch = _batch()
    for item in batch:
        inst = item["instances"]
        masks = torch.zeros(len(inst), 64, 64, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(inst.gt_boxes.tensor.int().tolist()):
            masks[i, y0:y1, x0:x1] = True
        inst.gt_masks = BitMasks(masks)
    model.train()
    with EventStorage():
        losses = model(batch)
    assert {"loss_mask", "loss_cls_stage2"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model([{"image": b["image"], "height": 64, "width": 64} for b in batch])
    inst = out[0]["instances"]
    assert inst.has("pred_masks") and bool(((inst.scores >= 0) & (inst.scores <= 1)).all())


def test_prior_is_computed_once_per_model_build(toy_dataset, monkeypatch):
    import lt_det.modeling.roi_heads as rh

    calls = []
    real = rh.class_prior_from_cfg
    monkeypatch.setattr(rh, "class_prior_from_cfg", lambda cfg: calls.append(1) or real(cfg))
    cfg = _tiny_model_cfg(toy_dataset, loss="balanced_sigmoid", roi_heads="LTCascadeROIHeads")
    build_model(cfg)
    assert calls == [1]
    build_model(_tiny_model_cfg(toy_dataset, loss="softmax_ce"))  # no prior needed
    assert calls == [1]


def test_stage1_checkpoint_loads_into_every_head(toy_dataset):
    torch.manual_seed(0)
    state = build_model(_tiny_model_cfg(toy_dataset, loss="softmax_ce")).state_dict()
    for loss in LOSSES[1:]:
        model = build_model(_tiny_model_cfg(toy_dataset, loss=loss))
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert unexpected == [] and set(missing) <= {"roi_heads.box_predictor.cls_loss.class_prior"}


# ----------------------------------------------------------------------------- torchvision


def _tiny_torchvision_frcnn(num_classes):
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    backbone = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
    )  # fmt: skip
    backbone.out_channels = 16
    return FasterRCNN(
        backbone,
        num_classes=num_classes,  # background included
        min_size=64,
        max_size=64,
        rpn_anchor_generator=AnchorGenerator(sizes=((16, 32),), aspect_ratios=((0.5, 1.0, 2.0),)),
        box_roi_pool=MultiScaleRoIAlign(featmap_names=["0"], output_size=4, sampling_ratio=2),
        box_batch_size_per_image=32,
        rpn_batch_size_per_image=32,
    )


def test_torchvision_label_permutation():
    from lt_det.modeling.torchvision_adapter import (
        torchvision_labels_to_lt,
        torchvision_logits_to_lt,
    )

    tv_logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])  # background, class 1, 2, 3
    assert torch.equal(torchvision_logits_to_lt(tv_logits), torch.tensor([[1.0, 2.0, 3.0, 0.0]]))
    labels = torchvision_labels_to_lt(torch.tensor([0, 1, 3]), 3)
    assert torch.equal(labels, torch.tensor([3, 0, 2]))


@pytest.mark.parametrize("loss", ["balanced_softmax", "balanced_sigmoid"])
def test_torchvision_faster_rcnn_trains_one_step(loss):
    from torchvision.models.detection import roi_heads as tv_roi_heads

    torch.manual_seed(0)
    prior = torch.tensor([0.5, 0.1, 0.01])  # torchvision labels 1, 2, 3
    model = _tiny_torchvision_frcnn(K + 1)
    other = _tiny_torchvision_frcnn(K + 1)  # not adapted: must keep torchvision's loss
    use_cls_loss_in_torchvision(model, build_cls_loss(loss, num_classes=K, class_prior=prior))
    assert "roi_heads.lt_cls_loss.class_prior" in model.state_dict()
    calls = _count_calls([model.roi_heads.lt_cls_loss])

    # Capture what reaches the classification loss to check it against a hand computation.
    seen = []
    predictor = model.roi_heads.box_predictor
    predictor.register_forward_hook(lambda m, a, o: seen.append(o[0].detach()))
    real_select = model.roi_heads.select_training_samples

    def select(*args):
        out = real_select(*args)
        seen.append(torch.cat(out[2]))
        return out

    model.roi_heads.select_training_samples = select

    images = [torch.rand(3, 64, 64) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[10.0, 10.0, 50.0, 40.0]]), "labels": torch.tensor([3])},
    ]
    model.train()
    before = predictor.cls_score.weight.detach().clone()
    losses = model(images, targets)
    assert calls == [1] and all(torch.isfinite(v) for v in losses.values())
    labels, tv_logits = seen
    z = torch.cat([tv_logits[:, 1:], tv_logits[:, :1]], dim=1)
    y = torch.where(labels == 0, torch.tensor(K), labels - 1)
    fn = balanced_softmax_loss if loss == "balanced_softmax" else balanced_sigmoid_loss
    torch.testing.assert_close(losses["loss_classifier"], fn(z, y, prior))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    sum(losses.values()).backward()
    opt.step()
    assert not torch.equal(before, predictor.cls_score.weight.detach())

    other.train()
    other_losses = other(images, targets)
    assert torch.isfinite(other_losses["loss_classifier"]) and calls == [1]
    # torchvision's module-level function is torchvision's own cross-entropy.
    assert tv_roi_heads.fastrcnn_loss.__module__ == "torchvision.models.detection.roi_heads"
    y_tv = torch.tensor([0, 2])
    logits = torch.randn(2, K + 1)
    box_regression, reg_targets = torch.zeros(2, 4 * (K + 1)), [torch.zeros(2, 4)]
    cls, _ = tv_roi_heads.fastrcnn_loss(logits, box_regression, [y_tv], reg_targets)
    torch.testing.assert_close(cls, F.cross_entropy(logits, y_tv))


def test_two_torchvision_models_train_with_different_losses_in_one_process():
    torch.manual_seed(0)
    prior = torch.tensor([0.5, 0.1, 0.01])
    images = [torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0]]), "labels": torch.tensor([2])}]
    losses = {"balanced_softmax": balanced_softmax_loss, "balanced_sigmoid": balanced_sigmoid_loss}
    models, seen = {}, {}
    for name in losses:
        model = _tiny_torchvision_frcnn(K + 1).train()
        use_cls_loss_in_torchvision(model, build_cls_loss(name, num_classes=K, class_prior=prior))
        model.roi_heads.box_predictor.register_forward_hook(
            lambda m, a, o, name=name: seen[name].append(o[0].detach())
        )
        real_select = model.roi_heads.select_training_samples

        def select(*args, name=name, real_select=real_select):
            out = real_select(*args)
            seen[name].append(torch.cat(out[2]))
            return out

        model.roi_heads.select_training_samples = select
        models[name] = model
    # Interleaved forwards: each model's classification term is its own loss.
    for name in list(losses) + list(losses):
        seen[name] = []
        value = models[name](images, targets)["loss_classifier"]
        labels, tv_logits = seen[name]
        z = torch.cat([tv_logits[:, 1:], tv_logits[:, :1]], dim=1)
        y = torch.where(labels == 0, torch.tensor(K), labels - 1)
        torch.testing.assert_close(value, losses[name](z, y, prior))
