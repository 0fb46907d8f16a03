"""Stage 2 of the flagship recipe, cRT (Kang et al., ICLR 2020): the stage-1 model of lvis_rfs.py
frozen, its box classifier (roi_heads.box_predictor.cls_score) re-initialised and retrained alone
with class-balanced sampling; the LazyConfig twin of configs/lvis_stage2_crt.yaml (its schedule:
12k iterations, lr 0.02 x0.1 at 10k, 100 warm-up iterations).

The model is lt_det.decouple.stage2_model.DecoupledGeneralizedRCNN: it loads model.stage1_weights
when built (every frozen parameter must load), re-initialises cls_score, and trains with the
classifier-only step (frozen detector under no_grad, no mask head), with lt_det's
tools/train_net.py and with detectron2's lazyconfig_train_net.py alike. train.init_checkpoint
stays empty; --resume continues from this run's own checkpoint.
"""
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from lt_det.data.samplers import ClassPowerSampler
from lt_det.decouple import ClassifierRetraining
from lt_det.decouple.stage2_model import DecoupledGeneralizedRCNN

from .lvis_rfs import dataloader, model, optimizer, train

model._target_ = DecoupledGeneralizedRCNN
model.stage1_weights = "./output/lazy/lvis_rfs/model_final.pth"
model.decouple = L(ClassifierRetraining)(
    trainable=["roi_heads.box_predictor.cls_score"],
    reinit=["roi_heads.box_predictor.cls_score"],
)

# Class-balanced sampling: a class uniformly, then one of its images (power 0 of n_c).
dataloader.train.sampler = L(ClassPowerSampler)(
    class_images="${dataloader.train.dataset}",
    power=0.0,
    num_classes="${model.roi_heads.num_classes}",
)

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1], milestones=[10000, 12000]),
    warmup_length=100 / 12000,
    warmup_method="linear",
    warmup_factor=0.001,
)
optimizer.lr = 0.02
train.max_iter = 12000
train.init_checkpoint = ""
train.checkpointer.period = 4000
train.output_dir = "./output/lazy/lvis_stage2_crt"
