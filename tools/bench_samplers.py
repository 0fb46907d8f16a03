#!/usr/bin/env python
"""Benchmark lt_det's training samplers at LVIS v1 scale (CPU).

1. Build time of every sampler for I synthetic images (default 100,000) whose classes follow the
   real LVIS v1 train statistics: class c is put on ``image_count[c]`` random images and has
   ``instance_count[c]`` annotations in total. detectron2's own RepeatFactorTrainingSampler is
   built in the same run for reference. Goal: <= 1 s each.
2. Time of one Meta Sampler update against one plain classifier step (forward, cross-entropy,
   backward, SGD step) of an LVIS box classifier (Linear D -> K + 1) on the same ROIs. Goal:
   <= 1.3x.

Usage::

    python tools/bench_samplers.py [--cat-info PATH] [--images 100000] [--rois 2048]
"""
import argparse
import statistics
import sys
import time
import warnings
from typing import Dict, List

# detectron2 calls torch.jit.script when imported; recent torch warns that it is deprecated.
warnings.filterwarnings(
    "ignore", r"`torch\.jit\.script` is deprecated", FutureWarning, r"torch\.jit"
)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data.samplers import RepeatFactorTrainingSampler  # noqa: E402

from lt_det import add_lt_config  # noqa: E402
from lt_det.data.lvis_v1_stats import load_lvis_v1_cat_info  # noqa: E402
from lt_det.data.samplers import MetaSampler, build_train_sampler  # noqa: E402
from lt_det.decouple.balms import MetaSamplerLearner  # noqa: E402
from lt_det.errors import LTDetError, report_error  # noqa: E402


def synthesise_dataset_dicts(cat_info: List[Dict], num_images: int, seed: int) -> List[Dict]:
    """Dataset dicts whose per-class image and instance counts are those of ``cat_info``.

    Only ``category_id`` is filled in the annotations (all a sampler reads); annotation dicts of
    one class are shared objects to keep memory small.
    """
    rng = np.random.default_rng(seed)
    imgs, cats = [], []
    for c, info in enumerate(cat_info):
        n_img = min(int(info["image_count"]), num_images)
        chosen = rng.choice(num_images, size=n_img, replace=False)
        extra = rng.integers(0, n_img, size=max(int(info["instance_count"]) - n_img, 0))
        imgs.append(np.concatenate([chosen, chosen[extra]]))
        cats.append(np.full(n_img + extra.size, c))
    imgs, cats = np.concatenate(imgs), np.concatenate(cats)
    order = np.argsort(imgs, kind="stable")
    imgs, cats = imgs[order], cats[order]
    bounds = np.searchsorted(imgs, np.arange(num_images + 1))
    ann = [{"category_id": c, "iscrowd": 0} for c in range(len(cat_info))]
    cats = cats.tolist()
    return [
        {
            "file_name": f"{i:012d}.jpg",
            "image_id": i,
            "height": 480,
            "width": 640,
            "annotations": [ann[c] for c in cats[bounds[i] : bounds[i + 1]]],
        }
        for i in range(num_images)
    ]


def timed(fn, repeat: int = 1):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, min(times)


def bench_build(dicts: List[Dict], num_classes: int, repeat: int) -> None:
    cfg = add_lt_config(get_cfg())
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.DATALOADER.REPEAT_THRESHOLD = 0.001
    print(f"\n== sampler build time, {len(dicts)} images, best of {repeat} ==")
    print(f"{'sampler':52s} {'build [s]':>10s} {'first 10k indices [s]':>22s}")

    def build_detectron2() -> RepeatFactorTrainingSampler:
        factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 0.001)
        return RepeatFactorTrainingSampler(factors, seed=0)

    def build_lt_det(name: str):
        cfg.DATALOADER.SAMPLER_TRAIN = name
        return build_train_sampler(cfg, dicts)

    rows = [("detectron2 RepeatFactorTrainingSampler (direct)", build_detectron2)]
    for name in [
        "RepeatFactorTrainingSampler",
        "ClassBalancedSampler",
        "ClassPowerSampler",
        "MetaSampler",
    ]:
        rows.append((f"build_train_sampler({name!r})", lambda name=name: build_lt_det(name)))
    for label, build in rows:
        sampler, t_build = timed(build, repeat)
        it = iter(sampler)
        _, t_draw = timed(lambda: [next(it) for _ in range(10_000)])
        print(f"{label:52s} {t_build:10.3f} {t_draw:22.3f}")


