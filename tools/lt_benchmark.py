#!/usr/bin/env python
"""The main job: synthetic long-tailed LVIS benchmark of lt_det's methods on CPU (Mask R-CNN;
mask AP and box AP, each with APr/APc/APf and AP-fixed).

    python tools/lt_benchmark.py --out output/demo                 # what `make demo` runs
    python tools/lt_benchmark.py --seed 1 --out output/seed1 --methods softmax rfs balms
    # what `make benchmark` runs (every method, three seeds, summary.md):
    python tools/lt_benchmark.py --all-methods --seeds 0 1 2 --out output/benchmark
    python tools/lt_benchmark.py --preset tiny --iters 4 --stage2-iters 2 --out output/smoke

Writes OUT/results.json, OUT/results.md (the table), OUT/ap_vs_frequency.png and
OUT/classifier_norms.png; the generated dataset under OUT/data/ (or --data-dir); every run's
stdout.txt, log.txt, config.yaml, metrics.json, checkpoint and eval_results.json under
OUT/runs/<method>/ (an evaluation-only run, tau-norm, writes its files under
OUT/runs/<method>/inference/). Relative paths are taken from the current directory. Progress
with ETA is printed every 10 s. With --seeds, each seed goes to OUT/seed<N>/ and the mean
(min-max) over the seeds to OUT/summary.md. With --stage1-cache DIR, stage-1 runs are shared
across benchmarks: one per (seed, stage-1 recipe, settings, dataset).

Ctrl-C (SIGINT) or SIGTERM stops the runs in progress the way tools/train_net.py stops (each
saves a checkpoint) and ends with one line; the same command with --resume continues the
benchmark (make demo DEMO_ARGS=--resume). Without --resume or --force an unfinished benchmark in
OUT is refused and kept.
"""
import argparse
import os
import sys
import warnings

# detectron2 calls torch.jit.script when imported; recent torch warns that it is deprecated.
warnings.filterwarnings(
    "ignore", r"`torch\.jit\.script` is deprecated", FutureWarning, r"torch\.jit"
)

from lt_det.benchmark import (  # noqa: E402
    BENCHMARK_METHODS,
    METHODS,
    run_benchmark,
    run_benchmark_seeds,
)
from lt_det.data.synthetic import PRESETS  # noqa: E402
from lt_det.errors import LTDetError, report_error  # noqa: E402

# This tool lives in an lt_det checkout: the configs and the training entry point beside it.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", required=True, help="output folder (must be new or empty, or --force)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the data and of every run (default %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+",
                   help="several seeds: one benchmark each in OUT/seed<N>, summary in OUT")
    p.add_argument("--methods", nargs="+", choices=BENCHMARK_METHODS.choices(), metavar="NAME",
                   help=f"methods to run, of: {' '.join(sorted(METHODS))} (default: "
                   + " ".join(n for n, m in METHODS.items() if m.default) + ")")
    p.add_argument("--all-methods", action="store_true", help="every registered method")
    p.add_argument("--iters", type=int, default=400,
                   help="stage-1 iterations (default %(default)s)")
    p.add_argument("--stage2-iters", type=int, default=200,
                   help="stage-2 iterations (default %(default)s)")
    p.add_argument("--stage1", default="rfs",
                   choices=sorted(n for n, m in METHODS.items() if m.stage == 1),
                   help="stage-1 model every stage-2 method starts from (default %(default)s)")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS),
                   help="synthetic data preset (default %(default)s; docs/synthetic.md)")
    p.add_argument("--parallel", type=int, default=2,
                   help="runs at a time, 1 thread each (default %(default)s)")
    p.add_argument("--data-dir", help="dataset folder (default OUT/data; reused if present)")
    p.add_argument("--configs-dir", default=os.path.join(CHECKOUT, "configs"),
                   help="configs folder of the checkout (default: beside this tool)")
    p.add_argument("--train-net", default=os.path.join(CHECKOUT, "tools", "train_net.py"),
                   help="training entry point each run starts (default: beside this tool)")
    p.add_argument("--stage1-cache", help="folder of stage-1 runs shared across benchmarks")
    p.add_argument("--force", action="store_true",
                   help="replace the results and runs an earlier benchmark left in OUT")
    p.add_argument("--resume", action="store_true",
                   help="continue a benchmark that was stopped (Ctrl-C, SIGTERM) in OUT: finished "
                   "runs are kept, stopped ones continue from their checkpoint (same settings)")
    args = p.parse_args(argv)
    if args.all_methods and args.methods:
        p.error("--all-methods and --methods exclude each other")
    if args.force and args.resume:
        p.error("--force (start over) and --resume (continue) exclude each other")
    if args.seeds and args.data_dir:
        p.error("--data-dir is one dataset; with --seeds each seed generates its own")
    methods = sorted(METHODS) if args.all_methods else args.methods
    kwargs = dict(methods=methods, iters=args.iters, stage2_iters=args.stage2_iters,
                  preset=args.preset, parallel=args.parallel, stage1=args.stage1,
                  overwrite=args.force, configs_dir=args.configs_dir, train_net=args.train_net,
                  stage1_cache=args.stage1_cache, resume=args.resume)
    try:
        if args.seeds:
            run_benchmark_seeds(args.out, args.seeds, **kwargs)
        else:
            run_benchmark(args.out, seed=args.seed, data_dir=args.data_dir, **kwargs)
    except LTDetError as e:  # bad input (exit 2) or a signal stop (exit 128 + signal)
        return report_error(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
