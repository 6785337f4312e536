"""Sparse matrices as K-matrices: Constructions A and B of SPEC.md §5.3 (Theorem 3 of [KS20]).

All twiddles are NumPy arrays of *units* ``(w, 2, log N, N/2, 2, 2)`` (see
:mod:`structmat.compile.benes`): unit ``u`` is a decreasing-stride butterfly followed by an
increasing-stride one, units applied in order ``0, 1, …``.
"""

from __future__ import annotations

import numpy as np

from ..core.sizes import log2_exact
from .benes import IDENTITY, benes_unit, benes_unit_bstar_b, complete_permutation, pair_low_index

COPY_LOW = np.array([[1.0, 0.0], [1.0, 0.0]])  # y_lo = x_lo, y_hi = x_lo
ADD_HIGH = np.array([[1.0, 1.0], [0.0, 0.0]])  # y_lo = x_lo + x_hi, y_hi = 0


def _blocks(keys: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Aligned blocks for the groups of equal ``keys`` (SPEC.md §5.3 step 1).

    Returns ``(slot, heads, block_size)``: ``slot[t]`` = position of entry ``t`` (its group's base
    plus its rank in the group), ``heads[g]`` = (key, base) per used key, ``block_size[i]`` = the
    size of the block containing position ``i`` (0 outside every block)."""
    used, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    widths = 1 << np.ceil(np.log2(counts)).astype(np.int64)
    order = np.argsort(-widths, kind="stable")
    bases = np.empty(len(used), dtype=np.int64)
    bases[order] = np.concatenate([[0], np.cumsum(widths[order])[:-1]])
    by_group = np.argsort(inverse, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(keys), dtype=np.int64)
    rank[by_group] = np.arange(len(keys)) - np.repeat(starts, counts)
    slot = bases[inverse] + rank
    block_size = np.zeros(size, dtype=np.int64)
    for base, width in zip(bases.tolist(), widths.tolist()):
        block_size[base : base + width] = width
    return slot, np.stack([used, bases], axis=1), block_size


def _network(block_size: np.ndarray, twiddle: np.ndarray, increasing: bool) -> np.ndarray:
    """A half-butterfly ``(log N, N/2, 2, 2)`` with ``twiddle`` on every pair whose low index lies
    in a block of size ``>= 2h`` at stride ``h`` and ``I`` elsewhere (steps 4 and 7)."""
    size = block_size.shape[0]
    levels = log2_exact(size, "N")
    result = np.empty((levels, size // 2, 2, 2))
    for level in range(levels):
        stride = 1 << level if increasing else size >> (level + 1)
        inside = block_size[pair_low_index(size, stride)] >= 2 * stride
        result[level] = np.where(inside[:, None, None], twiddle, IDENTITY)
    return result


def sparse_piece_units(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Construction A: ``m <= n`` entries ``(rows, cols, values)`` of an ``n × n`` matrix ``S``
    (``n = 2^k``) as 4 units ``(4, 2, k+1, n, 2, 2)`` at size ``N = 2n`` whose product ``E`` has
    ``E[:n, :n] = S``: ``[Q_c]``, ``[E_c·D, Π_inc]``, ``[Π_dec, E_r]``, ``[Q_r]``."""
    size = 2 * n
    dtype = np.result_type(values.dtype, np.float64)
    units = np.empty((4, 2, log2_exact(size, "N"), n, 2, 2), dtype=dtype)
    if len(values) == 0:
        units[:] = IDENTITY
        units[1, 0, -1] = 0.0  # D = 0
        return units
    column_slot, column_heads, column_blocks = _blocks(cols, size)
    row_slot, row_heads, row_blocks = _blocks(rows, size)
    # Q_c: (Q_c x̂)_{base_j} = x̂_j ; Q_r: (Q_r z)_i = z_{base'_i}
    q_columns = complete_permutation(size, column_heads[:, 1], column_heads[:, 0])
    q_rows = complete_permutation(size, row_heads[:, 0], row_heads[:, 1])
    # Π: (Π y)_{b(t)} = y_{a(t)}
    move = complete_permutation(size, row_slot, column_slot)
    copy = _network(column_blocks, COPY_LOW, increasing=False)
    diagonal = np.zeros(size, dtype=dtype)
    diagonal[column_slot] = values
    copy = copy.astype(dtype)
    copy[-1] = copy[-1] * diagonal.reshape(n, 2)[:, :, None]  # D merged into the stride-1 factor (rows)
    move_units = benes_unit_bstar_b(move)  # [Π_inc (applied first), Π_dec]
    units[0] = benes_unit(q_columns)
    units[1, 0], units[1, 1] = copy, move_units[0]
    units[2, 0], units[2, 1] = move_units[1], _network(row_blocks, ADD_HIGH, increasing=True)
    units[3] = benes_unit(q_rows)
    return units


def sum_of_pieces(pieces: list[np.ndarray], n: int, out: np.ndarray | None = None) -> np.ndarray:
    """Construction B: pieces ``(w_i, 2, k+1, n, 2, 2)`` (size ``2n``) -> ``(Σ w_i, 2, k+2, 2n, 2, 2)``
    at size ``4n`` whose ``n × n`` corner is the sum of the pieces' corners.

    Slots of length ``n``: 0 = ``x``, 1 = accumulator, 2–3 = the pieces' work area. Each piece is
    embedded on slots 2–3; the extra stride-``2n`` factors and the free stride-``n`` pairs on
    slots 0–1 copy ``x`` in, move each result to the accumulator and, after the last piece, the
    accumulator to slot 0 (SPEC.md §5.3, Construction B). ``out`` may be a preallocated array.
    """
    levels = log2_exact(4 * n, "4n")
    total = sum(p.shape[0] for p in pieces)
    dtype = np.result_type(*[p.dtype for p in pieces])
    if out is None:
        out = np.empty((total, 2, levels, 2 * n, 2, 2), dtype=dtype)
    out[:] = IDENTITY
    upper = slice(n, 2 * n)  # pairs of stride <= n on slots 2–3
    lower = slice(0, n)  # pairs of stride n on slots (0, 1), of stride 2n on slots (0, 2)
    unit = 0
    for index, piece in enumerate(pieces):
        first, final = unit, unit + piece.shape[0] - 1
        out[first : final + 1, 0, 1:, upper] = piece[:, 0]
        out[first : final + 1, 1, :-1, upper] = piece[:, 1]
        out[first, 0, 0, lower] = COPY_LOW  # (slot0, slot2): copy x into the work area
        out[first, 0, 0, upper] = np.array([[1.0, 0.0], [0.0, 0.0]])  # (slot1, slot3): clear slot 3
        last_factor = out[final, 1, -2, upper].copy()  # the piece's own last (stride-n) factor
        if index < len(pieces) - 1:
            moved = np.zeros_like(last_factor)
            moved[:, 1, :] = last_factor[:, 0, :]  # [[a, b], [c, d]] -> [[0, 0], [a, b]]
            out[final, 1, -2, upper] = moved
            out[final, 1, -1, upper] = ADD_HIGH  # (slot1, slot3): accumulate
        else:
            kept = last_factor.copy()
            kept[:, 1, :] = 0.0  # [[a, b], [0, 0]]
            out[final, 1, -2, upper] = kept
            out[final, 1, -2, lower] = np.array([[0.0, 1.0], [0.0, 0.0]])  # (slot0, slot1): acc -> slot 0
            out[final, 1, -1, lower] = ADD_HIGH  # (slot0, slot2): add the last result
        unit = final + 1
    return out
