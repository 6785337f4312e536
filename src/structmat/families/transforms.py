"""Exact fast transforms as structured layers, for any size (SPEC.md §6, checks B1, B2, C1--C6).

Every function returns a :class:`~structmat.core.linear.StructuredLinear` (no bias) whose weight
is assembled from butterfly (:mod:`.butterfly`), K-matrix (:mod:`.kaleidoscope`), permutation and
diagonal factors with :class:`~structmat.core.compose.Product` /
:class:`~structmat.core.compose.RealPart` -- never from a stored dense matrix -- and whose
``to_dense()`` equals the classical transform. Diagonals are merged into the neighbouring
butterfly level (SPEC.md §5.1(4)). The exact values are an initialisation: every twiddle and
diagonal stays trainable (e.g. to fine-tune a learnable DCT). ``layer.structure`` names the
composition, e.g. ``"product(butterfly, permutation)"``.

Sizes. Powers of two use the Cooley--Tukey butterfly ``F_n = B_F P_br`` (SPEC.md §6.1), cost
``14 n log2 n`` real flops (complex). Any other ``n`` uses Bluestein's chirp-z identity
``F_n = D T D`` with ``D = diag(e^{-πi j²/n})`` and the symmetric Toeplitz
``T[j, k] = e^{πi (j-k)²/n}``, ``T`` embedded in a circulant of size
``N = next_pow2(2n - 1) < 4n`` (SPEC.md §6.7) that is one ``𝓑𝓑*`` unit
``(1/N) B̄_F diag(spectrum[br]) B_Fᵀ`` (SPEC.md §6.6); ``D`` and the spectrum are merged into
the butterflies, so ``F_n`` is a single K-matrix ``(𝓑𝓑*)^1`` of size ``N`` (corner ``n x n``),
cost ``28 N log2 N < 112 n (log2 n + 2)`` flops.

Real transforms (DCT, DST, Hartley, Chebyshev, real circulant/Toeplitz/convolution) are
``y = P_out Re(diag(post) F diag(pre) P_in x)`` (SPEC.md §6.4--6.5) wrapped in
:class:`~structmat.core.compose.RealPart`. ``dft2`` is one butterfly for powers of two and the
:class:`~structmat.core.compose.KroneckerProduct` of the two 1-D DFTs otherwise; ``haar`` is the
pyramid of sparse steps (``O(n)``, any ``n``); ``legendre`` is a Toeplitz ∘ low-rank-Hankel
connection (:class:`~structmat.core.compose.LowRankSchurProduct`) followed by the Chebyshev DCT.
Every function accepts any size ``n >= 1`` except :func:`hadamard`: Sylvester--Hadamard matrices
exist only for powers of two (its docstring says what to use instead).

Conventions: ``F[j, k] = e^{-2πi jk/n}`` (``numpy.fft``), DCT/DST as ``scipy.fft`` (``norm=None``
unnormalised, ``"ortho"`` orthonormal), ``circulant``/``toeplitz`` as ``scipy.linalg``,
``convolution`` as ``numpy.convolve`` / ``scipy.signal.convolve``. Default dtype float32
(complex64 for complex transforms); pass ``dtype=torch.float64``/``complex128`` for exactness.

Example::

    >>> import structmat as sm
    >>> layer = sm.transforms.dct(100, type=2, norm="ortho", dtype=torch.float64)
    >>> layer.structure, layer.num_parameters, layer.flops()
    ('real_part(product(permutation, kaleidoscope, permutation))', ...)
"""

from __future__ import annotations

import itertools
import math

import torch

from ..core.compose import DirectSum, KroneckerProduct, LowRankSchurProduct, Product, RealPart, Sum
from ..core.dtypes import complex_dtype, resolve_dtype
from ..core.errors import check_choice, check_int, describe
from ..core.linear import StructuredLinear
from ..core.sizes import is_power_of_two, log2_exact, next_power_of_two
from ..ops.butterfly import butterfly_multiply
from ..ops.permutation import bit_reversal_permutation, check_permutation, even_reversed_odd_permutation, invert_permutation
from ..ops.twiddle import fft_twiddle, hadamard_twiddle
from .butterfly import Butterfly
from .kaleidoscope import Kaleidoscope
from .permutation import Permutation
from .sparse import Sparse

__all__ = [
    "dft",
    "dct",
    "dst",
    "hadamard",
    "hartley",
    "dft2",
    "circulant",
    "toeplitz",
    "convolution",
    "fastfood",
    "fastfood_parameters",
    "acdc",
    "acdc_parameters",
    "haar",
    "chebyshev",
    "legendre",
    "permutation",
    "structure_name",
]

CONVOLUTION_MODES = ("full", "same", "circular")
_EXACT = torch.complex128  # twiddles are computed in complex128, then cast to the layer's dtype


# ----------------------------------------------------------------------------- argument checks
def _real_layer_dtype(dtype) -> torch.dtype:
    dtype = resolve_dtype(torch.float32 if dtype is None else dtype)
    if dtype.is_complex:
        raise TypeError(f"dtype: expected a real dtype (float32 or float64) for a real transform, got {dtype}")
    return dtype


def _complex_layer_dtype(dtype) -> torch.dtype:
    dtype = resolve_dtype(torch.complex64 if dtype is None else dtype)
    if not dtype.is_complex:
        raise TypeError(f"dtype: expected a complex dtype (complex64 or complex128) for a complex transform, got {dtype}")
    return dtype


