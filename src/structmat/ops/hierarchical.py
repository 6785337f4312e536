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
from .butterfly import butterfly_multiply_reference, butterfly_to_dense


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


def _pairs_of_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """``(G, B, m, m) -> (G, B, h, h, 2, 2)``: ``[b, i, j] = [[X[i, j], X[i, h+j]], [X[h+i, j], X[h+i, h+j]]]``."""
    groups, count, m = blocks.shape[0], blocks.shape[1], blocks.shape[-1]
    h = m // 2
    return blocks.reshape(groups, count, 2, h, 2, h).permute(0, 1, 3, 5, 2, 4)


def two_sided_factorisation(E: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``E ≈ B · C`` with ``B`` an increasing-stride and ``C`` a decreasing-stride butterfly (``BB*``,
    SPEC.md §4.16), level by level from both sides; exact for ``BB*`` members with generic twiddles
    (and circulant matrices, which are ``BB*``: [KS20]).

    **One level** (``h = n/2``). ``B C = F · diag(A₀, A₁) · G`` with ``F``, ``G`` the stride-``h``
    factors of ``B`` and ``C`` and ``A_b = B_b C_b`` two ``BB*`` of size ``h``. For the ``2 x 2``
    blocks ``Ẽ_ij = [[E[i, j], E[i, h+j]], [E[h+i, j], E[h+i, h+j]]]`` this reads
    ``Ẽ_ij = D_i Λ_ij E_j`` with ``D_i``, ``E_j`` the twiddles of pairs ``i`` of ``F`` and ``j`` of ``G``
    and ``Λ_ij = diag(A₀[i, j], A₁[i, j])``. With a second row ``k ≠ i``,
    ``L_j = Ẽ_ij Ẽ_kj⁻¹ = D_i Λ_ij Λ_kj⁻¹ D_k⁻¹``, so for two fixed pseudo-random combinations
    ``(Σ_j c_j L_j)(Σ_j c'_j L_j)⁻¹ = D_i (Σ_j c_j Λ_ij Λ_kj⁻¹)(Σ_j c'_j Λ_ij Λ_kj⁻¹)⁻¹ D_i⁻¹`` (a diagonal
    similar by ``D_i``): its eigenvectors are the columns of ``D_i`` (up to scale and order). The order is made consistent with row 0 (the rows of ``D_i⁻¹ Ẽ_ij`` are
    parallel to the rows of ``E_j`` whatever ``i``), then for every ``j`` and ``b`` the best rank-1
    approximation of the ``h`` rows ``(D_i⁻¹ Ẽ_ij)[b]`` gives the row ``E_j[b]`` (unit) and the column
    ``A_b[:, j]``. The recursion runs on ``A₀, A₁``; at size 2, ``D = Ẽ`` and ``E = I``.

    Args:
        E: ``(G, n, n)`` real or complex, ``n`` a power of two ``>= 2``.

    Returns:
        ``(increasing, transposed, squared_error)``: twiddles ``(G, log n, n/2, 2, 2)`` in the canonical
        increasing-stride layout of ``B`` and of ``Cᵀ`` (an increasing-stride butterfly; ``C``'s own
        decreasing-stride twiddles are ``transposed.flip(1).transpose(-1, -2)``), and ``‖E − B C‖_F²``
        ``(G,)`` (from the product). Cost ``O(n² log n)`` flops (2 x 2 eigenproblems per row and level).
    """
    if not isinstance(E, torch.Tensor) or E.dim() != 3 or E.shape[1] != E.shape[2] or E.shape[1] < 2 or not is_power_of_two(E.shape[1]):
        raise ValueError(f"E: expected a tensor of shape (G, n, n) with n a power of two >= 2, got {describe(E)}")
    groups, n = E.shape[0], E.shape[1]
    work = E if E.is_complex() else E.to((E[:1, :1, :1] * 1j).dtype)  # eigenvectors may be complex
    levels = n.bit_length() - 1
    increasing = work.new_zeros(groups, levels, n // 2, 2, 2)
    transposed = work.new_zeros(groups, levels, n // 2, 2, 2)
    eye = torch.eye(2, dtype=work.dtype, device=work.device)
    blocks = work[:, None]
    for level in reversed(range(levels)):
        h = 1 << level
        count = blocks.shape[1]
        pairs = _pairs_of_blocks(blocks)  # (G, B, i, j, 2, 2)
        if h == 1:
            D, Ej = pairs[:, :, :, 0], eye.expand(groups, count, 1, 2, 2)
            halves = torch.ones(groups, count, 2, 1, 1, dtype=work.dtype, device=work.device)
        else:
            reference = (torch.arange(h, device=work.device) == 0).long()  # k(0) = 1, k(i) = 0 otherwise
            ratios = pairs @ torch.linalg.pinv(pairs[:, :, reference])  # L_j = Ẽ_ij Ẽ_kj⁻¹
            g = torch.Generator().manual_seed(h)
            weights = torch.complex(torch.randn(2, h, generator=g, dtype=torch.float64), torch.randn(2, h, generator=g, dtype=torch.float64))
            weights = weights.to(device=work.device, dtype=work.dtype)[:, :, None, None]
            combined = (weights[0] * ratios).sum(3) @ torch.linalg.pinv((weights[1] * ratios).sum(3))  # (Σ_j c_j L_j)(Σ_j c'_j L_j)⁻¹
            _, D = torch.linalg.eig(combined)  # (G, B, h, 2, 2): columns of D_i
            D = D.to(work.dtype)
            rows = torch.linalg.solve(D[:, :, :, None], pairs)  # D_i⁻¹ Ẽ_ij = Λ_ij E_j
            unit = rows / rows.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(rows.real.dtype).tiny)
            same = (unit * unit[:, :, :1].conj()).sum(-1).abs().sum((-1, -2))  # rows of i against rows of 0
            swapped = (unit.flip(-2) * unit[:, :, :1].conj()).sum(-1).abs().sum((-1, -2))
            swap = swapped > same  # (G, B, h)
            D = torch.where(swap[..., None, None], D.flip(-1), D)
            rows = torch.where(swap[..., None, None, None], rows.flip(-2), rows)
            # stacks[g, b, j, half, :, i] = rows[g, b, i, j, half, :]
            e_rows, a, _ = rank_one_rows(rows.permute(0, 1, 3, 4, 5, 2))  # u (G, B, j, half, 2), v (G, B, j, half, i)
            Ej, halves = e_rows, a.permute(0, 1, 3, 4, 2)  # E_j[half] = u; A_half[i, j] = v
        increasing[:, level] = D.reshape(groups, count * h, 2, 2)
        transposed[:, level] = Ej.transpose(-1, -2).reshape(groups, count * h, 2, 2)
        blocks = halves.reshape(groups, 2 * count, h, h)  # half c of block b -> 2b + c
    # the size-1 blocks left are ones (the last level puts the 2 x 2 block into B)
    # (B C)[k, :] = Cᵀ applied to the row B[k, :]: O(n² log n), no dense product
    product = torch.stack([
        butterfly_multiply_reference(t[None, None], butterfly_to_dense(b[None, None])[:, None, :], True)[:, 0] for b, t in zip(increasing, transposed)
    ])
    squared_error = (product - work).abs().square().sum((-1, -2))
    return increasing, transposed, squared_error


__all__ = ["butterfly_factorisation", "rank_one_rows", "two_sided_factorisation"]
