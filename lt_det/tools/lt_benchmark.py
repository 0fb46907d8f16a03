"""Synthetic long-tailed LVIS benchmark of lt_det's methods on CPU (Mask R-CNN; mask AP and box
AP, each with APr/APc/APf and AP-fixed).

    python tools/lt_benchmark.py --out output/demo                 # what `make demo` runs
    python tools/lt_benchmark.py --seed 1 --out output/seed1 --methods softmax rfs balms
    # what `make benchmark` runs (every method, three seeds, summary.md):
    python tools/lt_benchmark.py --all-methods --seeds 0 1 2 --out output/benchmark
    python tools/lt_benchmark.py --preset tiny --iters 4 --stage2-iters 2 --out output/smoke

From an installed package the same program is `lt-benchmark` (or python -m
lt_det.tools.lt_benchmark): the configs and the training entry point are the package's own.

Writes OUT/results.json, OUT/results.md (the table), OUT/ap_vs_frequency.png and
OUT/classifier_norms.png; the generated dataset under OUT/data/ (or --data-dir); every run's
stdout.txt, log.txt, config.yaml, metrics.json, checkpoint and eval_results.json under
OUT/runs/<method>/ (an evaluation-only run, tau-norm, writes its files under
OUT/runs/<method>/inference/). Relative paths are taken from the current directory. Progress
with the ETA (from the pace the runs report) is printed every 10 s. With --seeds, each seed goes
to OUT/seed<N>/ and the mean (min-max) over the seeds to OUT/summary.md. With --stage1-cache DIR,
stage-1 runs are shared across benchmarks: one per (seed, stage-1 recipe, settings, dataset).

Ctrl-C (SIGINT) or SIGTERM stops the runs in progress the way train_net stops (each saves a
checkpoint) and ends with one line; the same command with --resume continues the benchmark
(make demo DEMO_ARGS=--resume). Without --resume or --force an unfinished benchmark in OUT is
refused and kept.
"""
import argparse
import contextlib
import logging
import sys
from typing import Iterator, List, Optional

__all__ = ["cli", "log_to_stdout"]


@contextlib.contextmanager
def log_to_stdout(name: str, prefix: str) -> Iterator[None]:
    """Show the INFO records of logger ``name`` on stdout as ``prefix message`` while the block
    runs (the program's progress display); the logger is left as it was afterwards."""
    log = logging.getLogger(name)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"{prefix} %(message)s"))
    level, propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # shown once, here, whatever handlers its parents have
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


def cli(argv: Optional[List[str]] = None) -> int:
    """The program (``lt-benchmark``); returns the exit status."""
    from . import filter_jit_deprecation

    filter_jit_deprecation()
    from ..benchmark import BENCHMARK_METHODS, METHODS, run_benchmark, run_benchmark_seeds
    from ..data.synthetic import PRESETS
    from ..errors import LTDetError, report_error

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
    p.add_argument("--configs-dir",
                   help="configs folder (default: the configs lt_det ships, lt_det.model_zoo)")
    p.add_argument("--train-net",
                   help="training script each run starts (default: the packaged "
                   "python -m lt_det.tools.train_net)")
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
        with log_to_stdout("lt_det.benchmark", "[lt_benchmark]"):
            if args.seeds:
                run_benchmark_seeds(args.out, args.seeds, **kwargs)
            else:
                run_benchmark(args.out, seed=args.seed, data_dir=args.data_dir, **kwargs)
    except LTDetError as e:  # bad input (exit 2) or a signal stop (exit 128 + signal)
        return report_error(e)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
