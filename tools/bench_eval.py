#!/usr/bin/env python
"""Benchmark lt_det's LVIS evaluation against lvis-api on LVIS-v1-like synthetic data.

For each image count (default 500 and 2000) it writes a ground truth with the 1203 LVIS v1
categories and their real training image counts (hence the real r/c/f split and long tail;
positives and negatives per image drawn in proportion to those counts) and a results file with
~300 detections per image (jittered copies of the gt boxes, confusions and background boxes;
a few more than 300 so that the per-image cut matters). Then, each in its own subprocess, it runs

  * lvis-api end to end: ``LVIS(gt)``, ``LVISResults(gt, results, max_dets=300)``,
    ``LVISEval(...).run()``;
  * lt_det: ``evaluate_lvis(gt, results, backend="fast", class_chunk=C)`` for each C given;

and reports wall time (from reading the json files to the metrics; imports excluded), peak
memory as the subprocess's peak resident set (``VmHWM`` in /proc/self/status; it includes the
interpreter and its imports: lt_det imports torch/detectron2, lvis-api does not, so the RSS right
after the imports is reported too, and the growth from there), and the largest metric
difference to lvis-api.

    .venv/bin/python tools/bench_eval.py [--images 500 2000] [--class-chunks 0 100]
        [--cat-info lvis_v1_train_cat_info.json] [--iou-type bbox] [--output bench.json]
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
    sys.path.insert(0, ROOT)
    from lt_det.data.lvis_v1_stats import load_lvis_v1_cat_info

    return load_lvis_v1_cat_info()


def make_lvis_like(
    cat_info: List[Dict], num_images: int, *, dets_per_image: int = 310, seed: int = 0
):
    """(gt dict, results list) with LVIS v1's categories and long tail; see module docstring."""
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
        for cls, box, s in img_dets[:dets_per_image]:
            box = np.asarray(box, dtype=np.float32)  # detectron2 writes float32 values
            box[2:] = np.maximum(box[2:], 1)
            results.append(
                {
                    "image_id": img_id,
                    "category_id": cls,
                    "bbox": [float(v) for v in box],
                    "score": float(np.float32(s)),
                }
            )
    return {"images": images, "annotations": anns, "categories": cats}, results


def make_lvis_like_table(
    cat_info: List[Dict], num_images: int, *, dets_per_image: int = 300, seed: int = 0
):
    """(gt dict, DetectionTable) like :func:`make_lvis_like`, detections built with vectorised
    numpy (no dicts, no json) so that LVIS v1 val scale (19,809 images) is cheap to make."""
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
    table = DetectionTable(
        image_id=np.concatenate([g_img, b_img]).astype(np.int64),
        category_id=np.concatenate([g_cls, b_cls]).astype(np.int64),
        score=np.concatenate([g_score, b_score]).astype(np.float32).astype(np.float64),
        bbox=box.astype(np.float64),
    )
    return gt, table


def full_scale(args) -> None:
    """lt_det's fast path alone at LVIS v1 val scale, detections in memory (evaluator path)."""
    sys.path.insert(0, ROOT)
    from lt_det.evaluation import evaluate_lvis

    cat_info = load_cat_info(args.cat_info)
    t0 = time.perf_counter()
    gt, table = make_lvis_like_table(cat_info, args.full_scale, seed=args.seed)
    print(
        f"== full scale: {args.full_scale} images, {len(gt['annotations'])} gt, {len(table)} "
        f"detections, made in {time.perf_counter() - t0:.0f}s; "
        f"RSS {_mem_mb('VmRSS'):.0f} MB (peak so far {_mem_mb('VmHWM'):.0f} MB)",
        flush=True,
    )
    for c in args.class_chunks:
        t0 = time.perf_counter()
        r = evaluate_lvis(gt, table, iou_type="bbox", backend="fast", class_chunk=c)
        print(
            f"lt_det fast chunk={c}: {time.perf_counter() - t0:.1f}s, peak RSS of the process "
            f"{_mem_mb('VmHWM'):.0f} MB; AP {r.metrics['AP']:.4f} APr {r.metrics['APr']:.4f} "
            f"AR@300 {r.metrics['AR@300']:.4f}",
            flush=True,
        )


def worker(args) -> None:
    """Run one evaluation in this process and print a json line with time, memory, metrics.

    ``lvis`` / ``fast``: from the json files to the metrics. ``lvis-mem`` / ``fast-mem``: the
    evaluator path, from predictions already in memory (timer started after reading the
    results): lvis-api gets the list of result dicts, as detectron2's ``LVISEvaluator`` hands it
    over; lt_det gets one ``DetectionTable`` per image, as ``LTLVISEvaluator.process`` stores
    them. Ground-truth loading is timed in all modes.
    """
    kind = args.worker
    if kind.startswith("lvis"):
        from lvis import LVIS, LVISEval, LVISResults

        rss0 = _mem_mb("VmRSS")
        results = args.results
        if kind == "lvis-mem":
            with open(args.results) as f:
                results = json.load(f)
        t0 = time.perf_counter()
        gt = LVIS(args.gt)
        res = LVISResults(gt, results, max_dets=300)
        ev = LVISEval(gt, res, args.iou_type)
        ev.run()
        metrics = {k: float(v) for k, v in ev.get_results().items()}
    else:
        sys.path.insert(0, ROOT)
        from lt_det.evaluation import DetectionTable, evaluate_lvis

        rss0 = _mem_mb("VmRSS")
        results = args.results
        if kind == "fast-mem":
            table = DetectionTable.from_results(args.results)
            order = np.argsort(table.image_id, kind="stable")
            cuts = np.flatnonzero(np.diff(table.image_id[order])) + 1
            results = [table.take(rows) for rows in np.split(order, cuts)]
            del table
        t0 = time.perf_counter()
        if kind == "fast-mem":
            results = DetectionTable.concatenate(results)
        r = evaluate_lvis(
            args.gt,
            results,
            iou_type=args.iou_type,
            backend="fast",
            class_chunk=args.class_chunk,
        )
        metrics = dict(r.metrics)
    seconds = time.perf_counter() - t0
    peak = _mem_mb("VmHWM")
    line = {"seconds": seconds, "rss_after_imports_mb": rss0, "peak_rss_mb": peak}
    print("RESULT " + json.dumps({**line, "metrics": metrics}), flush=True)


