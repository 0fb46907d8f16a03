#!/usr/bin/env python
"""Benchmark lt_det's LVIS evaluation against every installed peer, on the same files.

Peers: lvis-api (the reference), faster-coco-eval, hotcoco, ultrafast-pycocotools and vernier,
each run as its documentation shows for LVIS (a few lines of Python: none of them has a
command-line LVIS tool), with LVIS's per-image cap of 300. lt_det runs as users run it:
``tools/lvis_eval.py --backend B``. A peer that needs other versions of shared packages (vernier
0.5.4 needs numpy 2) runs in its own venv: ``--peer-python vernier=/path/to/venv/bin/python``.
Peers that are not installed are left out, with a line saying so.

Timing (default): for each image count (500 and 2000) and IoU type it writes a ground truth with
the 1203 LVIS v1 categories and their real training image counts (the real r/c/f split and long
tail; positives and negatives per image drawn in proportion to those counts, 10% of positives not
exhaustive; rectangular polygon masks) and ~310 detections per image (jittered copies of the gt
boxes, confusions and background boxes; more than 300 so that the per-image cut matters), boxes
for "bbox" and RLE masks without "bbox" for "segm". Each evaluator runs in its own process, from
interpreter start to exit; reported: CPU time (user + system from ``wait4``: on a loaded machine
wall time counts the wait for a core), wall time, peak RSS (``VmHWM`` polled until exit), the
largest difference of the 13 LVIS metrics to lvis-api's, and ``os.getloadavg()`` at the start.
Beyond 5000 images (LVIS v1 val: 19,809) the results are streamed to the file from columns.

``--cases``: every peer and every lt_det backend on the project's exactness cases (area-0 ground
truth and detections, annotation id 0, duplicate category ids, real COCO val2014 annotations with
federated negatives and not-exhaustive classes, with and without a tenth of the entries of area
0, LVIS-like data with 310 detections per image), bbox and segm, as the largest difference to
lvis-api.

    python tools/bench_eval.py [--images 500 2000] [--iou-types bbox segm] [--repeat 3]
        [--backends fast] [--peers ...] [--peer-python NAME=PYTHON] [--output bench.json]
    python tools/bench_eval.py --images 19809 --peers hotcoco ultrafast-pycocotools   # LVIS val
    python tools/bench_eval.py --cases [--peer-python vernier=...]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Dict, List

# detectron2 calls torch.jit.script when imported; recent torch warns that it is deprecated.
warnings.filterwarnings(
    "ignore", r"`torch\.jit\.script` is deprecated", FutureWarning, r"torch\.jit"
)

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mem_mb(field: str) -> float:
    """``VmHWM`` (peak resident set) or ``VmRSS`` of this process, from /proc (Linux), in MB.

    Not ``ru_maxrss``: Linux keeps that across fork + exec, so a subprocess would report its
    parent's peak.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"{field} not in /proc/self/status")


def load_cat_info(path: str) -> List[Dict]:
    if path:
        with open(path) as f:
            return sorted(json.load(f), key=lambda c: c["id"])
    from lt_det.data.lvis_v1_stats import load_lvis_v1_cat_info

    return load_lvis_v1_cat_info()


def _rles(boxes: np.ndarray, h: int, w: int) -> List[Dict]:
    """Compressed RLEs (json-ready: counts as str) of the rectangles of (N, 4) XYWH boxes."""
    from pycocotools import mask as mask_util

    rles = mask_util.frPyObjects(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), h, w)
    return [{"size": r["size"], "counts": r["counts"].decode("ascii")} for r in rles]


