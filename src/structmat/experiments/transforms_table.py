"""Table of the exact transforms of :mod:`structmat.families.transforms` (``structmat transforms``).

For every transform and size: the structure of the layer, its parameter and flop counts
(SPEC.md §1.7) and the largest entrywise error of its fast forward (float64/complex128) against
the NumPy/SciPy reference matrix (SPEC.md §8, checks B1, B2, C1--C6).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import scipy.fft
import scipy.linalg
import torch
from rich.console import Console
from rich.table import Table

from ..families import transforms as T

DEFAULT_SIZES = (8, 100, 1024)


def _haar_reference(n: int) -> np.ndarray:
    """The Haar pyramid of ``transforms.haar`` applied to the identity's columns by array slicing."""
    approximation, details = np.eye(n), []
    while approximation.shape[0] > 1:
        even, odd = approximation[0::2], approximation[1::2]
        pairs = odd.shape[0]
        details.insert(0, (even[:pairs] - odd) / math.sqrt(2))
        approximation = np.vstack([(even[:pairs] + odd) / math.sqrt(2), even[pairs:]])
    return np.vstack([approximation, *details])


def _exact_node_vander(vander: Callable, n: int) -> np.ndarray:
    """``vander`` at the Chebyshev points ``cos(π(j+½)/n)`` computed in long double: at float64-rounded
    nodes the degree-``n`` polynomials are off by ``~ n² · 1e-16`` near ``±1``."""
    nodes = np.cos(np.pi * (np.arange(n, dtype=np.longdouble) + np.longdouble(0.5)) / n)
    return vander(nodes, n - 1).astype(np.float64)


def _balanced_split(n: int) -> tuple[int, int]:
    """``(n1, n2)`` with ``n1 n2 = n`` and ``n1`` the largest divisor of ``n`` not above ``√n``."""
    n1 = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return n1, n // n1


def _cases(n: int) -> list[tuple[str, Callable, Callable]]:
    """``(name, build layer, reference matrix)`` for size ``n`` (Hadamard: powers of two only)."""
    eye = np.eye(n)
    column = np.cos(np.arange(n) + 1.0)  # a fixed real vector
    cases = [
        ("dft", lambda: T.dft(n, dtype=torch.complex128), lambda: np.fft.fft(eye, axis=0)),
        ("idft (unitary)", lambda: T.dft(n, inverse=True, normalized=True, dtype=torch.complex128), lambda: np.fft.ifft(eye, axis=0, norm="ortho")),
    ]
    for kind, reference in (("dct", scipy.fft.dct), ("dst", scipy.fft.dst)):
        for type in (2, 3, 4):
            cases.append((
                f"{kind}-{type} (ortho)",
                lambda kind=kind, type=type: getattr(T, kind)(n, type=type, norm="ortho", dtype=torch.float64),
                lambda reference=reference, type=type: reference(eye, type=type, norm="ortho", axis=0),
            ))
    F = np.fft.fft(eye, axis=0)
    cases += [
        ("hartley", lambda: T.hartley(n, dtype=torch.float64), lambda: F.real - F.imag),
        ("circulant", lambda: T.circulant(column, dtype=torch.float64), lambda: scipy.linalg.circulant(column)),
        ("toeplitz", lambda: T.toeplitz(column, column[::-1].copy(), dtype=torch.float64), lambda: scipy.linalg.toeplitz(column, column[::-1])),
        ("convolution (same, k=5)", lambda: T.convolution(column[:5], n, "same", dtype=torch.float64) if n >= 5 else None,
         lambda: np.stack([np.convolve(e, column[:5], "same") for e in eye], 1)),
        ("chebyshev", lambda: T.chebyshev(n, dtype=torch.float64), lambda: _exact_node_vander(np.polynomial.chebyshev.chebvander, n)),
        ("legendre", lambda: T.legendre(n, dtype=torch.float64), lambda: _exact_node_vander(np.polynomial.legendre.legvander, n)),
        ("acdc", lambda: T.acdc(n, dtype=torch.float64), lambda: _acdc_reference(n)),
        ("fastfood", lambda: T.fastfood(n, dtype=torch.float64), lambda: _fastfood_reference(n)),
        ("haar", lambda: T.haar(n, dtype=torch.float64), lambda: _haar_reference(n)),
    ]
    n1, n2 = _balanced_split(n)
    cases.append((
        f"dft2 ({n1}x{n2})",
        lambda: T.dft2(n1, n2, dtype=torch.complex128),
        lambda: np.kron(np.fft.fft(np.eye(n1), axis=0), np.fft.fft(np.eye(n2), axis=0)),
    ))
    if n & (n - 1) == 0:  # Sylvester-Hadamard matrices exist only for powers of two
        cases.append(("hadamard", lambda: T.hadamard(n, dtype=torch.float64), lambda: scipy.linalg.hadamard(n)))
    return cases


def _acdc_reference(n: int) -> np.ndarray:
    draws = {k: v.numpy() for k, v in T.acdc_parameters(n).items()}
    C = scipy.fft.dct(np.eye(n), type=2, norm="ortho", axis=0)
    return np.diag(draws["A"]) @ C @ np.diag(draws["D"]) @ C.T


def _fastfood_reference(n: int) -> np.ndarray:
    draws = {k: v.numpy() for k, v in T.fastfood_parameters(n).items()}
    size = draws["S"].size
    H = scipy.linalg.hadamard(size)
    V = np.diag(draws["S"]) @ H @ np.diag(draws["G"]) @ np.eye(size)[draws["perm"]] @ H @ np.diag(draws["B"])
    return V[:n, :n]


def transforms_table(sizes=DEFAULT_SIZES, console: Console | None = None) -> list[dict]:
    """Build every transform at every size, measure its error, print a Rich table, return the rows.

    Error: ``max |forward(I)ᵀ − reference|`` entrywise, in float64/complex128 (the forward is the
    fast structured product; no dense matrix is used to compute it).
    """
    console = console or Console()
    rows = []
    for n in sizes:
        for name, build, reference in _cases(int(n)):
            layer = build()
            if layer is None:
                continue
            with torch.no_grad():
                fast = layer(torch.eye(n, dtype=layer.dtype)).T.numpy()
            rows.append({
                "transform": name, "n": n, "family": layer.structure, "parameters": layer.num_parameters,
                "flops": layer.flops(), "max_error": float(np.abs(fast - reference()).max()),
            })
    table = Table(title="Exact transforms as structured layers (float64; error vs NumPy/SciPy)")
    for column in ("transform", "n", "family", "parameters", "flops", "max error"):
        table.add_column(column, justify="left" if column in ("transform", "family") else "right", min_width=44 if column == "family" else None)
    for row in rows:
        table.add_row(row["transform"], str(row["n"]), row["family"], f"{row['parameters']:,}", f"{row['flops']:,}", f"{row['max_error']:.1e}")
    console.print(table)
    return rows
