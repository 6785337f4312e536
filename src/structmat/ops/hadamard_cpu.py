"""Numba CPU kernels built on the in-place Walsh–Hadamard transform (SPEC.md §6.3, §4.13).

* :func:`hadamard_inplace` -- the WHT of one row, called by the kernels below;
* :func:`hadamard_rows_inplace` -- the WHT of every row (the ``structmat::hadamard`` op of
  :mod:`structmat.ops.hadamard`);
* :func:`fastfood_rows`, :func:`fastfood_transpose_rows` and their backward kernels
  :func:`fastfood_backward_rows`, :func:`fastfood_transpose_backward_rows` -- the fused Fastfood
  chains of :mod:`structmat.ops.fastfood`.

They live in one module because Numba's on-disk cache (``cache=True``) keys a compiled kernel on
its own source file only, while the kernel's cached machine code includes the functions it calls:
a kernel calling :func:`hadamard_inplace` from another file would keep loading a stale WHT after
it changed.

Every kernel is a :func:`structmat.ops.numba_rows.row_kernel` (parallel and serial builds, the
serial one for small inputs) and is compiled per dtype (float32/64, complex64/128: the WHT of a
complex row transforms real and imaginary parts together).
"""

from __future__ import annotations

import numba
import numpy as np

from .numba_rows import row_kernel

__all__ = [
    "hadamard_inplace",
    "hadamard_rows_inplace",
    "fastfood_rows",
    "fastfood_transpose_rows",
    "fastfood_backward_rows",
    "fastfood_transpose_backward_rows",
]


@numba.njit(cache=True)
def hadamard_inplace(row: np.ndarray) -> None:  # pragma: no cover - compiled
    """In-place unnormalised WHT of one contiguous row (``n`` a power of two): the strides 1, 2, 4
    as one unrolled 8-point transform per block of 8, then two strides per sweep (radix 4; the
    inner loop runs over contiguous slices and vectorises), a last radix-2 sweep when an odd number
    of strides is left. Sweeps over a row are ``3 + ⌈(log2 n - 3) / 2⌉`` instead of ``log2 n``.

    A called function, not inlined: one call per row costs nothing next to the transform, and
    inlining it into the Fastfood kernels (two to four times each, per dtype and build)
    quadrupled their compile time."""
    n = row.shape[0]
    h = 1
    if n >= 8:
        for s in range(0, n, 8):
            b0, b1 = row[s] + row[s + 1], row[s] - row[s + 1]
            b2, b3 = row[s + 2] + row[s + 3], row[s + 2] - row[s + 3]
            b4, b5 = row[s + 4] + row[s + 5], row[s + 4] - row[s + 5]
            b6, b7 = row[s + 6] + row[s + 7], row[s + 6] - row[s + 7]
            c0, c2, c1, c3 = b0 + b2, b0 - b2, b1 + b3, b1 - b3
            c4, c6, c5, c7 = b4 + b6, b4 - b6, b5 + b7, b5 - b7
            row[s], row[s + 4] = c0 + c4, c0 - c4
            row[s + 1], row[s + 5] = c1 + c5, c1 - c5
            row[s + 2], row[s + 6] = c2 + c6, c2 - c6
            row[s + 3], row[s + 7] = c3 + c7, c3 - c7
        h = 8
    while 4 * h <= n:
        for start in range(0, n, 4 * h):
            # the group as four slices: the loop over them vectorises (indexing ``row[i + h]`` etc.
            # directly it did not: these sweeps took 1.36 instead of 0.29 ms at 256 x 4096 float32)
            p0, p1 = row[start : start + h], row[start + h : start + 2 * h]
            p2, p3 = row[start + 2 * h : start + 3 * h], row[start + 3 * h : start + 4 * h]
            for i in range(h):
                a, b, c, d = p0[i], p1[i], p2[i], p3[i]
                ab0, ab1, cd0, cd1 = a + b, a - b, c + d, c - d
                p0[i], p2[i] = ab0 + cd0, ab0 - cd0
                p1[i], p3[i] = ab1 + cd1, ab1 - cd1
        h *= 4
    while h < n:
        for start in range(0, n, 2 * h):
            low, high = row[start : start + h], row[start + h : start + 2 * h]
            for i in range(h):
                a, b = low[i], high[i]
                low[i], high[i] = a + b, a - b
        h *= 2