def make_lvis_like(
    cat_info: List[Dict],
    num_images: int,
    *,
    dets_per_image: int = 310,
    seed: int = 0,
    masks: bool = False,
):
    """(gt dict, results list) with LVIS v1's categories and long tail; see module docstring.
    ``masks``: results carry an RLE "segmentation" (the box's rectangle) instead of "bbox"."""
    rng = np.random.default_rng(seed)
    ids = np.array([c["id"] for c in cat_info])
    counts = np.array([c["image_count"] for c in cat_info], dtype=np.float64)
    prob = counts / counts.sum()
    freq = np.where(counts <= 10, "r", np.where(counts <= 100, "c", "f"))
    cats = [
        {"id": int(i), "name": f"cat_{i}", "frequency": str(g), "image_count": int(n)}
        for i, g, n in zip(ids, freq, counts.astype(int))
    ]
    images, anns, results = [], [], []
    ann_id = 1
    for img_id in range(1, num_images + 1):
        h, w = (480, 640) if rng.random() < 0.5 else (640, 480)
        n_pos = 1 + rng.poisson(2.5)
        n_neg = 1 + rng.poisson(4.0)
        chosen = rng.choice(len(ids), size=n_pos + n_neg, replace=False, p=prob)
        pos, neg = ids[chosen[:n_pos]], ids[chosen[n_pos:]]
        not_exh = [int(c) for c in pos if rng.random() < 0.1]
        images.append(
            {
                "id": img_id,
                "height": h,
                "width": w,
                "neg_category_ids": [int(c) for c in neg],
                "not_exhaustive_category_ids": not_exh,
            }
        )
        img_dets = []
        for c in pos:
            for _ in range(1 + rng.poisson(1.5)):
                bw, bh = np.exp(rng.uniform(np.log(4), np.log(0.8 * min(h, w)), 2))
                x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
                box = [float(x), float(y), float(bw), float(bh)]
                x2, y2 = x + bw, y + bh
                anns.append(
                    {
                        "id": ann_id,
                        "image_id": img_id,
                        "category_id": int(c),
                        "bbox": box,
                        "area": float(bw * bh),
                        "segmentation": [[x, y, x2, y, x2, y2, x, y2]],
                    }
                )
                ann_id += 1
                for _ in range(2):  # two jittered detections per gt, sometimes confused
                    j = rng.normal(0, 0.08, 4) * [bw, bh, bw, bh]
                    cls = int(c) if rng.random() < 0.75 else int(rng.choice(ids, p=prob))
                    img_dets.append(
                        (cls, [x + j[0], y + j[1], bw + j[2], bh + j[3]], rng.uniform(0.2, 1))
                    )
        in_image = np.concatenate([pos, neg])
        while len(img_dets) < dets_per_image:
            bw, bh = np.exp(rng.uniform(np.log(4), np.log(0.8 * min(h, w)), 2))
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            cls = int(rng.choice(in_image)) if rng.random() < 0.3 else int(rng.choice(ids, p=prob))
            img_dets.append((cls, [x, y, bw, bh], rng.uniform(0, 0.7)))
        kept = img_dets[:dets_per_image]
        boxes = np.array([box for _, box, _ in kept], dtype=np.float32)  # detectron2: float32
        boxes[:, 2:] = np.maximum(boxes[:, 2:], 1)
        rles = _rles(boxes, h, w) if masks else None
        for k, (cls, _, s) in enumerate(kept):
            r = {"image_id": img_id, "category_id": cls, "score": float(np.float32(s))}
            if masks:
                r["segmentation"] = rles[k]
            else:
                r["bbox"] = [float(v) for v in boxes[k]]
            results.append(r)
    return {"images": images, "annotations": anns, "categories": cats}, results


