"""Measured properties of an LVIS-format dataset, to compare the synthetic data with LVIS.

:func:`measure_dataset` reads a train / val json pair (and, optionally, the training images) and
returns the properties that decide whether rebalancing methods rank on the data as they do on
LVIS: the shape of the long tail, how crowded images are, whether rare classes share images with
frequent ones, how the validation set's class distribution relates to training's, how much one
class's objects vary in appearance and how close the nearest other class is.
:func:`lvis_v1_reference` computes the same properties that LVIS v1's published training
statistics allow (per-class image and instance counts). ``tools/measure_dataset.py`` prints both.
"""
import json
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import LTDetError
from ..class_stats import counts_as_instance, frequency_group

__all__ = ["measure_dataset", "lvis_v1_reference", "LVIS_V1_TRAIN_IMAGES"]

#: Images in LVIS v1 train (lvisdataset.org, "LVIS v1.0": 100,170 train / 19,809 val images).
LVIS_V1_TRAIN_IMAGES = 100170


def _kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    from ..fidelity import kendall_tau

    return kendall_tau(list(map(float, x)), list(map(float, y)))


def _load(path: str) -> Dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise LTDetError(f"cannot read dataset json '{path}': {e}") from None


def _tail_stats(image_count: np.ndarray, instance_count: np.ndarray, num_images: int) -> Dict:
    groups = [frequency_group(int(n)) for n in image_count]
    k = len(groups)
    share = {g: round(sum(x == g for x in groups) / k, 3) for g in "rcf"}
    per_group_inst = {}
    for g in "rcf":
        sel = [i for i, x in enumerate(groups) if x == g and image_count[i] > 0]
        if sel:
            per_group_inst[g] = round(float(np.mean(instance_count[sel] / image_count[sel])), 2)
    return {
        "classes": k,
        "rcf_share": share,
        "classes_per_image": round(float(image_count.sum()) / num_images, 2),
        "instances_per_image": round(float(instance_count.sum()) / num_images, 2),
        "instances_per_image_of_class": per_group_inst,
        "head_to_tail_ratio": int(image_count.max()) / max(int(image_count.min()), 1),
    }


def lvis_v1_reference(cat_info: Sequence[Dict]) -> Dict:
    """The properties of :func:`measure_dataset` that LVIS v1's per-class training counts give.

    Args:
        cat_info: LVIS v1 train category info (``{"id", "image_count", "instance_count"}`` per
            class; ``lt_det.data.lvis_v1_stats.load_lvis_v1_cat_info()``).
    """
    ic = np.array([c["image_count"] for c in cat_info], dtype=np.float64)
    nc = np.array([c["instance_count"] for c in cat_info], dtype=np.float64)
    return {"train": _tail_stats(ic, nc, LVIS_V1_TRAIN_IMAGES)}


def _object_colours(anns: List[Dict], images: Dict[int, Dict], image_root: str) -> Dict[int, list]:
    """Mean RGB inside every annotation's polygon, per category id."""
    import os

    from PIL import Image, ImageDraw

    by_image = defaultdict(list)
    for a in anns:
        by_image[a["image_id"]].append(a)
    colours = defaultdict(list)
    for image_id, image_anns in by_image.items():
        path = os.path.join(image_root, images[image_id]["file_name"])
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
        for a in image_anns:
            mask = Image.new("L", (pixels.shape[1], pixels.shape[0]), 0)
            for poly in a["segmentation"]:
                ImageDraw.Draw(mask).polygon([tuple(p) for p in np.reshape(poly, (-1, 2))],
                                             fill=1)
            m = np.asarray(mask, dtype=bool)
            if m.any():
                colours[a["category_id"]].append(pixels[m].mean(0))
    return colours


def _appearance(colours: Dict[int, list], names: Dict[int, str]) -> Dict:
    """Within-class spread of object colour vs the distance to the nearest other class of the
    same shape (the last word of the class name)."""
    means, spread = {}, {}
    for c, v in colours.items():
        v = np.asarray(v)
        means[c] = v.mean(0)
        if len(v) >= 2:
            spread[c] = float(np.sqrt(((v - v.mean(0)) ** 2).sum(1).mean()))
    within = float(np.median(list(spread.values()))) if spread else float("nan")
    nearest = []
    confusable = 0
    for c, m in means.items():
        shape = names[c].split("_")[-1]
        same = [o for o in means if o != c and names[o].split("_")[-1] == shape]
        if not same:
            continue
        d = min(float(np.linalg.norm(m - means[o])) for o in same)
        nearest.append(d)
        confusable += d < 2 * spread.get(c, within)
    return {
        "colour_spread_within_class": round(within, 1),
        "nearest_same_shape_class_distance": round(float(np.median(nearest)), 1)
        if nearest else None,
        "confusable_class_share": round(confusable / max(len(nearest), 1), 3),
    }


