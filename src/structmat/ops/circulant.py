"""FFT-based f-circulant, Toeplitz and Krylov-sum products (SPEC.md §4.5, §4.6, §4.10).

``Z_f(c)`` is the f-circulant with first column ``c`` (SPEC.md §4.5): ``Z_f(c)[i, j] = c_{i-j}``
for ``i >= j`` and ``f c_{n+i-j}`` for ``i < j`` (``f = 1`` circulant, ``f = -1`` skew-circulant,
``f = 0`` lower-triangular Toeplitz). It equals the Krylov matrix ``K(Z_f, c)`` (SPEC.md §4.10,
check E3), which is why every Toeplitz/Hankel-like product reduces to these kernels.

Two implementations of each product, parity-tested against each other and the dense matrices:

* the **reference** reads like SPEC.md: ``C(c) x = ifft(fft(c) ⊙ fft(x))``, and for ``f != 1``
  ``Z_f(c) = D_β⁻¹ C(D_β c) D_β`` with ``β = f^{1/n}``, ``D_β = diag(β^j)`` (complex FFTs of
  length ``n``; ``f = 0`` uses the zero-padded linear convolution);
* the **fast** path computes the linear convolution ``z = c * x`` with one real FFT of length
  ``L >= 2n - 1`` (``rfft`` for real dtypes) and folds it: ``Z_f(c) x = z[:n] + f z[n:2n]``;
  circulants (``f = 1``) use a length-``n`` real FFT directly. The Krylov sums
  ``Σ_i Z_f(g_i) Z_g(h_i)ᵀ x`` add the ``r`` terms in the frequency domain, so they cost
  ``2r + 2`` transforms per row.

All functions act on the last dimension, broadcast leading dimensions, and are differentiable
(autograd through ``torch.fft``; the backward of an FFT product is again an FFT product).
"""

from __future__ import annotations

import cmath
import math

import torch

from .backend import choose


def fft_flops(length: int, real: bool) -> int:
    """Real flops of one FFT of ``length`` points: ``5 L log2 L`` for a complex FFT, half of that
    for a real-input FFT (the split-radix estimates used across ``structmat.ops``)."""
    if length <= 1:
        return 1 if real else 2
    count = 5.0 * length * math.log2(length)
    return math.ceil(count / 2 if real else count)


def fast_fft_length(n: int) -> int:
    """The smallest 5-smooth integer ``>= n`` (``2^a 3^b 5^c``: lengths pocketFFT/MKL handle
    fastest); pure Python so that ``torch.compile`` folds it to a constant."""
    best = 1
    while best < n:
        best *= 2
    five = 1
    while five < 2 * n:
        three = five
        while three < 2 * n:
            length = three
            while length < n:
                length *= 2
            best = min(best, length)
            three *= 3
        five *= 5
    return best


def convolution_length(n: int) -> int:
    """A fast FFT length ``>= 2n - 1`` (linear convolution of two length-``n`` sequences)."""
    return fast_fft_length(max(1, 2 * n - 1))


# --------------------------------------------------------------------------- dense forms
def f_circulant_matrix(c: torch.Tensor, f: complex = 1.0) -> torch.Tensor:
    """The dense ``Z_f(c)`` of shape ``(..., n, n)`` for ``c`` of shape ``(..., n)`` (tests and
    ``to_dense``; never used by a forward). Cost ``O(n²)``."""
    n = c.shape[-1]
    i = torch.arange(n, device=c.device)
    diff = i[:, None] - i[None, :]
    entries = c[..., diff % n]
    return entries if f == 1 else torch.where(diff < 0, f * entries, entries)


