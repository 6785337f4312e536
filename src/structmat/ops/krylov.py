"""Krylov products for subdiagonal-with-corner operators (SPEC.md §4.10–4.11, [LDR18]).

``A`` is the subdiagonal matrix with corner, ``A e_j = a_j e_{(j+1) mod n}`` (so
``Aⁿ = (Π_j a_j) I``); ``K(A, g) = [g, Ag, …, A^{n-1} g]``. Column ``t`` of ``K(A, g)`` holds
``g_j · W(j, j+t)`` at row ``(j + t) mod n``, where ``W(j, k) = Π_{l=j}^{k-1} a_{l mod n}``.

Unrolling the cycle to length ``2n`` (``a`` repeated, ``g`` and ``v`` zero-padded) turns both
products into *weighted lower-triangular convolutions*

    ``K(A, g) v``:   ``z_k = Σ_{j<=k} W(j, k) g_j v_{k-j}``,  ``y_k = z_k + z_{k+n}``;
    ``K(A, g)ᵀ y``:  ``out_t = Σ_j W(j, j+t) g_j ỹ_{j+t}``,    ``ỹ = (y, y)``,

which a divide and conquer evaluates in ``O(n log² n)``: for ``j`` in the left half of a block
and ``k`` in the right half, ``W(j, k) = α_j β_k`` with ``α`` the suffix products of the left half
and ``β`` the prefix products of the right half, so the cross term is one FFT convolution
(correlation for the transpose) per block, and all blocks of a level are transformed at once.
Blocks of ``BASE`` entries are done directly. Per row: ``O(r n log² n)`` for ``r`` generators
(summed in the frequency domain). The reference materialises the Krylov matrices
(``O(r n²)`` memory): it is used only by ``to_dense`` and the parity tests.

Numerics: ``α, β`` are products of up to ``n`` operator entries; operators whose partial products
leave the dtype's range (e.g. entries far from 1 in magnitude at large ``n``) overflow, exactly as
the matrices themselves do.
"""

from __future__ import annotations

import math

import torch

from .circulant import fft_flops

#: block size of the direct base case of the divide and conquer
BASE = 16