def make_lvis_like_table(
    cat_info: List[Dict],
    num_images: int,
    *,
    dets_per_image: int = 300,
    seed: int = 0,
    masks: bool = False,
):
    """(gt dict, DetectionTable) like :func:`make_lvis_like`, detections built with vectorised
    numpy (no dicts, no json) so that LVIS v1 val scale (19,809 images) is cheap to make.
    ``masks``: gt polygons and detection RLEs (the boxes' rectangles) for "segm"."""
    from lt_det.evaluation import DetectionTable

    rng = np.random.default_rng(seed)
    gt, _ = make_lvis_like(cat_info, 0)
    ids = np.array([c["id"] for c in cat_info])
    prob = np.array([c["image_count"] for c in cat_info], dtype=np.float64)
    prob /= prob.sum()
    images, anns, rel_ids, rel_len = [], [], [], []
    for img_id in range(1, num_images + 1):
        n_pos, n_neg = 1 + rng.poisson(2.5), 1 + rng.poisson(4.0)
        chosen = ids[rng.choice(len(ids), size=n_pos + n_neg, replace=False, p=prob)]
        pos, neg = chosen[:n_pos], chosen[n_pos:]
        images.append(
            {
                "id": img_id,
                "height": 480,
                "width": 640,
                "neg_category_ids": neg.tolist(),
                "not_exhaustive_category_ids": [int(c) for c in pos if rng.random() < 0.1],
            }
        )
        for c in pos:
            for _ in range(1 + rng.poisson(1.5)):
                bw, bh = np.exp(rng.uniform(np.log(4), np.log(380), 2))
                x, y = rng.uniform(0, 640 - bw), rng.uniform(0, 480 - bh)
                box = [float(x), float(y), float(bw), float(bh)]
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": img_id,
                        "category_id": int(c),
                        "bbox": box,
                        "area": float(bw * bh),
                    }
                )
                if masks:
                    x2, y2 = x + bw, y + bh
                    anns[-1]["segmentation"] = [[x, y, x2, y, x2, y2, x, y2]]
        rel_ids.append(chosen)
        rel_len.append(len(chosen))
    gt["images"], gt["annotations"] = images, anns
    # Two jittered (sometimes confused) detections per gt box.
    g_img = np.repeat([a["image_id"] for a in anns], 2)
    g_cls = np.repeat([a["category_id"] for a in anns], 2)
    g_box = np.repeat(np.array([a["bbox"] for a in anns]), 2, axis=0)
    g_box = g_box + rng.normal(0, 0.08, g_box.shape) * g_box[:, [2, 3, 2, 3]]
    confused = rng.random(len(g_cls)) < 0.25
    g_cls[confused] = rng.choice(ids, size=int(confused.sum()), p=prob)
    g_score = rng.uniform(0.2, 1, len(g_cls))
    # Background detections up to dets_per_image per image.
    per_img = np.bincount(g_img, minlength=num_images + 1)[1:]
    n_bg = np.maximum(dets_per_image - per_img, 0)
    b_img = np.repeat(np.arange(1, num_images + 1), n_bg)
    b_cls = rng.choice(ids, size=len(b_img), p=prob)
    local = rng.random(len(b_img)) < 0.3  # 30% from the image's positive/negative classes
    offs = np.r_[0, np.cumsum(rel_len)]
    flat = np.concatenate(rel_ids)
    k = b_img[local] - 1
    b_cls[local] = flat[offs[k] + (rng.random(len(k)) * np.array(rel_len)[k]).astype(int)]
    wh = np.exp(rng.uniform(np.log(4), np.log(380), (len(b_img), 2)))
    xy = rng.uniform(0, 1, (len(b_img), 2)) * ([640, 480] - wh)
    b_box = np.concatenate([xy, wh], axis=1)
    b_score = rng.uniform(0, 0.7, len(b_img))
    box = np.concatenate([g_box, b_box]).astype(np.float32)
    box[:, 2:] = np.maximum(box[:, 2:], 1)
    image_id = np.concatenate([g_img, b_img]).astype(np.int64)
    segm = None
    if masks:  # RLE of each box's rectangle, made image by image
        from pycocotools import mask as mask_util

        order = np.argsort(image_id, kind="stable")
        cuts = np.flatnonzero(np.diff(image_id[order])) + 1
        segm = [None] * len(image_id)
        for rows in np.split(order, cuts):
            rles = mask_util.frPyObjects(box[rows].astype(np.float64), 480, 640)
            for i, rle in zip(rows.tolist(), rles):
                segm[i] = rle
    table = DetectionTable(
        image_id=image_id,
        category_id=np.concatenate([g_cls, b_cls]).astype(np.int64),
        score=np.concatenate([g_score, b_score]).astype(np.float32).astype(np.float64),
        bbox=None if masks else box.astype(np.float64),
        segmentation=segm,
    )
    return gt, table


# ------------------------------------------------------------------ peers, as their users run them
# Each peer runs its own LVIS evaluation from the two json files, the way its documentation shows
# (lvis-api has no command-line tool, so neither do they), with LVIS's per-image cap of 300, and
# returns lvis-api's metric names (fractions, -1 where undefined).
LVIS_KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf",
             "AR@300", "ARs@300", "ARm@300", "ARl@300"]


def _peer_lvis_api(gt_path: str, dt_path: str, iou_type: str) -> Dict[str, float]:
    from lvis import LVIS, LVISEval, LVISResults

    gt = LVIS(gt_path)
    ev = LVISEval(gt, LVISResults(gt, dt_path, max_dets=300), iou_type)
    ev.run()
    ev.print_results()
    return {k: float(v) for k, v in ev.get_results().items()}


def _peer_hotcoco(gt_path: str, dt_path: str, iou_type: str) -> Dict[str, float]:
    from hotcoco import LVIS, LVISEval, LVISResults  # its lvis-api drop-in

    gt = LVIS(gt_path)
    ev = LVISEval(gt, LVISResults(gt, dt_path, max_dets=300), iou_type)
    ev.run()
    return {k: float(v) for k, v in ev.get_results().items()}


