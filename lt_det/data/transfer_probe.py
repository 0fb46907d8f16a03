"""How much of a rare class a representation learned from frequent classes only can recognise.

:func:`transfer_probe` measures it on an LVIS-format train / val pair with images:

1. Object crops: every non-crowd annotation's box, widened by 10 % per side, resized to
   ``crop`` x ``crop`` pixels (train and val).
2. A frequent-only representation: a small CNN (three 3 x 3 conv + BatchNorm + ReLU + 2 x 2
   max-pool blocks of 32 / 64 / 128 channels, global average pool: a 128-d feature) trained with
   softmax cross-entropy on the training crops of the frequent classes only (> 100 training
   images), ``iters`` Adam steps of ``batch`` crops with horizontal flips. It is then frozen.
3. A linear probe on the frozen features: multinomial logistic regression over all K classes,
   trained on every class's training crops with each class weighted equally (so the probe is not
   biased towards frequent classes: what is measured is the representation, as cRT retrains
   only the classifier), ``probe_iters`` full-batch L-BFGS steps.
4. Per-class top-1 accuracy of the probe on the validation crops, averaged within each
   frequency group; ``rare_to_frequent`` = rare accuracy / frequent accuracy.
5. The same probe with every class cut to as many training crops as the median rare class
   has (``equal_shots``): frequent classes then differ from rare ones only in having shaped the
   representation, so its ``rare_to_frequent`` separates representation from shot count.

A rare class that is a combination of factors learned from frequent classes (a new colour x
shape pair) keeps most of the frequent classes' accuracy; a class with its own appearance does
not. The frozen features also give the confusable neighbours of each class
(:func:`feature_neighbours`). Everything is seeded; CPU cost is a few seconds to a minute.
"""
import json
import os
from collections import defaultdict
from typing import Dict, Optional, Tuple

import numpy as np

from ..class_stats import counts_as_instance, frequency_group
from ..errors import LTDetError

__all__ = ["object_crops", "transfer_probe", "feature_neighbours"]


