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


# ----------------------------------------------------------------------------- (c) exposure
#: Samplers whose per-image draw probability has a closed form (lt_det.data.samplers).
EXPOSURE_SAMPLERS = ("uniform", "rfs", "class_balanced", "sqrt", "progressive")

#: detectron2's LVIS v1 1x recipe (configs/LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml
#: over Base-RCNN-FPN.yaml): 90,000 iterations of 16 images, RFS threshold 0.001.
LVIS_V1_1X = {"iters": 90000, "batch": 16, "repeat_thresh": 0.001}


def sampler_image_rates(
    image_classes: Sequence[Sequence[int]], num_classes: int, *, repeat_thresh: float
) -> Dict[str, np.ndarray]:
    """Probability that one draw of each training sampler picks image i.

    Args:
        image_classes: (I,) lists of the class indices in [0, K) present in each training image.
        num_classes: K.
        repeat_thresh: t of repeat-factor sampling.

    Returns:
        ``{sampler: float64 (I,) probabilities summing to 1}`` for :data:`EXPOSURE_SAMPLERS`:
        uniform 1 / I (detectron2's TrainingSampler); rfs r_i / sum r, r_i = max over the
        image's classes of max(1, sqrt(t / f_c)), f_c = n_c / I (Gupta et al. 2019, appendix
        B.2; 1 for an image without classes); class_balanced and sqrt: a class with
        probability pi_c (uniform over the K' classes with images, or ~ n_c ** 0.5), then one of
        its n_c images, so p_i = sum_{c in i} pi_c / n_c (ClassPowerSampler); progressive: the
        mean over a schedule of alpha_t = t / (T - 1), which is 1/2, of class-balanced and
        uniform (ProgressiveBalancedSampler, T >= 2).
    """
    n_img = len(image_classes)
    counts = np.zeros(num_classes)
    for cl in image_classes:
        for c in set(cl):
            counts[c] += 1
    present = counts > 0
    r_c = np.where(present, np.maximum(1.0, np.sqrt(repeat_thresh * n_img /
                                                    np.maximum(counts, 1))), 1.0)
    rfs = np.array([max((r_c[c] for c in cl), default=1.0) for cl in image_classes])
    out = {"uniform": np.full(n_img, 1.0 / n_img), "rfs": rfs / rfs.sum()}
    for name, power in (("class_balanced", 0.0), ("sqrt", 0.5)):
        pi = np.where(present, np.maximum(counts, 1) ** power, 0.0)
        pi /= pi.sum()
        per_image = pi / np.maximum(counts, 1)
        out[name] = np.array([sum(per_image[c] for c in set(cl)) for cl in image_classes])
    out["progressive"] = 0.5 * out["uniform"] + 0.5 * out["class_balanced"]
    return out


def _views(rate: np.ndarray, draws: int, sel: np.ndarray) -> List[float]:
    v = rate[sel] * draws
    return [round(float(np.median(v)), 1), round(float(v.max()), 1)] if v.size else []


def sampler_exposure(
    image_classes: Sequence[Sequence[int]],
    num_classes: int,
    *,
    iters: int,
    batch: int,
    repeat_thresh: float,
    stage2_iters: int = 0,
) -> Dict:
    """Epochs over the training set and expected views per image under each sampler.

    Args:
        image_classes, num_classes, repeat_thresh: as :func:`sampler_image_rates`.
        iters, batch: the stage-1 schedule (SOLVER.MAX_ITER, SOLVER.IMS_PER_BATCH); D = iters x
            batch images are drawn.
        stage2_iters: when > 0, also the class-balanced stage 2 (cRT, LWS) of that many
            iterations on top of the stage-1 run.

    Returns:
        ``{"images", "draws", "epochs" (D / I), sampler: {"rare_image_views": [median, max],
        "frequent_only_image_views": [median, max]}}``; a rare image holds a class with <= 10
        training images, a frequent-only image only classes with > 100. Views = D x p_i
        (expected draws of image i).
    """
    n_img = len(image_classes)
    counts = np.zeros(num_classes)
    for cl in image_classes:
        for c in set(cl):
            counts[c] += 1
    group = [frequency_group(int(n)) for n in counts]
    rare = np.array([any(group[c] == "r" for c in cl) for cl in image_classes])
    freq = np.array([bool(cl) and all(group[c] == "f" for c in cl) for cl in image_classes])
    rates = sampler_image_rates(image_classes, num_classes, repeat_thresh=repeat_thresh)
    draws = iters * batch
    out = {"images": n_img, "draws": draws, "epochs": round(draws / n_img, 2)}
    for name, rate in rates.items():
        out[name] = {"rare_image_views": _views(rate, draws, rare),
                     "frequent_only_image_views": _views(rate, draws, freq)}
    if stage2_iters > 0:
        d2 = stage2_iters * batch
        out["stage2_class_balanced"] = {
            "draws": d2, "rare_image_views": _views(rates["class_balanced"], d2, rare)}
    return out