def _peer_ultrafast(gt_path: str, dt_path: str, iou_type: str) -> Dict[str, float]:
    from ultrafast_pycocotools import COCO, COCOeval

    gt = COCO(gt_path)
    ev = COCOeval(gt, gt.loadRes(dt_path), iou_type, lvis_style=True)  # maxDets [300]
    ev.run()
    return {k: ev.stats_as_dict[k] for k in LVIS_KEYS}


def _peer_faster_coco_eval(gt_path: str, dt_path: str, iou_type: str) -> Dict[str, float]:
    from faster_coco_eval import COCO, COCOeval_faster

    gt = COCO(gt_path)
    ev = COCOeval_faster(gt, gt.loadRes(dt_path), iou_type, lvis_style=True)
    ev.params.maxDets = [300]  # a cap per (image, class): LVIS caps each image
    ev.run()
    s = ev.stats_as_dict
    names = {"AP": "AP_all", "AP50": "AP_50", "AP75": "AP_75", "APs": "AP_small",
             "APm": "AP_medium", "APl": "AP_large", "AR@300": "AR_all", "ARs@300": "AR_small",
             "ARm@300": "AR_medium", "ARl@300": "AR_large"}
    return {k: float(s[names.get(k, k)]) for k in LVIS_KEYS}


def _peer_vernier(gt_path: str, dt_path: str, iou_type: str) -> Dict[str, float]:
    # vernier's LVIS summary is reached through its grid functions (vernier._core, which its
    # Evaluator also calls); Evaluator.evaluate summarises the COCO way.
    from vernier import _core
    from vernier.instance import CocoDataset

    with open(gt_path, "rb") as f:
        gt = CocoDataset.from_lvis_json(f.read())
    with open(dt_path, "rb") as f:
        dt = f.read()
    grid_fn = _core.evaluate_bbox_grid if iou_type == "bbox" else _core.evaluate_segm_grid
    grid = grid_fn(gt, dt, parity_mode="strict", max_dets_per_image=300, use_cats=True)
    stats = grid.accumulate([300]).summarize_lvis(gt, [300]).stats
    return dict(zip(LVIS_KEYS, map(float, stats)))


#: name -> (distribution, import name, runner)
PEERS = {
    "lvis-api": ("lvis", "lvis", _peer_lvis_api),
    "faster-coco-eval": ("faster-coco-eval", "faster_coco_eval", _peer_faster_coco_eval),
    "hotcoco": ("hotcoco", "hotcoco", _peer_hotcoco),
    "ultrafast-pycocotools": ("ultrafast-pycocotools", "ultrafast_pycocotools", _peer_ultrafast),
    "vernier": ("vernier", "vernier", _peer_vernier),
}


def peer_version(name: str, python: str) -> str:
    """The installed version of a peer under ``python`` ("" when it is not installed)."""
    code = (
        "import importlib.metadata as m, sys\n"
        "try: print(m.version(sys.argv[1]))\n"
        "except m.PackageNotFoundError: pass"
    )
    out = subprocess.run([python, "-c", code, PEERS[name][0]], capture_output=True, text=True)
    return out.stdout.strip()