def object_crops(json_file: str, image_root: str, crop: int = 32,
                 max_per_class: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Crops of the annotated objects of an LVIS-format json.

    Args:
        json_file: LVIS-format json; image_root: folder of its ``file_name`` s.
        crop: side of the square crops in pixels.
        max_per_class: keep at most this many crops per class (the first in annotation order).

    Returns:
        (uint8 (N, crop, crop, 3) crops, int64 (N,) category ids).
    """
    from PIL import Image

    with open(json_file) as f:
        data = json.load(f)
    images = {im["id"]: im for im in data["images"]}
    by_image = defaultdict(list)
    taken = defaultdict(int)
    for a in data["annotations"]:
        if not counts_as_instance(a):
            continue
        if max_per_class is not None and taken[a["category_id"]] >= max_per_class:
            continue
        taken[a["category_id"]] += 1
        by_image[a["image_id"]].append(a)
    crops, labels = [], []
    for image_id in sorted(by_image):
        path = os.path.join(image_root, images[image_id]["file_name"])
        try:
            img = Image.open(path).convert("RGB")
        except OSError as e:
            raise LTDetError(f"cannot read image '{path}': {e}") from None
        for a in by_image[image_id]:
            x, y, w, h = a["bbox"]
            m = 0.1 * max(w, h)
            box = (x - m, y - m, x + w + m, y + h + m)
            crops.append(np.asarray(img.crop(box).resize((crop, crop), Image.BILINEAR)))
            labels.append(a["category_id"])
    if not crops:
        raise LTDetError(f"'{json_file}' has no annotated objects to crop.")
    return np.stack(crops), np.asarray(labels, dtype=np.int64)


def _net(num_out: int):
    import torch.nn as nn

    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]

    trunk = nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 128),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return trunk, nn.Linear(128, num_out)


def _features(trunk, x) -> np.ndarray:
    import torch

    trunk.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), 512):
            out.append(trunk(_to_tensor(x[i:i + 512])))
    return torch.cat(out).numpy()


def _to_tensor(x: np.ndarray):
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() / 255.0
    return (t - 0.5) / 0.25


def feature_neighbours(features: np.ndarray, labels: np.ndarray) -> Dict:
    """Confusable neighbours in a feature space: class d is a neighbour of class c when the
    distance between their mean features is below c's within-class RMS spread (the median
    spread for a class with one crop), i.e. d's centre lies inside c's typical radius.

    Returns:
        ``{"median_neighbours", "share_with_neighbour", "median_nearest_to_spread"}``: per class
        the number of such neighbours (median), the share of classes with at least one, and the
        median ratio nearest-other-centre distance / own spread.
    """
    classes = np.unique(labels)
    means = np.stack([features[labels == c].mean(0) for c in classes])
    spread = np.array([np.sqrt(((features[labels == c] - m) ** 2).sum(1).mean())
                       if (labels == c).sum() > 1 else np.nan for c, m in zip(classes, means)])
    spread = np.where(np.isnan(spread), np.nanmedian(spread), spread)
    spread = np.maximum(spread, 1e-12)  # identical crops: no spread
    d = np.sqrt(((means[:, None] - means[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    nbrs = (d < spread[:, None]).sum(1)
    return {"median_neighbours": float(np.median(nbrs)),
            "share_with_neighbour": round(float((nbrs > 0).mean()), 3),
            "median_nearest_to_spread": round(float(np.median(d.min(1) / spread)), 2)}


def _probe(ftr, ytr: np.ndarray, fva, k: int, iters: int) -> np.ndarray:
    """Class-balanced multinomial logistic regression (L2 1e-3, full-batch L-BFGS) on
    standardised features; returns the predicted class of every val feature row."""
    import torch
    import torch.nn.functional as F

    counts = np.bincount(ytr, minlength=k).astype(np.float64)
    w = torch.tensor(np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0), dtype=torch.float32)
    target = torch.from_numpy(ytr)
    w = w / w[target].sum()
    lin = torch.nn.Linear(ftr.shape[1], k)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    lbfgs = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=iters,
                              line_search_fn="strong_wolfe")

    def closure():
        lbfgs.zero_grad()
        per = F.cross_entropy(lin(ftr), target, reduction="none")
        loss = (per * w[target]).sum() + 1e-3 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    lbfgs.step(closure)
    with torch.no_grad():
        return lin(fva).argmax(1).numpy()


def transfer_probe(
    train_json: str,
    val_json: str,
    train_image_root: str,
    val_image_root: str,
    *,
    crop: int = 32,
    iters: int = 300,
    batch: int = 128,
    probe_iters: int = 100,
    seed: int = 0,
    max_per_class: Optional[int] = 200,
) -> Dict:
    """The frequent-only representation probe described in the module docstring.

    Args:
        train_json, val_json, train_image_root, val_image_root: the dataset.
        crop: crop side in pixels; iters / batch: Adam steps / crops per step of the
            frequent-only CNN; probe_iters: L-BFGS steps of the probe; seed: torch seed.
        max_per_class: crops per class kept per split (bounds the cost on the head).

    Returns:
        ``{"used", "accuracy": {"r", "c", "f"}, "rare_to_frequent", "equal_shots": {"shots",
        "accuracy", "rare_to_frequent"}, "chance",
        "train_crops", "val_crops", "neighbours": feature_neighbours(...)}``; accuracy = mean
        per-class top-1 of the probe on the val crops within each group.

    Raises:
        LTDetError: no frequent class (nothing to learn the representation from) or no val crop
            of a rare class.
    """
    import torch
    import torch.nn.functional as F

    with open(train_json) as f:
        cats = json.load(f)["categories"]
    xtr, ytr = object_crops(train_json, train_image_root, crop, max_per_class)
    xva, yva = object_crops(val_json, val_image_root, crop, max_per_class)
    # groups from the training annotations (LVIS rules)
    img_sets = defaultdict(set)
    with open(train_json) as f:
        for a in json.load(f)["annotations"]:
            if counts_as_instance(a):
                img_sets[a["category_id"]].add(a["image_id"])
    ids = sorted(c["id"] for c in cats)
    index = {c: i for i, c in enumerate(ids)}
    group = {c: frequency_group(len(img_sets[c])) for c in ids}
    ytr_i = np.array([index[c] for c in ytr])
    yva_i = np.array([index[c] for c in yva])
    freq_ids = [c for c in ids if group[c] == "f"]
    if not freq_ids:
        raise LTDetError(f"'{train_json}' has no frequent class (> 100 training images): no "
                         "frequent-only representation can be learned.")

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    sel = np.isin(ytr, freq_ids)
    fx = _to_tensor(xtr[sel])
    fmap = {c: i for i, c in enumerate(freq_ids)}
    fy = torch.tensor([fmap[c] for c in ytr[sel]])
    trunk, head = _net(len(freq_ids))
    opt = torch.optim.Adam(list(trunk.parameters()) + list(head.parameters()), lr=2e-3)
    trunk.train()
    for _ in range(iters):
        idx = torch.randint(len(fy), (min(batch, len(fy)),), generator=gen)
        xb = fx[idx]
        flip = torch.rand(len(idx), generator=gen) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
        loss = F.cross_entropy(head(trunk(xb)), fy[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()

    ftr, fva = _features(trunk, xtr), _features(trunk, xva)
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    ftr_t = torch.from_numpy((ftr - mu) / sd).float()
    fva_t = torch.from_numpy((fva - mu) / sd).float()
    k = len(ids)
    pred = _probe(ftr_t, ytr_i, fva_t, k, probe_iters)
    # the same probe with every class cut to the rare classes' median number of training crops
    # (the first ones): frequent-class accuracy at equal shots
    rare_ids = [index[c] for c in ids if group[c] == "r"]
    per_class = np.bincount(ytr_i, minlength=k)
    shots = max(1, int(np.median(per_class[rare_ids]))) if rare_ids else 1
    keep = np.zeros(len(ytr_i), dtype=bool)
    seen = np.zeros(k, dtype=np.int64)
    for i, c in enumerate(ytr_i):
        if seen[c] < shots:
            keep[i] = True
            seen[c] += 1
    pred_shots = _probe(ftr_t[torch.from_numpy(keep)], ytr_i[keep], fva_t, k, probe_iters)
    acc, acc_shots = defaultdict(list), defaultdict(list)
    for c in np.unique(yva_i):
        acc[group[ids[c]]].append(float((pred[yva_i == c] == c).mean()))
        acc_shots[group[ids[c]]].append(float((pred_shots[yva_i == c] == c).mean()))
    if not acc.get("r"):
        raise LTDetError(f"'{val_json}' has no object of a rare class: rare accuracy is "
                         "undefined.")
    accuracy = {g: round(100 * float(np.mean(v)), 1) for g, v in sorted(acc.items())}
    at_shots = {g: round(100 * float(np.mean(v)), 1) for g, v in sorted(acc_shots.items())}
    return {
        "used": (f"{crop}x{crop} object crops; 3-block CNN trained {iters} Adam steps x {batch} "
                 f"crops on the {len(freq_ids)} frequent classes only, frozen; class-balanced "
                 f"linear probe over all {k} classes ({probe_iters} L-BFGS steps)"),
        "accuracy": accuracy,
        "rare_to_frequent": round(accuracy["r"] / accuracy["f"], 2) if accuracy.get("f") else
        None,
        "equal_shots": {"shots": shots, "accuracy": at_shots,
                        "rare_to_frequent": round(at_shots["r"] / at_shots["f"], 2)
                        if at_shots.get("f") else None},
        "chance": round(100 / k, 2),
        "train_crops": int(len(ytr)),
        "val_crops": int(len(yva)),
        "neighbours": feature_neighbours(ftr_t.numpy(), ytr_i),
    }
