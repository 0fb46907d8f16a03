#!/usr/bin/env python
"""The synthetic long-tailed benchmark from a checkout: the program :mod:`lt_det.tools.lt_benchmark`
(``lt-benchmark`` from an installed package); ``--help`` describes it."""
import sys

from lt_det.tools.lt_benchmark import cli

if __name__ == "__main__":
    sys.exit(cli())
