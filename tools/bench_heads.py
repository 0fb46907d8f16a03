#!/usr/bin/env python
"""Time forward + backward of every registered box-classification loss against the plain loss it
extends, in every regime at once, so that no regime can flatter the result.

Regimes (all measured by one run):
  * sizes R x (K + 1): 512 x 1204 (one LVIS image's ROIs), 8192 x 1204 (16 images), 8192 x 81
    (COCO-size classifier);
  * logits float32, and bfloat16 with the loss under autocast (as in mixed-precision training);
  * allocator: glibc's default (fresh buffers of > 32 MB are mmap'ed, so each pays page faults)
    and a heap-reusing one (``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=8000000000``, as
    caching allocators behave); each allocator is a process setting, so each runs in its own
    child process;
  * CPU, and CUDA when a device is available (there the caching allocator is the only one).

Every loss of ``LT_CLS_LOSS_REGISTRY`` is timed (a loss class can opt out by setting
``bench_opt_out`` to the reason). Reference: ``F.cross_entropy`` (detectron2's softmax CE) for
losses whose ``activation`` is "softmax", ``F.binary_cross_entropy_with_logits`` with a one-hot
target over the K foreground columns, summed per ROI and averaged (the usual sigmoid BCE of a box
classifier) for "sigmoid" ones. Within a regime the losses run round-robin, so machine load hits
them alike; CPU times are the thread's CPU time (``time.thread_time``: page faults included,
waiting for a core on a shared machine excluded), CUDA times are wall time after synchronising.
The report gives min / median / max per loss and the ratio of medians to the reference, then the
worst ratio of each loss over all regimes, with the load average before and after.

    python tools/bench_heads.py [--repeats 15] [--sizes 512x1203 8192x1203 8192x80]
        [--dtypes float32 bfloat16] [--allocators default heap-reuse] [--devices auto]
        [--output bench_heads.json]

Rows marked "unfused" are the textbook forms (``F.cross_entropy(z + shift)``, BCE with a one-hot
target and shifted logits), for comparison.

``--toy-bg`` instead runs a small, cheap comparison of the Balanced Softmax background treatments
on a synthetic long-tailed "proposal classification" problem (Gaussian class clusters plus a broad
background cluster, a linear classifier trained full-batch, detection-style AP per class: all test
samples ranked by p_c, background samples are negatives). It is a sanity check, not a substitute
for a detector benchmark.
"""
import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from typing import Callable, Dict, List, Optional, Tuple

# detectron2 calls torch.jit.script when imported; recent torch warns that it is deprecated.
warnings.filterwarnings(
    "ignore", r"`torch\.jit\.script` is deprecated", FutureWarning, r"torch\.jit"
)

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from lt_det.class_stats import frequency_groups  # noqa: E402
from lt_det.modeling.losses import LT_CLS_LOSS_REGISTRY, build_cls_loss  # noqa: E402
from lt_det.modeling.losses.balanced_softmax import balanced_softmax_shift  # noqa: E402

ALLOCATOR_ENV = {
    "default": {},
    "heap-reuse": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "8000000000"},
}
REFERENCE = {"softmax": "softmax CE (reference)", "sigmoid": "sigmoid BCE (reference)"}
GOAL = 1.10


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


def _build(name: str, classes: int, prior: torch.Tensor, device: str):
    """Build a registered loss with the inputs its constructor asks for (counts derived from the
    prior as image fractions of 100k images)."""
    params = inspect.signature(LT_CLS_LOSS_REGISTRY.get(name).__init__).parameters
    kwargs = {}
    if "num_images" in params:
        kwargs["num_images"] = 100_000
    if "instance_counts" in params:
        kwargs["instance_counts"] = (prior * 100_000).round().tolist()
    return build_cls_loss(name, num_classes=classes, class_prior=prior, **kwargs).to(device)


