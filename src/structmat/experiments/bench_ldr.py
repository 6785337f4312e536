"""Benchmark ``ldr``: LDR and transform-based layers against ``nn.Linear`` (issue 8 "Speed").

Run ``structmat bench ldr`` (or ``python benchmarks/bench_ldr.py``). float32, batch 256, square
``n ∈ {1024, 4096}``: seconds per inference forward of ``toeplitz_like`` (r = 4), ``circulant``,
``ldr_sd`` (r = 4) and, when registered, ``fastfood`` and ``orthogonal_polynomial`` (looked up
through the registry), each next to ``nn.Linear`` of the same shape; the speed-up column is
``nn.Linear`` time / structured time. Target: ``toeplitz_like`` r = 4 at least 5x faster than
``nn.Linear`` at n = 4096.

When the optional ``torch-structured`` package (the ``benchmark`` extra) imports, its
``ToeplitzLike`` (r = 4), ``LDRSubdiagonal`` (r = 4) and ``FastFood`` layers are timed at the
same ``n`` and batch next to ``toeplitz_like``, ``ldr_sd`` and ``fastfood``; the last column is
torch-structured time / structmat time (target: above 1). "not installed" otherwise.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings

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


#: structmat family -> (torch-structured layer class name, its options)
TORCH_STRUCTURED = {
    "toeplitz_like": ("ToeplitzLike", {"r": 4}),
    "ldr_sd": ("LDRSubdiagonal", {"r": 4}),
    "fastfood": ("FastFood", {}),
}


def torch_structured_layers():
    """``torch_structured.structured.layers`` or ``None`` when the optional package does not
    import (its import warns about missing CUDA extensions and prints routing notes: silenced)."""
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            from torch_structured.structured import layers
    except Exception:  # ImportError, or a broken optional install: reported as "not installed"
        return None
    return layers


def run(console: Console | None = None, quick: bool = False, sizes: list[int] | None = None, clock=time.perf_counter) -> list[dict]:
    """Time each registered candidate, ``nn.Linear`` and the torch-structured layers at each ``n``
    in ``sizes`` (default ``[1024, 4096]``, ``[1024]`` with ``quick``) on ``clock`` (wall time;
    ``time.thread_time`` with one thread gives CPU times that hold on a shared machine); print a
    Rich table and return the rows."""
    console = console or Console()
    sizes = sizes or ([1024] if quick else [1024, 4096])
    batch = 256
    repeat = 3 if quick else 5
    known = set(registry.names())
    reference = torch_structured_layers()
    rows = []
    for n in sizes:
        x = torch.randn(batch, n)
        linear = torch.nn.Linear(n, n)
        t_linear = time_forward(linear, x, repeat=repeat, clock=clock)
        for name, options in CANDIDATES:
            if name not in known:
                continue
            layer = StructuredLinear(n, n, name, **options)
            t_layer = time_forward(layer, x, repeat=repeat, clock=clock)
            t_reference = None
            if reference is not None and name in TORCH_STRUCTURED:
                class_name, reference_options = TORCH_STRUCTURED[name]
                reference_layer = getattr(reference, class_name)(layer_size=n, **reference_options)
                t_reference = time_forward(reference_layer, x, repeat=repeat, clock=clock)
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
                    "torch_structured_s": t_reference,
                    "speedup_vs_torch_structured": None if t_reference is None else t_reference / t_layer,
                }
            )
    title = f"LDR / transform layers vs nn.Linear: inference forward, float32, batch {batch}, {torch.get_num_threads()} thread(s)"
    table = Table(title=title)
    columns = ["structure", "n", "params", "structured ms", "nn.Linear ms", "speed-up", "torch-structured ms", "vs torch-structured"]
    for column in columns:
        table.add_column(column, justify="right")
    for r in rows:
        label = r["structure"] + "".join(f" {k}={v}" for k, v in r["options"].items())
        if r["structure"] not in TORCH_STRUCTURED:
            versus = ["", ""]
        elif r["torch_structured_s"] is None:
            versus = ["not installed", ""]
        else:
            versus = [f"{1e3 * r['torch_structured_s']:.2f}", f"{r['speedup_vs_torch_structured']:.1f}x"]
        table.add_row(
            label, str(r["n"]), str(r["params"]), f"{1e3 * r['structured_s']:.2f}", f"{1e3 * r['linear_s']:.2f}", f"{r['speedup']:.1f}x", *versus
        )
    console.print(table)
    return rows
