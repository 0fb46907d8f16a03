"""lt_det's box predictor in a detectron2 detector built in code, without a config.

A StandardROIHeads is assembled from its parts with ``LTFastRCNNOutputLayers`` as the box
predictor and Balanced Softmax (with a class prior) as its classification loss; one training
step runs on random features, then inference. Runs on CPU in a few seconds:

    python examples/custom_detector.py
"""
import warnings

# detectron2 calls torch.jit.script when imported; recent torch warns that it is deprecated.
warnings.filterwarnings(
    "ignore", r"`torch\.jit\.script` is deprecated", FutureWarning, r"torch\.jit"
)

import torch  # noqa: E402
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling.box_regression import Box2BoxTransform  # noqa: E402
from detectron2.modeling.matcher import Matcher  # noqa: E402
from detectron2.modeling.poolers import ROIPooler  # noqa: E402
from detectron2.modeling.roi_heads import FastRCNNConvFCHead, StandardROIHeads  # noqa: E402
from detectron2.structures import Boxes, ImageList, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from lt_det import LTFastRCNNOutputLayers, balanced_softmax_loss, build_cls_loss  # noqa: E402


def main() -> None:
    torch.manual_seed(0)
    K = 5  # foreground classes; detectron2's label K is background
    # Class prior: fraction of training images containing each class (long-tailed).
    prior = torch.tensor([0.5, 0.2, 0.05, 0.01, 0.002])

    # 1. The loss is a pure function: logits (R, K + 1), gt classes in [0, K].
    logits, gt = torch.randn(8, K + 1), torch.tensor([0, 1, 2, 3, 4, 5, 5, 0])
    loss = balanced_softmax_loss(logits, gt, prior)  # logits (R, K + 1), gt in [0, K]
    print(f"balanced_softmax_loss: {loss.item():.4f}")

    # 2. The predictor takes keyword arguments, like detectron2's FastRCNNOutputLayers.
    channels, stride = 16, 8
    box_head = FastRCNNConvFCHead(
        ShapeSpec(channels=channels, height=7, width=7), conv_dims=[], fc_dims=[64]
    )
    predictor = LTFastRCNNOutputLayers(
        box_head.output_shape,
        box2box_transform=Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0)),
        num_classes=K,
        cls_loss=build_cls_loss("balanced_softmax", num_classes=K, class_prior=prior),
    )
    roi_heads = StandardROIHeads(
        num_classes=K,
        batch_size_per_image=64,
        positive_fraction=0.25,
        proposal_matcher=Matcher([0.5], [0, 1], allow_low_quality_matches=False),
        box_in_features=["p3"],
        box_pooler=ROIPooler(
            (7, 7), scales=(1.0 / stride,), sampling_ratio=0, pooler_type="ROIAlignV2"
        ),
        box_head=box_head,
        box_predictor=predictor,
    )

    # 3. One training step on random features of two 64 x 64 images.
    size = (64, 64)
    images = ImageList(torch.zeros(2, 3, *size), [size, size])
    features = {"p3": torch.randn(2, channels, size[0] // stride, size[1] // stride)}
    targets, proposals = [], []
    for i in range(2):
        t = Instances(size)
        t.gt_boxes = Boxes(torch.tensor([[4.0, 4.0, 30.0, 30.0], [20.0, 24.0, 60.0, 58.0]]))
        t.gt_classes = torch.tensor([i, 4])
        targets.append(t)
        p = Instances(size)
        jitter = torch.randn(32, 4) * 3
        p.proposal_boxes = Boxes(t.gt_boxes.tensor.repeat(16, 1) + jitter)
        p.objectness_logits = torch.zeros(32)
        proposals.append(p)
    optimizer = torch.optim.SGD(roi_heads.parameters(), lr=0.01)
    roi_heads.train()
    with EventStorage(0):  # detectron2 logs training statistics into an EventStorage
        _, losses = roi_heads(images, features, proposals, targets)
    loss = sum(losses.values())
    loss.backward()
    optimizer.step()
    print("losses:", {k: round(v.item(), 4) for k, v in losses.items()})

    # 4. Inference: scores come from the loss's own activation (softmax here).
    roi_heads.eval()
    with torch.no_grad():
        instances, _ = roi_heads(images, features, proposals)
    print(f"detections per image: {[len(x) for x in instances]}")


if __name__ == "__main__":
    main()
