"""Monarch (issue 7) and toeplitz_like (issue 8) speed targets in single-thread CPU time.

Batch 256, float32, ``torch.set_num_threads(1)``, ``time.thread_time``, best of 7 repeats (inner loop
of about 50 ms), every ratio measured side by side in one process (robust on a shared machine):

* ``StructuredLinear(n, n, "monarch", nblocks=√n)`` against ``nn.Linear(n, n)`` (both with bias):
  inference forward and forward + backward (gradients of parameters and input, a given output
  gradient); targets: forward >= 15x at n = 4096, forward + backward faster than dense from 1024;
* ``StructuredLinear(n, n, "toeplitz_like", rank=4)`` against ``nn.Linear(n, n)``, inference
  forward; target >= 5x at n = 4096.

    python benchmarks/bench_single_thread_targets.py [n ...]      (default 1024 4096)
"""

import math
import sys

import torch

from structmat.core import StructuredLinear
from structmat.experiments.timing import best_thread_time

BATCH = 256


def cpu_time(fn, repeat: int = 7) -> float:
    """Best CPU milliseconds per call of ``fn``."""
    return 1e3 * best_thread_time(fn, repeat, inner_time=0.05)


def forward_backward(layer: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor):
    """A closure running one forward + backward of ``layer`` (input gradient included)."""
    x = x.clone().requires_grad_(True)

    def step():
        x.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x).backward(grad)

    return step


def main(sizes: list[int]) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print("| n | nn.Linear fwd ms | monarch fwd ms | fwd × | nn.Linear f+b ms | monarch f+b ms | f+b × | toeplitz_like r=4 fwd ms | × |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        x, grad = torch.randn(BATCH, n), torch.randn(BATCH, n)
        dense = torch.nn.Linear(n, n)
        monarch = StructuredLinear(n, n, "monarch", nblocks=math.isqrt(n))
        toeplitz = StructuredLinear(n, n, "toeplitz_like", rank=4)
        with torch.no_grad():
            dense_fwd = cpu_time(lambda: dense(x), repeat=3)
            monarch_fwd = cpu_time(lambda: monarch(x))
            toeplitz_fwd = cpu_time(lambda: toeplitz(x))
        dense_both = cpu_time(forward_backward(dense, x, grad), repeat=3)
        monarch_both = cpu_time(forward_backward(monarch, x, grad))
        print(
            f"| {n} | {dense_fwd:.2f} | {monarch_fwd:.2f} | {dense_fwd / monarch_fwd:.1f} | {dense_both:.2f} | "
            f"{monarch_both:.2f} | {dense_both / monarch_both:.1f} | {toeplitz_fwd:.2f} | {dense_fwd / toeplitz_fwd:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1024, 4096])
