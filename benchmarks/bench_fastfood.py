"""Fastfood kernel benchmark: ``python benchmarks/bench_fastfood.py [--quick]`` (same as
``structmat bench fastfood``)."""

import sys

from structmat.experiments.bench_fastfood import run

if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
