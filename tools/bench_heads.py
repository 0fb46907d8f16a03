#!/usr/bin/env python
"""Time forward + backward of every box-classification loss against plain softmax CE.

Default scale is LVIS: 1204 columns (1203 classes + background) x 8192 ROIs (16 images x 512).
All losses are timed in one run, interleaved round-robin so that load on a shared machine hits
them alike; the report gives per-loss medians and the ratio to softmax_ce.

    .venv/bin/python tools/bench_heads.py [--rois 8192] [--classes 1203] [--repeats 30]

Rows marked "unfused" are the textbook forms (``F.cross_entropy(z + shift)`` and
``F.binary_cross_entropy_with_logits`` with a one-hot target), for reference.

``--toy-bg`` instead runs a small, cheap comparison of the Balanced Softmax background treatments
on a synthetic long-tailed "proposal classification" problem (Gaussian class clusters plus a broad
background cluster, a linear classifier trained full-batch, detection-style AP per class: all test
samples ranked by p_c, background samples are negatives). It is a sanity check, not a substitute
for a detector benchmark.
"""
import argparse
import os
import statistics
import sys
import time
import warnings
from typing import Callable, Dict, List

# detectron2 calls torch.jit.script when imported; recent torch warns that it is deprecated.
warnings.filterwarnings(
    "ignore", r"`torch\.jit\.script` is deprecated", FutureWarning, r"torch\.jit"
)

import torch  # noqa: E402

from lt_det.class_stats import frequency_groups  # noqa: E402
from lt_det.modeling.losses import LT_CLS_LOSS_REGISTRY, build_cls_loss  # noqa: E402
from lt_det.modeling.losses.balanced_softmax import balanced_softmax_shift  # noqa: E402


