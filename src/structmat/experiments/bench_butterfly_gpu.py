"""Butterfly speed on a CUDA GPU (the Triton backend, :mod:`structmat.ops.butterfly_triton`):
``structmat bench butterfly-gpu [--quick]``.

For every batch ``B`` and size ``n``, float32: the butterfly forward and forward + backward (input
and twiddles, a given output gradient) with the Triton kernels, the same with the pure-PyTorch
reference, ``nn.Linear(n, n)`` (``n <= 8192``), ``torch.fft.fft`` of the same input, and the
backward's extra peak memory as a multiple of the input's size; then complex64 forwards against
``torch.fft.fft`` at the largest batch. Times are medians of CUDA-event timings
(``triton.testing.do_bench``), all measured side by side in one run. Needs a CUDA device and
Triton.
"""

from __future__ import annotations

import math

import torch
from rich.console import Console
from rich.table import Table

from ..ops import use_reference
from .timing import BenchUnavailable
from ..ops.backend import triton_available
from ..ops.butterfly import butterfly_multiply


def _time(fn, warmup: int = 10, rep: int = 50) -> float:
    """Median milliseconds per call (CUDA events, the level-2 cache flushed between calls;
    ``warmup`` and ``rep`` in milliseconds)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))


def _twiddle(n: int, dtype: torch.dtype) -> torch.Tensor:
    log_n = int(math.log2(n))
    return (torch.randn(1, 1, log_n, n // 2, 2, 2, device="cuda", dtype=dtype) / math.sqrt(2)).requires_grad_()


def _training_step(twiddle: torch.Tensor, x: torch.Tensor, grad: torch.Tensor):
    def step():
        twiddle.grad = x.grad = None
        butterfly_multiply(twiddle, x).backward(grad)

    return step


def _backward_extra_memory(twiddle: torch.Tensor, x: torch.Tensor, grad: torch.Tensor) -> float:
    """Peak memory the backward adds over what its inputs hold, as a multiple of ``x``'s size."""
    twiddle.grad = x.grad = None
    y = butterfly_multiply(twiddle, x)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    y.backward(grad)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / (x.numel() * x.element_size())


def _timings(n: int, batch: int) -> dict:
    twiddle = _twiddle(n, torch.float32)
    x = torch.randn(batch, n, device="cuda").requires_grad_()
    grad = torch.randn(batch, 1, n, device="cuda")
    with torch.inference_mode():
        forward = _time(lambda: butterfly_multiply(twiddle, x))
    both = _time(_training_step(twiddle, x, grad))
    with use_reference():
        with torch.inference_mode():
            reference = _time(lambda: butterfly_multiply(twiddle, x))
        reference_both = _time(_training_step(twiddle, x, grad))
    linear_ms = linear_both = None
    if n <= 8192:
        linear = torch.nn.Linear(n, n, device="cuda")
        with torch.inference_mode():
            linear_ms = _time(lambda: linear(x))

        def linear_step():
            linear.zero_grad(set_to_none=True)
            x.grad = None
            linear(x).backward(grad[:, 0])

        linear_both = _time(linear_step)
    with torch.inference_mode():
        fft = _time(lambda: torch.fft.fft(x))
    flops = 3 * n * math.log2(n) * batch
    return {
        "batch": batch, "n": n, "dtype": "float32", "forward_ms": forward, "gflops": flops / forward / 1e6,
        "fwd_bwd_ms": both, "fwd_bwd_over_fwd": both / forward,
        "reference_ms": reference, "speedup_vs_reference": reference / forward,
        "reference_fwd_bwd_ms": reference_both, "fwd_bwd_speedup_vs_reference": reference_both / both,
        "linear_ms": linear_ms, "speedup_vs_linear": None if linear_ms is None else linear_ms / forward,
        "linear_fwd_bwd_ms": linear_both, "fwd_bwd_speedup_vs_linear": None if linear_both is None else linear_both / both,
        "fft_ms": fft, "ratio_vs_fft": forward / fft,
        "backward_extra_memory_x_input": _backward_extra_memory(twiddle, x, grad),
    }


def _complex_timings(n: int, batch: int) -> dict:
    twiddle = _twiddle(n, torch.complex64)
    x = torch.randn(batch, n, device="cuda", dtype=torch.complex64)
    with torch.inference_mode():
        forward = _time(lambda: butterfly_multiply(twiddle, x))
        fft = _time(lambda: torch.fft.fft(x))
    return {"batch": batch, "n": n, "dtype": "complex64", "forward_ms": forward, "gflops": 14 * n * math.log2(n) * batch / forward / 1e6,
            "fft_ms": fft, "ratio_vs_fft": forward / fft}


def run(console: Console | None = None, quick: bool = False, sizes: list[int] | None = None, batches: list[int] | None = None) -> list[dict]:
    """Measure the tables and print them; returns the rows (float32, then complex64)."""
    if not triton_available():
        raise BenchUnavailable("butterfly-gpu: needs an NVIDIA GPU (compute capability 8.0+) and Triton; `structmat bench butterfly` measures the CPU kernels")
    console = console or Console()
    sizes = sizes or ([256, 1024] if quick else [256, 1024, 4096, 16384])
    batches = batches or ([256] if quick else [256, 4096])
    torch.manual_seed(0)
    with console.status("butterfly GPU benchmark"):
        rows = [_timings(n, batch) for batch in batches for n in sizes]
        complex_rows = [_complex_timings(n, max(batches)) for n in sizes]
    fmt = lambda v, spec=".3g": "—" if v is None else format(v, spec)  # noqa: E731
    table = Table(title=f"butterfly (float32, Triton kernels) on {torch.cuda.get_device_name()} vs reference, nn.Linear, torch.fft.fft")
    for column in ["B", "n", "fwd ms", "GFLOP/s", "fwd+bwd ms", "(f+b)/f", "ref ms", "× ref", "ref f+b ms", "× ref f+b", "Linear ms", "× Linear", "Linear f+b ms", "× Linear f+b", "fft ms", "/fft", "bwd mem ×x"]:
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            str(r["batch"]), str(r["n"]), fmt(r["forward_ms"]), fmt(r["gflops"], ".0f"), fmt(r["fwd_bwd_ms"]), fmt(r["fwd_bwd_over_fwd"], ".2f"),
            fmt(r["reference_ms"]), fmt(r["speedup_vs_reference"], ".1f"), fmt(r["reference_fwd_bwd_ms"]), fmt(r["fwd_bwd_speedup_vs_reference"], ".1f"),
            fmt(r["linear_ms"]), fmt(r["speedup_vs_linear"], ".2f"), fmt(r["linear_fwd_bwd_ms"]), fmt(r["fwd_bwd_speedup_vs_linear"], ".2f"),
            fmt(r["fft_ms"]), fmt(r["ratio_vs_fft"], ".2f"), fmt(r["backward_extra_memory_x_input"], ".2f"),
        )
    console.print(table)
    table = Table(title="complex64 butterfly forward (Triton kernels) vs torch.fft.fft of the same input")
    for column in ["B", "n", "fwd ms", "GFLOP/s", "fft ms", "/fft"]:
        table.add_column(column, justify="right")
    for r in complex_rows:
        table.add_row(str(r["batch"]), str(r["n"]), fmt(r["forward_ms"]), fmt(r["gflops"], ".0f"), fmt(r["fft_ms"]), fmt(r["ratio_vs_fft"], ".2f"))
    console.print(table)
    return rows + complex_rows
