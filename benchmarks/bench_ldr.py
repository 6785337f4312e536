"""LDR benchmark: ``python benchmarks/bench_ldr.py [--quick]`` (same as
``structmat bench ldr``)."""

import sys

from structmat.experiments.bench_ldr import run

if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