def make_inputs(rois: int, classes: int, device: str, dtype: torch.dtype, seed: int = 0):
    """Random logits (R, K + 1), labels with 25% foreground, and a long-tailed (K,) prior."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rois, classes + 1, generator=g).to(device=device, dtype=dtype)
    gt = torch.full((rois,), classes, dtype=torch.long)
    fg = torch.rand(rois, generator=g) < 0.25
    gt[fg] = torch.randint(0, classes, (int(fg.sum()),), generator=g)
    # Image fractions spanning 1e-5 .. 0.3 (Zipf-like, as on LVIS).
    prior = 0.3 * (torch.arange(1, classes + 1, dtype=torch.float32) ** -1.3)
    prior = prior.clamp(min=1e-5)
    return logits, gt.to(device), prior


def time_step(fn: Callable[[], None], device: str) -> float:
    if device != "cpu":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device != "cpu":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def _average_precision(scores: torch.Tensor, positive: torch.Tensor) -> float:
    order = torch.argsort(scores, descending=True)
    hits = positive[order].float()
    if hits.sum() == 0:
        return float("nan")
    precision = hits.cumsum(0) / torch.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def toy_background_comparison(
    *, classes: int = 40, dim: int = 16, seeds: int = 3, steps: int = 300
) -> None:
    """Train a linear (K + 1)-way classifier with each softmax-family head; print AP by group."""
    heads = [
        ("softmax_ce", {}),
        ("balanced_softmax", {"background": "fg_mass"}),
        ("balanced_softmax", {"background": "unshifted"}),
    ]
    counts = [max(2, int(round(600 * (c + 1) ** -1.6))) for c in range(classes)]
    freq = frequency_groups(counts)  # LVIS rule: r <= 10 < c <= 100 < f
    groups = {
        label: [c for c in range(classes) if freq[c] == g]
        for label, g in (("rare(<=10)", "r"), ("common", "c"), ("freq(>100)", "f"))
    }
    results: Dict[str, List[Dict[str, float]]] = {}
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)
        means = torch.randn(classes, dim, generator=g) * 1.2

        def sample(per_class: List[int]):
            xs, ys = [], []
            for c, n in enumerate(per_class):
                xs.append(means[c] + torch.randn(n, dim, generator=g))
                ys.append(torch.full((n,), c))
            n_bg = 3 * sum(per_class)  # 25% foreground, as detectron2's ROI sampler
            xs.append(torch.randn(n_bg, dim, generator=g) * 1.6)
            ys.append(torch.full((n_bg,), classes))
            return torch.cat(xs), torch.cat(ys)

        x_tr, y_tr = sample(counts)
        x_te, y_te = sample([40] * classes)
        prior = torch.tensor(counts, dtype=torch.float32) / sum(counts)
        for name, kw in heads:
            label = name + (f"/{kw['background']}" if kw else "")
            torch.manual_seed(seed)
            layer = torch.nn.Linear(dim, classes + 1)
            loss = build_cls_loss(name, num_classes=classes, class_prior=prior, **kw)
            opt = torch.optim.Adam(layer.parameters(), lr=0.05)
            for _ in range(steps):
                opt.zero_grad()
                loss(layer(x_tr), y_tr).backward()
                opt.step()
            with torch.no_grad():
                probs = loss.predict_probs(layer(x_te))
            aps = [_average_precision(probs[:, c], y_te == c) for c in range(classes)]
            row = {"AP": statistics.mean(aps)}
            for gname, cs in groups.items():
                row[gname] = statistics.mean(aps[c] for c in cs) if cs else float("nan")
            # How well foreground is told from background: AP of max_c p_c for "is foreground".
            fg_score = probs[:, :classes].max(1).values
            row["fg-vs-bg AP"] = _average_precision(fg_score, y_te < classes)
            results.setdefault(label, []).append(row)
    cols = ["AP", "rare(<=10)", "common", "freq(>100)", "fg-vs-bg AP"]
    print(
        f"toy: K={classes}, train counts {counts[0]}..{counts[-1]} "
        f"({len(groups['rare(<=10)'])} rare), 3x background, {seeds} seeds (mean)"
    )
    print(f"{'head':<30}" + "".join(f"{c:>13}" for c in cols))
    for label, rows in results.items():
        means = [statistics.mean(r[c] for r in rows) for c in cols]
        print(f"{label:<30}" + "".join(f"{m:>13.4f}" for m in means))


def _init_args(name: str):
    import inspect

    return inspect.signature(LT_CLS_LOSS_REGISTRY.get(name).__init__).parameters


def bench_whitening(
    *,
    rois: int,
    features: int,
    classes: int,
    group_sizes,
    repeats: int,
    warmup: int,
    agnostic_box: bool = False,
) -> None:
    """Forward + backward of the box predictor (cls_score + bbox_pred + softmax CE on (rois,
    features) box features) without and with Channel Whitening before cls_score.

    The box head's FC layers are left out (and with ``agnostic_box`` bbox_pred has 4 outputs
    instead of 4 K), so the ratio is an upper bound on the cost whitening adds to the box head.
    """
    from lt_det.modeling.whitening import ChannelWhitening

    g = torch.Generator().manual_seed(0)
    x0 = torch.relu(torch.randn(rois, features, generator=g))
    gt = torch.randint(0, classes + 1, (rois,), generator=g)
    cls_score = torch.nn.Linear(features, classes + 1)
    bbox_pred = torch.nn.Linear(features, 4 if agnostic_box else 4 * classes)
    variants = {"plain head": None}
    for gs in group_sizes:
        label = f"whitening, {'1 group' if gs == 0 else f'groups of {gs}'}"
        variants[label] = ChannelWhitening(features, group_size=gs)

    def step(w) -> Callable[[], None]:
        def fn() -> None:
            x = x0.clone().requires_grad_(True)
            cls_in = x if w is None else w(x)
            loss = torch.nn.functional.cross_entropy(cls_score(cls_in), gt)
            loss = loss + bbox_pred(x).square().mean()
            loss.backward()

        return fn

    times: Dict[str, List[float]] = {n: [] for n in variants}
    for i in range(warmup + repeats):
        for n, w in variants.items():  # round-robin: load hits every variant alike
            t = time_step(step(w), "cpu")
            if i >= warmup:
                times[n].append(t)
    ref = statistics.median(times["plain head"])
    print(
        f"box predictor forward+backward, {rois} ROIs x {features} features, {classes + 1} "
        f"classes (bbox_pred {bbox_pred.out_features}), {torch.get_num_threads()} thread(s), "
        f"median of "
        f"{repeats}, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'variant':<28}{'median ms':>10}{'min ms':>10}{'ratio':>8}")
    for n in variants:
        med = statistics.median(times[n])
        print(f"{n:<28}{med * 1e3:>10.1f}{min(times[n]) * 1e3:>10.1f}{med / ref:>8.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rois", type=int, default=8192)
    ap.add_argument("--classes", type=int, default=1203, help="K (the logits get K + 1 columns)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--toy-bg", action="store_true", help="run the background-treatment toy")
    ap.add_argument("--whitening", action="store_true",
                    help="time Channel Whitening in the box predictor instead of the losses")
    ap.add_argument("--features", type=int, default=1024, help="box feature size (--whitening)")
    ap.add_argument("--group-sizes", type=int, nargs="+", default=[0, 64],
                    help="whitening group sizes to time (0 = one group) (--whitening)")
    ap.add_argument("--agnostic-box", action="store_true",
                    help="class-agnostic bbox_pred (4 outputs): a cheaper reference (--whitening)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.toy_bg:
        toy_background_comparison()
        return
    if args.whitening:
        bench_whitening(rois=args.rois, features=args.features, classes=args.classes,
                        group_sizes=args.group_sizes, repeats=args.repeats, warmup=args.warmup,
                        agnostic_box=args.agnostic_box)
        return
    dtype = getattr(torch, args.dtype)
    amp = dtype != torch.float32

    base, gt, prior = make_inputs(args.rois, args.classes, args.device, dtype)
    names = ["softmax_ce"] + sorted(n for n, _ in LT_CLS_LOSS_REGISTRY if n != "softmax_ce")
    # Losses that weight by absolute class counts get them as prior x number of images.
    counts_kwargs = {"num_images": 100_000}
    losses = {
        n: build_cls_loss(
            n, num_classes=args.classes, class_prior=prior,
            **(counts_kwargs if "num_images" in _init_args(n) else {}),
        ).to(args.device)
        for n in names
    }
    # Unfused references (textbook forms), for comparison only.
    shift = balanced_softmax_shift(prior.to(args.device))
    log_odds = (prior / (1 - prior)).log().to(args.device)
    k = args.classes
    is_fg = (gt < k).float().view(-1, 1)

    def unfused_softmax(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(z.float() + shift, y)

    def unfused_sigmoid(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = torch.nn.functional.one_hot(y, k + 1)[:, :k].float()
        x = z[:, :k].float() + is_fg * log_odds
        bce = torch.nn.functional.binary_cross_entropy_with_logits(x, target, reduction="sum")
        return bce / y.numel()

    losses["balanced_softmax (unfused)"] = unfused_softmax
    losses["balanced_sigmoid (unfused)"] = unfused_sigmoid
    names += ["balanced_softmax (unfused)", "balanced_sigmoid (unfused)"]
    logits = {n: base.clone().requires_grad_(True) for n in names}

    def step(n: str) -> Callable[[], None]:
        def fn() -> None:
            logits[n].grad = None
            # bf16 logits are timed as in mixed-precision training: the loss under autocast
            # (where detectron2's F.cross_entropy also runs in float32).
            with torch.autocast(args.device.split(":")[0], dtype=dtype, enabled=amp):
                loss = losses[n](logits[n], gt)
            loss.backward()

        return fn

    times: Dict[str, List[float]] = {n: [] for n in names}
    for i in range(args.warmup + args.repeats):
        for n in names:
            t = time_step(step(n), args.device)
            if i >= args.warmup:
                times[n].append(t)

    ref = statistics.median(times["softmax_ce"])
    print(
        f"forward+backward, logits {args.rois} x {args.classes + 1} {args.dtype}"
        f"{' (autocast)' if amp else ''} on {args.device}, {torch.get_num_threads()} thread(s), "
        f"median of {args.repeats}"
    )
    print(f"{'loss':<28}{'median ms':>10}{'min ms':>10}{'ratio':>8}")
    for n in names:
        med = statistics.median(times[n])
        print(f"{n:<28}{med * 1e3:>10.1f}{min(times[n]) * 1e3:>10.1f}{med / ref:>8.2f}x")


if __name__ == "__main__":
    main()