def peer_worker(args) -> None:
    """``--peer NAME``: one peer on one pair of files (``--gt``, ``--results``), metrics as json
    to ``--metrics-out``; or, with ``--case-dir``, on every case there (errors recorded)."""
    run = PEERS[args.peer][2]
    if not args.case_dir:
        metrics = run(args.gt, args.results, args.iou_type)
        with open(args.metrics_out, "w") as f:
            json.dump(metrics, f)
        return
    import contextlib
    import io
    import logging

    logging.disable(logging.WARNING)
    out = {}
    with open(os.path.join(args.case_dir, "cases.json")) as f:
        cases = json.load(f)
    for k, (name, iou_type) in enumerate(cases):
        gt = os.path.join(args.case_dir, f"case{k}.gt.json")
        dt = os.path.join(args.case_dir, f"case{k}.dt.json")
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                out[name] = run(gt, dt, iou_type)
        except Exception as e:  # noqa: BLE001  (a peer's failure is a result)
            out[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"
    with open(args.metrics_out, "w") as f:
        json.dump(out, f)


# ------------------------------------------------------------------ exactness cases
def _rle_of_box(box, h: int, w: int) -> Dict:
    """Compressed RLE (counts as str) of a box's pixels; an empty mask for width or height 0."""
    from pycocotools import mask as mask_util

    x, y, bw, bh = (int(v) for v in box)
    m = np.zeros((h, w, 1), np.uint8, order="F")
    m[y : y + bh, x : x + bw] = 1
    rle = mask_util.encode(m)[0]
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _small_case(variant: str, iou_type: str):
    """Hand-made ground truth and results (100 x 100 images) of one area-0 or id rule."""
    def img(i, neg=()):
        return {"id": i, "height": 100, "width": 100, "neg_category_ids": list(neg),
                "not_exhaustive_category_ids": []}

    def ann(aid, im, cat, box, area=None):
        x, y, w, h = box
        return {"id": aid, "image_id": im, "category_id": cat, "bbox": list(box),
                "area": float(w * h) if area is None else area, "iscrowd": 0,
                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}

    def det(im, cat, box, score):
        d = {"image_id": im, "category_id": cat, "score": score}
        if iou_type == "segm":
            d["segmentation"] = _rle_of_box(box, 100, 100)
        else:
            d["bbox"] = [float(v) for v in box]
        return d

    gt = {"images": [img(1), img(2, neg=[2])],
          "annotations": [ann(1, 1, 1, (10, 10, 20, 20)), ann(2, 2, 1, (30, 30, 20, 20))],
          "categories": [{"id": c, "name": f"c{c}", "frequency": "f", "image_count": 500}
                         for c in (1, 2)]}
    extra = []
    if variant == "empty or zero-width detections":
        extra = [det(1, 1, (60, 60, 0, 0), 0.99), det(2, 1, (30, 30, 0, 20), 0.98)]
    elif variant == "gt box of width 0 and area 0":
        gt["annotations"].append(ann(3, 1, 1, (60, 60, 0, 20)))
    elif variant == "gt box of width 0, area > 0":
        gt["annotations"].append(ann(3, 1, 1, (60, 60, 0, 20), area=20.0))
    elif variant == "gt of area 0":
        gt["annotations"].append(ann(3, 1, 1, (60, 60, 20, 20), area=0))
    elif variant == "gt of area 0 only, image not positive":
        gt["images"].append(img(3))
        gt["annotations"].append(ann(3, 3, 1, (40, 40, 20, 20), area=0))
        extra = [det(3, 1, (40, 40, 20, 20), 0.99)]
    elif variant == "annotation id 0":
        gt["annotations"][0]["id"] = 0
    elif variant == "duplicate category id":
        gt["categories"].append({"id": 1, "name": "again", "frequency": "r", "image_count": 1})
    dets = [det(a["image_id"], a["category_id"], a["bbox"], 0.9 - 0.01 * k)
            for k, a in enumerate(gt["annotations"][:2])] + extra
    return gt, dets


def _coco_100_case(iou_type: str, zero_area: bool):
    """COCO val2014, 100 images (tests/data): classes detected in an image without gt there are
    its negatives, every second positive class is not exhaustive, r/c/f by id; with
    ``zero_area`` a tenth of the gt get area 0 and a tenth of the results an empty mask (segm)
    or a box of width 0 (bbox)."""
    import copy
    import gzip

    with gzip.open(os.path.join(ROOT, "tests", "data", "coco_val2014_100.json.gz"), "rt") as f:
        doc = json.load(f)
    gt = copy.deepcopy(doc["ground_truth"])
    gt["annotations"] = [a for a in gt["annotations"] if not a["iscrowd"]]
    pos, seen = {}, {}
    for a in gt["annotations"]:
        pos.setdefault(a["image_id"], set()).add(a["category_id"])
    for r in doc["bbox_results"]:
        seen.setdefault(r["image_id"], set()).add(r["category_id"])
    for im in gt["images"]:
        im["neg_category_ids"] = sorted(seen.get(im["id"], set()) - pos.get(im["id"], set()))
        im["not_exhaustive_category_ids"] = sorted(pos.get(im["id"], set()))[1::2]
    for c in gt["categories"]:
        c["frequency"] = "rcf"[c["id"] % 3]
    results = doc[f"{iou_type}_results"]
    if iou_type == "segm":
        for r in results:
            r.pop("bbox", None)  # areas from the masks, as detectron2 writes segm results
    if zero_area:
        from pycocotools import mask as mask_util

        rng = np.random.default_rng(0)
        for k in np.flatnonzero(rng.random(len(gt["annotations"])) < 0.1):
            gt["annotations"][k]["area"] = 0
        for k in np.flatnonzero(rng.random(len(results)) < 0.1):
            r = results[k]
            if iou_type == "segm":
                h, w = r["segmentation"]["size"]
                empty = mask_util.encode(np.zeros((h, w, 1), np.uint8, order="F"))[0]
                r["segmentation"] = {"size": [h, w], "counts": empty["counts"].decode("ascii")}
            else:
                r["bbox"][2] = 0.0
    return gt, results


#: lt_det refuses these ground truths (lt_det.lvis_json); the peers' numbers are shown anyway.
REFUSED_CASES = ("annotation id 0", "duplicate category id")


def make_cases(cat_info: List[Dict]):
    """[(name, iou_type, gt, results)]: the project's exactness cases (docs/evaluation.md)."""
    cases = []
    for iou_type in ("bbox", "segm"):
        for v in ("empty or zero-width detections", "gt box of width 0 and area 0",
                  "gt box of width 0, area > 0", "gt of area 0",
                  "gt of area 0 only, image not positive") + REFUSED_CASES:
            cases.append((f"{v} ({iou_type})", iou_type, *_small_case(v, iou_type)))
        for zero in (False, True):
            name = "COCO val2014 100 images" + (", 10% area 0" if zero else "")
            cases.append((f"{name} ({iou_type})", iou_type, *_coco_100_case(iou_type, zero)))
        gt, results = make_lvis_like(cat_info, 50, masks=iou_type == "segm", seed=1)
        cases.append((f"LVIS-like 50 images, negatives, 310 dets/image ({iou_type})", iou_type,
                      gt, results))
    return cases


def run_cases(args, pythons: Dict[str, str]) -> List[Dict]:
    """Every installed peer and lt_det's backends on :func:`make_cases`; prints the largest
    |metric - lvis-api's| per case."""
    from lt_det.errors import LTDetError
    from lt_det.evaluation import evaluate_lvis
    from lt_det.evaluation.backends import LT_LVIS_EVAL_BACKEND_REGISTRY

    cases = make_cases(load_cat_info(args.cat_info))
    tmp = tempfile.TemporaryDirectory()
    for k, (name, iou_type, gt, results) in enumerate(cases):
        with open(os.path.join(tmp.name, f"case{k}.gt.json"), "w") as f:
            json.dump(gt, f)
        with open(os.path.join(tmp.name, f"case{k}.dt.json"), "w") as f:
            json.dump(results, f)
    with open(os.path.join(tmp.name, "cases.json"), "w") as f:
        json.dump([(n, t) for n, t, _, _ in cases], f)
    columns: Dict[str, Dict] = {}
    for peer, python in pythons.items():
        out = os.path.join(tmp.name, f"{peer}.metrics.json")
        cmd = [python, os.path.abspath(__file__), "--peer", peer, "--case-dir", tmp.name,
               "--metrics-out", out]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env())
        if proc.returncode != 0:
            raise RuntimeError(f"{peer} failed:\n{proc.stderr[-3000:]}")
        with open(out) as f:
            columns[peer] = json.load(f)
    backends = LT_LVIS_EVAL_BACKEND_REGISTRY.choices()
    for backend in backends:
        col = columns[f"lt_det {backend}"] = {}
        for name, iou_type, gt, results in cases:
            try:
                r = evaluate_lvis(gt, results, iou_type=iou_type, backend=backend)
                col[name] = {k: r.metrics[k] for k in LVIS_KEYS}
            except LTDetError:
                col[name] = "refused"
    tmp.cleanup()
    ref = columns["lvis-api"]
    names = [c for c in columns if c != "lvis-api"]
    print(f"\n-- largest |metric - lvis-api's| over {len(LVIS_KEYS)} metrics (AP ... ARl@300); "
          "lvis-api's AP in the second column; load average "
          f"{os.getloadavg()[0]:.1f}")
    print("| case | lvis-api AP | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    report = []
    for name, _, _, _ in cases:
        r = ref[name]
        cells = []
        row = {"case": name, "lvis-api": r}
        for c in names:
            v = columns[c][name]
            row[c] = v
            if isinstance(v, str):
                cells.append(v)
            elif isinstance(r, str):
                cells.append(f"AP {v['AP']:.4f}")
            else:
                diff = max(abs(v[k] - r[k]) for k in LVIS_KEYS)
                cells.append(f"{diff:.1e}" + ("" if diff <= 1e-6 else f" (AP {v['AP']:.4f})"))
        ap = r if isinstance(r, str) else f"{r['AP']:.4f}"
        print(f"| {name} | {ap} | " + " | ".join(cells) + " |")
        report.append(row)
    return report


def _child_env() -> Dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def run_cli(cmd: List[str], metrics_path: str, percent: bool) -> Dict:
    """Run ``cmd`` as a user would. Returns the wall time of the whole process, its CPU time
    (user + system, from ``wait4``: unlike wall time it does not count waiting for a core on a
    loaded machine), its peak RSS (VmHWM, polled until it exits; ``ru_maxrss`` would include
    this process's own peak, inherited through fork + exec) and the metrics it wrote (fractions,
    -1 where undefined)."""
    env = _child_env()
    with tempfile.TemporaryFile() as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        peak_kb = 0
        status = f"/proc/{proc.pid}/status"
        while True:
            pid, code, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            try:
                with open(status) as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            peak_kb = max(peak_kb, int(line.split()[1]))
            except OSError:  # exited between wait4() and open()
                pass
            time.sleep(0.003)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(code)
        if proc.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{log.read().decode()[-4000:]}")
    with open(metrics_path) as f:
        metrics = json.load(f)
    if percent:  # tools/lvis_eval.py --output: {"metrics": percent, null where undefined}
        metrics = {k: (-1.0 if v is None else v / 100) for k, v in metrics["metrics"].items()}
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_rss_mb": peak_kb / 1024.0,
        "metrics": metrics,
    }