def run_worker(kind: str, gt: str, results: str, iou_type: str, class_chunk: int = 0) -> Dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--gt", gt]
    cmd += ["--results", results, "--iou-type", iou_type, "--class-chunk", str(class_chunk)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"worker {kind} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def _print_rows(rows, ref, memory: bool = True) -> None:
    head = f"{'evaluator':<36} {'seconds':>8} {'speed-up':>8}"
    if memory:
        head += f" {'peak RSS MB':>11} {'after imports':>13} {'growth MB':>9}"
    print(head + f" {'max |diff|':>10}")
    for name, r in rows:
        diff = max(abs(r["metrics"][k] - v) for k, v in ref["metrics"].items())
        r["max_abs_diff_vs_lvis_api"] = diff
        r["speedup_vs_lvis_api"] = ref["seconds"] / r["seconds"]
        line = f"{name:<36} {r['seconds']:8.2f} {r['speedup_vs_lvis_api']:7.2f}x"
        if memory:
            growth = r["peak_rss_mb"] - r["rss_after_imports_mb"]
            line += f" {r['peak_rss_mb']:11.0f} {r['rss_after_imports_mb']:13.0f} {growth:9.0f}"
        print(line + f" {diff:10.2e}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, nargs="+", default=[500, 2000])
    p.add_argument("--class-chunks", type=int, nargs="+", default=[0, 100])
    p.add_argument("--dets-per-image", type=int, default=310)
    p.add_argument("--cat-info", default="", help="LVIS v1 *_cat_info.json (default: lt_det's)")
    p.add_argument("--iou-type", default="bbox", choices=["bbox"])
    p.add_argument("--workdir", default="", help="keep generated files here (default: a tmp dir)")
    p.add_argument("--output", default="", help="write the report as json here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-in-memory", action="store_true", help="only the file-to-metrics runs")
    p.add_argument(
        "--full-scale",
        type=int,
        default=0,
        help="instead: lt_det alone on this many images (LVIS v1 val: 19809), in memory",
    )
    # internal: one evaluation in a subprocess
    p.add_argument(
        "--worker", choices=["lvis", "fast", "lvis-mem", "fast-mem"], help=argparse.SUPPRESS
    )
    p.add_argument("--gt", help=argparse.SUPPRESS)
    p.add_argument("--results", help=argparse.SUPPRESS)
    p.add_argument("--class-chunk", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    if args.full_scale:
        full_scale(args)
        return

    cat_info = load_cat_info(args.cat_info)
    tmp = tempfile.TemporaryDirectory() if not args.workdir else None
    workdir = args.workdir or tmp.name
    os.makedirs(workdir, exist_ok=True)
    report = []
    for n in args.images:
        gt, results = make_lvis_like(
            cat_info, n, dets_per_image=args.dets_per_image, seed=args.seed
        )
        gt_path = os.path.join(workdir, f"gt_{n}.json")
        dt_path = os.path.join(workdir, f"dt_{n}.json")
        with open(gt_path, "w") as f:
            json.dump(gt, f)
        with open(dt_path, "w") as f:
            json.dump(results, f)
        print(
            f"\n== {n} images, {len(gt['categories'])} classes, {len(gt['annotations'])} gt, "
            f"{len(results)} detections ({len(results) / n:.0f}/image)",
            flush=True,
        )
        del gt, results
        ref = run_worker("lvis", gt_path, dt_path, args.iou_type)
        rows = [("lvis-api (files)", ref)]
        for c in args.class_chunks:
            r = run_worker("fast", gt_path, dt_path, args.iou_type, c)
            rows.append((f"lt_det fast chunk={c} (files)", r))
        print("-- from the json files to the metrics (peak memory: whole process)")
        _print_rows(rows, ref)
        if not args.skip_in_memory:
            ref_mem = run_worker("lvis-mem", gt_path, dt_path, args.iou_type)
            rows_mem = [("lvis-api (in memory)", ref_mem)]
            for c in args.class_chunks:
                r = run_worker("fast-mem", gt_path, dt_path, args.iou_type, c)
                rows_mem.append((f"lt_det fast chunk={c} (in memory)", r))
            print("-- evaluator path: predictions already in memory (time only)")
            _print_rows(rows_mem, ref_mem, memory=False)
            rows += rows_mem
        print("lvis-api metrics: " + "  ".join(f"{k} {v:.4f}" for k, v in ref["metrics"].items()))
        report.append({"images": n, "rows": {name: r for name, r in rows}})
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=1)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
