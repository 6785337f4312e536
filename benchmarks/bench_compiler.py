"""Compiler benchmark: ``python benchmarks/bench_compiler.py [--quick]`` (same as
``structmat bench compiler``)."""

import sys

from structmat.experiments.bench_compiler import run

if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