def _overlap_share(anns: List[Dict]) -> float:
    """Share of objects whose box intersects another object's box in the same image."""
    by_image = defaultdict(list)
    for a in anns:
        x, y, w, h = a["bbox"]
        by_image[a["image_id"]].append((x, y, x + w, y + h))
    hit = total = 0
    for boxes in by_image.values():
        b = np.asarray(boxes)
        total += len(b)
        if len(b) < 2:
            continue
        ix = np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0])
        iy = np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1])
        inter = (ix > 0) & (iy > 0)
        np.fill_diagonal(inter, False)
        hit += int(inter.any(1).sum())
    return round(hit / max(total, 1), 3)


def measure_dataset(
    train_json: str, val_json: str, train_image_root: Optional[str] = None
) -> Dict:
    """Properties of an LVIS-format train / val pair.

    Args:
        train_json, val_json: LVIS-format jsons (val may carry the train counts in its
            categories, as LVIS v1 does; groups are recounted from the train annotations).
        train_image_root: folder of the training images; when given, object colours are read
            from the pixels (appearance variation and confusable classes).

    Returns:
        ``{"train": {...}, "val": {...}, "cooccurrence": {...}, "appearance": {...}}``:
        train: classes, r/c/f shares, classes and instances per image, instances per image of a
        class by group, head-to-tail image-count ratio, share of objects overlapping another;
        val: images, instances per class (min / median / max), rare share of val instances
        vs of train instances, Kendall tau-b between per-class train and val image counts;
        cooccurrence: share of rare / common classes' training images that also hold a
        frequent class, and that hold no other class;
        appearance (with images): median within-class RMS spread of object mean colour, median
        distance to the nearest same-shape class, share of classes whose nearest same-shape
        class is within twice that spread.
    """
    tr, va = _load(train_json), _load(val_json)
    for path, data in ((train_json, tr), (val_json, va)):
        if not data.get("annotations"):
            raise LTDetError(f"'{path}' has no annotations to measure.")
    cats = sorted(c["id"] for c in tr["categories"])
    names = {c["id"]: c["name"] for c in tr["categories"]}
    idx = {c: i for i, c in enumerate(cats)}
    k = len(cats)

    def counts(data):
        img_sets = [set() for _ in range(k)]
        inst = np.zeros(k)
        for a in data["annotations"]:
            if not counts_as_instance(a):  # crowd regions are not counted (lt_det.class_stats)
                continue
            img_sets[idx[a["category_id"]]].add(a["image_id"])
            inst[idx[a["category_id"]]] += 1
        return np.array([len(s) for s in img_sets], dtype=np.float64), inst

    tr_img, tr_inst = counts(tr)
    va_img, va_inst = counts(va)
    group = {c: frequency_group(int(tr_img[idx[c]])) for c in cats}

    train = _tail_stats(tr_img, tr_inst, len(tr["images"]))
    train["overlapping_object_share"] = _overlap_share(tr["annotations"])

    classes_of = defaultdict(set)
    for a in tr["annotations"]:
        classes_of[a["image_id"]].add(a["category_id"])
    co = {}
    for g in "rc":
        imgs = [cl for cl in classes_of.values() if any(group[c] == g for c in cl)]
        if imgs:
            co[f"{g}_images_with_frequent"] = round(
                sum(any(group[c] == "f" for c in cl) for cl in imgs) / len(imgs), 3)
            co[f"{g}_images_alone"] = round(sum(len(cl) == 1 for cl in imgs) / len(imgs), 3)

    rare = np.array([group[c] == "r" for c in cats])
    val = {
        "images": len(va["images"]),
        "instances_per_class": [int(va_inst.min()), float(np.median(va_inst)),
                                int(va_inst.max())],
        "rare_share_of_val_instances": round(float(va_inst[rare].sum() / va_inst.sum()), 3),
        "rare_share_of_train_instances": round(float(tr_inst[rare].sum() / tr_inst.sum()), 3),
        "tau_train_vs_val_image_counts": round(_kendall_tau_b(tr_img, va_img), 3)
        if len(set(va_img)) > 1 else 0.0,
    }
    out = {"train": train, "val": val, "cooccurrence": co}
    if train_image_root:
        images = {im["id"]: im for im in tr["images"]}
        out["appearance"] = _appearance(
            _object_colours(tr["annotations"], images, train_image_root), names)
    return out
