"""Box features of a frozen detector: what stage 2 and ``tools/tau_sweep.py`` feed the classifier.

Shape shorthand: N images, R sampled (training) or kept (test) proposals over the batch, D
box-feature dimension (the box head's output), K foreground classes.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from detectron2.structures import ImageList, Instances
from torch import nn

from ..errors import LTDetError

__all__ = ["FrozenBoxBatch", "frozen_box_batch", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a (Distributed)DataParallel wrapper, or the model itself."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@dataclass
class FrozenBoxBatch:
    """Output of :func:`frozen_box_batch`.

    Attributes:
        images: the preprocessed ImageList.
        features: backbone feature maps by name.
        proposals: N Instances; with ``gt_classes`` / ``gt_boxes`` when sampled for training.
        box_features: (R, D) box-head outputs for the proposals, or None if not computed
            (cascade heads pool per stage).
        gt_instances: N ground-truth Instances when sampled, else None.
    """

    images: ImageList
    features: Dict[str, torch.Tensor]
    proposals: List[Instances]
    box_features: Optional[torch.Tensor]
    gt_instances: Optional[List[Instances]] = None


@torch.no_grad()
def frozen_box_batch(
    model: nn.Module, batched_inputs: List[Dict], *, sample: bool, box_features: bool = True
) -> FrozenBoxBatch:
    """Run the frozen part of a GeneralizedRCNN (no graph is kept).

    Backbone -> RPN (in whatever mode its module is; the stage-2 freezing keeps it in eval
    mode, i.e. test-time top-k) -> optionally ``roi_heads.label_and_sample_proposals`` with the
    ground truth -> ``box_pooler`` -> ``box_head``.

    Args:
        model: GeneralizedRCNN (unwrapped), standard or cascade ROI heads.
        batched_inputs: detectron2 inputs; with "instances" when ``sample``.
        sample: label and sample proposals as in training (needs an event storage).
        box_features: also pool and run the box head (standard ROI heads only).
    """
    if getattr(model, "proposal_generator", None) is None:
        raise LTDetError(
            "decoupled training needs a model with an RPN (MODEL.PROPOSAL_GENERATOR.NAME 'RPN')."
        )
    images = model.preprocess_image(batched_inputs)
    features = model.backbone(images.tensor)
    proposals, _ = model.proposal_generator(images, features, None)
    roi_heads = model.roi_heads
    gt = None
    if sample:
        if "instances" not in batched_inputs[0]:
            raise LTDetError("stage-2 training inputs carry no 'instances' (ground truth).")
        gt = [x["instances"].to(images.tensor.device) for x in batched_inputs]
        proposals = roi_heads.label_and_sample_proposals(proposals, gt)
    out = None
    if box_features:
        maps = [features[f] for f in roi_heads.box_in_features]
        pooled = roi_heads.box_pooler(maps, [p.proposal_boxes for p in proposals])
        out = roi_heads.box_head(pooled)
    return FrozenBoxBatch(images, features, proposals, out, gt)
