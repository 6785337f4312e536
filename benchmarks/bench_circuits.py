"""Circuit evaluation benchmark: ``python benchmarks/bench_circuits.py [--quick]`` (same as
``structmat bench circuits``)."""

import sys

from structmat.experiments.bench_circuits import run

if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
