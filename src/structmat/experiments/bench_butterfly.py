"""``structmat bench butterfly``: the fused butterfly kernels against ``nn.Linear``, ``torch.fft.fft``
and the pure-PyTorch reference (float32; issue 3's speed table).

For every batch ``B`` and size ``n``: butterfly forward (fused backend), forward + backward (input
and twiddles) of ``sum()`` -- whose gradient autograd hands over expanded, so the backward first
makes it contiguous -- and of a given contiguous gradient (column "(f+b)/f grad"; "frozen": the
same with twiddles that need no gradient, whose backward is the input adjoint alone), the reference forward, ``torch.fft.fft`` of the same input, ``nn.Linear(n, n)``
forward (skipped above ``n = 4096``: its weight alone is 1 GiB at 16384), the ``Butterfly`` layer of
the optional package ``torch-structured`` (``pip install --no-deps torch-structured``; column
"not installed" otherwise; ``n <= 4096``), and the backward's extra peak memory as a multiple of
the input's size (input gradient + per-thread recomputation scratch + per-thread twiddle-gradient
partials, from the kernel's allocation sizes). Ratios are measured side by side in one run.

A second table: complex64 butterflies at the largest batch (forward, forward + backward of a given
gradient) against ``torch.fft.fft`` of the same complex input -- the transform an ``fft``-initialised
complex butterfly computes (up to a bit-reversal permutation).
"""

from __future__ import annotations

import logging
import warnings

import torch
from rich.console import Console
from rich.table import Table

from ..ops import use_reference
from ..ops.butterfly import butterfly_multiply
from ..ops.butterfly_cpu import backward_extra_bytes
from .timing import time_call, time_forward

LINEAR_MAX = 4096
#: largest n for torch-structured's (slow, pure-PyTorch on CPU) Butterfly
PACKAGED_MAX = 4096


def _packaged_butterfly(n: int):
    """``torch_structured``'s ``Butterfly(n, n)`` (optional package), or ``None`` if it does not import."""
    logging.getLogger("torch_structured").setLevel(logging.ERROR)  # its CPU-only notices
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch_structured import Butterfly as PackagedButterfly
    except Exception:  # optional: any import failure (missing package, missing triton) skips it
        return None
    return PackagedButterfly(n, n, bias=False)