def _candidates(
    classes: int, prior: torch.Tensor, device: str
) -> Tuple[Dict[str, Tuple[Callable, str, int]], Dict[str, str]]:
    """{row name: (loss callable(logits, gt, rois_per_image), activation, extra logit columns)}
    for the references, every registered loss and the unfused forms; {name: reason} skipped."""
    k = classes
    shift = balanced_softmax_shift(prior).to(device)
    log_odds = (prior / (1 - prior)).log().to(device)

    def softmax_ce(z, y, _):
        return F.cross_entropy(z, y)

    def sigmoid_bce(z, y, _, s: Optional[torch.Tensor] = None):
        target = z.new_zeros(z.shape[0], k + 1)
        target[torch.arange(z.shape[0], device=z.device), y] = 1
        x = z[:, :k] if s is None else z[:, :k].float() + (y < k).float().view(-1, 1) * s
        return F.binary_cross_entropy_with_logits(x, target[:, :k], reduction="sum") / z.shape[0]

    rows = {
        REFERENCE["softmax"]: (softmax_ce, "softmax", 0),
        REFERENCE["sigmoid"]: (sigmoid_bce, "sigmoid", 0),
    }
    skipped = {}
    for name in sorted(n for n, _ in LT_CLS_LOSS_REGISTRY):
        cls = LT_CLS_LOSS_REGISTRY.get(name)
        if getattr(cls, "bench_opt_out", None):
            skipped[name] = cls.bench_opt_out
            continue
        try:
            loss = _build(name, classes, prior, device)
        except Exception as e:  # a loss that needs more than a prior says so here
            skipped[name] = f"could not be built with a prior alone: {e}"
            continue
        if getattr(loss, "needs_rois_per_image", False):
            fn = (lambda m: lambda z, y, rpi: m(z, y, rpi))(loss)
        else:
            fn = (lambda m: lambda z, y, _: m(z, y))(loss)
        extra = int(getattr(loss, "num_extra_logits", 0))
        rows[name] = (fn, getattr(loss, "activation", "softmax"), extra)
    rows["balanced_softmax (unfused)"] = (
        lambda z, y, _: F.cross_entropy(z.float() + shift, y),
        "softmax",
        0,
    )
    rows["balanced_sigmoid (unfused)"] = (
        lambda z, y, rpi: sigmoid_bce(z, y, rpi, log_odds),
        "sigmoid",
        0,
    )
    return rows, skipped


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_regime(
    *, rois: int, classes: int, dtype: str, device: str, repeats: int, warmup: int
) -> Dict:
    """Time every row round-robin in one regime; returns the report dict of that regime."""
    amp = dtype != "float32"
    base, gt, prior = make_inputs(rois, classes, device, getattr(torch, dtype))
    rows, skipped = _candidates(classes, prior, device)
    rois_per_image = [512] * (rois // 512) + ([rois % 512] if rois % 512 else [])
    logits = {}
    for n, (_, _, extra) in rows.items():
        z = torch.cat([base, base[:, :extra]], dim=1) if extra else base
        logits[n] = z.clone().requires_grad_(True)
    clock = time.thread_time if device == "cpu" else time.perf_counter
    times: Dict[str, List[float]] = {n: [] for n in rows}
    load_before = os.getloadavg()[0]
    for i in range(warmup + repeats):
        for n, (fn, _, _) in rows.items():
            z = logits[n]
            z.grad = None
            _sync(device)
            t = clock()
            with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=amp):
                loss = fn(z, gt, rois_per_image)
            loss.backward()
            _sync(device)
            if i >= warmup:
                times[n].append(clock() - t)
    out = {
        "rois": rois,
        "columns": classes + 1,
        "dtype": dtype + (" (autocast)" if amp else ""),
        "device": device,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "clock": "thread CPU time" if device == "cpu" else "wall time",
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "skipped": skipped,
        "rows": {},
    }
    for n, (_, activation, _) in rows.items():
        med = statistics.median(times[n])
        ref = statistics.median(times[REFERENCE[activation]])
        out["rows"][n] = {
            "activation": activation,
            "min_ms": min(times[n]) * 1e3,
            "median_ms": med * 1e3,
            "max_ms": max(times[n]) * 1e3,
            "ratio": med / ref,
        }
    return out


