"""Benchmark ``compiler``: Construction C (SPEC.md §5.4) on random circuits with ``n = 256`` inputs.

For each ``(s, d)``: compile time of :func:`structmat.compile.to_kmatrix`, the K-matrix's width,
expansion and parameters, and the time of one K-matrix multiply on a batch of 16 (float64) next to
the circuit's own evaluation. The log-log slopes of compile and multiply time versus ``s`` (at fixed
``d``) are printed below the table (theory: ``O(d s log s)`` for both). Run
``structmat bench compiler`` (or ``python benchmarks/bench_compiler.py``).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from ..circuits import random
from ..compile import to_kmatrix
from .timing import time_call


def _slope(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 2:
        return float("nan")
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def run(console: Console | None = None, quick: bool = False) -> list[dict]:
    """Compile random circuits (``n = 256``) over a grid of sizes and depths; print and return rows."""
    console = console or Console()
    n, batch = 256, 16
    depth_fixed = 8
    sizes = [512, 1024, 2048, 4096] if quick else [512, 1024, 2048, 4096, 8192, 16384]
    grid = [(s, depth_fixed) for s in sizes] + [(2048, d) for d in ([4, 16] if quick else [4, 16, 32])]
    rows = []
    for s, d in grid:
        circuit = random(n, s, d, seed=0)
        start = time.perf_counter()
        kmatrix = to_kmatrix(circuit)
        compile_s = time.perf_counter() - start
        x = torch.randn(batch, n, dtype=torch.float64)
        with torch.inference_mode():
            multiply_s = time_call(lambda: kmatrix(x), repeat=1, min_time=0.0, warmup=1)
            circuit_s = time_call(lambda: circuit.evaluate(x), repeat=3, min_time=0.01)
            error = float((kmatrix(x) - circuit.evaluate(x)).abs().max() / circuit.evaluate(x).abs().max())
        rows.append(
            {
                "s": s, "d": d, "w": kmatrix.width, "e": kmatrix.expansion, "params": kmatrix.num_parameters,
                "compile_s": compile_s, "kmatrix_multiply_s": multiply_s, "circuit_evaluate_s": circuit_s,
                "max_rel_error": error,
            }
        )
        del kmatrix
    table = Table(title=f"circuit -> K-matrix, random circuits, n = {n}, multiply batch {batch} (float64)")
    for column in ["s", "d", "w", "e", "params", "compile s", "K multiply s", "circuit eval s", "rel. error"]:
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            str(r["s"]), str(r["d"]), str(r["w"]), str(r["e"]), f"{r['params']:.3g}", f"{r['compile_s']:.2f}",
            f"{r['kmatrix_multiply_s']:.3f}", f"{r['circuit_evaluate_s']:.4f}", f"{r['max_rel_error']:.1e}",
        )
    console.print(table)
    fixed = [r for r in rows if r["d"] == depth_fixed]
    compile_slope = _slope([r["s"] for r in fixed], [r["compile_s"] for r in fixed])
    multiply_slope = _slope([r["s"] for r in fixed], [r["kmatrix_multiply_s"] for r in fixed])
    console.print(f"log-log slope vs s at d = {depth_fixed}: compile {compile_slope:.2f}, K-matrix multiply {multiply_slope:.2f}")
    for r in rows:
        r["compile_slope"], r["multiply_slope"] = compile_slope, multiply_slope
    return rows
