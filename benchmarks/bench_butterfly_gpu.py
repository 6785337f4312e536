"""Butterfly speed on a CUDA GPU (Triton kernels): same as ``structmat bench butterfly-gpu [--quick]``."""

import sys

from structmat.experiments.bench_butterfly_gpu import run

if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
