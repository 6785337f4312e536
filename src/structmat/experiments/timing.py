"""Wall-clock timing helpers shared by the benchmarks and the speed experiments.

Numbers are measured side by side in one run (ratios are what the benchmarks report); nothing
here is asserted by tests.
"""

from __future__ import annotations

import gc
import time
from typing import Callable

import torch


class BenchUnavailable(RuntimeError):
    """A benchmark suite cannot run on this machine (missing hardware); the CLI prints the message."""


def time_call(
    fn: Callable[[], object], repeat: int = 5, min_time: float = 0.05, warmup: int = 1, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Median seconds per call of ``fn`` (each sample loops until ``min_time`` has elapsed on
    ``clock``: wall time by default, ``time.thread_time`` for single-thread CPU time, which is
    robust to other jobs on a shared machine)."""
    for _ in range(warmup):
        fn()
    samples = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            calls, start = 0, clock()
            while True:
                fn()
                calls += 1
                elapsed = clock() - start
                if elapsed >= min_time:
                    break
            samples.append(elapsed / calls)
    finally:
        if gc_was_enabled:
            gc.enable()
    samples.sort()
    return samples[len(samples) // 2]


def time_forward(module: torch.nn.Module, x: torch.Tensor, **kwargs) -> float:
    """Seconds per inference forward (no autograd graph)."""

    def run():
        with torch.inference_mode():
            module(x)

    return time_call(run, **kwargs)


def time_forward_backward(module: torch.nn.Module, x: torch.Tensor, **kwargs) -> float:
    """Seconds per forward + backward of ``sum(module(x))`` w.r.t. parameters and input."""
    x = x.detach().requires_grad_(True)

    def run():
        module.zero_grad(set_to_none=True)
        x.grad = None
        out = module(x)
        out.real.sum().backward() if out.is_complex() else out.sum().backward()

    return time_call(run, **kwargs)


def best_thread_time(fn: Callable[[], object], repeat: int = 7, inner_time: float = 0.02) -> float:
    """Best CPU seconds per call of ``fn`` on this thread (``time.thread_time``: unaffected by other
    processes on the machine, for single-thread measurements); each of the ``repeat`` samples loops
    for about ``inner_time`` seconds."""
    fn()
    start = time.thread_time()
    fn()
    inner = max(1, int(inner_time / max(time.thread_time() - start, 1e-6)))
    best = float("inf")
    for _ in range(repeat):
        start = time.thread_time()
        for _ in range(inner):
            fn()
        best = min(best, (time.thread_time() - start) / inner)
    return best