def _butterfly_timings(n: int, batch: int, quick: bool) -> dict:
    levels = n.bit_length() - 1
    twiddle = torch.randn(1, 1, levels, n // 2, 2, 2) / 2**0.5
    x = torch.randn(batch, n)
    repeat = 3 if quick else 5
    with torch.inference_mode():
        forward = time_call(lambda: butterfly_multiply(twiddle, x), repeat=repeat)
        fft = time_call(lambda: torch.fft.fft(x), repeat=repeat)
        with use_reference():
            reference = time_call(lambda: butterfly_multiply(twiddle, x), repeat=3, min_time=0.0)  # median of 3 calls
    tw, xg = twiddle.clone().requires_grad_(True), x.clone().requires_grad_(True)

    def forward_backward():
        tw.grad = xg.grad = None
        butterfly_multiply(tw, xg).sum().backward()

    grad = torch.randn(batch, 1, n)

    def forward_backward_given_grad():
        tw.grad = xg.grad = None
        butterfly_multiply(tw, xg).backward(grad)

    def forward_backward_frozen():
        xg.grad = None
        butterfly_multiply(twiddle, xg).backward(grad)

    both = time_call(forward_backward, repeat=repeat)
    both_given_grad = time_call(forward_backward_given_grad, repeat=repeat)
    both_frozen = time_call(forward_backward_frozen, repeat=repeat)
    linear = packaged = None
    if n <= LINEAR_MAX:
        linear = time_forward(torch.nn.Linear(n, n), x, repeat=repeat)
    layer = _packaged_butterfly(n) if n <= PACKAGED_MAX else None
    if layer is not None:
        packaged = time_forward(layer, x, repeat=1, min_time=0.0)
    return {
        "dtype": "float32", "n": n, "batch": batch, "forward_ms": 1e3 * forward, "fwd_bwd_ms": 1e3 * both,
        "reference_ms": 1e3 * reference, "fft_ms": 1e3 * fft,
        "linear_ms": None if linear is None else 1e3 * linear,
        "gflops": 3 * n * levels * batch / forward / 1e9,
        "speedup_vs_reference": reference / forward, "ratio_vs_fft": forward / fft,
        "speedup_vs_linear": None if linear is None else linear / forward,
        "torch_structured_ms": None if packaged is None else 1e3 * packaged,
        "speedup_vs_torch_structured": None if packaged is None else packaged / forward,
        "fwd_bwd_over_fwd": both / forward,
        "fwd_bwd_given_grad_ms": 1e3 * both_given_grad, "fwd_bwd_given_grad_over_fwd": both_given_grad / forward,
        "fwd_bwd_frozen_ms": 1e3 * both_frozen, "fwd_bwd_frozen_over_fwd": both_frozen / forward,
        "backward_extra_memory_x_input": backward_extra_bytes(twiddle, x[:, None]) / (x.numel() * x.element_size()),
    }


def _complex_timings(n: int, batch: int, quick: bool) -> dict:
    levels = n.bit_length() - 1
    twiddle = torch.randn(1, 1, levels, n // 2, 2, 2, dtype=torch.complex64) / 2**0.5
    x = torch.randn(batch, n, dtype=torch.complex64)
    repeat = 3 if quick else 5
    with torch.inference_mode():
        forward = time_call(lambda: butterfly_multiply(twiddle, x), repeat=repeat)
        fft = time_call(lambda: torch.fft.fft(x), repeat=repeat)
    tw, xg = twiddle.clone().requires_grad_(True), x.clone().requires_grad_(True)
    grad = torch.randn(batch, 1, n, dtype=torch.complex64)

    def forward_backward_given_grad():
        tw.grad = xg.grad = None
        butterfly_multiply(tw, xg).backward(grad)

    both = time_call(forward_backward_given_grad, repeat=repeat)
    return {
        "dtype": "complex64", "n": n, "batch": batch, "forward_ms": 1e3 * forward, "fft_ms": 1e3 * fft,
        "gflops": 14 * n * levels * batch / forward / 1e9, "ratio_vs_fft": forward / fft,
        "fwd_bwd_given_grad_ms": 1e3 * both, "fwd_bwd_given_grad_over_fwd": both / forward,
        "backward_extra_memory_x_input": backward_extra_bytes(twiddle, x[:, None]) / (x.numel() * x.element_size()),
    }


def run(console: Console | None = None, quick: bool = False, sizes: list[int] | None = None, batches: list[int] | None = None) -> list[dict]:
    """Measure the tables and print them; returns the rows (float32, then complex64 at the largest
    batch)."""
    console = console or Console()
    sizes = sizes or ([256, 1024] if quick else [256, 1024, 4096, 16384])
    batches = batches or ([1, 256] if quick else [1, 64, 256])
    rows = []
    with console.status("butterfly benchmark"):
        for batch in batches:
            for n in sizes:
                rows.append(_butterfly_timings(n, batch, quick))
        complex_rows = [_complex_timings(n, max(batches), quick) for n in sizes]
    table = Table(title="butterfly forward (float32, fused CPU kernel) vs reference, torch.fft.fft, nn.Linear")
    for column in ["B", "n", "fwd ms", "GFLOP/s", "fwd+bwd ms", "(f+b)/f", "(f+b)/f grad", "frozen", "ref ms", "× ref", "fft ms", "/fft", "Linear ms", "× Linear", "torch-structured ms", "× t-s", "bwd mem ×x"]:
        table.add_column(column, justify="right")
    installed = _packaged_butterfly(2) is not None
    fmt = lambda v, spec=".3g": "—" if v is None else format(v, spec)  # noqa: E731
    packaged = lambda v, spec: fmt(v, spec) if installed else "not installed"  # noqa: E731
    for r in rows:
        table.add_row(
            str(r["batch"]), str(r["n"]), fmt(r["forward_ms"]), fmt(r["gflops"], ".1f"), fmt(r["fwd_bwd_ms"]),
            fmt(r["fwd_bwd_over_fwd"], ".2f"), fmt(r["fwd_bwd_given_grad_over_fwd"], ".2f"), fmt(r["fwd_bwd_frozen_over_fwd"], ".2f"),
            fmt(r["reference_ms"]), fmt(r["speedup_vs_reference"], ".1f"),
            fmt(r["fft_ms"]), fmt(r["ratio_vs_fft"], ".2f"), fmt(r["linear_ms"]), fmt(r["speedup_vs_linear"], ".1f"),
            packaged(r["torch_structured_ms"], ".3g"), packaged(r["speedup_vs_torch_structured"], ".1f"),
            fmt(r["backward_extra_memory_x_input"], ".2f"),
        )
    console.print(table)
    table = Table(title="complex64 butterfly (fused CPU kernel) vs torch.fft.fft of the same complex input")
    for column in ["B", "n", "fwd ms", "GFLOP/s", "fwd+bwd ms", "(f+b)/f", "fft ms", "/fft", "bwd mem ×x"]:
        table.add_column(column, justify="right")
    for r in complex_rows:
        table.add_row(
            str(r["batch"]), str(r["n"]), fmt(r["forward_ms"]), fmt(r["gflops"], ".1f"), fmt(r["fwd_bwd_given_grad_ms"]),
            fmt(r["fwd_bwd_given_grad_over_fwd"], ".2f"), fmt(r["fft_ms"]), fmt(r["ratio_vs_fft"], ".2f"), fmt(r["backward_extra_memory_x_input"], ".2f"),
        )
    console.print(table)
    return rows + complex_rows
