"""Low-displacement-rank families (SPEC.md §4.10–4.11, §5.7; [LDR18]).

Every family stores generators ``G`` (``r × rows``) and ``H`` (``r × columns``) and represents the
matrix through the Krylov (reconstruction) formula of SPEC.md §4.10,

    ``M = Σ_{i<r} K(A, g_i) K(Bᵀ, h_i)ᵀ``,  whose Stein displacement is ``M - A M B = (1 - fg) G Hᵀ``

(``Aⁿ = f I``, ``Bⁿ = g I``), so the displacement rank is at most ``r``:

| family | Stein operators ``(A, B)`` | Sylvester form (SPEC table) | multiply, per row |
|---|---|---|---|
| ``toeplitz_like`` | ``(Z₁, Z₋₁ᵀ)`` | ``(Z₁, Z₋₁)`` | ``2r + 2`` FFTs, ``O(r n log n)`` |
| ``hankel_like`` | ``(Z₁, Z₋₁)`` | ``(Z₁, Z₋₁ᵀ)`` | ``2r + 2`` FFTs, ``O(r n log n)`` |
| ``vandermonde_like`` | ``(D_b, Z₀)`` | ``(D_a, Z₀)``, ``a = 1/b`` | ``O(r n log n + r m n)`` |
| ``cauchy_like`` | — | ``(D_s, D_t)``: ``M = (G Hᵀ) / (s_i - t_j)`` | ``O((B + r) m n)`` per batch |
| ``ldr_sd`` | learned subdiagonal ``(A, B)`` | — | ``O(r n log² n)`` |

``toeplitz_like``, ``hankel_like`` and ``ldr_sd`` are square ``N × N`` with ``N = max(m, n)``,
corner-embedded for rectangular shapes (SPEC.md §1.6); ``vandermonde_like`` and ``cauchy_like``
are natively rectangular. ``K(Z_f, v)`` is the f-circulant ``Z_f(v)`` (check E3), so the
Toeplitz/Hankel-like products are circulant × transposed skew-circulant FFT products
(:mod:`structmat.ops.circulant`). For Vandermonde/Cauchy-like matrices the ``O(r n log² n)``
algorithms rest on fast multipoint evaluation/interpolation, which is numerically unusable in
float32; the fastest sound alternative is direct tiled evaluation of the Vandermonde/Cauchy
kernel (:mod:`structmat.ops.kernel_matrix`), never holding more than a tile. ``ldr_sd`` uses the
divide-and-conquer Krylov products of :mod:`structmat.ops.krylov`.

Projection (``from_dense``, SPEC.md §4.10 Proj (ii) "displacement truncation"): the best rank-r
approximation of the displacement of ``W``, then reconstruction; exact when ``W`` has displacement
rank ``<= r``, heuristic otherwise. The achieved errors are stored in ``layer.projection_report``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core import StructuredMatrix, register
from ..core.dtypes import mult_add_flops
from ..core.errors import check_int, check_matrix
from ..core.init import normal_
from ..core.registry import OptionRange, Sample
from ..core.sizes import pad_last, truncate_last
from ..ops.circulant import (
    convolution_length,
    f_circulant_krylov_multiply,
    f_circulant_matrix,
    fft_flops,
    toeplitz_multiply,
)
from ..ops.kernel_matrix import tiled_kernel_multiply
from ..ops.krylov import (
    krylov_matrix,
    subdiagonal_apply,
    subdiagonal_krylov_flops,
    subdiagonal_krylov_multiplier,
    subdiagonal_krylov_transpose_multiplier,
    subdiagonal_row_blocks,
    subdiagonal_transpose_apply,
)
from .cauchy import cauchy_rows, hilbert_nodes
from .low_rank import truncated_svd_factors
from .vandermonde import default_nodes, vandermonde_rows

DEFAULT_RANK = 4


def shift_matrix(n: int, f: float, dtype=None, device=None) -> torch.Tensor:
    """Dense ``Z_f``: ``Z_f e_j = e_{j+1}`` (``j < n-1``), ``Z_f e_{n-1} = f e_0``."""
    Z = torch.zeros(n, n, dtype=dtype, device=device)
    index = torch.arange(n - 1, device=device)
    Z[index + 1, index] = 1
    Z[0, n - 1] = f
    return Z


def subdiagonal_matrix(a: torch.Tensor) -> torch.Tensor:
    """Dense subdiagonal-with-corner operator ``A e_j = a_j e_{(j+1) mod n}``."""
    n = a.shape[0]
    index = torch.arange(n, device=a.device)
    return torch.zeros(n, n, dtype=a.dtype, device=a.device).index_put((((index + 1) % n), index), a)


def _ladder(m: int, n: int):
    return OptionRange("rank", range(1, max(m, n) + 1))


def _samples():
    return [Sample(7, 5, {"rank": 2}), Sample(4, 9, {"rank": 1}), Sample(16, 16, {"rank": 3}), Sample(12, 3), Sample(1, 1)]


class DisplacementRankMatrix(StructuredMatrix):
    """Shared part of the LDR families: rank option, generators ``G`` = ``left_generators``
    ``(r, rows)`` and ``H`` = ``right_generators`` ``(r, cols)`` (one generator per row),
    and their initialisation (entries of ``M`` get about ``nn.Linear``'s variance when the
    operators have unit-modulus entries: ``Var M_ij ≈ r · len · σ⁴``)."""

    def __init__(self, in_features: int, out_features: int, *, rank, rows: int, columns: int, device, dtype, **options) -> None:
        in_features = check_int("in_features", in_features, minimum=1)
        out_features = check_int("out_features", out_features, minimum=1)
        limit = max(in_features, out_features)
        rank = min(DEFAULT_RANK, limit) if rank is None else check_int("rank", rank, minimum=1, maximum=limit)
        super().__init__(in_features, out_features, device=device, dtype=dtype, rank=rank, **options)
        self.rank = rank
        self.left_generators = nn.Parameter(torch.empty(rank, rows, device=device, dtype=self.dtype))
        self.right_generators = nn.Parameter(torch.empty(rank, columns, device=device, dtype=self.dtype))

    def _reset_generators(self) -> None:
        length = max(self.left_generators.shape[1], self.right_generators.shape[1])
        std = (1.0 / (3.0 * self.in_features * self.rank * length)) ** 0.25
        normal_(self.left_generators, std)
        normal_(self.right_generators, std)

    def reset_parameters(self) -> None:
        self._reset_generators()

    def _record_projection(self, W: torch.Tensor, displacement: torch.Tensor, kept: torch.Tensor) -> None:
        with torch.no_grad():
            approx = self.to_dense()
            self.projection_report = {
                "method": "displacement truncation (SPEC.md §4.10 Proj (ii))",
                "rank": self.rank,
                "rel_error": float(torch.linalg.norm(W - approx) / torch.linalg.norm(W).clamp_min(1e-300)),
                "displacement_rel_error": float(
                    torch.linalg.norm(displacement - kept) / torch.linalg.norm(displacement).clamp_min(1e-300)
                ),
            }


def _generators(displacement: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(G, H, G Hᵀ)`` with ``G Hᵀ`` the best rank-``rank`` approximation of ``displacement``;
    ``G, H`` as ``(rank, ·)`` rows, zero-padded when ``rank`` exceeds the matrix rank bound."""
    U, V = truncated_svd_factors(displacement, rank)
    kept = U @ V.transpose(0, 1)
    G = torch.zeros(rank, displacement.shape[0], dtype=displacement.dtype, device=displacement.device)
    H = torch.zeros(rank, displacement.shape[1], dtype=displacement.dtype, device=displacement.device)
    G[: U.shape[1]] = U.transpose(0, 1)
    H[: V.shape[1]] = V.transpose(0, 1)
    return G, H, kept


