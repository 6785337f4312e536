"""LDR benchmark in single-thread CPU time: ``python benchmarks/bench_ldr_single_thread.py [n ...]``.

The table of ``structmat bench ldr`` (float32, batch 256, inference forward; nn.Linear and the
torch-structured layers side by side) with ``torch.set_num_threads(1)`` and ``time.thread_time``
as the clock, so the ratios hold while other jobs share the machine. Default ``n``: 1024 4096.
"""

import sys
import time

import torch

from structmat.experiments.bench_ldr import run

if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.manual_seed(0)
    run(sizes=[int(n) for n in sys.argv[1:]] or None, clock=time.thread_time)
