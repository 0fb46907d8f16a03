"""Single stage: Balanced Softmax (Ren et al., NeurIPS 2020) trained end to end, the LazyConfig twin
of configs/lvis_balanced_e2e.yaml. Training logits are shifted by log(prior_c); the class prior is
the fraction of training images containing each class, counted from the training set
(lt_det.modeling.priors.class_prior_from_dataset, source "image_count"); the background logit is
shifted by the log of the foreground prior mass ("fg_mass"). Scores at test time are the plain
softmax.
"""
from detectron2.config import LazyCall as L

from lt_det.modeling.priors import class_prior_from_dataset

from .base_lvis_mask_rcnn_R_50_FPN import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.box_predictor.cls_loss = "balanced_softmax"
model.roi_heads.box_predictor.class_prior = L(class_prior_from_dataset)(
    dataset_names="${dataloader.train.dataset.names}",
    source="image_count",
    num_classes="${model.roi_heads.num_classes}",
)
train.output_dir = "./output/lazy/lvis_balanced_softmax"
