"""Benchmark ``monarch``: Monarch layers against ``nn.Linear`` (issue 7 "Speed"; SPEC.md §8 G1).

Run ``structmat bench monarch`` (or ``python benchmarks/bench_monarch.py``). float32, batch 256,
square ``n ∈ {1024, 4096, 16384}`` (``--quick``: 1024 and 4096): ``StructuredLinear(n, n,
"monarch", nblocks=√n)`` (``b = √n``, ``2n√n`` parameters, a flop ratio of ``√n / 2`` against
dense) next to ``nn.Linear(n, n)`` -- both with bias -- timed side by side in one run, for an
inference forward and for forward + backward (gradients of parameters and input). When the
optional package ``torch-structured`` imports, its ``MonarchLinear`` at the same configuration
(``nblocks = √n``: the same factor shapes) is timed too. Targets: forward at least 15x faster
than ``nn.Linear`` at ``n = 4096``; forward + backward faster than dense from ``n = 1024``.
"""

from __future__ import annotations

import logging
import math
import warnings

import torch
from rich.console import Console
from rich.table import Table

from ..core import StructuredLinear
from .timing import time_forward, time_forward_backward


def _packaged_monarch(n: int, nblocks: int):
    """``torch_structured``'s ``MonarchLinear`` (optional package), or ``None`` if it does not import."""
    logging.getLogger("torch_structured").setLevel(logging.ERROR)  # its CPU-only notices
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch_structured.monarch.monarch_linear import MonarchLinear
    except Exception:  # optional: any import failure (missing package, missing triton) skips it
        return None
    return MonarchLinear(n, n, nblocks=nblocks, bias=True)


def run(console: Console | None = None, quick: bool = False, sizes: list[int] | None = None) -> list[dict]:
    """Time Monarch (b = √n), ``nn.Linear`` and, if present, ``MonarchLinear``; print and return rows.

    ``sizes`` overrides the default sizes (each should be a perfect square)."""
    console = console or Console()
    if sizes is None:
        sizes = [1024, 4096] if quick else [1024, 4096, 16384]
    batch = 256
    rows = []
    torch.manual_seed(0)
    for n in sizes:
        repeat = 3 if (quick or n >= 16384) else 5
        nblocks = math.isqrt(n)
        x = torch.randn(batch, n)
        layers = {"monarch": StructuredLinear(n, n, "monarch", nblocks=nblocks), "dense": torch.nn.Linear(n, n)}
        packaged = _packaged_monarch(n, nblocks)
        if packaged is not None:
            layers["torch_structured"] = packaged
        forward = {name: time_forward(layer, x, repeat=repeat) for name, layer in layers.items()}
        backward = {name: time_forward_backward(layer, x, repeat=repeat) for name, layer in layers.items()}
        row = {
            "n": n,
            "batch": batch,
            "nblocks": nblocks,
            "monarch_params": layers["monarch"].num_parameters,
            "dense_params": n * n,
        }
        for name in layers:
            row[f"{name}_forward_ms"] = 1e3 * forward[name]
            row[f"{name}_fwd_bwd_ms"] = 1e3 * backward[name]
        row["forward_speedup"] = forward["dense"] / forward["monarch"]
        row["fwd_bwd_speedup"] = backward["dense"] / backward["monarch"]
        if packaged is not None:
            row["forward_vs_torch_structured"] = forward["torch_structured"] / forward["monarch"]
            row["fwd_bwd_vs_torch_structured"] = backward["torch_structured"] / backward["monarch"]
        rows.append(row)
        del layers, packaged

    table = Table(title=f"Monarch (b = √n) vs nn.Linear, float32, batch {batch}, {torch.get_num_threads()} threads")
    packaged_present = any("torch_structured_forward_ms" in r for r in rows)
    columns = ["n", "params", "fwd ms", "dense fwd", "fwd ×", "f+b ms", "dense f+b", "f+b ×"]
    if packaged_present:
        columns += ["TS fwd", "TS f+b"]
    for column in columns:
        table.add_column(column, justify="right")
    for r in rows:
        cells = [
            str(r["n"]),
            f"{r['monarch_params']:,}",
            f"{r['monarch_forward_ms']:.2f}",
            f"{r['dense_forward_ms']:.2f}",
            f"{r['forward_speedup']:.1f}x",
            f"{r['monarch_fwd_bwd_ms']:.2f}",
            f"{r['dense_fwd_bwd_ms']:.2f}",
            f"{r['fwd_bwd_speedup']:.1f}x",
        ]
        if packaged_present:
            cells += [f"{r.get('torch_structured_forward_ms', float('nan')):.2f}", f"{r.get('torch_structured_fwd_bwd_ms', float('nan')):.2f}"]
        table.add_row(*cells)
    console.print(table)
    if packaged_present:
        console.print("TS = torch_structured.MonarchLinear(n, n, nblocks=√n) (ms); × = nn.Linear time / Monarch time")
    return rows
