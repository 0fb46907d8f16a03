"""Mean over seeds of several lt_benchmark outputs, and the benchmark goal check.

    python tools/benchmark_summary.py output/demo output/seed1 output/seed2

Prints a Markdown table (AP, APr, APc, APf and AP-fixed: mean and min-max over the runs; mask AP
when every run has it, else box AP, or --task) and, per run, the best stage-2 method by APr
against softmax CE and repeat-factor sampling; writes nothing. Runs made with different settings
(data preset, iterations, stage-1 method) are refused, or with --group get one table per setting.
Folders of one seed and setting (methods added later in another --out) count as one run.
From an installed package the same program is `lt-benchmark-summary`.
"""
import argparse
import sys
from typing import List, Optional

__all__ = ["cli"]


def cli(argv: Optional[List[str]] = None) -> int:
    """The program (``lt-benchmark-summary``); prints the table, returns the exit status."""
    from . import filter_jit_deprecation

    filter_jit_deprecation()
    from ..benchmark import summarize_runs
    from ..errors import LTDetError, report_error

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("outs", nargs="+", help="lt_benchmark --out folders (each has results.json)")
    p.add_argument("--task", choices=("segm", "bbox"),
                   help="segm = mask AP, bbox = box AP (default: mask AP if every run has it)")
    p.add_argument(
        "--group",
        action="store_true",
        help="runs made with different settings (preset, iterations, stage-1 method): one table "
        "per setting instead of an error",
    )
    args = p.parse_args(argv)
    try:
        print(summarize_runs(args.outs, task=args.task, group=args.group))
    except LTDetError as e:
        return report_error(e)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