@row_kernel
def hadamard_rows_inplace(rows: np.ndarray) -> None:  # pragma: no cover - compiled
    """In-place unnormalised WHT of every row (:func:`hadamard_inplace`), rows in parallel."""
    for r in numba.prange(rows.shape[0]):
        hadamard_inplace(rows[r])


# ---------------------------------------------------------------------------------------------
# Fastfood chains (module docstring of structmat.ops.fastfood). Each kernel splits the rows into
# one contiguous range per worker (prange over workers: one parallel region, per-worker scratch
# and gradient partials, results independent of scheduling). ``first``/``second`` are the
# worker's two scratch rows of length N.


@numba.njit(inline="always")
def _row_range(worker, workers, batch):  # pragma: no cover - compiled
    per = (batch + workers - 1) // workers
    return worker * per, min(batch, (worker + 1) * per)


@numba.njit(cache=True)
def _chain_forward(x_row, S, G, B, perm, k, first, second):  # pragma: no cover - compiled
    """``first = H B_k x̃`` and ``second = H G_k Π_k first`` (the output before ``S_k``)."""
    n_in, size = x_row.shape[0], first.shape[0]
    for j in range(n_in):
        first[j] = x_row[j] * B[k, j]
    for j in range(n_in, size):
        first[j] = 0
    hadamard_inplace(first)
    for i in range(size):
        second[i] = first[perm[k, i]] * G[k, i]
    hadamard_inplace(second)


@numba.njit(cache=True)
def _chain_transpose(y_row, S, G, B, perm, k, first, second):  # pragma: no cover - compiled
    """``first = H S_k ỹ_k`` and ``second = H Π_kᵀ G_k first`` (the output before ``B_k``)."""
    size = first.shape[0]
    offset = k * size
    stop = max(0, min(size, y_row.shape[0] - offset))
    for i in range(stop):
        first[i] = y_row[offset + i] * S[k, i]
    for i in range(stop, size):
        first[i] = 0
    hadamard_inplace(first)
    for i in range(size):
        second[perm[k, i]] = first[i] * G[k, i]
    hadamard_inplace(second)


@row_kernel
def fastfood_rows(x, out, S, G, B, perm, workers):  # pragma: no cover - compiled
    """``out = x Vᵀ`` (rows of ``x`` of length ``n <= N``, rows of ``out`` of length ``m <= K N``)."""
    batch, n_out = out.shape
    blocks, size = S.shape
    for worker in numba.prange(workers):
        first = np.empty(size, dtype=out.dtype)
        second = np.empty(size, dtype=out.dtype)
        start, stop = _row_range(worker, workers, batch)
        for r in range(start, stop):
            for k in range(blocks):
                _chain_forward(x[r], S, G, B, perm, k, first, second)
                offset = k * size
                for i in range(min(size, n_out - offset)):
                    out[r, offset + i] = second[i] * S[k, i]


@row_kernel
def fastfood_transpose_rows(y, out, S, G, B, perm, workers):  # pragma: no cover - compiled
    """``out = y V`` (rows of ``y`` of length ``m <= K N``, rows of ``out`` of length ``n <= N``)."""
    batch, n_in = out.shape
    blocks, size = S.shape
    for worker in numba.prange(workers):
        first = np.empty(size, dtype=out.dtype)
        second = np.empty(size, dtype=out.dtype)
        start, stop = _row_range(worker, workers, batch)
        for r in range(start, stop):
            for j in range(n_in):
                out[r, j] = 0
            for k in range(blocks):
                _chain_transpose(y[r], S, G, B, perm, k, first, second)
                for j in range(n_in):
                    out[r, j] += second[j] * B[k, j]


