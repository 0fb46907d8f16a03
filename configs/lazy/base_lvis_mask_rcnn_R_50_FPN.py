"""Mask R-CNN R50-FPN on LVIS v1 (1203 classes) with lt_det's ROI heads and box predictor: the
LazyConfig twin of configs/Base-LVIS-v1-MaskRCNN-R50-FPN.yaml (detectron2's LVIS 1x schedule,
MSRA R-50, softmax cross-entropy, uniform image sampling, 300 detections per image at score
1e-4). Self-contained (detectron2's model_zoo configs are not needed). Recipes import from it and
change only what differs; run one with

    python tools/train_net.py --config-file configs/lazy/lvis_rfs.py [path.key=value ...]

or with detectron2's tools/lazyconfig_train_net.py. Needs LVIS under $DETECTRON2_DATASETS
(coco/{train2017,val2017}, lvis/lvis_v1_{train,val}.json); own LVIS-format data:
datasets.lvis_format=[[name,json,image_root],...] plus dataloader.{train,test}.dataset.names and
model.roi_heads.num_classes (docs/lazyconfig.md).
"""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.layers import ShapeSpec
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.backbone import FPN, BasicStem, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.proposal_generator import RPN, StandardRPNHead
from detectron2.modeling.roi_heads import FastRCNNConvFCHead
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params
from fvcore.common.param_scheduler import MultiStepParamScheduler
import torch

from lt_det.evaluation import LTLVISEvaluator
from lt_det.modeling import LTFastRCNNOutputLayers, LTMaskRCNNConvUpsampleHead, LTStandardROIHeads

model = L(GeneralizedRCNN)(
    backbone=L(FPN)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
            stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=True, norm="FrozenBN"),
            out_features=["res2", "res3", "res4", "res5"],
            freeze_at=2,
        ),
        in_features="${.bottom_up.out_features}",
        out_channels=256,
        top_block=L(LastLevelMaxPool)(),
    ),
    proposal_generator=L(RPN)(
        in_features=["p2", "p3", "p4", "p5", "p6"],
        head=L(StandardRPNHead)(in_channels=256, num_anchors=3),
        anchor_generator=L(DefaultAnchorGenerator)(
            sizes=[[32], [64], [128], [256], [512]],
            aspect_ratios=[0.5, 1.0, 2.0],
            strides=[4, 8, 16, 32, 64],
            offset=0.0,
        ),
        anchor_matcher=L(Matcher)(
            thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True
        ),
        box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_topk=(2000, 1000),
        post_nms_topk=(1000, 1000),
        nms_thresh=0.7,
    ),
    roi_heads=L(LTStandardROIHeads)(
        num_classes=1203,
        batch_size_per_image=512,
        positive_fraction=0.25,
        proposal_matcher=L(Matcher)(thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=False),
        box_in_features=["p2", "p3", "p4", "p5"],
        box_pooler=L(ROIPooler)(
            output_size=7,
            scales=(1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32),
            sampling_ratio=0,
            pooler_type="ROIAlignV2",
        ),
        box_head=L(FastRCNNConvFCHead)(
            input_shape=ShapeSpec(channels=256, height=7, width=7),
            conv_dims=[],
            fc_dims=[1024, 1024],
        ),
        # lt_det's predictor: the classification loss is cls_loss (a registered name, with
        # class_prior / cls_loss_kwargs when the loss needs them); scores come from the loss.
        box_predictor=L(LTFastRCNNOutputLayers)(
            input_shape=ShapeSpec(channels=1024),
            box2box_transform=L(Box2BoxTransform)(weights=(10, 10, 5, 5)),
            num_classes="${..num_classes}",
            test_score_thresh=0.0001,
            test_topk_per_image=300,
            cls_loss="softmax_ce",
        ),
        mask_in_features=["p2", "p3", "p4", "p5"],
        mask_pooler=L(ROIPooler)(
            output_size=14,
            scales=(1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32),
            sampling_ratio=0,
            pooler_type="ROIAlignV2",
        ),
        mask_head=L(LTMaskRCNNConvUpsampleHead)(
            input_shape=ShapeSpec(channels=256, width=14, height=14),
            num_classes="${..num_classes}",
            conv_dims=[256, 256, 256, 256, 256],
        ),
    ),
    # MSRA R-50: BGR, ImageNet mean, std absorbed into conv1 (detectron2's constants).
    pixel_mean=[103.530, 116.280, 123.675],
    pixel_std=[1.0, 1.0, 1.0],
    input_format="BGR",
)

dataloader = dict(
    train=L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names="lvis_v1_train"),
        mapper=L(DatasetMapper)(
            is_train=True,
            augmentations=[
                L(T.ResizeShortestEdge)(
                    short_edge_length=(640, 672, 704, 736, 768, 800),
                    sample_style="choice",
                    max_size=1333,
                ),
                L(T.RandomFlip)(horizontal=True),
            ],
            image_format="BGR",
            use_instance_mask=True,
        ),
        total_batch_size=16,
        num_workers=4,
    ),
    test=L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names="lvis_v1_val", filter_empty=False),
        mapper=L(DatasetMapper)(
            is_train=False,
            augmentations=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)],
            image_format="BGR",
        ),
        num_workers=4,
    ),
    # lt_det's LVIS evaluator (bbox + segm, 300 detections per image, per-class AP with each
    # class's training frequency written under output_dir).
    evaluator=L(LTLVISEvaluator)(
        dataset_name="${..test.dataset.names}",
        max_dets_per_image=300,
        output_dir="${train.output_dir}/inference",
    ),
)

optimizer = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),  # params.model: set by the tool
    lr=0.02,
    momentum=0.9,
    weight_decay=1e-4,
)

# 1x: 90k iterations of 16 images, lr x0.1 at 60k and 80k, linear warm-up over 1000 iterations.
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[60000, 80000, 90000]
    ),
    warmup_length=1000 / 90000,
    warmup_method="linear",
    warmup_factor=0.001,
)

train = dict(
    output_dir="./output/lazy/base_lvis_mask_rcnn_R_50_FPN",
    init_checkpoint="detectron2://ImageNetPretrained/MSRA/R-50.pkl",
    max_iter=90000,
    amp=dict(enabled=False),
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=10000, max_to_keep=100),
    eval_period=0,  # evaluate once, at the end
    log_period=20,
    device="cuda",
)