def _time_one(cmd: List[str], metrics_path: str, percent: bool, repeat: int) -> Dict:
    """:func:`run_cli` ``repeat`` times; the run of least CPU time (with the load average at its
    start)."""
    best = None
    for _ in range(repeat):
        load = os.getloadavg()[0]
        r = run_cli(cmd, metrics_path, percent)
        r["load_average"] = load
        if best is None or r["cpu_seconds"] < best["cpu_seconds"]:
            best = r
    return best


def write_inputs(args, cat_info, n: int, iou_type: str, workdir: str):
    """Write the ground truth and results json of ``n`` images; returns their paths and a line
    describing them. Up to 5000 images the results are built as dicts (:func:`make_lvis_like`),
    beyond from columns (:func:`make_lvis_like_table`, 300 per image) and streamed to the file."""
    gt_path = os.path.join(workdir, f"gt_{n}_{iou_type}.json")
    dt_path = os.path.join(workdir, f"dt_{n}_{iou_type}.json")
    masks = iou_type == "segm"
    if n <= 5000:
        gt, results = make_lvis_like(
            cat_info, n, dets_per_image=args.dets_per_image, seed=args.seed, masks=masks
        )
        with open(dt_path, "w") as f:
            json.dump(results, f)
        num = len(results)
    else:
        gt, table = make_lvis_like_table(cat_info, n, seed=args.seed, masks=masks)
        if masks:
            table.segmentation = [
                {"size": list(m["size"]), "counts": m["counts"].decode("ascii")}
                for m in table.segmentation
            ]
        table.write_json(dt_path)
        num = len(table)
        del table
    with open(gt_path, "w") as f:
        json.dump(gt, f)
    line = (
        f"{n} images, {iou_type}, {len(gt['categories'])} classes, {len(gt['annotations'])} gt, "
        f"{num} detections ({num / n:.0f}/image), results json "
        f"{os.path.getsize(dt_path) / 2 ** 20:.0f} MB"
    )
    return gt_path, dt_path, line


