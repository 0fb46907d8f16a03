#!/usr/bin/env python
"""Benchmark lt_det's LVIS evaluation against lvis-api on LVIS-v1-like synthetic data.

For each image count (default 500 and 2000) it writes a ground truth with the 1203 LVIS v1
categories and their real training image counts (hence the real r/c/f split and long tail;
positives and negatives per image drawn in proportion to those counts; rectangular polygon masks)
and a results file with ~300 detections per image (jittered copies of the gt boxes, confusions
and background boxes; a few more than 300 so that the per-image cut matters), with boxes for
"bbox" and RLE masks (the boxes' rectangles, no "bbox" key, so that both sides take areas from
the masks) for "segm". Then, for each IoU type, it runs the command line a user runs, each in
its own process, from interpreter start to exit:

  * lvis-api: ``python -c`` with ``LVIS(gt)``, ``LVISResults(gt, results, max_dets=300)``,
    ``LVISEval(...).run()``, ``print_results()`` (lvis-api has no command-line tool);
  * lt_det: ``tools/lvis_eval.py --gt ... --results ... --iou-type ...`` (``--class-chunk`` C for
    each C given; default 100, the tool's default);

and reports wall time of the whole process (interpreter start, imports, json parsing,
evaluation, printing), its peak resident set (``VmHWM`` of the child, polled from /proc every few
milliseconds until it exits; Linux), and the largest metric difference to lvis-api.
``--breakdown`` adds in-process timings (from the json files to the metrics, and from
predictions already in memory, the detectron2 evaluator's path).

    python tools/bench_eval.py [--images 500 2000] [--iou-types bbox segm] [--class-chunks 100]
        [--cat-info lvis_v1_train_cat_info.json] [--breakdown] [--output bench.json]
    python tools/bench_eval.py --full-scale 19809 [--iou-types bbox segm]   # LVIS v1 val scale
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


def full_scale(args) -> None:
    """lt_det's fast path alone at LVIS v1 val scale, detections in memory (evaluator path)."""
    from lt_det.evaluation import evaluate_lvis

    cat_info = load_cat_info(args.cat_info)
    for iou_type in args.iou_types:
        t0 = time.perf_counter()
        gt, table = make_lvis_like_table(
            cat_info, args.full_scale, seed=args.seed, masks=iou_type == "segm"
        )
        print(
            f"== full scale, {iou_type}: {args.full_scale} images, {len(gt['annotations'])} gt, "
            f"{len(table)} detections, made in {time.perf_counter() - t0:.0f}s; RSS "
            f"{_mem_mb('VmRSS'):.0f} MB (peak so far {_mem_mb('VmHWM'):.0f} MB); load average "
            f"{os.getloadavg()[0]:.1f}",
            flush=True,
        )
        for c in args.class_chunks:
            t0, c0 = time.perf_counter(), time.process_time()
            r = evaluate_lvis(gt, table, iou_type=iou_type, backend="fast", class_chunk=c)
            print(
                f"lt_det fast {iou_type} chunk={c}: {time.perf_counter() - t0:.1f}s wall, "
                f"{time.process_time() - c0:.1f}s CPU, peak RSS of "
                f"the process {_mem_mb('VmHWM'):.0f} MB; AP {r.metrics['AP']:.4f} APr "
                f"{r.metrics['APr']:.4f} AR@300 {r.metrics['AR@300']:.4f}; load average "
                f"{os.getloadavg()[0]:.1f}",
                flush=True,
            )
        del gt, table


LVIS_API_SCRIPT = """
import json, sys
from lvis import LVIS, LVISEval, LVISResults
gt = LVIS(sys.argv[1])
ev = LVISEval(gt, LVISResults(gt, sys.argv[2], max_dets=300), sys.argv[3])
ev.run()
ev.print_results()
with open(sys.argv[4], "w") as f:
    json.dump({k: float(v) for k, v in ev.get_results().items()}, f)
"""


