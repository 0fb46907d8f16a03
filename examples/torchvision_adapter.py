"""An lt_det classification loss in torchvision's Faster R-CNN.

``use_cls_loss_in_torchvision`` makes one torchvision detector train its box classifier with an
lt_det loss (here Balanced Softmax with a long-tailed class prior); box regression and inference
stay torchvision's. One training step on random images, then inference, on CPU in seconds
(no pretrained weights are downloaded):

    python examples/torchvision_adapter.py
"""
import warnings

# detectron2 calls torch.jit.script when imported; recent torch warns that it is deprecated.
warnings.filterwarnings(
    "ignore", r"`torch\.jit\.script` is deprecated", FutureWarning, r"torch\.jit"
)

import torch  # noqa: E402
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn  # noqa: E402

from lt_det import build_cls_loss, use_cls_loss_in_torchvision  # noqa: E402


def main() -> None:
    torch.manual_seed(0)
    K = 4  # foreground classes; torchvision counts background too: num_classes = K + 1
    model = fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=K + 1, min_size=128, max_size=128
    )
    # class_prior[j] is the prior of torchvision label j + 1 (label 0 is background).
    prior = torch.tensor([0.6, 0.2, 0.05, 0.01])
    use_cls_loss_in_torchvision(
        model, build_cls_loss("balanced_softmax", num_classes=K, class_prior=prior)
    )

    images = [torch.rand(3, 128, 128) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[30.0, 20.0, 120.0, 110.0]]), "labels": torch.tensor([4])},
    ]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    model.train()
    losses = model(images, targets)
    sum(losses.values()).backward()
    optimizer.step()
    print("losses:", {k: round(v.item(), 4) for k, v in losses.items()})

    model.eval()
    with torch.no_grad():
        detections = model(images)
    print(f"detections per image: {[len(d['boxes']) for d in detections]}")


if __name__ == "__main__":
    main()
