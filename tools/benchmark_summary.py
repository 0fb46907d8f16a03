#!/usr/bin/env python
"""Mean over seeds of benchmark outputs from a checkout: the program
:mod:`lt_det.tools.benchmark_summary` (``lt-benchmark-summary`` from an installed package);
``--help`` describes it."""
import sys

from lt_det.tools.benchmark_summary import cli

if __name__ == "__main__":
    sys.exit(cli())
