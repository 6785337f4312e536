"""Benchmark ``ldr``: LDR and transform-based layers against ``nn.Linear`` (issue 8 "Speed").

Run ``structmat bench ldr`` (or ``python benchmarks/bench_ldr.py``). float32, batch 256, square
``n ∈ {1024, 4096}``: seconds per inference forward of ``toeplitz_like`` (r = 4), ``circulant``,
``ldr_sd`` (r = 4) and, when registered, ``fastfood`` and ``orthogonal_polynomial`` (looked up
through the registry), each next to ``nn.Linear`` of the same shape; the speed-up column is
``nn.Linear`` time / structured time. Target: ``toeplitz_like`` r = 4 at least 5x faster than
``nn.Linear`` at n = 4096.
"""

from __future__ import annotations

import torch
from rich.console import Console
from rich.table import Table

from ..core import StructuredLinear, registry
from .timing import time_forward

CANDIDATES = [
    ("toeplitz_like", {"rank": 4}),
    ("circulant", {}),
    ("ldr_sd", {"rank": 4}),
    ("fastfood", {}),
    ("orthogonal_polynomial", {}),
]


def run(console: Console | None = None, quick: bool = False) -> list[dict]:
    """Time each registered candidate and ``nn.Linear``; print a Rich table and return the rows."""
    console = console or Console()
    sizes = [1024] if quick else [1024, 4096]
    batch = 256
    repeat = 3 if quick else 5
    known = set(registry.names())
    rows = []
    for n in sizes:
        x = torch.randn(batch, n)
        linear = torch.nn.Linear(n, n)
        t_linear = time_forward(linear, x, repeat=repeat)
        for name, options in CANDIDATES:
            if name not in known:
                continue
            layer = StructuredLinear(n, n, name, **options)
            t_layer = time_forward(layer, x, repeat=repeat)
            rows.append(
                {
                    "structure": name,
                    "options": dict(options),
                    "n": n,
                    "batch": batch,
                    "params": layer.num_parameters,
                    "structured_s": t_layer,
                    "linear_s": t_linear,
                    "speedup": t_linear / t_layer,
                }
            )
    table = Table(title=f"LDR / transform layers vs nn.Linear: inference forward, float32, batch {batch}")
    for column in ["structure", "n", "params", "structured ms", "nn.Linear ms", "speed-up"]:
        table.add_column(column, justify="right")
    for r in rows:
        label = r["structure"] + "".join(f" {k}={v}" for k, v in r["options"].items())
        table.add_row(
            label, str(r["n"]), str(r["params"]), f"{1e3 * r['structured_s']:.2f}", f"{1e3 * r['linear_s']:.2f}", f"{r['speedup']:.1f}x"
        )
    console.print(table)
    return rows
