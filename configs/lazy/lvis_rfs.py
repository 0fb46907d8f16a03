"""Stage 1 of the flagship recipe: softmax cross-entropy + LVIS repeat-factor sampling (Gupta et
al., CVPR 2019; t = 0.001), the LazyConfig twin of configs/lvis_rfs.yaml. Stage 2:
lvis_stage2_crt.py (cRT on this model's model_final.pth).

Repeat factors: r_c = max(1, sqrt(t / f_c)), f_c the fraction of training images with class c,
an image's factor the largest r_c of its classes (lt_det.data.samplers.repeat_factors: detectron2's
rule with crowd regions not counted, as every class statistic of lt_det).
"""
from detectron2.config import LazyCall as L
from detectron2.data.samplers import RepeatFactorTrainingSampler

from lt_det.data.samplers import repeat_factors

from .base_lvis_mask_rcnn_R_50_FPN import dataloader, lr_multiplier, model, optimizer, train

dataloader.train.sampler = L(RepeatFactorTrainingSampler)(
    repeat_factors=L(repeat_factors)(
        dataset_dicts="${dataloader.train.dataset}",
        num_classes="${model.roi_heads.num_classes}",
        repeat_thresh=0.001,
    )
)
train.output_dir = "./output/lazy/lvis_rfs"
