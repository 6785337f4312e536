"""Benchmark ``circuits``: level-vectorised evaluation of ``fft(n)`` against ``torch.fft.fft`` and
against the dense product ``x @ to_matrix().T`` (issue 5 "Speed"; SPEC.md §2.1 "Evaluation").

Run ``structmat bench circuits`` (or ``python benchmarks/bench_circuits.py``). Each row: the
circuit size and depth, seconds per batched evaluation for the circuit, ``torch.fft.fft`` and
the dense product (complex64, batch 256), and the two ratios.
"""

from __future__ import annotations

import torch
from rich.console import Console
from rich.table import Table

from ..circuits import fft
from .timing import time_call


def run(console: Console | None = None, quick: bool = False) -> list[dict]:
    """Time ``fft(n).evaluate(x)`` vs ``torch.fft.fft(x)`` vs ``x @ M.T``; print and return rows."""
    console = console or Console()
    sizes = [256, 1024] if quick else [256, 1024, 4096]
    batch = 256
    repeat = 3 if quick else 5
    rows = []
    for n in sizes:
        circuit = fft(n)
        x = torch.randn(batch, n, dtype=torch.complex64)
        matrix = circuit.to_matrix(torch.complex64)
        with torch.inference_mode():
            error = float((circuit.evaluate(x) - torch.fft.fft(x)).abs().max() / torch.fft.fft(x).abs().max())
            t_circuit = time_call(lambda: circuit.evaluate(x), repeat=repeat)
            t_fft = time_call(lambda: torch.fft.fft(x), repeat=repeat)
            t_dense = time_call(lambda: x @ matrix.T, repeat=repeat)
        rows.append(
            {
                "n": n,
                "batch": batch,
                "size": circuit.size,
                "depth": circuit.depth,
                "circuit_s": t_circuit,
                "torch_fft_s": t_fft,
                "dense_s": t_dense,
                "circuit_over_fft": t_circuit / t_fft,
                "dense_over_circuit": t_dense / t_circuit,
                "max_rel_error": error,
            }
        )
    table = Table(title=f"fft(n) circuit evaluation, batch {batch}, complex64")
    for column in ["n", "size", "depth", "circuit ms", "torch.fft ms", "dense ms", "circuit / fft", "dense / circuit", "rel. error"]:
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            str(r["n"]), str(r["size"]), str(r["depth"]), f"{1e3 * r['circuit_s']:.2f}", f"{1e3 * r['torch_fft_s']:.2f}",
            f"{1e3 * r['dense_s']:.2f}", f"{r['circuit_over_fft']:.1f}x", f"{r['dense_over_circuit']:.1f}x", f"{r['max_rel_error']:.1e}",
        )
    console.print(table)
    return rows