def child(args) -> None:
    """All regimes of one allocator in this process; one json line per regime on stdout."""
    torch.set_num_threads(args.threads)
    devices = ["cpu"]
    if args.devices == "auto" and torch.cuda.is_available() and args.allocator == "default":
        devices.append("cuda")
    elif args.devices not in ("auto", "cpu"):
        devices = args.devices.split(",")
    for device in devices:
        for size in args.sizes:
            rois, classes = (int(v) for v in size.lower().split("x"))
            # Small inputs are cheap: more repeats for the same confidence.
            repeats = args.repeats * (4 if rois * classes < 2_000_000 else 1)
            for dtype in args.dtypes:
                r = time_regime(
                    rois=rois,
                    classes=classes,
                    dtype=dtype,
                    device=device,
                    repeats=repeats,
                    warmup=args.warmup,
                )
                r["allocator"] = args.allocator if device == "cpu" else "caching (CUDA)"
                print("REGIME " + json.dumps(r), flush=True)


def _print_regime(r: Dict) -> None:
    print(
        f"\n== {r['device']}, {r['rois']} x {r['columns']}, {r['dtype']}, allocator "
        f"{r['allocator']}; {r['threads']} thread(s), {r['repeats']} repeats, {r['clock']}; "
        f"load average {r['load_before']:.1f} -> {r['load_after']:.1f}"
    )
    print(f"{'loss':<30}{'min ms':>9}{'median ms':>11}{'max ms':>9}{'ratio':>8}  vs")
    for n, row in r["rows"].items():
        ref = REFERENCE[row["activation"]]
        vs = "-" if n == ref else ref.split(" (")[0]
        print(
            f"{n:<30}{row['min_ms']:>9.2f}{row['median_ms']:>11.2f}{row['max_ms']:>9.2f}"
            f"{row['ratio']:>7.2f}x  {vs}"
        )
    for n, why in r["skipped"].items():
        print(f"{n:<30} not timed: {why}")


def _print_worst(regimes: List[Dict]) -> None:
    worst: Dict[str, Tuple[float, str]] = {}
    for r in regimes:
        label = f"{r['device']} {r['rois']}x{r['columns']} {r['dtype']} {r['allocator']}"
        for n, row in r["rows"].items():
            if n.startswith(("softmax CE", "sigmoid BCE")):
                continue
            if n not in worst or row["ratio"] > worst[n][0]:
                worst[n] = (row["ratio"], label)
    print(f"\n== worst ratio of medians over all {len(regimes)} regimes (goal <= {GOAL:.2f}x)")
    for n, (ratio, label) in worst.items():
        mark = "" if "unfused" in n else ("  ok" if ratio <= GOAL else "  ABOVE GOAL")
        print(f"{n:<30}{ratio:>7.2f}x  in {label}{mark}")


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


def time_step(fn: Callable[[], None], device: str) -> float:
    """Seconds one call of ``fn`` takes (thread CPU time on CPU, wall time on CUDA)."""
    clock = time.thread_time if device == "cpu" else time.perf_counter
    _sync(device)
    t0 = clock()
    fn()
    _sync(device)
    return clock() - t0


