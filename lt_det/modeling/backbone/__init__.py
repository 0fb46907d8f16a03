"""Backbones. Importing this package registers them in detectron2's BACKBONE_REGISTRY.

- ``build_mnv2_fpn_backbone``: torchvision MobileNetV2 + FPN, optional ImageNet initialisation
  (``MODEL.MNV2.*``).
"""
from .mobilenet_v2 import (
    MNV2_IMAGENET_FILE,
    MobileNetV2Backbone,
    build_mnv2_backbone,
    build_mnv2_fpn_backbone,
    default_mnv2_weights_path,
    load_torchvision_mnv2_weights,
    resolve_mnv2_pretrained_path,
)

__all__ = [k for k in globals().keys() if not k.startswith("_")]
