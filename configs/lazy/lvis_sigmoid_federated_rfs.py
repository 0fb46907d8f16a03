"""The head of detectron2's ViTDet LVIS recipes (projects/ViTDet/configs/LVIS) on an R50-FPN Mask
R-CNN: sigmoid cross-entropy with the federated loss (Zhou et al., CenterNet2 LVIS report) and
repeat-factor sampling t = 0.001, 300 detections per image. What ViTDet sets, in lt_det's terms:

- use_sigmoid_ce=True, use_fed_loss=True -> cls_loss="federated" (lt_det's predictor refuses
  detectron2's own flags, which it would not honour);
- get_fed_loss_cls_weights(train, 0.5), fed_loss_num_classes 50 -> negatives drawn ~
  class_prior ** 0.5 (class_prior ~ image_count, the same distribution), 50 classes per set, one
  set per batch (class_sets "batch", as detectron2);
- classifier bias 0 at the start, as detectron2 (bias_prior_prob=0; lt_det's sigmoid default is
  0.01);
- test_score_thresh 0.02, test_topk_per_image 300, as ViTDet's LVIS configs (the base here uses
  1e-4).

Not taken from ViTDet: its ViT backbone, LSJ augmentation, AdamW and 100-epoch schedule (this is
the R50-FPN 1x of the base).
"""
from detectron2.config import LazyCall as L

from lt_det.modeling.priors import class_prior_from_dataset

from .lvis_rfs import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.box_predictor.cls_loss = "federated"
model.roi_heads.box_predictor.class_prior = L(class_prior_from_dataset)(
    dataset_names="${dataloader.train.dataset.names}",
    source="image_count",
    num_classes="${model.roi_heads.num_classes}",
)
model.roi_heads.box_predictor.cls_loss_kwargs = dict(
    num_classes_sampled=50, power=0.5, class_sets="batch", bias_prior_prob=0.0
)
model.roi_heads.box_predictor.test_score_thresh = 0.02
model.roi_heads.box_predictor.test_topk_per_image = 300
train.output_dir = "./output/lazy/lvis_sigmoid_federated_rfs"
