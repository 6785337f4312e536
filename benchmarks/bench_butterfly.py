"""Butterfly speed table (issue 3): same as ``structmat bench butterfly [--quick]``."""

import sys

from structmat.experiments.bench_butterfly import run

if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
