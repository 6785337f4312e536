"""Krylov products for subdiagonal-with-corner operators (SPEC.md §4.10–4.11, [LDR18]).

``A`` is the subdiagonal matrix with corner, ``A e_j = a_j e_{(j+1) mod n}`` (so
``Aⁿ = (Π_j a_j) I``); ``K(A, g) = [g, Ag, …, A^{n-1} g]``. Column ``t`` of ``K(A, g)`` holds
``g_j · W(j, j+t)`` at row ``(j + t) mod n``, where ``W(j, k) = Π_{l=j}^{k-1} a_{l mod n}``.

Entries that do not wrap around the cycle (``j <= k``) form *weighted lower-triangular
convolutions*

    ``K(A, g) v``:   ``z_k = Σ_{j<=k} W(j, k) g_j v_{k-j}``;
    ``K(A, g)ᵀ y``:  ``out_t = Σ_{j+t<n} W(j, j+t) g_j y_{j+t}``,

which a divide and conquer evaluates in ``O(n log² n)``: for ``j`` in the left half of a block
and ``k`` in the right half, ``W(j, k) = α_j β_k`` with ``α`` the suffix products of the left half
and ``β`` the prefix products of the right half, so the cross term is one FFT convolution
(correlation for the transpose) per block, and all blocks of a level are transformed at once.
Blocks of ``BASE`` entries are done directly. The wrapped entries (``j > k``, through the corner
``a_{n-1}``) weigh ``α_j β_k`` with ``α`` the suffix and ``β`` the prefix products of the whole
cycle: one more convolution (correlation) of length ``2L`` per row, sharing its transform with
the top level. Per row: ``O(r n log² n)`` for ``r`` generators (summed in the frequency domain);
the generator-side spectra are computed once per call and the rows go through in cache-sized
blocks. The reference materialises the Krylov matrices (``O(r n²)`` memory): it is used only by
``to_dense`` and the parity tests.

Numerics: ``α, β`` are products of up to ``n`` operator entries; operators whose partial products
leave the dtype's range (e.g. entries far from 1 in magnitude at large ``n``) overflow, exactly as
the matrices themselves do.
"""

from __future__ import annotations

import math

import torch

from .circulant import by_row_blocks, fft_flops, spectral_dot

#: block size of the direct base case of the divide and conquer
BASE = 16
#: bytes of the ``(rows, r, n)`` intermediates of one block of rows (more steps per block than the
#: circulant Krylov sums: a larger block amortises their per-call overhead; measured best at 2^20,
#: single thread, batch 256, r = 4, n = 4096)
SUBDIAGONAL_BLOCK_BYTES = 1 << 20


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


def subdiagonal_row_blocks(block, rows: torch.Tensor, rank: int) -> torch.Tensor:
    """``block(rows)`` on blocks of rows of about :data:`SUBDIAGONAL_BLOCK_BYTES`
    (:func:`~structmat.ops.circulant.by_row_blocks`)."""
    return by_row_blocks(block, rows, rank, SUBDIAGONAL_BLOCK_BYTES)


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
    """``(forward, inverse)`` of length ``size``: real FFTs for real data, complex otherwise."""
    if real:
        return torch.fft.rfft, lambda s, size: torch.fft.irfft(s, n=size)
    return torch.fft.fft, lambda s, size: torch.fft.ifft(s, n=size)


def _pad(t: torch.Tensor, length: int, value: float = 0.0) -> torch.Tensor:
    """``t`` padded along its last dimension to ``length`` entries with ``value``."""
    pad = length - t.shape[-1]
    return torch.nn.functional.pad(t, (0, pad), value=value) if pad else t


def _level_generators(a: torch.Tensor, G: torch.Tensor, forward, flip: bool) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(size, spectrum of α ⊙ g over the left halves, β over the right halves)`` for every
    divide-and-conquer level (``α ⊙ g`` reversed when ``flip``, for correlations); the generator
    side has no batch dimension, so this is computed once per call."""
    rank, length = G.shape
    levels = []
    size = 2 * BASE
    while size <= length:
        half = size // 2
        alpha, beta = _half_products(a, size)
        left = G.reshape(rank, -1, 2, half)[:, :, 0, :] * alpha  # (r, nb, h)
        levels.append((size, forward(left.flip(-1) if flip else left, n=size), beta))
        size *= 2
    return levels


def _cyclic_products(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(α, β)`` of the wrap-around: ``α_j = Π_{l=j}^{n-1} a_l``, ``β_k = Π_{l<k} a_l``."""
    alpha = a.flip(-1).cumprod(-1).flip(-1)
    beta = torch.cat([torch.ones_like(a[:1]), a[:-1].cumprod(-1)])
    return alpha, beta


