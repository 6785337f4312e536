"""Benchmark ``fastfood``: the fused Fastfood kernel against the op-by-op path and torch-structured.

Run ``structmat bench fastfood`` (or ``python benchmarks/bench_fastfood.py``). float32, batch 256,
square ``n ∈ {1024, 4096}``, with 1 and 2 threads (``torch.set_num_threads`` and
``numba.set_num_threads`` together), inference forward and forward + backward (gradients of the
input and all parameters), all layers with a bias:

* ``fused`` -- ``StructuredLinear(n, n, "fastfood")``: :mod:`structmat.ops.fastfood`'s one-region
  Numba kernels (issue 8);
* ``op-by-op`` -- the same parameters through :func:`structmat.ops.fastfood.fastfood_reference`
  (torch gathers and multiplications around two calls of the Numba WHT op): the path before the
  fused kernel;
* ``torch-structured`` -- its ``FastFood`` layer, when the optional package imports.

The last column is torch-structured time / fused time (target: above 1 at 2 threads).
"""

from __future__ import annotations

import time

import numba
import torch
from rich.console import Console
from rich.table import Table

from ..core import StructuredLinear
from ..ops.fastfood import fastfood_reference
from .bench_ldr import torch_structured_layers
from .timing import time_call

BATCH = 256


def _forward_and_training_calls(layer_fn, parameters, x):
    """(inference forward, forward + backward) closures of ``layer_fn(x)``."""
    x_grad = x.detach().clone().requires_grad_(True)

    def forward():
        with torch.inference_mode():
            layer_fn(x)

    def forward_backward():
        for p in parameters:
            p.grad = None
        x_grad.grad = None
        layer_fn(x_grad).sum().backward()

    return forward, forward_backward


def run(
    console: Console | None = None,
    quick: bool = False,
    sizes: list[int] | None = None,
    threads: list[int] | None = None,
    clock=time.perf_counter,
) -> list[dict]:
    """Time the three implementations at each ``n`` in ``sizes`` (default ``[1024, 4096]``,
    ``[1024]`` with ``quick``) and thread count in ``threads`` (default ``[1, 2]`` capped at
    Numba's maximum); print a Rich table and return the rows (seconds per call)."""
    console = console or Console()
    sizes = sizes or ([1024] if quick else [1024, 4096])
    threads = threads or sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)})
    repeat = 3 if quick else 7
    reference = torch_structured_layers()
    saved_threads = (torch.get_num_threads(), numba.get_num_threads())
    rows = []
    try:
        for n in sizes:
            torch.manual_seed(0)
            x = torch.randn(BATCH, n)
            layer = StructuredLinear(n, n, "fastfood")
            matrix = layer.matrix
            params = list(layer.parameters())

            def op_by_op(inp, matrix=matrix, layer=layer):
                return fastfood_reference(inp, matrix.S, matrix.G, matrix.B, matrix.permutation, n) + layer.bias

            candidates = {"fused": (layer, params), "op-by-op": (op_by_op, params)}
            if reference is not None:
                other = reference.FastFood(layer_size=n)
                candidates["torch-structured"] = (other, list(other.parameters()))
            for count in threads:
                torch.set_num_threads(count)
                numba.set_num_threads(count)
                for mode, index in (("forward", 0), ("forward+backward", 1)):
                    times = {}
                    for name, (fn, fn_params) in candidates.items():
                        call = _forward_and_training_calls(fn, fn_params, x)[index]
                        times[name] = time_call(call, repeat=repeat, clock=clock)
                    ts = times.get("torch-structured")
                    rows.append(
                        {
                            "n": n,
                            "batch": BATCH,
                            "threads": count,
                            "pass": mode,
                            "fused_s": times["fused"],
                            "op_by_op_s": times["op-by-op"],
                            "torch_structured_s": ts,
                            "speedup_vs_torch_structured": None if ts is None else ts / times["fused"],
                        }
                    )
    finally:
        torch.set_num_threads(saved_threads[0])
        numba.set_num_threads(saved_threads[1])
    table = Table(title=f"fastfood: fused kernel vs op-by-op vs torch-structured FastFood, float32, batch {BATCH}")
    for column in ("n", "threads", "pass", "fused ms", "op-by-op ms", "torch-structured ms", "vs torch-structured"):
        table.add_column(column, justify="right")
    for r in rows:
        ts = r["torch_structured_s"]
        versus = ["not installed", ""] if ts is None else [f"{1e3 * ts:.2f}", f"{r['speedup_vs_torch_structured']:.2f}x"]
        table.add_row(str(r["n"]), str(r["threads"]), r["pass"], f"{1e3 * r['fused_s']:.2f}", f"{1e3 * r['op_by_op_s']:.2f}", *versus)
    console.print(table)
    return rows