def _print_table(rows: List[Dict], ref_name: str) -> None:
    ref = next(r for r in rows if r["name"] == ref_name)
    print(f"| evaluator | version | CPU s | wall s | peak RSS MB | max abs diff vs {ref_name} "
          "| load average |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['name']} | {r['version']} | fails: {r['error']} | | | | |")
            continue
        diff = max(abs(r["metrics"][k] - v) for k, v in ref["metrics"].items())
        r["max_abs_diff_vs_" + ref_name] = diff
        print(
            f"| {r['name']} | {r['version']} | {r['cpu_seconds']:.2f} | {r['seconds']:.2f} | "
            f"{r['peak_rss_mb']:.0f} | {diff:.1e} | {r['load_average']:.1f} |",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, nargs="+", default=[500, 2000])
    p.add_argument("--iou-types", nargs="+", default=["bbox", "segm"], choices=["bbox", "segm"])
    p.add_argument("--peers", nargs="*", default=list(PEERS), choices=list(PEERS),
                   help="peers to run (default: every one installed)")
    p.add_argument("--peer-python", action="append", default=[], metavar="NAME=PYTHON",
                   help="run peer NAME with this interpreter (a peer that needs other versions "
                        "of shared packages, e.g. vernier with numpy 2, in its own venv)")
    p.add_argument("--backends", nargs="+", default=["fast"],
                   help="lt_det backends to run (tools/lvis_eval.py --backend)")
    p.add_argument("--class-chunk", type=int, default=100)
    p.add_argument("--repeat", type=int, default=1, help="runs per row; the least CPU time")
    p.add_argument("--dets-per-image", type=int, default=310)
    p.add_argument("--cat-info", default="", help="LVIS v1 *_cat_info.json (default: lt_det's)")
    p.add_argument("--workdir", default="", help="keep generated files here (default: a tmp dir)")
    p.add_argument("--output", default="", help="write the report as json here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cases", action="store_true",
                   help="instead: exactness of every peer and backend on the project's cases")
    # internal: one peer in a subprocess
    p.add_argument("--peer", choices=list(PEERS), help=argparse.SUPPRESS)
    p.add_argument("--gt", help=argparse.SUPPRESS)
    p.add_argument("--results", help=argparse.SUPPRESS)
    p.add_argument("--iou-type", default="bbox", help=argparse.SUPPRESS)
    p.add_argument("--metrics-out", help=argparse.SUPPRESS)
    p.add_argument("--case-dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.peer:
        peer_worker(args)
        return

    given = dict(kv.split("=", 1) for kv in args.peer_python)
    pythons, versions = {}, {}
    for name in args.peers:
        python = given.get(name, sys.executable)
        version = peer_version(name, python)
        if version:
            pythons[name], versions[name] = python, version
        else:
            print(f"({name} is not installed under {python}: left out)")
    report = {"peers": versions, "load_average_start": os.getloadavg()[0]}
    if args.cases:
        report["cases"] = run_cases(args, pythons)
    else:
        report["runs"] = time_all(args, pythons, versions)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=1)