def _plan(a: torch.Tensor, G: torch.Tensor, complex_rows: bool):
    """The set-up both subdiagonal multipliers share: the transforms (real unless anything is
    complex), the padded length ``L``, ``a`` and ``G`` padded to it, the in-block offsets
    ``0 … BASE−1`` and the base-case weights ``W(j, k) g_j`` within blocks, ``(r, nb, k, j)``."""
    forward, inverse = _spectra(not (a.is_complex() or G.is_complex() or complex_rows))
    length = _blocks(a.shape[-1])
    padded_a, padded_G = _pad(a, length, 1.0), _pad(G, length)
    offsets = torch.arange(BASE, device=a.device)
    weighted = _within_block_weights(padded_a.reshape(-1, BASE))[None] * padded_G.reshape(G.shape[0], -1, 1, BASE)
    return forward, inverse, length, padded_a, padded_G, offsets, weighted


def subdiagonal_krylov_multiplier(a: torch.Tensor, G: torch.Tensor, complex_rows: bool = False):
    """The map ``V -> Σ_i K(A, g_i) v_i`` for ``a``: ``(n,)``, ``G``: ``(r, n)`` on a block of
    rows ``V``: ``(b, r, n)`` -> ``(b, n)`` (``b >= 1``), with everything that depends only on
    ``a`` and ``G`` computed here, once (``complex_rows``: the rows will be complex -- use complex
    transforms; the rows, ``a`` and ``G`` must share one dtype, as ``ldr_sd`` ensures by casting);
    ``O(r n log² n)`` per row (module docstring).

    Entries of ``K(A, g)`` that do not wrap around the cycle form the weighted lower-triangular
    convolution ``z_k = Σ_{j<=k} W(j, k) g_j v_{k-j}``, done by divide and conquer over blocks of
    ``size = 2·BASE, …, L`` (``L >= n`` the padded length): per level, ``α ⊙ g`` of every left half
    is transformed once per call (:func:`_level_generators`), the first ``size`` entries of each
    ``v_i`` once per row, the rank sum is accumulated in the frequency domain and inverted once
    per block. Wrapped entries (row ``k``, source ``j > k``) weigh ``α_j β_k``
    (:func:`_cyclic_products`): ``β ⊙ ((α ⊙ g) * v)[n:]``, a linear convolution of length ``2L``
    whose transform of ``v`` also serves the top level (its even bins are the length-``L``
    spectrum of the zero-padded ``v``)."""
    n, rank = a.shape[-1], G.shape[0]
    forward, inverse, length, padded_a, padded_G, offsets, weighted = _plan(a, G, complex_rows)
    diff = offsets[:, None] - offsets[None, :]
    # base case: W within blocks of BASE entries times g_j, as one (r·j, nb) matrix per k
    weighted = weighted.permute(2, 0, 3, 1).reshape(BASE, rank * BASE, -1)
    levels = _level_generators(padded_a, padded_G, forward, flip=False)
    alpha, beta = _cyclic_products(a)
    wrapped = forward(alpha * G, n=2 * length)  # (r, F₂)

    def block(rows: torch.Tensor) -> torch.Tensor:
        batch = rows.shape[0]
        padded = _pad(rows, length)
        toeplitz = padded[..., diff.clamp_min(0)] * (diff >= 0)  # (b, r, k, j)
        toeplitz = toeplitz.permute(2, 0, 1, 3).reshape(BASE, batch, rank * BASE)
        z = torch.bmm(toeplitz, weighted).permute(1, 2, 0).reshape(batch, length)  # (k, b, nb) -> (b, L)
        data_doubled = forward(rows, n=2 * length)  # (b, r, F₂)
        for size, generator, level_beta in levels:
            half = size // 2
            data = data_doubled[..., ::2] if size == length else forward(padded[..., :size], n=size)
            spectrum = spectral_dot(data[:, :, None, :], generator)  # (b, nb, F)
            z.view(batch, -1, 2, half)[:, :, 1].addcmul_(inverse(spectrum, size)[..., half:], level_beta)
        z = z[:, :n]
        if n > 1:
            wrap = inverse(spectral_dot(data_doubled, wrapped), 2 * length)[:, n : 2 * n - 1]
            z[:, :-1].addcmul_(wrap, beta[:-1])
        return z

    return block