def bench_meta_update(
    num_classes: int,
    dim: int,
    rois: int,
    fg_fraction: float,
    meta_batch: int,
    meta_per_class: int,
    repeat: int,
) -> None:
    torch.manual_seed(0)
    classifier = torch.nn.Linear(dim, num_classes + 1)
    features = torch.randn(rois, dim)
    num_fg = int(rois * fg_fraction)
    gt = torch.full((rois,), num_classes, dtype=torch.int64)
    gt[:num_fg] = torch.randint(num_classes, (num_fg,))
    counts = torch.randint(1, 1000, (num_classes,))
    sampler = MetaSampler(
        [list(range(int(n))) for n in counts], init="sqrt", seed=0, rank=0, world_size=1
    )
    learner = MetaSamplerLearner(
        sampler.rates,
        lr=0.01,
        inner_lr=0.1,
        meta_per_class=meta_per_class,
        meta_batch_size=meta_batch,
    )
    # Fill the meta set: every class at META_PER_CLASS features.
    bank_y = torch.arange(num_classes).repeat(meta_per_class)
    learner.bank.push(torch.randn(bank_y.numel(), dim), bank_y)
    opt = torch.optim.SGD(classifier.parameters(), lr=0.01, momentum=0.9)

    def plain_step():
        loss = torch.nn.functional.cross_entropy(classifier(features), gt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def plain_step_with_meta(train_grads: bool):
        # The intended integration: update the rates between backward() and the optimizer step.
        loss = torch.nn.functional.cross_entropy(classifier(features), gt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = {n: p.grad for n, p in classifier.named_parameters()} if train_grads else None
        learner.step(classifier, features, gt, train_grads=grads)
        opt.step()

    def meta_only(train_grads: bool):
        grads = None
        if train_grads:  # what the trainer's backward() leaves in cls_score's .grad
            grads = {n: torch.zeros_like(p) for n, p in classifier.named_parameters()}
        learner.step(classifier, features, gt, train_grads=grads)

    cases = [
        ("plain classifier step", plain_step),
        ("Meta Sampler update", lambda: meta_only(False)),
        ("Meta Sampler update given train_grads", lambda: meta_only(True)),
        ("plain step + update given its grads", lambda: plain_step_with_meta(True)),
    ]
    for _, fn in cases:  # warm up
        fn()
    # Rounds interleave the cases so that load from other processes hits them alike.
    times = {label: [] for label, _ in cases}
    for _ in range(repeat):
        for label, fn in cases:
            t0 = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t0)
    base = min(times["plain classifier step"])
    print(
        f"\n== Meta Sampler update, K={num_classes} (+1 bg), D={dim}, R={rois} ROIs "
        f"({num_fg} fg), meta batch {meta_batch or 'all ' + str(num_classes * meta_per_class)}, "
        f"{torch.get_num_threads()} thread(s), {repeat} rounds =="
    )
    print(f"{'':40s} {'best [ms]':>10s} {'median [ms]':>12s} {'best / plain':>13s}")
    for label, ts in times.items():
        print(
            f"{label:40s} {min(ts) * 1000:10.1f} {statistics.median(ts) * 1000:12.1f} "
            f"{min(ts) / base:12.2f}x"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cat-info", default=None, help="LVIS v1 train cat_info json")
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rois", type=int, default=2048, help="ROIs per step (512 x images)")
    parser.add_argument("--fg-fraction", type=float, default=0.25)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--meta-batch", type=int, default=512, help="0 = whole meta set")
    parser.add_argument("--meta-per-class", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--skip-meta", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        cat_info = load_lvis_v1_cat_info(args.cat_info)
    except LTDetError as e:
        return report_error(e)
    num_classes = len(cat_info)
    if not args.skip_build:
        t0 = time.perf_counter()
        dicts = synthesise_dataset_dicts(cat_info, args.images, seed=0)
        n_ann = sum(len(d["annotations"]) for d in dicts)
        n_empty = sum(not d["annotations"] for d in dicts)
        print(
            f"synthesised {len(dicts)} images, {n_ann} annotations, {num_classes} classes, "
            f"{n_empty} images without annotations ({time.perf_counter() - t0:.1f} s)"
        )
        bench_build(dicts, num_classes, args.repeat)
        del dicts
    if not args.skip_meta:
        bench_meta_update(
            num_classes,
            args.dim,
            args.rois,
            args.fg_fraction,
            args.meta_batch,
            args.meta_per_class,
            max(args.repeat, 7),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