def toeplitz_matrix(diagonals: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """Dense ``T[i, j] = t_{i-j}`` with ``diagonals[d + in_features - 1] = t_d`` for
    ``d ∈ [-(in_features-1), out_features-1]`` (SPEC.md §4.6)."""
    i = torch.arange(out_features, device=diagonals.device)
    j = torch.arange(in_features, device=diagonals.device)
    return diagonals[i[:, None] - j[None, :] + in_features - 1]


# --------------------------------------------------------------------------- f-circulant products
def _beta_powers(f: complex, n: int, dtype: torch.dtype, device) -> torch.Tensor:
    beta = cmath.exp(cmath.log(complex(f)) / n)
    powers = torch.tensor([beta**j for j in range(n)], dtype=torch.complex128, device=device)
    return powers.to(dtype)


def _complex_of(*tensors: torch.Tensor) -> torch.dtype:
    double = any(t.dtype in (torch.float64, torch.complex128) for t in tensors)
    return torch.complex128 if double else torch.complex64


def f_circulant_multiply_reference(c: torch.Tensor, x: torch.Tensor, f: complex = 1.0) -> torch.Tensor:
    """``Z_f(c) x`` along the last dimension, literally as SPEC.md §4.5 writes it:
    ``C(c)x = ifft(fft(c) ⊙ fft(x))``; ``Z_f(c) = D_β⁻¹ C(D_β c) D_β`` (``β = f^{1/n}``) for
    ``f ∉ {0, 1}``; ``f = 0`` by a zero-padded (linear) convolution. Complex FFTs of length ``n``."""
    n = c.shape[-1]
    cdtype = _complex_of(c, x)
    real = not (c.is_complex() or x.is_complex())
    if f == 0:
        length = 2 * n
        z = torch.fft.ifft(torch.fft.fft(c.to(cdtype), n=length) * torch.fft.fft(x.to(cdtype), n=length))
        y = z[..., :n]
    elif f == 1:
        y = torch.fft.ifft(torch.fft.fft(c.to(cdtype)) * torch.fft.fft(x.to(cdtype)))
    else:
        d = _beta_powers(f, n, cdtype, c.device)
        y = torch.fft.ifft(torch.fft.fft(c * d) * torch.fft.fft(x * d)) / d
    return y.real if real and complex(f).imag == 0 else y


def f_circulant_multiply(c: torch.Tensor, x: torch.Tensor, f: complex = 1.0) -> torch.Tensor:
    """``Z_f(c) x`` along the last dimension (``c``: ``(..., n)`` broadcast against ``x``).

    Fast path (:func:`~structmat.ops.backend.choose`): circulant by a length-``n`` FFT, other
    ``f`` by a linear convolution of length ``L = convolution_length(n)`` folded as
    ``z[:n] + f z[n:2n]``; real FFTs for real tensors. Cost ``O(n log n)`` per row."""
    empty = _empty_rows(x, c, width=c.shape[-1])
    if empty is not None:
        return empty
    if choose(c, x) == "reference" or complex(f).imag != 0:
        return f_circulant_multiply_reference(c, x, f)
    n = c.shape[-1]
    if c.is_complex() or x.is_complex():
        forward, inverse = torch.fft.fft, torch.fft.ifft
    else:
        forward, inverse = torch.fft.rfft, torch.fft.irfft
    if f == 1:
        if inverse is torch.fft.irfft:
            return inverse(forward(c) * forward(x), n=n)
        return inverse(forward(c) * forward(x))
    length = convolution_length(n)
    z = _convolve(c, x, length, forward, inverse)
    return _fold(z, n, f)


def f_circulant_transpose_multiply(c: torch.Tensor, x: torch.Tensor, f: complex = 1.0) -> torch.Tensor:
    """``Z_f(c)ᵀ x``: f-circulants are persymmetric, ``Z_f(c)ᵀ = J Z_f(c) J`` (``J`` the
    reversal), so this is one :func:`f_circulant_multiply` between two flips."""
    return f_circulant_multiply(c, x.flip(-1), f).flip(-1)


def _empty_rows(x: torch.Tensor, *params: torch.Tensor, width: int) -> torch.Tensor | None:
    """The result for a batch without rows (FFT libraries reject empty transforms), else None."""
    if x.shape[:-1].numel():
        return None
    dtype = torch.promote_types(x.dtype, params[0].dtype)
    return torch.zeros(*x.shape[:-1], width, dtype=dtype, device=x.device)


def _convolve(a, b, length, forward, inverse):
    spectrum = forward(a, n=length) * forward(b, n=length)
    return inverse(spectrum, n=length) if inverse is torch.fft.irfft else inverse(spectrum)[..., :length]


def _fold(z: torch.Tensor, n: int, f: complex) -> torch.Tensor:
    """``z[:n] + f z[n:2n]`` (the reduction of a linear convolution modulo ``Xⁿ - f``)."""
    head, tail = z[..., :n], z[..., n : 2 * n]
    if f == 0:
        return head
    tail = torch.nn.functional.pad(tail, (0, n - tail.shape[-1])) if tail.shape[-1] < n else tail
    return head + f * tail


# --------------------------------------------------------------------------- Toeplitz products
def toeplitz_multiply(diagonals: torch.Tensor, x: torch.Tensor, out_features: int) -> torch.Tensor:
    """``T x`` for the ``(out_features, n)`` Toeplitz matrix of :func:`toeplitz_matrix`, ``x`` of
    shape ``(..., n)`` -> ``(..., out_features)``.

    Circulant embedding (SPEC.md §4.6): with ``s = diagonals`` (length ``m + n - 1``),
    ``y_i = Σ_j s_{i-j+n-1} x_j`` is entry ``i + n - 1`` of the linear convolution ``s * x``; a
    cyclic convolution of length ``L >= m + n - 1`` computes it without wrap-around overlap.
    Cost: three FFTs of length ``L``, ``O((m + n) log(m + n))`` per row."""
    empty = _empty_rows(x, diagonals, width=out_features)
    if empty is not None:
        return empty
    n = x.shape[-1]
    m = out_features
    length = fast_fft_length(m + n - 1)
    if diagonals.is_complex() or x.is_complex():
        z = torch.fft.ifft(torch.fft.fft(diagonals, n=length) * torch.fft.fft(x, n=length))
    else:
        z = torch.fft.irfft(torch.fft.rfft(diagonals, n=length) * torch.fft.rfft(x, n=length), n=length)
    return z[..., n - 1 : n - 1 + m]


# --------------------------------------------------------------------------- Krylov sums
def f_circulant_krylov_multiply_reference(
    G: torch.Tensor, H: torch.Tensor, x: torch.Tensor, f: complex, g: complex
) -> torch.Tensor:
    """``Σ_i K(Z_f, g_i) K(Z_g, h_i)ᵀ x = Σ_i Z_f(g_i) Z_g(h_i)ᵀ x`` (SPEC.md §4.10), term by
    term with the reference f-circulant products. ``G, H``: ``(r, n)``; ``x``: ``(B, n)``."""
    inner = f_circulant_multiply_reference(H, x[:, None, :].flip(-1), g).flip(-1)  # (B, r, n)
    return f_circulant_multiply_reference(G, inner, f).sum(dim=1)


def f_circulant_transposed_generator(c: torch.Tensor, f: complex) -> torch.Tensor:
    """``c'`` with ``Z_f(c)ᵀ = Z_{1/f}(c')`` for ``|f| = 1`` (``f = ±1``):
    ``c' = (c_0, f c_{n-1}, …, f c_1)`` (reading the first row of ``Z_f(c)`` as a column)."""
    return torch.cat([c[..., :1], f * c[..., 1:].flip(-1)], dim=-1)


def cyclic_transforms(f: complex, n: int, real: bool, dtype: torch.dtype, device):
    """``(forward, inverse)`` diagonalising multiplication modulo ``Xⁿ - f`` for ``f = ±1``
    with the fewest FFT points, or ``None`` for other ``f``:

    * ``f = 1``: ``rfft``/``irfft`` (real) or ``fft``/``ifft`` of length ``n``;
    * ``f = -1``, complex: ``fft(D x)``, ``D⁻¹ ifft(·)`` with ``D = diag(e^{iπj/n})`` (SPEC.md §4.5);
    * ``f = -1``, real, ``n`` even: the ``n/2`` values at the roots ``e^{iπ(1-4k)/n}`` of
      ``Xⁿ + 1`` (one of each conjugate pair) — ``fft(e^{iπl/n} (x_l + i x_{l+n/2}))``, a complex
      FFT of ``n/2`` points, the cost of a real FFT of ``n`` (because ``ζ^{n/2} = i``); the
      inverse unpacks ``q_l + i q_{l+n/2} = e^{-iπl/n} ifft(·)_l``.

    Products of spectra are spectra of products modulo ``Xⁿ - f``; each transform costs
    ``O(n log n)``."""
    if f == 1:
        if real:
            return torch.fft.rfft, lambda s: torch.fft.irfft(s, n=n)
        return torch.fft.fft, torch.fft.ifft
    if f != -1 or (real and n % 2):
        return None
    cdtype = torch.complex64 if dtype in (torch.float32, torch.complex64) else torch.complex128
    if not real:
        d = torch.polar(torch.ones(n, dtype=torch.float64, device=device), torch.arange(n, dtype=torch.float64, device=device) * (math.pi / n)).to(cdtype)
        return (lambda v: torch.fft.fft(v * d)), (lambda s: torch.fft.ifft(s) * d.conj())
    half = n // 2
    angle = torch.arange(half, dtype=torch.float64, device=device) * (math.pi / n)
    twist = torch.polar(torch.ones_like(angle), angle).to(cdtype)

    def forward(v):
        return torch.fft.fft(torch.complex(v[..., :half], v[..., half:]) * twist)

    def inverse(s):
        packed = torch.view_as_real(torch.fft.ifft(s).mul_(twist.conj()))  # (..., n/2, 2); in place: no new buffer
        return packed.transpose(-1, -2).reshape(*packed.shape[:-2], n)

    return forward, inverse


#: bytes of the ``(rows, r, n)`` intermediate of one block of rows in :func:`f_circulant_krylov_multiply`
#: (measured, batch 256, r = 4, float32: 32 rows are best or near best at n = 1024 and 4096 with 1
#: and 2 threads; larger blocks leave the cache and their temporaries tend to be mapped afresh by
#: the allocator on every call, smaller ones pay more per-call overhead and split poorly over threads)
KRYLOV_BLOCK_BYTES = 1 << 19
#: fewest rows per block (long rows: per-call overhead and thread splitting)
MIN_BLOCK_ROWS = 32


def by_row_blocks(block, x: torch.Tensor, rank: int, block_bytes: int | None = None) -> torch.Tensor:
    """``block(x)`` evaluated on blocks of rows whose ``(rows, rank, n)`` intermediates take about
    ``block_bytes`` (default :data:`KRYLOV_BLOCK_BYTES`; at least :data:`MIN_BLOCK_ROWS` rows): each block's elementwise steps (spectral
    products, twists, unpacking, the rank sum) then run on data still in the L2/L3 cache instead
    of streaming ``rank`` full-batch arrays through memory, and the temporaries stay small enough
    to be recycled by the allocator rather than mapped afresh (page faults) on every call. Rows
    are independent, so the result is that of one call on ``x``."""
    budget = KRYLOV_BLOCK_BYTES if block_bytes is None else block_bytes
    rows = max(MIN_BLOCK_ROWS, budget // (rank * x.shape[-1] * x.element_size()))
    if x.shape[0] <= rows:
        return block(x)
    # each block written into the output as it is produced (no list of block results, then a
    # copy: a smaller peak, so the allocator keeps the memory between calls)
    first = block(x[:rows])
    out = first.new_empty((x.shape[0], *first.shape[1:]))
    out[:rows] = first
    for start in range(rows, x.shape[0], rows):
        out[start : start + rows] = block(x[start : start + rows])
    return out


def spectral_dot(spectra: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``Σ_i spectra[:, i] ⊙ weights[i]`` for ``spectra`` ``(B, r, F)``, ``weights`` ``(r, F)``:
    accumulated term by term into one ``(B, F)`` buffer (no ``(B, r, F)`` product to allocate, write
    and re-read: the sum is memory-bound)."""
    total = spectra[:, 0] * weights[0]
    for i in range(1, spectra.shape[1]):
        total = total.addcmul_(spectra[:, i], weights[i])
    return total


def f_circulant_krylov_multiply(G: torch.Tensor, H: torch.Tensor, x: torch.Tensor, f: complex, g: complex) -> torch.Tensor:
    """``Σ_i Z_f(g_i) Z_g(h_i)ᵀ x`` for ``G, H`` of shape ``(r, n)`` and ``x`` of shape ``(B, n)``.

    Fast path for ``f, g ∈ {1, -1}``: ``Z_g(h)ᵀ = Z_g(h')`` (:func:`f_circulant_transposed_generator`),
    so the inner products ``Z_g(h'_i) x`` share one transform of ``x`` and need ``r`` inverse
    transforms; the outer sum is accumulated in the spectral domain of :func:`cyclic_transforms`
    and inverted once: ``2r + 2`` transforms per row, each of the cost of a real FFT of ``n``
    points for real tensors (``n`` even), i.e. ``O(r n log n)`` (SPEC.md §4.10). The generator
    spectra are computed once per call and the rows are processed in cache-sized blocks
    (:func:`by_row_blocks`). Other ``f, g``
    use linear convolutions of length ``L = convolution_length(n)`` folded modulo ``Xⁿ - f``."""
    empty = _empty_rows(x, G, width=x.shape[-1])
    if empty is not None:
        return empty
    if choose(G, H, x) == "reference" or complex(f).imag != 0 or complex(g).imag != 0:
        return f_circulant_krylov_multiply_reference(G, H, x, f, g)
    n = x.shape[-1]
    real = not (G.is_complex() or H.is_complex() or x.is_complex())
    dtype = torch.promote_types(torch.promote_types(G.dtype, H.dtype), x.dtype)
    inner_pair = cyclic_transforms(g, n, real, dtype, x.device)
    outer_pair = cyclic_transforms(f, n, real, dtype, x.device)
    if inner_pair is not None and outer_pair is not None:
        (inner_forward, inner_inverse), (outer_forward, outer_inverse) = inner_pair, outer_pair
        inner_weights = inner_forward(f_circulant_transposed_generator(H, g))  # (r, ·), once per call
        outer_weights = outer_forward(G)

        def block(rows: torch.Tensor) -> torch.Tensor:
            inner = inner_inverse(inner_forward(rows)[:, None, :] * inner_weights)  # (b, r, n)
            return outer_inverse(spectral_dot(outer_forward(inner), outer_weights))

        return by_row_blocks(block, x, G.shape[0])
    forward, inverse = (torch.fft.rfft, torch.fft.irfft) if real else (torch.fft.fft, torch.fft.ifft)

    def invert(spectrum, length):
        return inverse(spectrum, n=length) if real else inverse(spectrum)

    inner_length = n if g == 1 else convolution_length(n)
    inner = invert(forward(x.flip(-1), n=inner_length)[:, None, :] * forward(H, n=inner_length), inner_length)
    inner = (inner if g == 1 else _fold(inner, n, g)).flip(-1)  # (B, r, n)
    outer_length = n if f == 1 else convolution_length(n)
    total = (forward(inner, n=outer_length) * forward(G, n=outer_length)).sum(dim=1)
    out = invert(total, outer_length)
    return out if f == 1 else _fold(out, n, f)