@row_kernel
def fastfood_backward_rows(x, grad, grad_x, parts, S, G, B, perm):  # pragma: no cover - compiled
    """Vector-Jacobian product of ``x -> x Vᵀ``: ``grad_x = grad V̄`` (conjugated ``V``) and, per
    worker ``w``, ``parts[w, 0/1/2] += `` the ``S``/``G``/``B`` gradients of its rows."""
    batch, n_in = x.shape
    n_out = grad.shape[1]
    blocks, size = S.shape
    workers = parts.shape[0]
    for worker in numba.prange(workers):
        first = np.empty(size, dtype=grad_x.dtype)
        second = np.empty(size, dtype=grad_x.dtype)
        grad_S, grad_G, grad_B = parts[worker, 0], parts[worker, 1], parts[worker, 2]
        start, stop = _row_range(worker, workers, batch)
        for r in range(start, stop):
            for j in range(n_in):
                grad_x[r, j] = 0
            for k in range(blocks):
                _chain_forward(x[r], S, G, B, perm, k, first, second)  # first = b, second = d
                offset = k * size
                valid = max(0, min(size, n_out - offset))
                for i in range(valid):
                    g = grad[r, offset + i]
                    grad_S[k, i] += g * np.conj(second[i])
                    second[i] = g * np.conj(S[k, i])
                for i in range(valid, size):
                    second[i] = 0
                hadamard_inplace(second)  # gradient of Π-permuted, G-scaled b
                for i in range(size):
                    j = perm[k, i]
                    g = second[i]
                    grad_G[k, i] += g * np.conj(first[j])
                    first[j] = g * np.conj(G[k, i])
                hadamard_inplace(first)  # gradient of B x̃
                for j in range(n_in):
                    g = first[j]
                    grad_B[k, j] += g * np.conj(x[r, j])
                    grad_x[r, j] += g * np.conj(B[k, j])


@row_kernel
def fastfood_transpose_backward_rows(y, grad, grad_y, parts, S, G, B, perm):  # pragma: no cover - compiled
    """Vector-Jacobian product of ``y -> y V``: ``grad_y = grad V̄ᵀ`` and per-worker
    ``S``/``G``/``B`` gradient partials (as :func:`fastfood_backward_rows`)."""
    batch, n_out = y.shape
    n_in = grad.shape[1]
    blocks, size = S.shape
    workers = parts.shape[0]
    for worker in numba.prange(workers):
        first = np.empty(size, dtype=grad_y.dtype)
        second = np.empty(size, dtype=grad_y.dtype)
        grad_S, grad_G, grad_B = parts[worker, 0], parts[worker, 1], parts[worker, 2]
        start, stop = _row_range(worker, workers, batch)
        for r in range(start, stop):
            for k in range(blocks):
                _chain_transpose(y[r], S, G, B, perm, k, first, second)  # first = q, second = t
                for j in range(n_in):
                    g = grad[r, j]
                    grad_B[k, j] += g * np.conj(second[j])
                    second[j] = g * np.conj(B[k, j])
                for j in range(n_in, size):
                    second[j] = 0
                hadamard_inplace(second)  # gradient of the scattered row
                for i in range(size):
                    g = second[perm[k, i]]
                    grad_G[k, i] += g * np.conj(first[i])
                    first[i] = g * np.conj(G[k, i])
                hadamard_inplace(first)  # gradient of S ỹ_k
                offset = k * size
                for i in range(max(0, min(size, n_out - offset))):
                    g = first[i]
                    grad_S[k, i] += g * np.conj(y[r, offset + i])
                    grad_y[r, offset + i] = g * np.conj(S[k, i])
