"""Monarch benchmark: ``python benchmarks/bench_monarch.py [--quick]`` (same as
``structmat bench monarch``)."""

import sys

from structmat.experiments.bench_monarch import run

if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
