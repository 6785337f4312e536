"""Speed of the Walsh–Hadamard and DCT kernels (``structmat bench hadamard-dct``).

For each length ``n`` (batch 256, float32, inference mode) the fused CPU op, its pure-PyTorch
reference and a ``torch.fft.rfft`` of the same shape (the natural yardstick for an
``O(n log n)`` transform) are timed side by side in one run.
"""

from __future__ import annotations

import torch

from ..ops.dct import dct2, dct2_reference, dct3, dct3_reference
from ..ops.hadamard import hadamard_reference, hadamard_transform
from .timing import time_call

KERNELS = {
    "hadamard": (hadamard_transform, hadamard_reference),
    "dct2": (dct2, dct2_reference),
    "dct3": (dct3, dct3_reference),
}


def run(console=None, quick: bool = False, sizes=(1024, 4096), batch: int = 256) -> list[dict]:
    """Time every kernel at every size; returns rows ``{kernel, n, op_ms, reference_ms, rfft_ms, ...}``."""
    repeat = 2 if quick else 5
    rows = []
    for n in sizes:
        x = torch.randn(batch, n)
        with torch.inference_mode():
            rfft_s = time_call(lambda: torch.fft.rfft(x), repeat=repeat)
            for name, (op, reference) in KERNELS.items():
                op_s = time_call(lambda: op(x), repeat=repeat)
                ref_s = time_call(lambda: reference(x), repeat=repeat)
                rows.append(
                    {
                        "kernel": name,
                        "n": n,
                        "batch": batch,
                        "op_ms": op_s * 1e3,
                        "reference_ms": ref_s * 1e3,
                        "rfft_ms": rfft_s * 1e3,
                        "reference_over_op": ref_s / op_s,
                        "op_over_rfft": op_s / rfft_s,
                    }
                )
    if console is not None:
        from rich.table import Table

        table = Table(title=f"Walsh–Hadamard / DCT kernels (float32, batch {batch})")
        for column in ("kernel", "n", "op ms", "reference ms", "torch.fft.rfft ms", "reference / op", "op / rfft"):
            table.add_column(column)
        for r in rows:
            table.add_row(
                r["kernel"], str(r["n"]), f"{r['op_ms']:.2f}", f"{r['reference_ms']:.2f}", f"{r['rfft_ms']:.2f}",
                f"{r['reference_over_op']:.1f}×", f"{r['op_over_rfft']:.1f}×",
            )
        console.print(table)
    return rows
