"""MobileNetV2-FPN backbone: stage shapes and strides, ImageNet weight loading, freezing, and one
training step of a tiny GeneralizedRCNN on CPU."""
import os
import subprocess
import sys

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_backbone, build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import lt_det  # noqa: F401
from lt_det import add_lt_config
from lt_det.errors import LTDetError
from lt_det.modeling.backbone import (
    MobileNetV2Backbone,
    default_mnv2_weights_path,
    load_torchvision_mnv2_weights,
    resolve_mnv2_pretrained_path,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNV2_YAML = os.path.join(ROOT, "configs", "synthetic", "Base-synthetic-MNV2-FPN.yaml")
HAVE_WEIGHTS = os.path.isfile(default_mnv2_weights_path())
needs_weights = pytest.mark.skipif(
    not HAVE_WEIGHTS, reason="ImageNet MobileNetV2 file not installed (run tools/setup_env.sh)"
)

# torchvision MobileNetV2 (width 1.0): last-block channels of the stages stem, res2..res5.
CHANNELS = {"stem": 16, "res2": 24, "res3": 32, "res4": 96, "res5": 320}
STRIDES = {"stem": 2, "res2": 4, "res3": 8, "res4": 16, "res5": 32}


def _cfg(pretrained: str = "", **overrides):
    cfg = add_lt_config(get_cfg())
    cfg.merge_from_file(MNV2_YAML)
    cfg.MODEL.MNV2.PRETRAINED_PATH = pretrained
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    for k, v in overrides.items():
        node = cfg
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return cfg


def test_registered_when_lt_det_builds_configs():
    """``import lt_det`` is light (the offline evaluator needs no torch); the backbone is
    registered as soon as the model side is used, here through add_lt_config."""
    code = (
        "import lt_det; from detectron2.config import get_cfg; lt_det.add_lt_config(get_cfg()); "
        "from detectron2.modeling import BACKBONE_REGISTRY; "
        "assert 'build_mnv2_fpn_backbone' in BACKBONE_REGISTRY._obj_map"
    )
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], check=True, cwd=ROOT)


def test_bottom_up_shapes_and_strides():
    torch.manual_seed(0)
    net = MobileNetV2Backbone(norm="BN", out_features=list(CHANNELS)).eval()
    out = net(torch.rand(2, 3, 64, 96))
    assert list(out) == list(CHANNELS)
    for name, x in out.items():
        s = STRIDES[name]
        assert tuple(x.shape) == (2, CHANNELS[name], 64 // s, 96 // s), name
        assert net.output_shape()[name].channels == CHANNELS[name]
        assert net.output_shape()[name].stride == s


def test_unused_stages_are_not_built():
    net = MobileNetV2Backbone(out_features=["res2", "res3"])
    assert len(net.features) == 7  # torchvision layers 0..6 only
    assert set(net(torch.rand(1, 3, 32, 32))) == {"res2", "res3"}


def test_fpn_shapes_and_strides():
    cfg = _cfg()
    fpn = build_backbone(cfg).eval()
    out = fpn(torch.rand(1, 3, 96, 128))
    c = cfg.MODEL.FPN.OUT_CHANNELS
    for name, s in {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}.items():
        assert fpn.output_shape()[name].stride == s
        assert tuple(out[name].shape) == (1, c, -(-96 // s), -(-128 // s)), name
    assert fpn.size_divisibility == 32


@needs_weights
def test_imagenet_weights_are_loaded():
    state = torch.load(default_mnv2_weights_path(), map_location="cpu")
    cfg = _cfg("imagenet", **{"MODEL.MNV2.NORM": "FrozenBN"})
    bottom_up = build_backbone(cfg).bottom_up
    own = bottom_up.state_dict()
    for key in ["features.0.0.weight", "features.9.conv.1.0.weight", "features.17.conv.3.bias"]:
        assert torch.equal(own[key], state[key]), key
    # FrozenBN carries the ImageNet statistics, as buffers.
    key = "features.17.conv.3.running_var"
    assert torch.equal(own[key], state[key])
    # No ImageNet head in the backbone.
    assert not any(k.startswith(("features.18", "classifier")) for k in own)


@needs_weights
def test_weights_skipped_when_model_weights_given_and_random_init_differs():
    state = torch.load(default_mnv2_weights_path(), map_location="cpu")
    key = "features.0.0.weight"
    random_init = build_backbone(_cfg("")).bottom_up.state_dict()[key]
    assert not torch.equal(random_init, state[key])
    cfg = _cfg("imagenet", **{"MODEL.WEIGHTS": "some/checkpoint.pth"})
    assert not torch.equal(build_backbone(cfg).bottom_up.state_dict()[key], state[key])


def test_bad_pretrained_path_is_clear(tmp_path):
    with pytest.raises(LTDetError, match="PRETRAINED_PATH"):
        resolve_mnv2_pretrained_path(str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(LTDetError, match="not a torchvision MobileNetV2"):
        load_torchvision_mnv2_weights(MobileNetV2Backbone(), str(bad))
    with pytest.raises(LTDetError, match="out_features"):
        MobileNetV2Backbone(out_features=["res6"])


def test_freeze_at():
    cfg = _cfg("", **{"MODEL.MNV2.NORM": "BN", "MODEL.BACKBONE.FREEZE_AT": 2})
    net = build_backbone(cfg).bottom_up
    for i, layer in enumerate(net.features):
        frozen = i < 4  # stem = layers 0-1, res2 = layers 2-3
        assert all(p.requires_grad != frozen for p in layer.parameters()), i
        has_frozen_bn = any(isinstance(m, FrozenBatchNorm2d) for m in layer.modules())
        assert has_frozen_bn == frozen, i


def test_one_training_step_of_a_tiny_rcnn():
    torch.manual_seed(0)
    cfg = _cfg(
        "imagenet" if HAVE_WEIGHTS else "",
        **{
            "MODEL.ROI_HEADS.NUM_CLASSES": 3,
            "MODEL.FPN.OUT_CHANNELS": 16,
            "MODEL.ROI_BOX_HEAD.FC_DIM": 32,
            "MODEL.RPN.POST_NMS_TOPK_TRAIN": 32,
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 16,
            "MODEL.MASK_ON": False,  # a box-only step: the synthetic base trains Mask R-CNN
        },
    )
    model = build_model(cfg)
    model.train()
    inputs = []
    for k in range(2):
        inst = Instances((64, 64))
        inst.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 30.0, 40.0], [30.0, 20.0, 60.0, 50.0]]))
        inst.gt_classes = torch.tensor([k, 2])
        img = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8).float()
        inputs.append({"image": img, "instances": inst, "height": 64, "width": 64})
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.0)
    with EventStorage(0):
        losses = model(inputs)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    first = model.backbone.bottom_up.features[0][0].weight
    assert first.grad is not None and torch.isfinite(first.grad).all()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, params))
    model.eval()
    with torch.no_grad():
        out = model([{"image": inputs[0]["image"], "height": 64, "width": 64}])
    assert out[0]["instances"].image_size == (64, 64)