def subdiagonal_krylov_multiply(a: torch.Tensor, G: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """``Σ_i K(A, g_i) v_i`` for ``a``: ``(n,)``, ``G``: ``(r, n)``, ``V``: ``(B, r, n)`` ->
    ``(B, n)``: :func:`subdiagonal_krylov_multiplier` on cache-sized blocks of rows
    (:func:`~structmat.ops.circulant.by_row_blocks`); ``O(r n log² n)`` per row."""
    if V.shape[0] == 0:  # FFT libraries reject empty transforms
        return V.new_zeros(0, a.shape[-1])
    return subdiagonal_row_blocks(subdiagonal_krylov_multiplier(a, G, V.is_complex()), V, G.shape[0])


def subdiagonal_krylov_transpose_multiplier(a: torch.Tensor, G: torch.Tensor, complex_rows: bool = False):
    """The map ``Y -> [K(A, g_i)ᵀ y]_i`` for ``a``: ``(n,)``, ``G``: ``(r, n)`` on a block of rows
    ``Y``: ``(b, n)`` -> ``(b, r, n)`` (``b >= 1``), the ``a``/``G`` side computed here, once
    (``complex_rows`` as in :func:`subdiagonal_krylov_multiplier`);
    ``O(r n log² n)`` per row: the transpose of :func:`subdiagonal_krylov_multiplier`
    with correlations, ``out_t = Σ_j W(j, j+t) g_j y_{j+t}`` by the same divide and conquer (the
    block sum of each level accumulated in the frequency domain), plus the wrapped entries
    ``out_t += Σ_j (α ⊙ g)_j (β ⊙ y)_{j+t-n}``, a correlation of length ``2L`` inverted together
    with the top level (its spectrum, doubled, on the even bins)."""
    n, rank = a.shape[-1], G.shape[0]
    forward, inverse, length, padded_a, padded_G, offsets, weighted = _plan(a, G, complex_rows)
    diff = offsets[:, None] - offsets[None, :]
    weighted = weighted.permute(2, 1, 0, 3).reshape(BASE, -1, rank * BASE)  # (k, nb, r·j)
    # sum along the diagonals k - j = t of each (k, j) block (upper entries of weights are zero)
    lag = (diff.reshape(-1, 1) == offsets[None, :]).to(weighted.dtype)  # (k·j, t)
    levels = _level_generators(padded_a, padded_G, forward, flip=True)
    alpha, beta = _cyclic_products(a)
    wrapped = forward((alpha * G).flip(-1), n=2 * length)  # (r, F₂)

    def block(rows: torch.Tensor) -> torch.Tensor:
        batch = rows.shape[0]
        padded = _pad(rows, length)
        products = torch.bmm(padded.reshape(batch, -1, BASE).permute(2, 0, 1), weighted)  # (k, b, r·j)
        products = products.reshape(BASE, batch, rank, BASE).permute(1, 2, 0, 3).reshape(batch, rank, -1)
        out = _pad(products @ lag, length)  # (b, r, L)
        spectrum = forward(rows * beta, n=2 * length)[:, None, :] * wrapped  # wrap, (b, r, F₂)
        for size, generator, level_beta in levels:
            half = size // 2
            data = forward(padded.reshape(batch, -1, 2, half)[:, :, 1, :] * level_beta, n=size)  # (b, nb, F)
            if data.shape[1] <= rank:  # few blocks (top levels): accumulate over the blocks
                level = spectral_dot(data[:, :, None, :], generator.transpose(0, 1))  # (b, r, F)
            else:
                level = torch.stack([(data * generator[i]).sum(1) for i in range(rank)], dim=1)
            if size == length:  # inverted with the wrap: 2·level on the even bins of the 2L grid
                spectrum[..., ::2].add_(level, alpha=2)
            else:  # entry t - 1 holds lag t (left half j, right half j + t)
                out[..., 1:size].add_(inverse(level, size)[..., : size - 1])
        out[..., 1:].add_(inverse(spectrum, 2 * length)[..., : length - 1])
        return out[..., :n]

    return block


def subdiagonal_krylov_transpose_multiply(a: torch.Tensor, G: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """``[K(A, g_i)ᵀ y]_i`` for ``a``: ``(n,)``, ``G``: ``(r, n)``, ``Y``: ``(B, n)`` ->
    ``(B, r, n)``: :func:`subdiagonal_krylov_transpose_multiplier` on cache-sized blocks of rows;
    ``O(r n log² n)`` per row."""
    if Y.shape[0] == 0:
        return Y.new_zeros(0, G.shape[0], a.shape[-1])
    return subdiagonal_row_blocks(subdiagonal_krylov_transpose_multiplier(a, G, Y.is_complex()), Y, G.shape[0])


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
    ``rank`` generators: the direct base case (``rank · L · BASE`` multiply-adds), per
    divide-and-conquer level a transform of ``rank`` prefixes (correlation: one per block) and one
    inverse per block with ``rank`` spectral products, and the wrap-around convolution of length
    ``2L`` (``rank + 1`` transforms; ``L`` = ``n`` rounded up to ``BASE · 2^k``)."""
    real = not dtype.is_complex
    mul_add = 2 if real else 8
    length = _blocks(n)
    bins = (lambda size: size // 2 + 1) if real else (lambda size: size)
    total = rank * length * BASE * mul_add + (rank + 1) * fft_flops(2 * length, real) + rank * bins(2 * length) * 8
    size = 2 * BASE
    while size <= length:
        blocks = length // size
        total += (rank + blocks) * fft_flops(size, real) + rank * blocks * bins(size) * 8
        size *= 2
    return int(math.ceil(total))
