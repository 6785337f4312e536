"""Hierarchical (level-by-level) factorisation of butterfly matrices (SPEC.md §4.14(ii), §7.5).

An increasing-stride butterfly of size ``n`` with ``h = n/2`` factors as
``E = F_h · diag(R₀, R₁)``: the outermost factor ``F_h`` (stride ``h``) times two butterflies of size
``h``. Entrywise, ``E[r·h + i, c·h + j] = t_i[r, c] · R_c[i, j]`` with ``t_i`` the 2x2 twiddle of
pair ``i``, so for every ``i`` the two ``2 x h`` stacks ``E[(·)h + i, c·h : (c+1)h]`` have rank 1.
Their best rank-1 approximations ``u vᵀ`` (batched 2x2 Gram eigenproblems) give the twiddles of ``F_h`` and the rows
of ``R₀, R₁``; the recursion on the halves runs level by level, all blocks of a level in one batch
(Zheng, Riccietti & Gribonval 2023 analyse this "hierarchical" algorithm).

**Gauge.** Every left factor ``u`` is a unit vector and the singular value goes to the row ``v``.
The discarded part of a stack is then orthogonal to every matrix ``u a^T``, so the squared
Frobenius error of the result is exactly the sum of the squared singular values discarded at every
level (:func:`butterfly_factorisation` returns it): exact for members (up to rounding), a greedy
projection for other matrices.

Cost per ``n x n`` matrix: ``log n`` levels of ``n/2`` rank-1 approximations of ``2 x (size/2)``
stacks, i.e. ``O(n² log n)`` flops and ``O(n²)`` memory.
"""

from __future__ import annotations

import torch

from ..core.errors import describe
from ..core.sizes import is_power_of_two


def rank_one_rows(stacks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best rank-1 approximation ``u vᵀ`` of every ``k x h`` matrix ``S`` of ``stacks`` ``(…, k, h)``.

    Returns ``(u, v, discarded)``: ``u`` ``(…, k)`` of unit norm (the top eigenvector of the
    ``k x k`` Gram matrix ``S S^*``), ``v = u^* S`` ``(…, h)`` (so ``u v`` is the projection of ``S``
    on ``u``: the best rank-1 approximation), and ``discarded`` ``(…,)`` (real) =
    ``‖S − u v‖_F²``, computed from the residual itself (no cancellation, so it is ~0 to rounding
    for rank-1 stacks). Cost ``O(k² h)`` flops per stack (``k`` is 2 or 4 here: far cheaper than
    an SVD of the ``k x h`` stack).
    """
    gram = stacks @ stacks.transpose(-1, -2).conj()
    _, vectors = torch.linalg.eigh(gram)
    u = vectors[..., :, -1]
    v = (u.conj()[..., None, :] @ stacks)[..., 0, :]
    residual = stacks - u[..., :, None] * v[..., None, :]
    discarded = (residual.real.square() + residual.imag.square() if residual.is_complex() else residual.square()).sum((-1, -2))
    return u, v, discarded


def butterfly_factorisation(E: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Increasing-stride twiddles of the butterflies nearest to every matrix of ``E`` (greedy).

    Args:
        E: ``(G, n, n)`` real or complex, ``n`` a power of two ``>= 2``.

    Returns:
        ``(twiddle, squared_error)``: ``twiddle`` ``(G, log n, n/2, 2, 2)`` in the canonical layout
        (level ``ℓ`` = stride ``2^ℓ``, SPEC.md §1.4) and ``squared_error`` ``(G,)`` =
        ``‖E − B‖_F²`` of the butterfly ``B`` they define (the discarded singular values; see the
        module docstring). Exact (``squared_error ≈ 0``) when ``E`` is a butterfly matrix.
    """
    if not isinstance(E, torch.Tensor) or E.dim() != 3 or E.shape[1] != E.shape[2] or E.shape[1] < 2 or not is_power_of_two(E.shape[1]):
        raise ValueError(f"E: expected a tensor of shape (G, n, n) with n a power of two >= 2, got {describe(E)}")
    groups, n = E.shape[0], E.shape[1]
    levels = n.bit_length() - 1
    twiddle = E.new_zeros(groups, levels, n // 2, 2, 2)
    squared_error = E.new_zeros(groups, dtype=E.real.dtype if E.is_complex() else E.dtype)
    blocks = E[:, None]  # (G, n / size, size, size): the diagonal blocks still to factor
    for level in reversed(range(levels)):
        h = 1 << level
        count = blocks.shape[1]
        # stacks[g, b, i, c, r, j] = block_b[r·h + i, c·h + j]
        stacks = blocks.reshape(groups, count, 2, h, 2, h).permute(0, 1, 3, 4, 2, 5)
        u, v, discarded = rank_one_rows(stacks)  # u (G, B, h, c, r), v (G, B, h, c, h)
        squared_error += discarded.sum((1, 2, 3))
        twiddle[:, level] = u.transpose(-1, -2).reshape(groups, count * h, 2, 2)  # pair b·h + i: t[r, c]
        blocks = v.permute(0, 1, 3, 2, 4).reshape(groups, 2 * count, h, h)  # half c of block b -> 2b + c
    # the last halves are 1x1: fold them into the columns of the stride-1 twiddles
    twiddle[:, 0] *= blocks.reshape(groups, n // 2, 1, 2)
    return twiddle, squared_error


__all__ = ["butterfly_factorisation", "rank_one_rows"]
