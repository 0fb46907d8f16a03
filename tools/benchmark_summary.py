#!/usr/bin/env python
"""Mean over seeds of several tools/lt_benchmark.py outputs, and the benchmark goal check.

    python tools/benchmark_summary.py output/demo output/seed1 output/seed2

Prints a Markdown table (box AP, APr, APc, APf: mean and min-max over the runs) and, per run,
the best stage-2 method by APr against softmax CE and repeat-factor sampling.
"""
import argparse
import sys

from lt_det.benchmark import summarize_runs
from lt_det.errors import LTDetError, report_error


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("outs", nargs="+", help="lt_benchmark.py --out folders (each has results.json)")
    args = p.parse_args(argv)
    try:
        print(summarize_runs(args.outs))
    except LTDetError as e:
        return report_error(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