def lvis_v1_exposure(cat_info: Sequence[Dict], *, iters: int = LVIS_V1_1X["iters"],
                     batch: int = LVIS_V1_1X["batch"],
                     repeat_thresh: float = LVIS_V1_1X["repeat_thresh"]) -> Dict:
    """What :func:`sampler_exposure` can say about LVIS v1 from its per-class image counts.

    The counts do not say which classes share an image, so the rare-image views are bounds:
    uniform D / I exactly; rfs D r_c / sum_i r_i with sum_i r_i between I (every image at 1) and
    I + sum_c n_c (r_c - 1) (no two repeated classes in one image), the rarest class of an
    image setting its factor; class_balanced at least D / (K n_c) (the image's rare class alone).
    Values are medians over rare images (each rare class weighted by its n_c images).
    """
    n = np.array([c["image_count"] for c in cat_info], dtype=np.float64)
    n_img, k, draws = LVIS_V1_TRAIN_IMAGES, int((n > 0).sum()), iters * batch
    r_c = np.maximum(1.0, np.sqrt(repeat_thresh * n_img / np.maximum(n, 1)))
    rare = (n > 0) & (n <= 10)
    weights = n[rare]

    def wmedian(v):
        order = np.argsort(v)
        cum = np.cumsum(weights[order])
        return round(float(v[order][np.searchsorted(cum, cum[-1] / 2)]), 1)

    sum_hi = n_img + float((n * (r_c - 1)).sum())
    return {
        "images": n_img, "draws": draws, "epochs": round(draws / n_img, 2),
        "schedule": f"{iters} iterations x {batch} images, RFS t = {repeat_thresh}",
        "uniform": {"rare_image_views": [round(draws / n_img, 1)]},
        "rfs": {"rare_image_views_range": [wmedian(draws * r_c[rare] / sum_hi),
                                           wmedian(draws * r_c[rare] / n_img)],
                "rfs_epoch_length_range": [n_img, round(sum_hi)]},
        "class_balanced": {"rare_image_views_at_least": [wmedian(draws / (k * n[rare]))]},
    }


# ----------------------------------------------------------------------------- (b) names
def name_neighbours(names: Sequence[str]) -> Dict:
    """Classes that share their head word (the last ``_``/space-separated word of the name, as
    "tennis_ball" / "golf_ball"), a vocabulary-only proxy of fine-grained neighbours.

    Returns:
        ``{"classes", "median_same_head_word", "share_with_same_head_word"}``: per class the
        number of other classes with the same head word, median over classes, and the share of
        classes with at least one.
    """
    heads = [str(n).replace(" ", "_").lower().rstrip("_").split("_")[-1] for n in names]
    count = defaultdict(int)
    for h in heads:
        count[h] += 1
    per = np.array([count[h] - 1 for h in heads])
    return {"classes": len(names), "median_same_head_word": float(np.median(per)),
            "share_with_same_head_word": round(float((per > 0).mean()), 3)}


# ----------------------------------------------------------------------------- (d) noise
def val_rare_support(val_json: str, train_json: str) -> Dict:
    """Validation instances per rare class and the sampling noise they put on APr.

    A class's AP estimated from v validation instances moves by about sqrt(AP (1 - AP) / v)
    (a binomial proportion's standard error, AP taken as 1/2); APr is the mean over the R
    scored rare classes, so its standard error from validation sampling alone is about
    0.5 sqrt(mean_c(1 / v_c) / R) (independent classes). Training-seed effects come on top.

    Returns:
        ``{"rare_classes_scored", "val_instances_per_rare_class": [min, median, max],
        "apr_sd_from_val_sampling": points of AP}``.
    """
    tr, va = _load(train_json), _load(val_json)
    img_sets = defaultdict(set)
    for a in tr["annotations"]:
        if counts_as_instance(a):
            img_sets[a["category_id"]].add(a["image_id"])
    rare = {c["id"] for c in tr["categories"] if frequency_group(len(img_sets[c["id"]])) == "r"}
    v = defaultdict(int)
    for a in va["annotations"]:
        if a["category_id"] in rare and counts_as_instance(a):
            v[a["category_id"]] += 1
    vs = np.array([v[c] for c in rare if v[c] > 0], dtype=np.float64)
    if vs.size == 0:
        return {"rare_classes_scored": 0}
    return {"rare_classes_scored": int(vs.size),
            "val_instances_per_rare_class": [int(vs.min()), float(np.median(vs)), int(vs.max())],
            "apr_sd_from_val_sampling": round(100 * 0.5 * float(np.sqrt((1 / vs).mean() /
                                                                        vs.size)), 1)}


def apr_seed_spread(markdown: str, column: str = "mask APr") -> Dict:
    """Seed-to-seed spread of APr per method from a benchmark summary table (the
    ``make benchmark`` summary.md, or docs/results.md's three-seed table), whose cells read
    ``mean (min-max)``.

    Returns:
        ``{"methods": {label: max - min}, "median": float, "max": float}``.

    Raises:
        LTDetError: no table with that column and ``mean (min-max)`` cells.
    """
    import re

    cell = re.compile(r"^\s*-?[\d.]+\s*\((-?[\d.]+)-(-?[\d.]+)\)\s*$")
    spreads: Dict[str, float] = {}
    col = None
    for line in markdown.splitlines():
        if not line.startswith("|"):
            col = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if col is None:
            col = cells.index(column) if column in cells else None
            continue
        if col < len(cells):
            m = cell.match(cells[col])
            if m:
                spreads[cells[0]] = round(float(m.group(2)) - float(m.group(1)), 1)
    if not spreads:
        raise LTDetError(f"no table with a '{column}' column of 'mean (min-max)' cells found.")
    vals = np.array(list(spreads.values()))
    return {"methods": spreads, "median": round(float(np.median(vals)), 1),
            "max": round(float(vals.max()), 1)}