def run_cli(cmd: List[str], metrics_path: str, percent: bool) -> Dict:
    """Run ``cmd`` as a user would. Returns the wall time of the whole process, its CPU time
    (user + system, from ``wait4``: unlike wall time it does not count waiting for a core on a
    loaded machine), its peak RSS (VmHWM, polled until it exits; ``ru_maxrss`` would include
    this process's own peak, inherited through fork + exec) and the metrics it wrote (fractions,
    -1 where undefined)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
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


def run_worker(kind: str, gt: str, results: str, iou_type: str, class_chunk: int = 100) -> Dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--gt", gt]
    cmd += ["--results", results, "--iou-type", iou_type, "--class-chunk", str(class_chunk)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"worker {kind} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def _print_rows(rows, ref, memory: str = "") -> None:
    head = f"{'evaluator':<44} {'seconds':>8} {'speed-up':>8}"
    if memory == "cli":
        head += f" {'CPU s':>7} {'speed-up':>8} {'peak RSS MB':>11} {'RSS vs lvis-api':>15}"
    elif memory:
        head += f" {'peak RSS MB':>11} {'after imports':>13} {'growth MB':>9}"
    print(head + f" {'max |diff|':>10}")
    for name, r in rows:
        diff = max(abs(r["metrics"][k] - v) for k, v in ref["metrics"].items())
        r["max_abs_diff_vs_lvis_api"] = diff
        r["speedup_vs_lvis_api"] = ref["seconds"] / r["seconds"]
        line = f"{name:<44} {r['seconds']:8.2f} {r['speedup_vs_lvis_api']:7.2f}x"
        if memory == "cli":
            r["cpu_speedup_vs_lvis_api"] = ref["cpu_seconds"] / r["cpu_seconds"]
            line += f" {r['cpu_seconds']:7.2f} {r['cpu_speedup_vs_lvis_api']:7.2f}x"
            line += f" {r['peak_rss_mb']:11.0f} {r['peak_rss_mb'] / ref['peak_rss_mb']:14.2f}x"
        elif memory:
            growth = r["peak_rss_mb"] - r["rss_after_imports_mb"]
            line += f" {r['peak_rss_mb']:11.0f} {r['rss_after_imports_mb']:13.0f} {growth:9.0f}"
        print(line + f" {diff:10.2e}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, nargs="+", default=[500, 2000])
    p.add_argument("--iou-types", nargs="+", default=["bbox", "segm"], choices=["bbox", "segm"])
    p.add_argument("--class-chunks", type=int, nargs="+", default=[100])
    p.add_argument("--dets-per-image", type=int, default=310)
    p.add_argument("--cat-info", default="", help="LVIS v1 *_cat_info.json (default: lt_det's)")
    p.add_argument("--workdir", default="", help="keep generated files here (default: a tmp dir)")
    p.add_argument("--output", default="", help="write the report as json here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="also time in-process runs: json files to metrics, and predictions in memory",
    )
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
    p.add_argument("--iou-type", default="bbox", help=argparse.SUPPRESS)
    p.add_argument("--class-chunk", type=int, default=100, help=argparse.SUPPRESS)
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
    tool = os.path.join(ROOT, "tools", "lvis_eval.py")
    report = []
    for n in args.images:
        for iou_type in args.iou_types:
            gt, results = make_lvis_like(
                cat_info,
                n,
                dets_per_image=args.dets_per_image,
                seed=args.seed,
                masks=iou_type == "segm",
            )
            gt_path = os.path.join(workdir, f"gt_{n}.json")
            dt_path = os.path.join(workdir, f"dt_{n}_{iou_type}.json")
            with open(gt_path, "w") as f:
                json.dump(gt, f)
            with open(dt_path, "w") as f:
                json.dump(results, f)
            print(
                f"\n== {n} images, {iou_type}, {len(gt['categories'])} classes, "
                f"{len(gt['annotations'])} gt, {len(results)} detections "
                f"({len(results) / n:.0f}/image), results json "
                f"{os.path.getsize(dt_path) / 2 ** 20:.0f} MB; load average "
                f"{os.getloadavg()[0]:.1f}",
                flush=True,
            )
            del gt, results
            m_path = os.path.join(workdir, "metrics.json")
            ref = run_cli(
                [sys.executable, "-c", LVIS_API_SCRIPT, gt_path, dt_path, iou_type, m_path],
                m_path,
                percent=False,
            )
            rows = [("lvis-api (python script)", ref)]
            for c in args.class_chunks:
                cmd = [sys.executable, tool, "--gt", gt_path, "--results", dt_path]
                cmd += ["--iou-type", iou_type, "--class-chunk", str(c), "--output", m_path]
                rows.append(
                    (f"lt_det tools/lvis_eval.py --class-chunk {c}", run_cli(cmd, m_path, True))
                )
            print(
                f"-- command line, whole process (interpreter start to exit); load average "
                f"{os.getloadavg()[0]:.1f}"
            )
            _print_rows(rows, ref, memory="cli")
            if args.breakdown:
                ref_f = run_worker("lvis", gt_path, dt_path, iou_type)
                rows_f = [("lvis-api (files)", ref_f)]
                for c in args.class_chunks:
                    r = run_worker("fast", gt_path, dt_path, iou_type, c)
                    rows_f.append((f"lt_det fast chunk={c} (files)", r))
                print("-- in process, from the json files to the metrics (imports excluded)")
                _print_rows(rows_f, ref_f, memory="process")
                ref_mem = run_worker("lvis-mem", gt_path, dt_path, iou_type)
                rows_mem = [("lvis-api (in memory)", ref_mem)]
                for c in args.class_chunks:
                    r = run_worker("fast-mem", gt_path, dt_path, iou_type, c)
                    rows_mem.append((f"lt_det fast chunk={c} (in memory)", r))
                print("-- evaluator path: predictions already in memory (time only)")
                _print_rows(rows_mem, ref_mem)
                rows += rows_f + rows_mem
            print(
                "lvis-api metrics: "
                + "  ".join(f"{k} {v:.4f}" for k, v in ref["metrics"].items())
            )
            report.append(
                {"images": n, "iou_type": iou_type, "rows": {name: r for name, r in rows}}
            )
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=1)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