def _signed_permutation(P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(π, a)`` with ``P[i, π(i)] = a_i`` for a matrix with one nonzero per row."""
    index = P.abs().argmax(dim=1)
    return index, P.gather(1, index[:, None])[:, 0]


def _low_displacement_completion(W: torch.Tensor, size: int, A: torch.Tensor, B: torch.Tensor, rank: int) -> torch.Tensor:
    """An ``N × N`` completion ``M = [W; X]`` of ``W`` (``m × N``, ``m <= N = size``) whose Stein
    displacement ``S = M - A M B`` has rank ``<= rank`` whenever ``W`` is the top of such a matrix;
    ``A``, ``B`` are signed cyclic permutations (``Z_f``, ``Z_fᵀ`` with ``|f| = 1``).

    Row ``i`` of ``S`` is ``M_i - a_i M_{π(i)} B``. The free rows ``X`` lie on one arc
    ``u_1, …, u_L`` of the cycle ``π`` (``π(u_1)`` known, ``π(u_{j+1}) = u_j``), so the rows
    ``d_j = S_{u_j}`` can be chosen freely (``X_{u_j} = d_j + a_{u_j} M_{π(u_j)} B``); the rows of
    ``S`` between known rows form ``K``, and the single known row ``i₀`` with ``π(i₀) = u_L`` is an
    affine function of the ``d_j``. With ``V`` = the top row space of ``K`` (dimension
    ``k = min(rank, numerical rank of K)``) we take ``d_j ∈ V`` and solve, by least squares, for
    ``S_{i₀} ∈ V``; then ``rank S <= k + 1`` (``<= rank`` if ``k < rank``) and ``rank S = rank``
    with zero residual for members whose ``K`` has rank ``rank``. Otherwise this is the completion
    that displacement truncation then truncates. Cost ``O(r N³)`` (the least squares)."""
    m = W.shape[0]
    perm, signs = _signed_permutation(A)
    columns, column_signs = _signed_permutation(B.transpose(0, 1))  # (v B)_j = v_{columns[j]} b_j

    def right(v):
        return v[..., columns] * column_signs

    known = [i for i in range(m) if int(perm[i]) < m]
    (start,) = [i for i in range(m) if int(perm[i]) >= m]  # i₀
    arc = [int(perm[start])]
    while int(perm[arc[-1]]) >= m:
        arc.append(int(perm[arc[-1]]))
    arc.reverse()  # u_1, …, u_L
    M = torch.cat([W, W.new_zeros(size - m, size)])
    K = torch.stack([M[i] - signs[i] * right(M[int(perm[i])]) for i in known]) if known else W.new_zeros(0, size)
    _, singular, basis = torch.linalg.svd(K, full_matrices=False)
    tolerance = 100 * size * torch.finfo(singular.dtype).eps * (float(singular[0]) if singular.numel() else 0.0)
    basis = basis[: min(rank, int((singular > tolerance).sum()))]  # rows span V

    def fill(d):
        for j, u in enumerate(arc):
            M[u] = d[j] + signs[u] * right(M[int(perm[u])])

    fill(W.new_zeros(len(arc), size))
    target = M[start] - signs[start] * right(M[arc[-1]])  # S_{i₀} with d = 0
    if basis.shape[0]:
        # S_{i₀} = target + Σ_j α_j Φ_j,  Φ_j = -a_{i₀} (Π_{l>j} a_{u_l}) (basis B^{L-j+1})
        pushed, coefficient, blocks = basis, -signs[start], []
        for u in reversed(arc):
            pushed = right(pushed)
            blocks.append(coefficient * pushed)
            coefficient = coefficient * signs[u]
        phi = torch.cat(blocks[::-1])  # (L·k, N)

        def outside(v):  # component orthogonal to V
            return v - (v @ basis.conj().transpose(0, 1)) @ basis

        alpha = torch.linalg.lstsq(outside(phi).transpose(0, 1), -outside(target)[:, None]).solution[:, 0]
        fill(alpha.reshape(len(arc), -1) @ basis)
    return M


class _CirculantKrylov(DisplacementRankMatrix):
    """``M = Σ_i Z_1(g_i) K(Bᵀ, h_i)ᵀ`` with ``Bᵀ ∈ {Z₋₁, Z₋₁ᵀ}`` on ``N = max(m, n)``,
    corner-embedded; the subclasses fix ``Bᵀ``."""

    #: Stein operator ``B`` is ``Z₋₁ᵀ`` (Toeplitz-like) or ``Z₋₁`` (Hankel-like)
    right_transposed: bool = True
    #: ``to_dense`` multiplies dense ``(r, N, N)`` Krylov matrices (``O(r N³)``); fits evaluate
    #: ``M I`` through the FFT kernel (:func:`structmat.fit.fitting.dense_matrix`)
    dense_by_forward = True

    def __init__(self, in_features: int, out_features: int, *, rank: int | None = None, device=None, dtype=None) -> None:
        size = max(check_int("in_features", in_features, minimum=1), check_int("out_features", out_features, minimum=1))
        super().__init__(in_features, out_features, rank=rank, rows=size, columns=size, device=device, dtype=dtype)
        self.size = size
        self.reset_parameters()

    def _square_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.right_transposed:  # K(Z₋₁, h) = Z₋₁(h)
            return f_circulant_krylov_multiply(self.left_generators, self.right_generators, x, 1, -1)
        # K(Z₋₁ᵀ, h) = J Z₋₁(J h): M x = Σ_i Z_1(g_i) Z₋₁(J h_i)ᵀ (J x)
        return f_circulant_krylov_multiply(self.left_generators, self.right_generators.flip(-1), x.flip(-1), 1, -1)

    def _square_transpose(self, y: torch.Tensor) -> torch.Tensor:
        if self.right_transposed:  # Mᵀ y = Σ_i Z₋₁(h_i) Z_1(g_i)ᵀ y
            return f_circulant_krylov_multiply(self.right_generators, self.left_generators, y, -1, 1)
        return f_circulant_krylov_multiply(self.right_generators.flip(-1), self.left_generators, y, -1, 1).flip(-1)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return truncate_last(self._square_forward(pad_last(x, self.size)), self.out_features)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        return truncate_last(self._square_transpose(pad_last(y, self.size)), self.in_features)

    def right_krylov(self) -> torch.Tensor:
        """The dense ``K(Bᵀ, h_i)`` stacked as ``(r, N, N)``."""
        if self.right_transposed:
            return f_circulant_matrix(self.right_generators, -1.0)
        return f_circulant_matrix(self.right_generators.flip(-1), -1.0).flip(-2)

    def to_dense(self) -> torch.Tensor:
        left = f_circulant_matrix(self.left_generators, 1.0)
        dense = (left @ self.right_krylov().transpose(-1, -2)).sum(0)
        return dense[: self.out_features, : self.in_features]

    def stein_operators(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense ``(A, B)`` of the Stein displacement ``M - A M B``."""
        A = shift_matrix(self.size, 1.0, self.dtype, self.left_generators.device)
        B = shift_matrix(self.size, -1.0, self.dtype, self.left_generators.device)
        return A, (B.transpose(0, 1) if self.right_transposed else B)

    def _matvec_flops(self) -> int:
        real = not self.dtype.is_complex
        n, r = self.size, self.rank
        bins = (lambda size: size // 2 + 1) if real else (lambda size: size)
        outer = (r + 1) * fft_flops(n, real) + 8 * r * bins(n)
        if n % 2 == 0 or not real:  # negacyclic transforms of n points (ops.circulant.cyclic_transforms)
            return outer + (1 + r) * fft_flops(n, real) + 6 * r * bins(n)
        length = convolution_length(n)  # odd n, real: folded linear convolutions
        return outer + (1 + r) * fft_flops(length, real) + 6 * r * bins(length)

    @classmethod
    def from_dense(cls, W: torch.Tensor, rank: int | None = None):
        """Displacement truncation: ``W`` completed to ``N × N`` -> Stein displacement
        ``S = M - A M B`` -> best rank-r ``G Hᵀ`` -> ``M = ½ Σ K(A, g_i) K(Bᵀ, h_i)ᵀ``
        (``1 - fg = 2``). A rectangular ``W`` is completed by
        :func:`_low_displacement_completion` (rows, or columns through ``Mᵀ`` and the operators
        ``(Bᵀ, Aᵀ)``), so every member of the family — the corner of a rank-r ``N × N`` matrix —
        is recovered exactly; a square ``W`` of displacement rank ``<= r`` likewise. Errors in
        ``layer.projection_report``."""
        W = check_matrix("W", W)
        m, n = W.shape
        layer = cls(n, m, rank=rank, device=W.device, dtype=W.dtype)
        A, B = layer.stein_operators()
        if m < layer.size:
            square = _low_displacement_completion(W, layer.size, A, B, layer.rank)
        elif n < layer.size:
            square = _low_displacement_completion(W.transpose(0, 1), layer.size, B.transpose(0, 1), A.transpose(0, 1), layer.rank)
            square = square.transpose(0, 1)
        else:
            square = W
        displacement = square - A @ square @ B
        G, H, kept = _generators(displacement, layer.rank)
        with torch.no_grad():
            layer.left_generators.copy_(G)
            layer.right_generators.copy_(H / 2)
        layer._record_projection(W, displacement, kept)
        return layer


@register(
    "toeplitz_like",
    samples=_samples,
    params_formula="2·r·max(m, n)",
    flops_formula="(2r + 2) FFTs of length ~max(m, n)",
    size_ladder=_ladder,
)
class ToeplitzLike(_CirculantKrylov):
    """Toeplitz-like matrix of displacement rank ``r`` (SPEC.md §4.10):
    ``M = Σ_i K(Z₁, g_i) K(Z₋₁, h_i)ᵀ = Σ_i Z₁(g_i) Z₋₁(h_i)ᵀ``, i.e. Stein displacement
    ``M - Z₁ M Z₋₁ᵀ = 2 G Hᵀ`` (Sylvester ``Z₁M - MZ₋₁`` of rank ``<= r``).

    Shapes ``x (B, n) -> (B, m)`` through the ``N × N`` member, ``N = max(m, n)``; cost
    ``2r + 2`` FFTs per row, ``O(r N log N)``; ``2 r N`` parameters; ``rank`` in ``[1, N]``
    (default ``min(4, N)``). Every Toeplitz matrix is a member with ``r = 2``.

    Example::

        >>> ToeplitzLike(64, 64, rank=4).num_parameters
        512
    """

    right_transposed = True


@register(
    "hankel_like",
    samples=_samples,
    params_formula="2·r·max(m, n)",
    flops_formula="(2r + 2) FFTs of length ~max(m, n)",
    size_ladder=_ladder,
)
class HankelLike(_CirculantKrylov):
    """Hankel-like matrix of displacement rank ``r`` (SPEC.md §4.10): Sylvester operators
    ``(Z₁, Z₋₁ᵀ)``, equivalently Stein ``M - Z₁ M Z₋₁ = 2 G Hᵀ`` with
    ``M = Σ_i K(Z₁, g_i) K(Z₋₁ᵀ, h_i)ᵀ = Σ_i Z₁(g_i) Z₋₁(J h_i)ᵀ J`` (``J`` the reversal).

    Same shapes, cost and parameters as :class:`ToeplitzLike`; every Hankel matrix is a member
    with ``r = 2``.
    """

    right_transposed = False


@register(
    "vandermonde_like",
    samples=_samples,
    params_formula="r·(m + n)",
    flops_formula="r FFT correlations of length ~2n + 2·r·m·n",
    size_ladder=_ladder,
)
class VandermondeLike(DisplacementRankMatrix):
    """Vandermonde-like matrix of displacement rank ``r`` (SPEC.md §4.10), natively ``m × n``:
    Stein operators ``(D_b, Z₀)`` with fixed nodes ``b`` (Chebyshev points, or roots of unity for
    complex dtypes), i.e. Sylvester ``(D_a, Z₀)`` with ``a = 1/b``:

        ``M = Σ_i K(D_b, g_i) K(Z₀ᵀ, h_i)ᵀ = Σ_i diag(g_i) V(b) U(h_i)``,  ``M - D_b M Z₀ = G Hᵀ``,

    with ``V(b)[k, t] = b_k^t`` and ``U(h)[t, c] = h_{t+c}`` (zero for ``t + c >= n``, a Hankel
    matrix). Multiply: ``U(h_i) x`` by FFT correlation (``O(r n log n)``), then the Vandermonde
    evaluation of the ``r`` results by tiled direct evaluation (``2 r m n`` flops, stable in
    float32; see the module docstring). ``r (m + n)`` parameters.
    """

    def __init__(self, in_features: int, out_features: int, *, rank: int | None = None, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, rank=rank, rows=out_features, columns=in_features, device=device, dtype=dtype)
        self.register_buffer("nodes", torch.empty(out_features, device=device, dtype=self.dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self._reset_generators()
        if self.nodes.device.type != "meta":
            with torch.no_grad():
                self.nodes.copy_(default_nodes(self.out_features, self.dtype, self.nodes.device))

    def _hankel_diagonals(self) -> torch.Tensor:
        # U(h) as a Hankel matrix of the length-(2n-1) sequence (h, 0, …, 0)
        return torch.nn.functional.pad(self.right_generators, (0, self.in_features - 1))

    def _apply_hankel(self, v: torch.Tensor) -> torch.Tensor:
        """``U(h_i) v_i`` for ``v`` of shape ``(B, r, n)`` or ``(B, 1, n)`` -> ``(B, r, n)``."""
        return toeplitz_multiply(self._hankel_diagonals(), v.flip(-1), self.in_features)

    def _tile(self, params, start: int, stop: int) -> torch.Tensor:
        return vandermonde_rows(params[0][start:stop], self.in_features)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        inner = self._apply_hankel(x[:, None, :]).reshape(batch * self.rank, self.in_features)
        values = tiled_kernel_multiply(self._tile, [self.nodes], inner, self.shape)
        return (values.reshape(batch, self.rank, self.out_features) * self.left_generators).sum(1)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        batch = y.shape[0]
        scaled = (y[:, None, :] * self.left_generators).reshape(batch * self.rank, self.out_features)
        powers = tiled_kernel_multiply(self._tile, [self.nodes], scaled, self.shape, transpose=True)
        return self._apply_hankel(powers.reshape(batch, self.rank, self.in_features)).sum(1)

    def to_dense(self) -> torch.Tensor:
        n = self.in_features
        index = torch.arange(n, device=self.right_generators.device)
        hankel = self._hankel_diagonals()[:, index[:, None] + index[None, :]]  # (r, n, n)
        V = vandermonde_rows(self.nodes, n)
        return (self.left_generators[:, :, None] * (V @ hankel)).sum(0)

    def stein_operators(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.diag(self.nodes), shift_matrix(self.in_features, 0.0, self.dtype, self.nodes.device)

    def _matvec_flops(self) -> int:
        real = not self.dtype.is_complex
        length = convolution_length(self.in_features)
        fft = (1 + self.rank) * fft_flops(length, real) + 6 * self.rank * length
        return fft + mult_add_flops(self.rank * self.out_features * (self.in_features + 1), self.dtype)

    @classmethod
    def from_dense(cls, W: torch.Tensor, rank: int | None = None) -> "VandermondeLike":
        """Displacement truncation with the Stein operators ``(D_b, Z₀)`` (``1 - fg = 1``);
        errors in ``layer.projection_report``."""
        W = check_matrix("W", W)
        m, n = W.shape
        layer = cls(n, m, rank=rank, device=W.device, dtype=W.dtype)
        A, B = layer.stein_operators()
        displacement = W - A @ W @ B
        G, H, kept = _generators(displacement, layer.rank)
        with torch.no_grad():
            layer.left_generators.copy_(G)
            layer.right_generators.copy_(H)
        layer._record_projection(W, displacement, kept)
        return layer


@register(
    "cauchy_like",
    samples=_samples,
    params_formula="r·(m + n)",
    flops_formula="2·m·n (+ (r + 1)·m·n per batch to form tiles)",
    size_ladder=_ladder,
)
class CauchyLike(DisplacementRankMatrix):
    """Cauchy-like matrix of displacement rank ``r`` (SPEC.md §4.10), natively ``m × n``:
    Sylvester ``D_s M - M D_t = G Hᵀ`` with fixed nodes ``s_i = i + ½``, ``t_j = -(j + ½)``, so
    ``M[i, j] = (Gᵀ H)[i, j] / (s_i - t_j)`` (no Krylov matrices needed).

    Multiply: tiled direct evaluation (:mod:`structmat.ops.kernel_matrix`) — per batch
    ``(r + 1) m n`` flops to form the tiles plus ``2 m n`` per row, ``O(tile · n)`` memory;
    stable in float32 (see the module docstring). ``r (m + n)`` parameters.
    """

    def __init__(self, in_features: int, out_features: int, *, rank: int | None = None, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, rank=rank, rows=out_features, columns=in_features, device=device, dtype=dtype)
        self.register_buffer("s", torch.empty(out_features, device=device, dtype=self.dtype))
        self.register_buffer("t", torch.empty(in_features, device=device, dtype=self.dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self._reset_generators()
        if self.s.device.type != "meta":
            s, t = hilbert_nodes(self.out_features, self.in_features, self.dtype, self.s.device)
            with torch.no_grad():
                self.s.copy_(s)
                self.t.copy_(t)

    @staticmethod
    def _tile(params, start: int, stop: int) -> torch.Tensor:
        G, H, s, t = params
        return (G[:, start:stop].transpose(0, 1) @ H) * cauchy_rows(s[start:stop], t)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return tiled_kernel_multiply(self._tile, [self.left_generators, self.right_generators, self.s, self.t], x, self.shape)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        return tiled_kernel_multiply(self._tile, [self.left_generators, self.right_generators, self.s, self.t], y, self.shape, transpose=True)

    def to_dense(self) -> torch.Tensor:
        return self._tile([self.left_generators, self.right_generators, self.s, self.t], 0, self.out_features)

    def _matvec_flops(self) -> int:
        return mult_add_flops(self.out_features * self.in_features, self.dtype)

    @classmethod
    def from_dense(cls, W: torch.Tensor, rank: int | None = None) -> "CauchyLike":
        """Best rank-r approximation of the Sylvester displacement ``(s_i - t_j) W_ij``, then
        ``M = G Hᵀ / (s_i - t_j)``; errors in ``layer.projection_report``."""
        W = check_matrix("W", W)
        m, n = W.shape
        layer = cls(n, m, rank=rank, device=W.device, dtype=W.dtype)
        displacement = W * (layer.s[:, None] - layer.t[None, :])
        G, H, kept = _generators(displacement, layer.rank)
        with torch.no_grad():
            layer.left_generators.copy_(G)
            layer.right_generators.copy_(H)
        layer._record_projection(W, displacement, kept)
        return layer


@register(
    "ldr_sd",
    samples=_samples,
    params_formula="2·r·max(m, n) + 2·max(m, n)",
    flops_formula="O(r·N·log² N), N = max(m, n) (divide and conquer)",
    size_ladder=_ladder,
)
class LDRSubdiagonal(DisplacementRankMatrix):
    """LDR matrix with learned subdiagonal operators (LDR-SD, SPEC.md §4.11, [LDR18]):

        ``M = Σ_i K(A, g_i) K(Bᵀ, h_i)ᵀ``,  ``M - A M B = (1 - Π a · Π b) G Hᵀ``,

    ``A e_j = a_j e_{(j+1) mod N}``, ``B e_j = b_j e_{(j+1) mod N}`` learnable (``2N`` parameters),
    initialised to ``A = Z₁``, ``B = Z₋₁`` (the Hankel-like operators). ``N = max(m, n)``,
    corner-embedded. Multiply by the divide-and-conquer Krylov products of
    :mod:`structmat.ops.krylov`: ``K(Bᵀ, h)ᵀ x = K(A', J h)ᵀ J x`` with ``A' = J Bᵀ J``
    subdiagonal, then ``Σ_i K(A, g_i) u_i``, both on each cache-sized block of rows;
    ``O(r N log² N)`` per row. ``rank`` in ``[1, N]``.
    """

    #: ``to_dense`` multiplies dense ``(r, N, N)`` Krylov matrices (``O(r N³)``); fits evaluate
    #: ``M I`` through the Krylov kernel (:func:`structmat.fit.fitting.dense_matrix`)
    dense_by_forward = True

    def __init__(self, in_features: int, out_features: int, *, rank: int | None = None, device=None, dtype=None) -> None:
        size = max(check_int("in_features", in_features, minimum=1), check_int("out_features", out_features, minimum=1))
        super().__init__(in_features, out_features, rank=rank, rows=size, columns=size, device=device, dtype=dtype)
        self.size = size
        self.subdiagonal_a = nn.Parameter(torch.empty(size, device=device, dtype=self.dtype))
        self.subdiagonal_b = nn.Parameter(torch.empty(size, device=device, dtype=self.dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self._reset_generators()
        with torch.no_grad():
            self.subdiagonal_a.fill_(1.0)
            self.subdiagonal_b.fill_(1.0)
            self.subdiagonal_b[-1:] = -1.0

    def _mirrored_b(self) -> torch.Tensor:
        """``a'`` of ``A' = J Bᵀ J``: ``a'_k = b_{N-2-k}`` (``k < N-1``), ``a'_{N-1} = b_{N-1}``."""
        b = self.subdiagonal_b
        return torch.cat([b[:-1].flip(0), b[-1:]])

    def _square_forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 0:  # FFT libraries reject empty transforms
            return x.new_zeros(0, self.size)
        complex_rows = x.is_complex()
        inner = subdiagonal_krylov_transpose_multiplier(self._mirrored_b(), self.right_generators.flip(-1), complex_rows)
        outer = subdiagonal_krylov_multiplier(self.subdiagonal_a, self.left_generators, complex_rows)
        # both products on each cache-sized block of rows: the (rows, r, N) middle stays in cache
        return subdiagonal_row_blocks(lambda rows: outer(inner(rows.flip(-1))), x, self.rank)

    def _square_transpose(self, y: torch.Tensor) -> torch.Tensor:
        if y.shape[0] == 0:
            return y.new_zeros(0, self.size)
        complex_rows = y.is_complex()
        inner = subdiagonal_krylov_transpose_multiplier(self.subdiagonal_a, self.left_generators, complex_rows)
        outer = subdiagonal_krylov_multiplier(self._mirrored_b(), self.right_generators.flip(-1), complex_rows)
        return subdiagonal_row_blocks(lambda rows: outer(inner(rows)).flip(-1), y, self.rank)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return truncate_last(self._square_forward(pad_last(x, self.size)), self.out_features)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        return truncate_last(self._square_transpose(pad_last(y, self.size)), self.in_features)

    def to_dense(self) -> torch.Tensor:
        left = krylov_matrix(lambda v: subdiagonal_apply(self.subdiagonal_a, v), self.left_generators)
        right = krylov_matrix(lambda v: subdiagonal_transpose_apply(self.subdiagonal_b, v), self.right_generators)
        dense = (left @ right.transpose(-1, -2)).sum(0)
        return dense[: self.out_features, : self.in_features]

    def stein_operators(self) -> tuple[torch.Tensor, torch.Tensor]:
        return subdiagonal_matrix(self.subdiagonal_a), subdiagonal_matrix(self.subdiagonal_b)

    def _matvec_flops(self) -> int:
        return 2 * subdiagonal_krylov_flops(self.size, self.rank, self.dtype)


def displacement_rank(M: torch.Tensor, A: torch.Tensor, B: torch.Tensor, *, stein: bool = False, rtol: float = 1e-10) -> int:
    """Numerical rank (relative threshold ``rtol`` on the singular values) of the Sylvester
    displacement ``A M - M B`` or, with ``stein=True``, the Stein displacement ``M - A M B``."""
    D = (M - A @ M @ B if stein else A @ M - M @ B).detach()
    s = torch.linalg.svdvals(D)
    if s.numel() == 0 or float(s[0]) == 0.0:
        return 0
    return int((s > rtol * s[0]).sum())


__all__ = [
    "ToeplitzLike",
    "HankelLike",
    "VandermondeLike",
    "CauchyLike",
    "LDRSubdiagonal",
    "displacement_rank",
    "shift_matrix",
    "subdiagonal_matrix",
]
