"""Speed and accuracy of the hierarchical factorisations (``structmat bench hierarchical``).

For each size ``n`` (complex128, one thread): the untied butterfly factorisation of a random complex
butterfly (:func:`structmat.ops.hierarchical.butterfly_factorisation`), and the BP factorisation with
the gate search (:func:`structmat.fit.hierarchical.factor_bp`, greedy ``beam=1`` and the default
beam) of the unitary DFT, whose hard permutation the search must find. Each row reports the median
time and the relative Frobenius error of the result (exact members: rounding level).
"""

from __future__ import annotations

import math

import torch

from ..families.butterfly import Butterfly
from ..fit.hierarchical import DEFAULT_BEAM, bp_from_dense, factor_bp
from ..ops.hierarchical import butterfly_factorisation
from .timing import time_call


def run(console=None, quick: bool = False, sizes=(64, 256, 1024)) -> list[dict]:
    """Time every factorisation at every size; returns rows ``{method, n, ms, rel_error}``."""
    if quick:
        sizes = tuple(n for n in sizes if n <= 256)
    repeat = 2 if quick else 3
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for n in sizes:
            member = Butterfly(n, n, dtype=torch.complex128).to_dense().detach()
            norm2 = float(member.abs().square().sum())
            seconds = time_call(lambda: butterfly_factorisation(member[None]), repeat=repeat, min_time=0.0)
            error = float(butterfly_factorisation(member[None])[1][0])
            rows.append({"method": "butterfly_factorisation (untied)", "n": n, "ms": seconds * 1e3, "rel_error": math.sqrt(error / norm2)})
            dft = torch.fft.fft(torch.eye(n, dtype=torch.complex128), dim=0) / math.sqrt(n)
            for beam in (1, DEFAULT_BEAM):
                seconds = time_call(lambda: factor_bp(dft, beam=beam), repeat=repeat, min_time=0.0)
                with torch.no_grad():
                    error = float((bp_from_dense(dft, beam=beam).to_dense() - dft).norm() / dft.norm())
                rows.append({"method": f"factor_bp (DFT, beam={beam})", "n": n, "ms": seconds * 1e3, "rel_error": error})
    finally:
        torch.set_num_threads(threads)
    if console is not None:
        from rich.table import Table

        table = Table(title="Hierarchical factorisation (complex128, one thread)")
        for column in ("method", "n", "ms", "relative error"):
            table.add_column(column)
        for r in rows:
            table.add_row(r["method"], str(r["n"]), f"{r['ms']:.1f}", f"{r['rel_error']:.1e}")
        console.print(table)
    return rows
