#!/usr/bin/env python
"""Rank agreement (Kendall tau) between synthetic benchmark runs and published LVIS tables.

    python tools/lt_fidelity.py output/demo output/seed1 output/seed2
    python tools/lt_fidelity.py --task bbox --metrics APr AP output/seed*      # box AP
    python tools/lt_fidelity.py --published my_tables.json output/demo

Prints, per published table (default: the tables shipped in lt_det/data/published_lvis.json,
sources in docs/synthetic.md), each run's Kendall tau on the metrics over the methods that the
table and the run both have, the mean over the runs, and the published order. A table of box AP
only (its "task" is "bbox") is compared with the runs' box AP whatever --task says. Folders of
one seed and setting (methods added later in another --out) count as one run.
"""
import argparse
import sys
import warnings

# This program's choice (the library sets no filter): detectron2 0.6 scripts helpers with
# torch.jit at import time, which recent torch reports on every start.
warnings.filterwarnings(
    "ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning
)

from lt_det.errors import LTDetError, report_error  # noqa: E402
from lt_det.fidelity import (  # noqa: E402
    PUBLISHED_LVIS,
    format_agreement,
    load_published,
    load_runs,
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("outs", nargs="+", help="lt_benchmark.py --out folders (each has results.json)")
    p.add_argument("--published", default=PUBLISHED_LVIS, help="published tables (json)")
    p.add_argument("--task", default="segm", choices=("segm", "bbox"),
                   help="benchmark AP compared: segm = mask AP (default), bbox = box AP "
                   "(box-AP-only tables always use bbox)")
    p.add_argument("--metrics", nargs="+", default=["APr", "AP"], help="default: APr AP")
    args = p.parse_args(argv)
    try:
        tables = load_published(args.published)
        runs = load_runs(args.outs)
        print(format_agreement(tables, runs, task=args.task, metrics=args.metrics))
    except LTDetError as e:
        return report_error(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