def bench_whitening(
    *,
    rois: int,
    features: int,
    classes: int,
    group_sizes,
    repeats: int,
    warmup: int,
    agnostic_box: bool = False,
    device: str = "cpu",
) -> Dict:
    """Forward + backward of the box predictor (cls_score + bbox_pred + softmax CE on (rois,
    features) box features) without and with Channel Whitening before cls_score.

    The box head's FC layers are left out (and with ``agnostic_box`` bbox_pred has 4 outputs
    instead of 4 K), so the ratio is an upper bound on the cost whitening adds to the box head.
    """
    from lt_det.modeling.whitening import ChannelWhitening

    g = torch.Generator().manual_seed(0)
    x0 = torch.relu(torch.randn(rois, features, generator=g)).to(device)
    gt = torch.randint(0, classes + 1, (rois,), generator=g).to(device)
    cls_score = torch.nn.Linear(features, classes + 1).to(device)
    bbox_pred = torch.nn.Linear(features, 4 if agnostic_box else 4 * classes).to(device)
    variants = {"plain head": None}
    for gs in group_sizes:
        label = f"whitening, {'1 group' if gs == 0 else f'groups of {gs}'}"
        variants[label] = ChannelWhitening(features, group_size=gs).to(device)

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
            t = time_step(step(w), device)
            if i >= warmup:
                times[n].append(t)
    ref = statistics.median(times["plain head"])
    where = f"{torch.get_num_threads()} thread(s), thread CPU time" if device == "cpu" else (
        f"{device}, wall time"
    )
    print(
        f"box predictor forward+backward, {rois} ROIs x {features} features, {classes + 1} "
        f"classes (bbox_pred {bbox_pred.out_features}), {where}, median of "
        f"{repeats}, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"{'variant':<28}{'median ms':>10}{'min ms':>10}{'ratio':>8}")
    report = {"device": device, "rois": rois, "features": features, "columns": classes + 1,
              "bbox_outputs": bbox_pred.out_features, "repeats": repeats,
              "load_after": os.getloadavg()[0], "rows": {}}
    for n in variants:
        med = statistics.median(times[n])
        print(f"{n:<28}{med * 1e3:>10.1f}{min(times[n]) * 1e3:>10.1f}{med / ref:>8.2f}x")
        report["rows"][n] = {"median_ms": med * 1e3, "min_ms": min(times[n]) * 1e3,
                             "ratio": med / ref}
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["512x1203", "8192x1203", "8192x80"],
                    help="R x K regimes (the logits get K + 1 columns)")
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                    choices=["float32", "bfloat16"])
    ap.add_argument("--allocators", nargs="+", default=list(ALLOCATOR_ENV),
                    choices=list(ALLOCATOR_ENV))
    ap.add_argument("--devices", default="auto",
                    help="auto (CPU, and CUDA when available) | cpu | comma-separated devices")
    ap.add_argument("--repeats", type=int, default=15,
                    help="timed repeats per loss (x4 for inputs below 2M elements)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--output", default="", help="also write the report as json here")
    ap.add_argument("--toy-bg", action="store_true", help="run the background-treatment toy")
    ap.add_argument("--allocator", choices=list(ALLOCATOR_ENV), help=argparse.SUPPRESS)
    ap.add_argument("--whitening", action="store_true",
                    help="time Channel Whitening in the box predictor instead of the losses")
    ap.add_argument("--features", type=int, default=1024, help="box feature size (--whitening)")
    ap.add_argument("--group-sizes", type=int, nargs="+", default=[0, 64],
                    help="whitening group sizes to time (0 = one group) (--whitening)")
    ap.add_argument("--agnostic-box", action="store_true",
                    help="class-agnostic bbox_pred (4 outputs): a cheaper reference (--whitening)")
    ap.add_argument("--rois", type=int, default=8192, help="ROIs (--whitening)")
    ap.add_argument("--classes", type=int, default=1203, help="K (--whitening)")
    args = ap.parse_args()
    if args.toy_bg:
        torch.set_num_threads(args.threads)
        toy_background_comparison()
        return
    if args.whitening:
        torch.set_num_threads(args.threads)
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        if args.devices not in ("auto",):
            devices = args.devices.split(",")
        reports = [
            bench_whitening(rois=args.rois, features=args.features, classes=args.classes,
                            group_sizes=args.group_sizes, repeats=args.repeats,
                            warmup=args.warmup, agnostic_box=args.agnostic_box, device=device)
            for device in devices
        ]
        if args.output:
            with open(args.output, "w") as f:
                json.dump(reports, f, indent=1)
        return
    if args.allocator:  # child process: one allocator
        child(args)
        return
    regimes = []
    for allocator in args.allocators:
        cmd = [sys.executable, os.path.abspath(__file__), "--allocator", allocator]
        cmd += ["--sizes", *args.sizes, "--dtypes", *args.dtypes, "--devices", args.devices]
        cmd += ["--repeats", str(args.repeats), "--warmup", str(args.warmup)]
        cmd += ["--threads", str(args.threads)]
        env = dict(os.environ, **ALLOCATOR_ENV[allocator])
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        for line in proc.stdout:
            if line.startswith("REGIME "):
                regimes.append(json.loads(line[len("REGIME ") :]))
                _print_regime(regimes[-1])
            else:
                print(line, end="")
        if proc.wait() != 0:
            sys.exit(f"error: the {allocator!r} allocator run failed (exit {proc.returncode}).")
    _print_worst(regimes)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(regimes, f, indent=1)


if __name__ == "__main__":
    main()