def _check_vector(name: str, value, minimum_length: int = 1) -> torch.Tensor:
    """A 1-D numeric vector (tensor or array-like) as a float64/complex128 tensor."""
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(value)
        except Exception as exc:
            raise TypeError(f"{name}: expected a 1-D tensor or sequence of numbers, got {describe(value)}") from exc
    if value.dtype == torch.bool:
        raise TypeError(f"{name}: expected numeric entries, got {describe(value)}")
    if value.dim() != 1 or value.numel() < minimum_length:
        raise ValueError(f"{name}: expected a 1-D vector of length >= {minimum_length}, got {describe(value)}")
    return value.detach().to(_EXACT if value.is_complex() else torch.float64).cpu()


def _vector_dtype(name: str, vector: torch.Tensor, dtype) -> torch.dtype:
    """Layer dtype for a transform defined by ``vector``: real unless the vector is complex."""
    if dtype is None:
        return torch.complex64 if vector.is_complex() else torch.float32
    dtype = resolve_dtype(dtype)
    if vector.is_complex() and not dtype.is_complex:
        raise TypeError(f"dtype: {name} is complex, expected a complex dtype, got {dtype}")
    return dtype


# ----------------------------------------------------------------------------- twiddle editing
def _pair_indices(n: int, level: int, increasing_stride: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Low and high index of every pair of butterfly level ``level`` (SPEC.md §1.4)."""
    stride = 2**level if increasing_stride else n // 2 ** (level + 1)
    pair = torch.arange(n // 2)
    low = (pair // stride) * 2 * stride + pair % stride
    return low, low + stride


def _scale_inputs(twiddle: torch.Tensor, increasing_stride: bool, scale: torch.Tensor) -> torch.Tensor:
    """Twiddles of ``B diag(scale)``: scale the columns of the first level applied."""
    n = 2 * twiddle.shape[1]
    low, high = _pair_indices(n, 0, increasing_stride)
    twiddle = twiddle.clone()
    twiddle[0, :, :, 0] *= scale[low, None]
    twiddle[0, :, :, 1] *= scale[high, None]
    return twiddle


def _scale_outputs(twiddle: torch.Tensor, increasing_stride: bool, scale: torch.Tensor) -> torch.Tensor:
    """Twiddles of ``diag(scale) B``: scale the rows of the last level applied."""
    n, last = 2 * twiddle.shape[1], twiddle.shape[0] - 1
    low, high = _pair_indices(n, last, increasing_stride)
    twiddle = twiddle.clone()
    twiddle[last, :, 0, :] *= scale[low, None]
    twiddle[last, :, 1, :] *= scale[high, None]
    return twiddle


def _padded(vector: torch.Tensor | None, length: int) -> torch.Tensor:
    """``vector`` (complex128) padded with ones to ``length`` (entries beyond the corner are unused)."""
    out = torch.ones(length, dtype=_EXACT)
    if vector is not None:
        out[: vector.numel()] = vector.to(_EXACT)
    return out


# ----------------------------------------------------------------------------- building blocks
def _circulant_kmatrix(column: torch.Tensor, in_features: int, out_features: int, pre=None, post=None, *, dtype, device) -> Kaleidoscope:
    """``S_m diag(post) C(column) diag(pre) S_nᵀ`` as one ``𝓑𝓑*`` unit (SPEC.md §6.6).

    ``C(c) = (1/N) B̄_F diag((F c)[br]) B_Fᵀ`` with ``N = len(column)`` a power of two: the
    decreasing-stride ``B_Fᵀ`` (``pre`` merged into its first level, the bit-reversed spectrum
    into its last), then the increasing-stride ``B̄_F / N`` (``post`` merged into its last level).
    The spectrum is computed by the butterfly itself: ``(F c)[br] = B_Fᵀ c``.
    """
    size = column.numel()
    decreasing = fft_twiddle(size, increasing_stride=False, dtype=_EXACT)
    spectrum = butterfly_multiply(decreasing[None, None], column.to(_EXACT)[None], increasing_stride=False)[0, 0]
    decreasing = _scale_outputs(_scale_inputs(decreasing, False, _padded(pre, size)), False, spectrum)
    increasing = fft_twiddle(size, increasing_stride=True, dtype=_EXACT).conj()
    increasing = _scale_outputs(increasing, True, _padded(post, size) / size)
    twiddle = torch.stack([decreasing, increasing])[None]
    return Kaleidoscope.from_twiddle(twiddle.to(device=device, dtype=complex_dtype(dtype)), in_features, out_features)


def _toeplitz_kmatrix(column: torch.Tensor, row: torch.Tensor, pre=None, post=None, *, dtype, device) -> Kaleidoscope:
    """``diag(post) T diag(pre)`` with ``T[j, k] = column[j-k]`` (``j >= k``), ``row[k-j]`` (``j < k``),
    shape ``(len(column), len(row))``: the corner of a circulant of size
    ``N = next_pow2(m + n - 1)`` (SPEC.md §6.7)."""
    m, n = column.numel(), row.numel()
    size = max(2, next_power_of_two(m + n - 1))
    embedded = torch.zeros(size, dtype=_EXACT)
    embedded[:m] = column
    if n > 1:
        embedded[size - n + 1 :] = row[1:].flip(0)
    return _circulant_kmatrix(embedded, n, m, pre, post, dtype=dtype, device=device)


def _fourier(n: int, *, inverse: bool = False, scale: float = 1.0, pre=None, post=None, input_perm=None, output_perm=None, dtype, device):
    """Complex ``P_out diag(post) (scale·F) diag(pre) P_in`` with ``F = F_n`` or ``conj(F_n)`` (``inverse``).

    Powers of two (SPEC.md §6.1): ``F = B_F P_br``, hence ``F diag(pre) P_in = B_F diag(pre[br])
    P_{in[br]}``: one butterfly (diagonals and ``scale^{1/log N}`` per level merged) and one
    permutation. Other ``n``: Bluestein, one K-matrix (module docstring).
    """
    dtype = complex_dtype(dtype)
    factors = []
    if output_perm is not None:
        factors.append(Permutation.from_perm(output_perm, device=device, dtype=dtype))
    if is_power_of_two(n):
        size = max(2, n)
        br = bit_reversal_permutation(size)
        twiddle = fft_twiddle(size, dtype=_EXACT)
        if inverse:
            twiddle = twiddle.conj()
        twiddle = twiddle * scale ** (1.0 / log2_exact(size))
        twiddle = _scale_inputs(twiddle, True, _padded(pre, size)[br])
        twiddle = _scale_outputs(twiddle, True, _padded(post, size))
        perm = torch.arange(size)
        if input_perm is not None:
            perm[:n] = input_perm
        factors.append(Butterfly.from_twiddle(twiddle.to(device=device, dtype=dtype), n, n))
        factors.append(Permutation.from_perm(perm[br], n, n, device=device, dtype=dtype))
    else:
        sign = 1.0 if inverse else -1.0
        index = torch.arange(n, dtype=torch.float64)
        phase = torch.remainder(index * index, 2 * n)  # exact: e^{πi j²/n} has period 2n in j²
        chirp = torch.polar(torch.ones(n, dtype=torch.float64), sign * math.pi * phase / n)
        pre_full = chirp if pre is None else chirp * pre
        post_full = scale * chirp if post is None else scale * chirp * post
        kernel = chirp.conj()  # T[j, k] = conj(chirp)[|j - k|]: symmetric Toeplitz
        factors.append(_toeplitz_kmatrix(kernel, kernel, pre_full, post_full, dtype=dtype, device=device))
        if input_perm is not None:
            factors.append(Permutation.from_perm(input_perm, device=device, dtype=dtype))
    return factors[0] if len(factors) == 1 else Product(*factors)


def structure_name(matrix) -> str:
    """Readable name of a (composite) structured matrix, e.g. ``"real_part(product(butterfly, permutation))"``;
    ``k`` equal consecutive members (of products, sums, direct sums) are written once as ``"k × name"``."""
    children = {
        Product: lambda m: m.factors,
        Sum: lambda m: m.terms,
        DirectSum: lambda m: m.blocks,
        KroneckerProduct: lambda m: (m.outer, m.inner),
        RealPart: lambda m: (m.inner,),
        LowRankSchurProduct: lambda m: (m.base,),
    }
    for kind, members in children.items():
        if isinstance(matrix, kind):
            names = [structure_name(f) for f in members(matrix)]
            if kind is KroneckerProduct:  # two factors, not a repetition
                return f"{kind.family}({', '.join(names)})"
            runs = [(name, len(list(group))) for name, group in itertools.groupby(names)]
            return f"{kind.family}(" + ", ".join(name if count == 1 else f"{count} × {name}" for name, count in runs) + ")"
    return matrix.family


def _layer(matrix) -> StructuredLinear:
    """Wrap as a bias-free layer whose ``structure`` names the composition."""
    if isinstance(matrix, (Product, Sum, DirectSum, KroneckerProduct, RealPart, LowRankSchurProduct)):
        matrix.family = structure_name(matrix)
    return StructuredLinear.from_matrix(matrix)


# ----------------------------------------------------------------------------- Fourier family
def dft(n: int, inverse: bool = False, normalized: bool = False, *, dtype=None, device=None) -> StructuredLinear:
    """The DFT ``F_n[j, k] = e^{-2πi jk/n}`` (``numpy.fft.fft``), any ``n >= 1`` (SPEC.md §6.1--6.2).

    Args:
        inverse: ``F_n^{-1} = conj(F_n)/n`` (``numpy.fft.ifft``).
        normalized: the unitary ``F_n/√n`` (or its inverse ``conj(F_n)/√n``), ``norm="ortho"``.

    Powers of two: ``B_F P_br`` -- one butterfly and the bit reversal, ``2 n log2 n`` parameters,
    ``14 n log2 n`` flops. Other ``n``: Bluestein, one K-matrix of size ``N = next_pow2(2n-1)``,
    ``4 N log2 N`` parameters and ``28 N log2 N`` flops (``N < 4n``). Output complex (default
    complex64).
    """
    n = check_int("n", n, minimum=1)
    dtype = _complex_layer_dtype(dtype)
    scale = 1 / math.sqrt(n) if normalized else (1 / n if inverse else 1.0)
    return _layer(_fourier(n, inverse=bool(inverse), scale=scale, dtype=dtype, device=device))


def _real_fourier(n: int, *, pre=None, post=None, input_perm=None, output_perm=None, dtype, device) -> StructuredLinear:
    complex_part = _fourier(n, pre=pre, post=post, input_perm=input_perm, output_perm=output_perm, dtype=complex_dtype(dtype), device=device)
    return _layer(RealPart(complex_part))


def _check_type_norm(type, norm) -> int:
    if isinstance(type, bool) or type not in (2, 3, 4):
        raise ValueError(f"type: expected 2, 3 or 4, got {describe(type)}")
    check_choice("norm", norm, [None, "ortho"])
    return int(type)


def _cosine_pipeline(n: int, type: int, norm, sine: bool) -> dict:
    """``pre, post, input_perm, output_perm`` of DCT/DST type ``type`` (SPEC.md §6.4; scipy scalings).

    DCT-II ``= Re(diag(2e^{-iπk/2n}) F P' x)``; DCT-III ``= P'ᵀ Re(F diag(d) x)`` with
    ``d_0 = 1``, ``d_k = 2e^{-iπk/2n}``; DCT-IV ``= Re(diag(2e^{-iπk/2n}) F P' diag(q) x)``;
    ``DST-II = J DCT-II Σ``, ``DST-III = Σ DCT-III J``, ``DST-IV = J DCT-IV Σ`` with
    ``Σ = diag((-1)^j)`` and ``J`` the reversal; permutations are moved past the diagonals.
    ``"ortho"``: rows (type 2) or columns (type 3) scaled by ``√(1/2n)``, the DC entry by
    ``√(1/4n)`` resp. ``√(1/n)``; type 4 by ``√(1/2n)``.
    """
    k = torch.arange(n, dtype=torch.float64)
    half_shift = torch.polar(2 * torch.ones(n, dtype=torch.float64), -math.pi * k / (2 * n))  # 2e^{-iπk/2n}
    even_odd = even_reversed_odd_permutation(n)
    reverse = torch.arange(n).flip(0)
    signs = (-1.0) ** k
    ortho = torch.full((n,), math.sqrt(1 / (2 * n)), dtype=torch.float64)
    if type == 2:
        if norm == "ortho":
            ortho[0] = math.sqrt(1 / (4 * n))
        return dict(
            pre=signs[even_odd] if sine else None,
            post=half_shift * (ortho if norm == "ortho" else 1.0),
            input_perm=even_odd,
            output_perm=reverse if sine else None,
        )
    if type == 3:
        d = half_shift.clone()
        d[0] = 1.0
        if norm == "ortho":
            ortho[0] = math.sqrt(1 / n)
            d = d * ortho
        return dict(
            pre=d,
            post=signs[even_odd] if sine else None,
            input_perm=reverse if sine else None,
            output_perm=invert_permutation(even_odd),
        )
    q = torch.polar(torch.ones(n, dtype=torch.float64), math.pi * (k + 0.5) / (2 * n) * torch.where(k % 2 == 0, -1.0, 1.0))
    if sine:
        q = q * signs
    return dict(
        pre=q[even_odd],
        post=half_shift * (ortho if norm == "ortho" else 1.0),
        input_perm=even_odd,
        output_perm=reverse if sine else None,
    )


def dct(n: int, type: int = 2, norm: str | None = None, *, dtype=None, device=None) -> StructuredLinear:
    """DCT of type 2, 3 or 4 matching ``scipy.fft.dct(x, type, norm=norm)`` (SPEC.md §6.4), any ``n``.

    A real layer ``P_out Re(diag(post) F_n diag(pre) P_in x)``: the complex FFT butterfly (or
    Bluestein K-matrix) with the twiddle diagonals merged, the permutations ``P'``/``P'ᵀ``, and
    :class:`RealPart`. Cost: that of :func:`dft` (``14 n log2 n`` flops for powers of two).
    """
    n = check_int("n", n, minimum=1)
    type = _check_type_norm(type, norm)
    return _real_fourier(n, **_cosine_pipeline(n, type, norm, sine=False), dtype=_real_layer_dtype(dtype), device=device)


def dst(n: int, type: int = 2, norm: str | None = None, *, dtype=None, device=None) -> StructuredLinear:
    """DST of type 2, 3 or 4 matching ``scipy.fft.dst(x, type, norm=norm)`` (SPEC.md §6.4), any ``n``.

    ``DST-II = J·DCT-II·diag((-1)^j)``, ``DST-III = diag((-1)^k)·DCT-III·J``,
    ``DST-IV = J·DCT-IV·diag((-1)^j)`` with the signs merged into the butterfly and ``J`` a
    permutation; cost as :func:`dct`.
    """
    n = check_int("n", n, minimum=1)
    type = _check_type_norm(type, norm)
    return _real_fourier(n, **_cosine_pipeline(n, type, norm, sine=True), dtype=_real_layer_dtype(dtype), device=device)


def hartley(n: int, *, dtype=None, device=None) -> StructuredLinear:
    """Discrete Hartley transform ``cas(2πjk/n) = cos + sin`` (SPEC.md §6.5), any ``n``:
    ``Re((1 + i) F_n x)`` with ``1 + i`` merged into the last butterfly level; cost as :func:`dft`."""
    n = check_int("n", n, minimum=1)
    post = torch.full((n,), 1 + 1j, dtype=_EXACT)
    return _real_fourier(n, post=post, dtype=_real_layer_dtype(dtype), device=device)


def dft2(n1: int, n2: int, *, dtype=None, device=None) -> StructuredLinear:
    """Two-dimensional DFT ``F_{n1} ⊗ F_{n2}`` on row-major ``vec(X)`` (``numpy.fft.fft2`` of the
    ``n1 × n2`` reshape), any ``n1, n2 >= 1`` (SPEC.md §6.8).

    Both powers of two: ``(B_1 ⊗ B_2)(P_br ⊗ P_br)``, one increasing-stride butterfly of size
    ``N = n1·n2`` (levels below ``log n2`` are ``I ⊗ B_2``, the others ``B_1 ⊗ I``) and one
    permutation; ``14 N log2 N`` flops, ``2 N log2 N`` parameters. Otherwise the
    :class:`~structmat.core.compose.KroneckerProduct` of the two 1-D :func:`dft` operators
    (Bluestein K-matrices for non-powers of two), applied as ``vec(F_{n1} X F_{n2}ᵀ)``: ``n1``
    transforms of length ``n2`` and ``n2`` of length ``n1``, each ``O(n log n)``, so
    ``n1·cost(F_{n2}) + n2·cost(F_{n1}) <= 112 N (log2 N + 4)`` flops.
    """
    n1 = check_int("n1", n1, minimum=1)
    n2 = check_int("n2", n2, minimum=1)
    dtype = _complex_layer_dtype(dtype)
    if not (is_power_of_two(n1) and is_power_of_two(n2)):
        factors = (_fourier(n, dtype=dtype, device=device) for n in (n1, n2))
        return _layer(KroneckerProduct(*factors))
    n = n1 * n2
    if n == 1:
        return dft(1, dtype=dtype, device=device)
    levels2 = log2_exact(n2)
    pair = torch.arange(n // 2)
    levels = []
    if n2 > 1:
        inner = fft_twiddle(n2, dtype=_EXACT)
        levels += [inner[level, pair % (n2 // 2)] for level in range(levels2)]
    if n1 > 1:
        outer = fft_twiddle(n1, dtype=_EXACT)
        levels += [outer[level, pair // n2] for level in range(log2_exact(n1))]
    twiddle = torch.stack(levels)
    index = torch.arange(n)
    perm = bit_reversal_permutation(n1)[index // n2] * n2 + bit_reversal_permutation(n2)[index % n2]
    butterfly = Butterfly.from_twiddle(twiddle.to(device=device, dtype=dtype))
    return _layer(Product(butterfly, Permutation.from_perm(perm, device=device, dtype=dtype)))


# ----------------------------------------------------------------------------- Hadamard, Haar
def hadamard(n: int, *, dtype=None, device=None) -> StructuredLinear:
    """Walsh--Hadamard matrix ``H_2^{⊗k}`` (Sylvester order, ``scipy.linalg.hadamard``), SPEC.md §6.3.

    One butterfly with all twiddles ``[[1, 1], [1, -1]]``; ``2 n log2 n`` parameters,
    ``3 n log2 n`` flops.

    The one deliberate exception to "any ``n``" in this module: ``n`` must be a power of two,
    like ``scipy.linalg.hadamard``. Sylvester--Walsh--Hadamard matrices exist only for
    ``n = 2^k``, and a corner of a larger one is not a Hadamard matrix (its rows are not
    orthogonal). Other ``n`` raise ``ValueError``; use ``hadamard(next_pow2(n))`` with explicit
    zero padding if the corner is what you want, or an orthogonal transform defined for every
    ``n`` (:func:`dct` with ``norm="ortho"``, :func:`haar`, ``dft(n, normalized=True)``).
    """
    n = check_int("n", n, minimum=1)
    if not is_power_of_two(n):
        raise ValueError(
            f"n: expected a power of two, got {n}: Sylvester-Walsh-Hadamard matrices H_2^(x)k exist only for n = 2^k "
            f"(like scipy.linalg.hadamard); use hadamard({next_power_of_two(n)}) with zero padding, "
            f"or an orthogonal transform defined for any n: dct(n, norm='ortho'), haar(n), dft(n, normalized=True)"
        )
    dtype = resolve_dtype(torch.float32 if dtype is None else dtype)
    twiddle = hadamard_twiddle(max(2, n), dtype=dtype).to(device)
    return _layer(Butterfly.from_twiddle(twiddle, n, n))


def _haar_level(size: int, *, dtype, device) -> Sparse:
    """One Haar analysis step on ``size`` approximation coefficients, as a ``(size, size)`` sparse matrix.

    Output: the ``⌈size/2⌉`` new approximations, then the ``⌊size/2⌋`` details. Pair ``i`` of
    inputs ``(2i, 2i+1)`` gives approximation ``i`` = ``(x_{2i} + x_{2i+1})/√2`` and detail ``i`` =
    ``(x_{2i} − x_{2i+1})/√2``; for odd ``size`` the last input is the last approximation,
    unchanged. Orthogonal; ``2·size`` stored entries (``2·size − 1`` for odd ``size``).
    """
    pairs, half = size // 2, (size + 1) // 2
    i = torch.arange(pairs)
    root = 1 / math.sqrt(2)
    rows = [i, i, half + i, half + i]
    cols = [2 * i, 2 * i + 1, 2 * i, 2 * i + 1]
    values = [torch.full((pairs,), sign * root, dtype=torch.float64) for sign in (1, 1, 1, -1)]
    if size % 2:
        rows.append(torch.tensor([half - 1]))
        cols.append(torch.tensor([size - 1]))
        values.append(torch.ones(1, dtype=torch.float64))
    step = Sparse.from_entries(torch.cat(rows), torch.cat(cols), torch.cat(values).to(dtype), size, size)
    return step.to(device)


def haar(n: int, *, dtype=None, device=None) -> StructuredLinear:
    """Orthonormal full-depth Haar wavelet matrix ``W_n``, any ``n >= 1`` (SPEC.md §6.10).

    Definition (the usual extension of the pyramid to lengths that are not powers of two): start
    with the approximation ``a = x`` of length ``m = n``; while ``m > 1``, pair adjacent entries
    ``(a_{2i}, a_{2i+1})`` into an approximation ``(a_{2i} + a_{2i+1})/√2`` and a detail
    ``(a_{2i} − a_{2i+1})/√2``, and carry an odd leftover ``a_{m−1}`` unchanged as the last
    approximation of the next scale (``m ← ⌈m/2⌉``). Output order: the final approximation, then
    the details from the coarsest scale to the finest (each scale in pair order). Every step is
    orthogonal, so ``W_n`` is. For ``n = 2^k`` this is SPEC.md §6.10's
    ``W_n = (1/√2)[W_{n/2} ⊗ (1, 1); I_{n/2} ⊗ (1, −1)]`` (whose butterfly form ``P_Q B_H`` is the
    in-place version of the same pyramid). With a carry the first row is no longer constant
    (``haar(3)``'s is ``(1/2, 1/2, 1/√2)``), as for any orthonormal Haar basis of odd length.

    Construction: ``W_n = S_{L−1} ⋯ S_0`` with ``L = ⌈log2 n⌉`` and scale ``ℓ``'s factor
    ``S_ℓ = A_ℓ ⊕ I`` (:class:`~structmat.core.compose.DirectSum`): ``A_ℓ`` the sparse step of
    :func:`_haar_level` on the ``m_ℓ = ⌈n/2^ℓ⌉`` leading entries (the current approximation),
    the identity (a free permutation) on the details already produced. ``Σ_ℓ 2 m_ℓ < 4n``
    trainable entries, ``< 8n`` flops (real): ``O(n)``.
    """
    n = check_int("n", n, minimum=1)
    dtype = resolve_dtype(torch.float32 if dtype is None else dtype)
    if n == 1:
        return _layer(Permutation(1, 1, kind="identity", device=device, dtype=dtype))
    steps, size = [], n
    while size > 1:
        step = _haar_level(size, dtype=dtype, device=device)
        if size < n:
            step = DirectSum(step, Permutation(n - size, n - size, kind="identity", device=device, dtype=dtype))
        steps.append(step)
        size = (size + 1) // 2
    return _layer(steps[0] if len(steps) == 1 else Product(*reversed(steps)))


# ----------------------------------------------------------------------------- circulant, Toeplitz, convolution
def circulant(c, *, dtype=None, device=None) -> StructuredLinear:
    """Circulant matrix with first column ``c`` (``scipy.linalg.circulant``), SPEC.md §6.6.

    ``len(c)`` a power of two: exactly one ``𝓑𝓑*`` unit ``(1/n) B̄_F diag((F c)[br]) B_Fᵀ``
    (a K-matrix of width 1, expansion 1); otherwise the Toeplitz embedding of :func:`toeplitz`.
    Real ``c`` gives a real layer (default float32; the real part of the complex K-matrix),
    complex ``c`` a complex one. Cost ``28 N log2 N`` flops with ``N`` the K-matrix size.
    """
    c = _check_vector("c", c)
    dtype = _vector_dtype("c", c, dtype)
    n = c.numel()
    if is_power_of_two(n) and n > 1:
        matrix = _circulant_kmatrix(c, n, n, dtype=dtype, device=device)
    else:
        row = c[(-torch.arange(n)) % n]
        matrix = _toeplitz_kmatrix(c, row, dtype=dtype, device=device)
    return _layer(matrix if dtype.is_complex else RealPart(matrix))


def toeplitz(c, r=None, *, dtype=None, device=None) -> StructuredLinear:
    """Toeplitz matrix with first column ``c`` and first row ``r`` (``scipy.linalg.toeplitz(c, r)``;
    ``r[0]`` is ignored, ``r`` defaults to ``conj(c)``), shape ``(len(c), len(r))``, SPEC.md §6.7.

    The corner of a circulant of size ``N = next_pow2(m + n - 1)``: one K-matrix ``(𝓑𝓑*)^1``,
    ``28 N log2 N`` flops; real inputs give a real layer.
    """
    c = _check_vector("c", c)
    r = c.conj() if r is None else _check_vector("r", r)
    vector = c if c.is_complex() else r
    dtype = _vector_dtype("c and r", vector, dtype)
    matrix = _toeplitz_kmatrix(c, r, dtype=dtype, device=device)
    return _layer(matrix if dtype.is_complex else RealPart(matrix))


def convolution(kernel, n: int, mode: str = "full", *, dtype=None, device=None) -> StructuredLinear:
    """Linear map ``x -> kernel * x`` for inputs ``x`` of length ``n`` (SPEC.md §6.6--6.7).

    Modes (``k = len(kernel)``):

    * ``"full"``: ``numpy.convolve(x, kernel, "full")``, output ``n + k - 1`` (any ``k``);
    * ``"same"``: ``scipy.signal.convolve(x, kernel, "same")``, output ``n``, centred on the full
      result (rows ``(k-1)//2 …``); needs ``k <= n`` (then it also equals ``numpy.convolve``'s
      ``"same"``);
    * ``"circular"``: ``y_i = Σ_j kernel_j x_{(i-j) mod n}``, the circulant of the zero-padded
      kernel; needs ``k <= n``.

    Toeplitz/circulant K-matrices as in :func:`toeplitz`/:func:`circulant`.
    """
    kernel = _check_vector("kernel", kernel)
    n = check_int("n", n, minimum=1)
    mode = check_choice("mode", mode, CONVOLUTION_MODES)
    k = kernel.numel()
    if mode != "full" and k > n:
        raise ValueError(f"kernel: expected length <= n = {n} for mode={mode!r}, got length {k}")
    if mode == "circular":
        column = torch.zeros(n, dtype=kernel.dtype)
        column[:k] = kernel
        return circulant(column, dtype=dtype, device=device)
    rows = n + k - 1 if mode == "full" else n
    start = 0 if mode == "full" else (k - 1) // 2
    # full[i, j] = kernel[i - j]; rows start .. start + rows - 1
    offsets_column = torch.arange(rows) + start
    offsets_row = start - torch.arange(n)
    padded = torch.cat([kernel, torch.zeros(1, dtype=kernel.dtype)])
    pick = lambda offsets: padded[torch.where((offsets >= 0) & (offsets < k), offsets, k)]  # noqa: E731
    return toeplitz(pick(offsets_column), pick(offsets_row), dtype=dtype, device=device)


# ----------------------------------------------------------------------------- Fastfood, ACDC
def fastfood_parameters(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The seeded draws of :func:`fastfood` (float64, length ``N = max(2, next_pow2(n))``): ``B`` random
    signs, ``G`` standard normal, ``perm`` a random permutation ``Π``, ``S = 1/√(3 N n)`` (the
    initialisation of the ``fastfood`` family, SPEC.md §4.13)."""
    n = check_int("n", n, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    size = max(2, next_power_of_two(n))
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(size, generator=generator)
    signs = torch.randint(0, 2, (size,), generator=generator).double() * 2 - 1
    gaussian = torch.randn(size, generator=generator, dtype=torch.float64)
    scale = torch.full((size,), 1 / math.sqrt(3.0 * size * n), dtype=torch.float64)
    return {"S": scale, "G": gaussian, "perm": perm, "B": signs}


def fastfood(n: int, seed: int = 0, *, dtype=None, device=None) -> StructuredLinear:
    """Fastfood ``V = S H G Π H B`` (SPEC.md §4.13, §6.9) with the draws of :func:`fastfood_parameters`.

    ``H B`` is one butterfly (``B`` merged into its first level), ``Π`` a permutation, ``S H G``
    one butterfly; ``n`` is corner-embedded in ``N = max(2, next_pow2(n))``. ``4 N log2 N`` parameters,
    ``6 N log2 N`` flops (real).
    """
    draws = fastfood_parameters(n, seed)
    dtype = resolve_dtype(torch.float32 if dtype is None else dtype)
    size = draws["perm"].numel()
    H = hadamard_twiddle(size, dtype=torch.float64)
    first = _scale_inputs(H, True, draws["B"])
    second = _scale_outputs(_scale_inputs(H, True, draws["G"]), True, draws["S"])
    make = lambda tw, n_in, n_out: Butterfly.from_twiddle(tw.to(device=device, dtype=dtype), n_in, n_out)  # noqa: E731
    factors = (make(second, size, n), Permutation.from_perm(draws["perm"], device=device, dtype=dtype), make(first, n, size))
    return _layer(Product(*factors))


def acdc_parameters(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The seeded draws of :func:`acdc` (float64, length ``n``): ``A, D ~ N(1, 0.1²)`` (the
    initialisation of the ``acdc`` family)."""
    n = check_int("n", n, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    generator = torch.Generator().manual_seed(seed)
    return {name: 1 + 0.1 * torch.randn(n, generator=generator, dtype=torch.float64) for name in ("A", "D")}


def acdc(n: int, seed: int = 0, *, dtype=None, device=None) -> StructuredLinear:
    """ACDC ``diag(A) C diag(D) C⁻¹`` (SPEC.md §4.13, §6.9), ``C``/``C⁻¹`` the orthonormal
    DCT-II/III of :func:`dct`, diagonals from :func:`acdc_parameters`, any ``n``.

    ``A`` is merged into the DCT-II's output diagonal and ``D`` into its input diagonal, so the
    layer is the product of two real-part FFT pipelines; cost twice that of :func:`dct`.
    """
    draws = acdc_parameters(n, seed)
    dtype = _real_layer_dtype(dtype)
    forward = _cosine_pipeline(n, 2, "ortho", sine=False)
    forward["post"] = forward["post"] * draws["A"]
    forward["pre"] = draws["D"][forward["input_perm"]]  # P' diag(D) = diag(D[P']) P'
    inverse = _cosine_pipeline(n, 3, "ortho", sine=False)
    first = _fourier(n, **inverse, dtype=dtype, device=device)
    second = _fourier(n, **forward, dtype=dtype, device=device)
    return _layer(Product(RealPart(second), RealPart(first)))


# ----------------------------------------------------------------------------- polynomial transforms
def chebyshev(n: int, *, dtype=None, device=None) -> StructuredLinear:
    """Chebyshev transform at the Chebyshev nodes: ``T[j, i] = T_i(z_j)``, ``z_j = cos(π(j+½)/n)``
    (``numpy.polynomial.chebyshev.chebvander``), SPEC.md §4.12, §6.11; any ``n``.

    ``T c = DCT-III(c_0, c_1/2, …, c_{n-1}/2)``: the :func:`dct` type-3 pipeline with the ``½``
    merged into its input diagonal; cost as :func:`dct`.
    """
    n = check_int("n", n, minimum=1)
    return _real_fourier(n, **_chebyshev_pipeline(n), dtype=_real_layer_dtype(dtype), device=device)


def _chebyshev_pipeline(n: int) -> dict:
    """The DCT-III pipeline of :func:`_cosine_pipeline` with ``(1, ½, …, ½)`` merged into its input diagonal."""
    pipeline = _cosine_pipeline(n, 3, None, sine=False)
    halves = torch.full((n,), 0.5, dtype=torch.float64)
    halves[0] = 1.0
    pipeline["pre"] = pipeline["pre"] * halves
    return pipeline


def _half_integer_gamma_ratios(count: int) -> torch.Tensor:
    """``Λ(s/2)`` for ``s = 0 … count−1``, ``Λ(z) = Γ(z + ½)/Γ(z + 1)`` (float64).

    From ``Λ(0) = √π``, ``Λ(½) = 2/√π`` and ``Λ(z + 1) = Λ(z)(z + ½)/(z + 1)``: a product of
    rationals, relative error a few ulps (measured ``<= 4e-15`` up to ``z = 2000`` against
    mpmath), where ``exp(lgamma − lgamma)`` loses ``~1e-12``.
    """
    z = torch.arange((count + 1) // 2, dtype=torch.float64)[:-1]
    ones = torch.ones(1, dtype=torch.float64)
    integer = math.sqrt(math.pi) * torch.cat((ones, torch.cumprod((z + 0.5) / (z + 1), 0)))
    half = 2 / math.sqrt(math.pi) * torch.cat((ones, torch.cumprod((z + 1) / (z + 1.5), 0)))
    out = torch.empty(count, dtype=torch.float64)
    out[0::2], out[1::2] = integer[: (count + 1) // 2], half[: count // 2]
    return out


def _pivoted_cholesky_of_hankel(values: torch.Tensor, n: int, tolerance: float) -> torch.Tensor:
    """``L`` (``n × R``) with ``H ≈ L Lᵀ`` for the positive semidefinite Hankel ``H[k, j] = values[k + j]``:
    pivoted Cholesky, stopped when every residual diagonal entry is ``<= tolerance`` (then
    ``|H − L Lᵀ| <= tolerance`` entrywise). Reads ``O(n R)`` entries, ``O(n R²)`` time; never forms ``H``."""
    index = torch.arange(n)
    residual = values[2 * index].clone()
    columns: list[torch.Tensor] = []
    while len(columns) < n:
        pivot = int(torch.argmax(residual))
        if residual[pivot] <= tolerance:
            break
        column = values[index + pivot].clone()
        for previous in columns:
            column -= previous * previous[pivot]
        column /= math.sqrt(float(residual[pivot]))
        columns.append(column)
        residual -= column * column
        residual[pivot] = 0.0
    return torch.stack(columns, dim=1)


#: Residual-diagonal tolerance of the Hankel factorisation in :func:`legendre`, relative to ``Λ(0)``.
LEGENDRE_HANKEL_TOLERANCE = 1e-15


def legendre(n: int, *, dtype=None, device=None) -> StructuredLinear:
    """Legendre transform ``T[j, i] = P_i(z_j)`` at the ``n`` Chebyshev points
    ``z_j = cos(π(j+½)/n)`` (``numpy.polynomial.legendre.legvander``), SPEC.md §4.12, §6.11; any ``n``.

    ``T = C M``: ``M`` the Legendre-to-Chebyshev connection matrix (``Σ_i c_i P_i = Σ_k (Mc)_k T_k``)
    and ``C`` the Chebyshev transform of :func:`chebyshev` (a DCT-III). ``M`` is upper triangular
    with ``M[k, j] = s_k Λ((j−k)/2) Λ((j+k)/2)`` for even ``j − k >= 0`` (Alpert and Rokhlin 1991),
    ``s_0 = 1/π``, ``s_k = 2/π``, ``Λ(z) = Γ(z+½)/Γ(z+1)``: the entrywise product of the Toeplitz
    ``A[k, j] = Λ((j−k)/2)`` (even ``j − k >= 0``, else 0) with the Hankel ``H[k, j] = Λ((j+k)/2)``.
    ``H`` is a Gram matrix (``Λ(z) = π^{-½}∫₀¹ t^{z−½}(1−t)^{−½} dt``), positive definite and
    numerically of low rank: pivoted Cholesky gives ``H ≈ L Lᵀ`` with ``R = O(log n · log 1/ε)``
    columns (``R`` = 19, 26, 31, 35 at ``n`` = 100, 1000, 4096, 16384), so
    ``M ≈ Σ_r diag(s ⊙ ℓ_r) A diag(ℓ_r)`` (Townsend, Webb and Olver, Math. Comp. 2018). ``A`` is one
    Toeplitz K-matrix (:func:`toeplitz`, size ``N = next_pow2(2n − 1)``) applied to the ``R``
    scaled copies (:class:`~structmat.core.compose.LowRankSchurProduct`); ``C`` one real-part FFT
    pipeline. Nothing dense is stored: parameters ``4 N log2 N`` (Toeplitz) ``+ 2 n R`` (``L``, ``s ⊙ L``)
    ``+`` the DCT's; cost ``R · 28 N log2 N + O(n R)`` flops plus the DCT, ``O(n log² n)`` with a
    large constant (150--220 ``n log2² n``): 16.6 M flops at ``n = 1024`` against 2.1 M for a dense
    product, which it beats only beyond ``n ≈ 16k``. Construction ``O(n R² + N log N)``.

    Accuracy (float64, relative Frobenius error of ``T c`` against ``legvander`` evaluated in long
    double at the exact nodes; the Hankel residual is ``<= 1e-15 Λ(0)`` entrywise): ``<= 3.2e-15``
    for ``n <= 128``, ``2.3e-14`` at ``n = 1000, 1024`` (docs/transforms.md; the previous divide and
    conquer of the ``orthogonal_polynomial`` family reached ``1.2e-10`` there). float32: ``~2e-7``.
    """
    n = check_int("n", n, minimum=1)
    dtype = _real_layer_dtype(dtype)
    gamma_ratios = _half_integer_gamma_ratios(2 * n - 1)
    hankel_factor = _pivoted_cholesky_of_hankel(gamma_ratios, n, LEGENDRE_HANKEL_TOLERANCE * gamma_ratios[0].item())
    row = torch.where(torch.arange(n) % 2 == 0, gamma_ratios[:n], torch.zeros(n, dtype=torch.float64))
    column = torch.zeros(n, dtype=torch.float64)
    column[0] = row[0]
    toeplitz_part = RealPart(_toeplitz_kmatrix(column, row, dtype=dtype, device=device))
    scale = torch.full((n, 1), 2 / math.pi, dtype=torch.float64)
    scale[0] = 1 / math.pi
    connection = LowRankSchurProduct(toeplitz_part, (scale * hankel_factor).to(dtype), hankel_factor.to(dtype))
    chebyshev_part = RealPart(_fourier(n, **_chebyshev_pipeline(n), dtype=complex_dtype(dtype), device=device))
    return _layer(Product(chebyshev_part, connection))


def permutation(perm, *, dtype=None, device=None) -> StructuredLinear:
    """The permutation matrix ``P_σ`` with ``(P_σ x)_i = x_{σ(i)}`` (SPEC.md §1.3): a gather, 0 flops.

    ``ValueError`` (naming ``perm``) for repeated, missing or out-of-range indices.
    """
    perm = check_permutation("perm", perm)
    dtype = resolve_dtype(torch.float32 if dtype is None else dtype)
    return _layer(Permutation.from_perm(perm, device=device if device is not None else perm.device, dtype=dtype))