def time_all(args, pythons: Dict[str, str], versions: Dict[str, str]) -> List[Dict]:
    """Every peer and lt_det backend, whole process, on each size and IoU type."""
    import lt_det

    cat_info = load_cat_info(args.cat_info)
    tmp = tempfile.TemporaryDirectory() if not args.workdir else None
    workdir = args.workdir or tmp.name
    os.makedirs(workdir, exist_ok=True)
    tool = os.path.join(ROOT, "tools", "lvis_eval.py")
    m_path = os.path.join(workdir, "metrics.json")
    report = []
    for n in args.images:
        for iou_type in args.iou_types:
            gt_path, dt_path, line = write_inputs(args, cat_info, n, iou_type, workdir)
            print(f"\n== {line}; load average {os.getloadavg()[0]:.1f}", flush=True)
            rows = []
            for name, python in pythons.items():
                cmd = [python, os.path.abspath(__file__), "--peer", name, "--gt", gt_path,
                       "--results", dt_path, "--iou-type", iou_type, "--metrics-out", m_path]
                try:
                    r = _time_one(cmd, m_path, False, args.repeat)
                except RuntimeError as e:
                    lines = [s for s in str(e).splitlines() if s.strip()]
                    r = {"error": lines[-1][:120] if lines else "failed"}
                rows.append({"name": name, "version": versions[name], **r})
            for backend in args.backends:
                cmd = [sys.executable, tool, "--gt", gt_path, "--results", dt_path,
                       "--iou-type", iou_type, "--backend", backend,
                       "--class-chunk", str(args.class_chunk), "--output", m_path, "--force"]
                r = _time_one(cmd, m_path, True, args.repeat)
                rows.append({"name": f"lt_det {backend}", "version": lt_det.__version__, **r})
            ref = "lvis-api" if any(r["name"] == "lvis-api" and "error" not in r for r in rows) \
                else f"lt_det {args.backends[0]}"
            print(f"-- whole process (interpreter start to exit), least CPU time of "
                  f"{args.repeat}; load average {os.getloadavg()[0]:.1f}")
            _print_table(rows, ref)
            report.append({"images": n, "iou_type": iou_type, "data": line, "rows": rows})
            os.remove(dt_path)
    if tmp is not None:
        tmp.cleanup()
    return report


if __name__ == "__main__":
    main()