def subdiagonal_apply(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``A v`` (last dimension): ``(A v)_{(j+1) mod n} = a_j v_j``."""
    return torch.roll(a * v, 1, dims=-1)


def subdiagonal_transpose_apply(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``Aᵀ v`` (last dimension): ``(Aᵀ v)_j = a_j v_{(j+1) mod n}``."""
    return a * torch.roll(v, -1, dims=-1)


def krylov_matrix(apply, v: torch.Tensor) -> torch.Tensor:
    """``K = [v, Av, …, A^{n-1} v]`` of shape ``(..., n, n)`` for ``v`` of shape ``(..., n)``
    and ``apply(v) = A v`` (dense reference; ``O(n)`` applications)."""
    columns = [v]
    for _ in range(v.shape[-1] - 1):
        columns.append(apply(columns[-1]))
    return torch.stack(columns, dim=-1)


def _blocks(total: int) -> int:
    length = BASE
    while length < total:
        length *= 2
    return length


def _within_block_weights(a_blocks: torch.Tensor) -> torch.Tensor:
    """``W[blk, k, j] = Π_{l=j}^{k-1} a[blk, l]`` for ``j <= k``, zero above the diagonal."""
    size = a_blocks.shape[-1]
    index = torch.arange(size, device=a_blocks.device)
    # runs[blk, j, l] = Π_{j <= l' <= l} a[blk, l'] (cumulative products from each start j)
    runs = torch.where(index[None, :] >= index[:, None], a_blocks[:, None, :], torch.ones_like(a_blocks[:1, None, :])).cumprod(-1)
    shifted = torch.cat([torch.ones_like(runs[..., :1]), runs[..., :-1]], dim=-1)  # Π_{l'=j}^{k-1}, indexed [j, k]
    return shifted.transpose(-1, -2) * (index[None, :] <= index[:, None])


def _half_products(a: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For blocks of ``size`` (halves ``h``): ``α[blk, j] = Π_{l=j}^{h-1}`` over the left half,
    ``β[blk, k] = Π_{l<k}`` over the right half."""
    half = size // 2
    parts = a.reshape(-1, 2, half)
    alpha = parts[:, 0].flip(-1).cumprod(-1).flip(-1)
    beta = torch.cat([torch.ones_like(parts[:, 1, :1]), parts[:, 1, :-1].cumprod(-1)], dim=-1)
    return alpha, beta


def _spectra(real: bool):
    if real:
        return torch.fft.rfft, lambda s, n: torch.fft.irfft(s, n=n)
    return torch.fft.fft, lambda s, n: torch.fft.ifft(s, n=n)


def lower_weighted_convolution(a: torch.Tensor, G: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """``z[b, k] = Σ_i Σ_{j<=k} W(j, k) G[i, j] V[b, i, k-j]`` (``a``: ``(L,)``, ``G``: ``(r, L)``,
    ``V``: ``(B, r, L)``) by divide and conquer, ``O(r L log² L)`` per row."""
    total = a.shape[-1]
    length = _blocks(total)
    pad = length - total
    if pad:
        a = torch.cat([a, torch.ones(pad, dtype=a.dtype, device=a.device)])
        G = torch.nn.functional.pad(G, (0, pad))
        V = torch.nn.functional.pad(V, (0, pad))
    batch, rank = V.shape[0], G.shape[0]
    real = not (a.is_complex() or G.is_complex() or V.is_complex())
    forward, inverse = _spectra(real)
    # base case: within blocks of BASE entries
    weights = _within_block_weights(a.reshape(-1, BASE))  # (nb, k, j)
    offsets = torch.arange(BASE, device=a.device)
    diff = offsets[:, None] - offsets[None, :]
    toeplitz = V[..., diff.clamp_min(0)] * (diff >= 0)  # (B, r, k, j)
    weighted = weights[None] * G.reshape(rank, -1, 1, BASE)  # (r, nb, k, j)
    z = torch.einsum("rnkj,brkj->bnk", weighted, toeplitz).reshape(batch, length)
    size = 2 * BASE
    while size <= length:
        half = size // 2
        alpha, beta = _half_products(a, size)
        u = G.reshape(rank, -1, 2, half)[:, :, 0, :] * alpha  # (r, nb, h)
        spectrum = torch.einsum("rnf,brf->bnf", forward(u, n=size), forward(V[..., :size], n=size))
        cross = inverse(spectrum, size)[..., half:] * beta  # (B, nb, h)
        z = z.reshape(batch, -1, 2, half)
        z = torch.stack([z[:, :, 0], z[:, :, 1] + cross], dim=2).reshape(batch, length)
        size *= 2
    return z[:, :total]


def lower_weighted_correlation(a: torch.Tensor, G: torch.Tensor, Y: torch.Tensor, width: int) -> torch.Tensor:
    """``out[b, i, t] = Σ_j W(j, j+t) G[i, j] Y[b, j+t]`` for ``t < width`` (``a``: ``(L,)``,
    ``G``: ``(r, L)``, ``Y``: ``(B, L)``): the transpose of :func:`lower_weighted_convolution`,
    same divide and conquer with correlations, ``O(r L log² L)`` per row."""
    total = a.shape[-1]
    length = _blocks(total)
    pad = length - total
    if pad:
        a = torch.cat([a, torch.ones(pad, dtype=a.dtype, device=a.device)])
        G = torch.nn.functional.pad(G, (0, pad))
        Y = torch.nn.functional.pad(Y, (0, pad))
    batch, rank = Y.shape[0], G.shape[0]
    real = not (a.is_complex() or G.is_complex() or Y.is_complex())
    forward, inverse = _spectra(real)
    weights = _within_block_weights(a.reshape(-1, BASE))
    offsets = torch.arange(BASE, device=a.device)
    diff = offsets[:, None] - offsets[None, :]
    products = torch.einsum("nkj,rnj,bnk->brkj", weights, G.reshape(rank, -1, BASE), Y.reshape(batch, -1, BASE))
    # sum along the diagonals k - j = t of each (k, j) block (upper entries of weights are zero)
    lag = (diff.reshape(-1, 1) == offsets[None, :]).to(products.dtype)  # (k·j, t)
    out = torch.nn.functional.pad(products.reshape(batch, rank, -1) @ lag, (0, length - BASE))
    size = 2 * BASE
    while size <= length:
        half = size // 2
        alpha, beta = _half_products(a, size)
        u = (G.reshape(rank, -1, 2, half)[:, :, 0, :] * alpha).flip(-1)  # reversed left halves
        w = torch.nn.functional.pad(Y.reshape(batch, -1, 2, half)[:, :, 1, :] * beta, (half, 0))
        spectrum = torch.einsum("rnf,bnf->brf", forward(u, n=size), forward(w, n=size))
        circular = inverse(spectrum, size)  # entry (h - 1 + t) mod size holds lag t
        lags = torch.roll(circular, -(half - 1), dims=-1)
        out = out + torch.nn.functional.pad(lags, (0, length - size))
        size *= 2
    return out[..., :width]


def subdiagonal_krylov_multiply(a: torch.Tensor, G: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """``Σ_i K(A, g_i) v_i`` for ``a``: ``(n,)``, ``G``: ``(r, n)``, ``V``: ``(B, r, n)`` ->
    ``(B, n)``; ``O(r n log² n)`` per row (module docstring)."""
    n = a.shape[-1]
    if V.shape[0] == 0:  # FFT libraries reject empty transforms
        return V.new_zeros(0, n)
    z = lower_weighted_convolution(
        a.repeat(2), torch.nn.functional.pad(G, (0, n)), torch.nn.functional.pad(V, (0, n))
    )
    return z[:, :n] + z[:, n:]


def subdiagonal_krylov_transpose_multiply(a: torch.Tensor, G: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """``[K(A, g_i)ᵀ y]_i`` for ``a``: ``(n,)``, ``G``: ``(r, n)``, ``Y``: ``(B, n)`` ->
    ``(B, r, n)``; ``O(r n log² n)`` per row (module docstring)."""
    n = a.shape[-1]
    if Y.shape[0] == 0:
        return Y.new_zeros(0, G.shape[0], n)
    return lower_weighted_correlation(a.repeat(2), torch.nn.functional.pad(G, (0, n)), Y.repeat(1, 2), n)


def subdiagonal_krylov_multiply_reference(a: torch.Tensor, G: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Reference of :func:`subdiagonal_krylov_multiply` through the dense Krylov matrices."""
    K = krylov_matrix(lambda v: subdiagonal_apply(a, v), G)  # (r, n, n)
    return torch.einsum("rkt,brt->bk", K, V)


def subdiagonal_krylov_transpose_multiply_reference(a: torch.Tensor, G: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Reference of :func:`subdiagonal_krylov_transpose_multiply` (dense Krylov matrices)."""
    K = krylov_matrix(lambda v: subdiagonal_apply(a, v), G)
    return torch.einsum("rkt,bk->brt", K, Y)


def subdiagonal_krylov_flops(n: int, rank: int, dtype: torch.dtype) -> int:
    """Real flops per row of one :func:`subdiagonal_krylov_multiply` (or its transpose) with
    ``rank`` generators: the direct base case (``rank · L · BASE`` multiply-adds) plus, per
    divide-and-conquer level, ``rank + 1`` forward FFTs, one inverse FFT and ``rank`` spectral
    products per block (``L`` = the unrolled length ``2n`` rounded up to ``BASE · 2^k``)."""
    real = not dtype.is_complex
    mul_add = 2 if real else 8
    length = _blocks(2 * n)
    total = rank * length * BASE * mul_add
    size = 2 * BASE
    while size <= length:
        blocks = length // size
        bins = size // 2 + 1 if real else size
        total += blocks * ((rank + 2) * fft_flops(size, real) + rank * bins * 8)
        size *= 2
    return int(math.ceil(total))
