"""Families ``monarch`` (𝓜) and ``monarch2`` (𝓜𝓜*) (SPEC.md §4.17, §5.6).

Both are built on the canonical 4-index form of SPEC.md §4.17,

    ``M[(p, j), (q, i)] = Σ_{a<r} L[j, p, q, a] · R[q, j, a, i]``,

multiplied as two batched matmuls with a reshape--transpose between them
(:mod:`structmat.ops.blockdiag`). ``monarch`` is the rank-1 case: square ``n = m²`` with
``nblocks = m`` is [MO22]'s ``M = P L Pᵀ R`` (``L, R`` block-diagonal with ``m`` blocks ``m × m``,
``P = T_{m,m}``), ``2 n √n`` parameters; other sizes use the general/rectangular canonical form
and zero padding. The projection (:meth:`Monarch.from_dense`) is Algorithm 1: exact and optimal.

``monarch2`` is the product ``M₁ M₂ᵀ`` of two Monarch matrices (``= 𝓜𝓜*``, since conjugating a
Monarch factor stays in 𝓜); :func:`factorize_mm` is Algorithm 2, which recovers the factors of
an invertible generic member up to the unavoidable diagonal scaling and permutation.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from ..core import StructuredMatrix, register
from ..core.dtypes import mult_add_flops
from ..core.errors import check_int, check_matrix, describe
from ..core.init import uniform_
from ..core.registry import Sample
from ..core.sizes import ceil_div, pad_last, truncate_last
from ..ops.blockdiag import monarch_from_dense, monarch_multiply, monarch_multiply_transpose, monarch_to_dense


def default_nblocks(in_features: int, out_features: int) -> int:
    """``round(√in_features)``: minimises ``r (QJI + JPQ)`` for ``P = Q = nblocks``."""
    return max(1, round(math.sqrt(in_features)))


def canonical_shape(in_features: int, out_features: int, nblocks: int) -> tuple[int, int, int, int]:
    """``(P, J, Q, I)`` of the canonical form used for an ``out × in`` map with ``nblocks`` blocks.

    ``P = Q = nblocks``, ``J = ⌈out / nblocks⌉``, ``I = ⌈in / nblocks⌉``: ``R`` has ``nblocks``
    blocks of ``J r × I`` and ``L`` has ``J`` blocks of ``nblocks × nblocks r``. For square
    ``n = m²`` and ``nblocks = m`` this is [MO22]'s Monarch; in general it is ``𝓜^{(b, n)}``
    with ``b = n / nblocks`` (SPEC.md §4.17). Input is zero-padded to ``Q I``, output truncated
    from ``P J`` (SPEC.md §1.6).
    """
    return nblocks, ceil_div(out_features, nblocks), nblocks, ceil_div(in_features, nblocks)


def canonical_parameter_count(in_features: int, out_features: int, nblocks: int, rank: int = 1) -> int:
    """``r (Q J I + J P Q)`` for :func:`canonical_shape` (SPEC.md §4.17)."""
    P, J, Q, I = canonical_shape(in_features, out_features, nblocks)
    return rank * (Q * J * I + J * P * Q)


def check_nblocks(nblocks, in_features: int, out_features: int) -> int:
    """``nblocks`` in ``[1, max(in_features, out_features)]`` (``None`` -> the default)."""
    if nblocks is None:
        return default_nblocks(in_features, out_features)
    return check_int("nblocks", nblocks, minimum=1, maximum=max(in_features, out_features))


def pads_whole_blocks(in_features: int, out_features: int, nblocks: int) -> bool:
    """True when padding fills a whole block index ``p`` or ``q``: such an ``nblocks`` has more
    parameters than a smaller one that represents the same matrices (``⌈out/J⌉ < P`` or ``⌈in/I⌉ < Q``)."""
    P, J, Q, I = canonical_shape(in_features, out_features, nblocks)
    return ceil_div(out_features, J) < P or ceil_div(in_features, I) < Q


def nblocks_ladder(in_features: int, out_features: int, rank: int = 1) -> list[dict]:
    """The useful ``nblocks`` in ``[1, max(in, out)]`` (see :func:`pads_whole_blocks`), ordered by
    parameter count (size ladders)."""
    counts = [
        (canonical_parameter_count(in_features, out_features, k, rank), k)
        for k in range(1, max(in_features, out_features) + 1)
        if not pads_whole_blocks(in_features, out_features, k)
    ]
    return [{"nblocks": k} for _, k in sorted(counts)]


class CanonicalMonarch(StructuredMatrix):
    """Shared implementation of the canonical form with rank ``r`` (``monarch``: ``r = 1``;
    ``btt``: any ``r``). Parameters ``left`` ``(J, P, Q, r)`` and ``right`` ``(Q, J, r, I)``.

    Initialisation (SPEC.md §7.3: Kaiming-uniform per block): ``R ~ U(±√(3/I))`` keeps the
    activations' variance through the first factor (fan-in ``I``), ``L ~ U(±√(I / (r n)))`` with
    ``n = in_features``, so every entry of ``M`` has ``nn.Linear``'s variance ``1 / (3 n)`` and the
    layer's outputs have ``nn.Linear``'s variance; without padding ``L``'s bound is
    ``1/√(Q r)``, ``nn.Linear``'s bound for its fan-in ``Q r``.
    """

    def __init__(self, in_features: int, out_features: int, *, nblocks: int | None, rank: int, device=None, dtype=None) -> None:
        in_features = check_int("in_features", in_features, minimum=1)
        out_features = check_int("out_features", out_features, minimum=1)
        nblocks = check_nblocks(nblocks, in_features, out_features)
        rank = check_int("rank", rank, minimum=1)
        super().__init__(in_features, out_features, device=device, dtype=dtype, nblocks=nblocks)
        self.nblocks, self.rank = nblocks, rank
        self.canonical_shape = canonical_shape(in_features, out_features, nblocks)
        P, J, Q, I = self.canonical_shape
        self.left = nn.Parameter(torch.empty(J, P, Q, rank, device=device, dtype=self.dtype))
        self.right = nn.Parameter(torch.empty(Q, J, rank, I, device=device, dtype=self.dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        I = self.canonical_shape[3]
        uniform_(self.right, math.sqrt(3.0 / I))
        uniform_(self.left, math.sqrt(I / (self.rank * self.in_features)))

    @property
    def padded_shape(self) -> tuple[int, int]:
        """``(P J, Q I)``: the shape of the canonical matrix before slicing to ``(out, in)``."""
        P, J, Q, I = self.canonical_shape
        return P * J, Q * I

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_last(x, self.padded_shape[1])
        return truncate_last(monarch_multiply(x, self.left, self.right), self.out_features)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        y = pad_last(y, self.padded_shape[0])
        return truncate_last(monarch_multiply_transpose(y, self.left, self.right), self.in_features)

    def to_dense(self) -> torch.Tensor:
        return monarch_to_dense(self.left, self.right)[: self.out_features, : self.in_features]

    def _matvec_flops(self) -> int:
        return mult_add_flops(self.left.numel() + self.right.numel(), self.dtype)

    @classmethod
    def _project(cls, W, **options) -> "CanonicalMonarch":
        """Algorithm 1, general form (SPEC.md §5.6): slice-wise truncated SVD of the zero-padded ``W``.

        Padding appends whole rows and columns to each ``P × I`` slice, entries that the layer
        never reads, so the slice SVD of the padded target is still the optimal projection.
        """
        W = check_matrix("W", W)
        m, n = W.shape
        layer = cls(n, m, device=W.device, dtype=W.dtype, **options)
        rows, cols = layer.padded_shape
        padded = torch.nn.functional.pad(W.detach(), (0, cols - n, 0, rows - m))
        left, right, _ = monarch_from_dense(padded, layer.canonical_shape, layer.rank)
        with torch.no_grad():
            layer.left.copy_(left)
            layer.right.copy_(right)
        return layer


def _monarch_samples():
    return [
        Sample(16, 16, {"nblocks": 4}),
        Sample(12, 20, {"nblocks": 3}),
        Sample(37, 101, {"nblocks": 5}),
        Sample(64, 64),
        Sample(1, 1),
    ]


@register(
    "monarch",
    samples=_monarch_samples,
    params_formula="QJI + JPQ with P = Q = nblocks, J = ⌈m/nblocks⌉, I = ⌈n/nblocks⌉ (2n√n square)",
    flops_formula="2·(QJI + JPQ)",
    size_ladder=nblocks_ladder,
)
class Monarch(CanonicalMonarch):
    """Monarch matrix ``M = P L Pᵀ R`` ([MO22], SPEC.md §4.17), multiplied as two batched matmuls.

    ``L`` and ``R`` are block-diagonal and ``P`` is the reshape--transpose permutation.

    Args:
        nblocks: number of blocks of ``R`` (and size of ``L``'s blocks), in
            ``[1, max(in_features, out_features)]``; default ``round(√in_features)``. Square
            ``n = m²`` with ``nblocks = m`` is [MO22]'s ``b = √n`` Monarch with ``2 n √n``
            parameters; in general the class is ``𝓜^{(b, n)}`` with block size
            ``b = n / nblocks`` (rectangular and non-divisible sizes: see
            :func:`canonical_shape`).

    Shapes ``(*, in) -> (*, out)``; cost ``QJI + JPQ`` multiply-adds per row, as many parameters.
    Projection: :meth:`from_dense` (Algorithm 1, optimal).

    Example::

        >>> layer = Monarch(1024, 1024, nblocks=32)
        >>> layer.num_parameters == 2 * 1024 * 32
        True
    """

    def __init__(self, in_features: int, out_features: int, *, nblocks: int | None = None, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, nblocks=nblocks, rank=1, device=device, dtype=dtype)

    @classmethod
    def from_dense(cls, W: torch.Tensor, nblocks: int | None = None) -> "Monarch":
        """The closest Monarch matrix to ``W`` in Frobenius norm (Algorithm 1, SPEC.md §5.6).

        Error² ``= Σ_{j,q} Σ_{t ≥ 2} σ_t(Ã[:, j, q, :])²``; Monarch inputs are recovered exactly.
        Cost ``O(n² min(b, n/b))``.
        """
        return cls._project(W, nblocks=nblocks)


# ---------------------------------------------------------------------------- MM*
def _monarch2_samples():
    return [Sample(16, 16, {"nblocks": 4}), Sample(10, 7, {"nblocks": 3}), Sample(20, 37), Sample(1, 1)]


def _monarch2_ladder(in_features: int, out_features: int) -> list[dict]:
    width = max(in_features, out_features)
    counts = []
    for k in range(1, width + 1):
        if pads_whole_blocks(width, out_features, k) or pads_whole_blocks(width, in_features, k):
            continue
        hidden = k * ceil_div(width, k)
        count = canonical_parameter_count(hidden, out_features, k) + canonical_parameter_count(hidden, in_features, k)
        counts.append((count, k))
    return [{"nblocks": k} for _, k in sorted(counts)]


@register(
    "monarch2",
    samples=_monarch2_samples,
    params_formula="2 Monarch factors of size N = nblocks·⌈max(m, n)/nblocks⌉ (4N√N square)",
    flops_formula="2·(params of both factors)",
    size_ladder=_monarch2_ladder,
)
class Monarch2(StructuredMatrix):
    """Product of two Monarch matrices, ``M = M₁ M₂ᵀ`` (the class 𝓜𝓜*, SPEC.md §4.17, §5.6).

    ``M₂ᵀ`` (a ``𝓓𝓑`` factor, then a ``𝓑𝓓`` factor) maps the padded input to a hidden width
    ``N = nblocks · ⌈max(in, out) / nblocks⌉``; ``M₁`` maps it to the output. Both factors use
    the canonical form with ``P = Q = nblocks`` (:func:`canonical_shape`); parameters ``left1``,
    ``right1`` (``M₁``) and ``left2``, ``right2`` (``M₂``).

    Args:
        nblocks: as for :class:`Monarch`, in ``[1, max(in, out)]``; default
            ``round(√max(in, out))``.

    Cost: the sum of both factors' multiply-adds; square ``n = m²``, ``nblocks = m``: ``4 n √n``.
    Algorithm 2 (:meth:`factorize_mm`) factorises invertible generic members.
    """

    def __init__(self, in_features: int, out_features: int, *, nblocks: int | None = None, device=None, dtype=None) -> None:
        in_features = check_int("in_features", in_features, minimum=1)
        out_features = check_int("out_features", out_features, minimum=1)
        width = max(in_features, out_features)
        nblocks = check_nblocks(default_nblocks(width, width) if nblocks is None else nblocks, in_features, out_features)
        super().__init__(in_features, out_features, device=device, dtype=dtype, nblocks=nblocks)
        self.nblocks = nblocks
        self.hidden = nblocks * ceil_div(width, nblocks)
        P1, J1, Q, I = canonical_shape(self.hidden, out_features, nblocks)
        P2, J2, _, _ = canonical_shape(self.hidden, in_features, nblocks)
        self.left1 = nn.Parameter(torch.empty(J1, P1, Q, 1, device=device, dtype=self.dtype))
        self.right1 = nn.Parameter(torch.empty(Q, J1, 1, I, device=device, dtype=self.dtype))
        self.left2 = nn.Parameter(torch.empty(J2, P2, Q, 1, device=device, dtype=self.dtype))
        self.right2 = nn.Parameter(torch.empty(Q, J2, 1, I, device=device, dtype=self.dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # M₂ᵀ x: Lᵀ (fan-in P₂ = nblocks) then Rᵀ (fan-in J₂) keep the activations' variance
        # (unit gain; Rᵀ's variance also makes up for the zero padding of the input from `in` to
        # P₂ J₂); M₁ is initialised like a Monarch layer of fan-in `hidden`, so the output has
        # nn.Linear's variance.
        P2 = self.left2.shape[1]
        uniform_(self.left2, math.sqrt(3.0 / P2))
        uniform_(self.right2, math.sqrt(3.0 * P2 / self.in_features))
        I = self.right1.shape[-1]
        uniform_(self.right1, math.sqrt(3.0 / I))
        uniform_(self.left1, math.sqrt(I / self.hidden))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        J2, P2 = self.left2.shape[:2]
        hidden = monarch_multiply_transpose(pad_last(x, P2 * J2), self.left2, self.right2)
        return truncate_last(monarch_multiply(hidden, self.left1, self.right1), self.out_features)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        J1, P1 = self.left1.shape[:2]
        hidden = monarch_multiply_transpose(pad_last(y, P1 * J1), self.left1, self.right1)
        return truncate_last(monarch_multiply(hidden, self.left2, self.right2), self.in_features)

    def to_dense(self) -> torch.Tensor:
        first = monarch_to_dense(self.left1, self.right1)[: self.out_features]
        second = monarch_to_dense(self.left2, self.right2)[: self.in_features]
        return first @ second.transpose(0, 1)

    def _matvec_flops(self) -> int:
        return mult_add_flops(sum(p.numel() for p in (self.left1, self.right1, self.left2, self.right2)), self.dtype)

    @classmethod
    def from_mm_factors(cls, factors: "MMFactors") -> "Monarch2":
        """The layer with ``P M P = A D C`` for factors from :func:`factorize_mm` (square ``n = m²``).

        ``M₁ = P L₁ P R₁`` with ``L₁``'s blocks ``A_i`` and ``R₁``'s blocks
        ``R₁[k][i, j] = D_{ij}[k]``; ``M₂ = P L₂ P R₂`` with ``L₂``'s blocks ``C_jᵀ`` and
        ``R₂ = I``; then ``M₁ M₂ᵀ = P A (P R₁ P) C P`` (SPEC.md §4.17 "Adjoint").
        """
        A, D, C = factors
        m = A.shape[0]
        layer = cls(m * m, m * m, nblocks=m, device=A.device, dtype=A.dtype)
        eye = torch.eye(m, dtype=A.dtype, device=A.device)
        with torch.no_grad():
            layer.left1.copy_(A.unsqueeze(-1))  # L₁[i, p, q] = A_i[p, q]
            layer.right1.copy_(D.permute(2, 0, 1).unsqueeze(2))  # R₁[k, i, j] = D_ij[k]
            layer.left2.copy_(C.transpose(1, 2).unsqueeze(-1))  # L₂[j] = C_jᵀ
            layer.right2.copy_(eye.expand(m, m, m).unsqueeze(2))
        return layer

    @classmethod
    def factorize_mm(cls, W: torch.Tensor, *, tol: float = 1e-8, seed: int = 0) -> "Monarch2":
        """Algorithm 2 (SPEC.md §5.6): a ``monarch2`` layer equal to ``W`` (see :func:`factorize_mm`)."""
        return cls.from_mm_factors(factorize_mm(W, tol=tol, seed=seed))


class MMFactors(NamedTuple):
    """Factors of ``P M P = A D C`` (square ``n = m²``, SPEC.md §5.6): ``A[i]`` = ``A_i`` and
    ``C[j]`` = ``C_j`` (``m × m`` blocks of the block-diagonal factors), ``D[i, j]`` = the diagonal
    of ``D_{ij}``; ``(P M P)_{ij} = A_i diag(D[i, j]) C_j``."""

    A: torch.Tensor
    D: torch.Tensor
    C: torch.Tensor


def factorize_mm(W: torch.Tensor, *, tol: float = 1e-8, seed: int = 0) -> MMFactors:
    """Algorithm 2 of [MO22] (SPEC.md §5.6): factor ``W ∈ 𝓜𝓜*`` as ``P W P = A D C``.

    Assumption: ``W`` is square of size ``n = m²``, ``W ∈ 𝓜𝓜*``, invertible, and the blocks of
    its middle block-diagonal factor have no zero entries. Writing ``W̃ = P W P`` in ``m × m``
    blocks ``W̃_{ij} = A_i D_{ij} C_j``:

    1. ``F(i, j) = W̃_{i0}⁻¹ W̃_{ij} W̃_{0j}⁻¹ W̃_{00} = C₀⁻¹ (D_{i0}⁻¹ D_{ij} D_{0j}⁻¹ D_{00}) C₀``;
    2. eigendecompose a random combination ``Σ γ_{ij} F(i, j) = V Λ V⁻¹``, ``Ĉ₀ = V⁻¹``;
    3. ``Â_i = W̃_{i0} Ĉ₀⁻¹``, ``Ĉ_j = Â₀⁻¹ W̃_{0j}``, ``D̂_{ij} = Â_i⁻¹ W̃_{ij} Ĉ_j⁻¹``.

    The factors are unique up to ``Ĉ₀ = Π Δ C₀`` (a permutation and a diagonal scaling).
    Cost ``O(n^{5/2})``.

    Raises ``ValueError`` naming ``W`` when ``W`` is not square of size ``m²``, when a block of
    its first block row or column is singular, or when the result does not reproduce ``W`` to
    relative accuracy ``tol`` (``W`` is then not a member satisfying the assumption).
    """
    W = check_matrix("W", W).detach()
    n = W.shape[0]
    m = math.isqrt(n)
    if W.shape[0] != W.shape[1] or m * m != n:
        raise ValueError(f"W: expected a square matrix of size m² × m² (Algorithm 2), got {describe(W)}")
    dtype = W.dtype
    work = W.to(torch.complex128 if dtype.is_complex else torch.float64)
    # W̃ = P W P with P = T_{m,m}; blocks[i, j] = W̃_{ij}: W̃[(i,k),(j,l)] = W[(k,i),(l,j)]
    blocks = work.reshape(m, m, m, m).permute(1, 3, 0, 2)
    for label, block in [("(0, 0)", blocks[0, 0])] + [(f"(i, 0), i = {i}", blocks[i, 0]) for i in range(1, m)] + [
        (f"(0, j), j = {j}", blocks[0, j]) for j in range(1, m)
    ]:
        if _is_singular(block):
            raise ValueError(
                f"W: Algorithm 2 needs invertible blocks in the first block row and column of P W P "
                f"(invertible W with nonzero middle-factor entries), but block {label} is singular"
            )
    F = torch.linalg.solve(blocks[:, :1], blocks) @ torch.linalg.solve(blocks[:1, :], blocks[0, 0])
    F = F / torch.linalg.matrix_norm(F)[..., None, None]  # comparable scales for the combination
    generator = torch.Generator().manual_seed(seed)
    gamma = torch.randn(m, m, generator=generator, dtype=torch.float64).to(F.dtype)
    _, V = torch.linalg.eig((gamma[:, :, None, None] * F).sum(dim=(0, 1)))
    V = _refine_joint_eigenvectors(F.to(V.dtype), V)
    # eigenvectors have an arbitrary phase: scale each by its largest entry so real inputs stay real
    V = V / V.gather(0, V.abs().argmax(dim=0, keepdim=True))
    C0_inv = V.real if not work.is_complex() else V
    A = blocks[:, 0] @ C0_inv
    A = A / torch.linalg.vector_norm(A, dim=1, keepdim=True)  # unit columns: D carries the scale
    C = torch.linalg.solve(A[0], blocks[0, :])
    C = C / torch.linalg.vector_norm(C, dim=2, keepdim=True)  # unit rows
    middle = torch.linalg.solve(A[:, None], blocks) @ torch.linalg.inv(C)[None, :]
    D = torch.diagonal(middle, dim1=-2, dim2=-1)
    A, D, C = _polish_mm_factors(blocks, A, D, C)
    rebuilt = A[:, None] @ (D[..., :, None] * C[None, :])
    residual = float(torch.linalg.norm(rebuilt - blocks) / max(float(torch.linalg.norm(blocks)), 1e-300))
    if not math.isfinite(residual) or residual > tol:
        raise ValueError(
            f"W: not a member of MM* satisfying Algorithm 2's assumption (invertible, generic, nonzero "
            f"middle-factor entries): the factorisation reproduces W only to relative error {residual:.3g} > tol = {tol:g}"
        )
    return MMFactors(A.to(dtype), D.to(dtype), C.to(dtype))


def _refine_joint_eigenvectors(F: torch.Tensor, V: torch.Tensor, sweeps: int = 3) -> torch.Tensor:
    """Polish ``V`` so that ``V⁻¹ F(i, j) V`` is diagonal for *all* ``(i, j)`` at once.

    With ``T_{ij} = V⁻¹ F(i, j) V = Λ_{ij} + E_{ij}`` (``E`` off-diagonal), the update
    ``V ← V (I + X)`` removes ``E`` to first order when ``E_{ij}[k, l] + (λ_{ij,k} − λ_{ij,l}) X[k, l] = 0``;
    solving this in least squares over all ``(i, j)`` uses every eigenvalue gap, not only those of
    one random combination, so the eigenvectors become accurate to working precision.
    Cost ``O(m² · m³)`` per sweep.
    """
    eye = torch.eye(V.shape[0], dtype=V.dtype, device=V.device)
    for _ in range(sweeps):
        T = torch.linalg.solve(V, F @ V)
        eigenvalues = torch.diagonal(T, dim1=-2, dim2=-1)
        gaps = eigenvalues[..., :, None] - eigenvalues[..., None, :]
        off = T * (1 - eye)
        weight = (gaps.abs() ** 2).sum(dim=(0, 1))
        X = -(gaps.conj() * off).sum(dim=(0, 1)) / torch.where(weight > 0, weight, torch.ones_like(weight))
        V = V @ (eye + X * (1 - eye))
    return V


def _polish_mm_factors(blocks, A, D, C, sweeps: int = 6):
    """Alternating least squares on ``Σ_{ij} ‖W̃_{ij} − A_i diag(D_{ij}) C_j‖²``, from Algorithm 2's
    answer: each step is the exact minimiser over ``A``, ``C`` or ``D`` with the others fixed (so
    the residual never grows); it spreads the error of the single block row and column that
    Algorithm 2 inverts over all blocks. Cost ``O(m⁵) = O(n^{5/2})`` per sweep."""
    for _ in range(sweeps):
        H = D[..., :, None] * C[None, :]  # diag(D_ij) C_j
        A = torch.linalg.solve(
            (H @ H.mH).sum(1), (blocks @ H.mH).sum(1), left=False
        )  # A_i = (Σ_j W̃_ij H_ijᴴ)(Σ_j H_ij H_ijᴴ)⁻¹
        K = A[:, None] * D[..., None, :]  # A_i diag(D_ij)
        C = torch.linalg.solve((K.mH @ K).sum(0), (K.mH @ blocks).sum(0))
        gram = (A.mH @ A)[:, None] * (C @ C.mH)[None, :].conj()
        rhs = torch.diagonal(A.mH[:, None] @ blocks @ C.mH[None, :], dim1=-2, dim2=-1)
        D = torch.linalg.solve(gram, rhs)
    return A, D, C


def _is_singular(block: torch.Tensor) -> bool:
    singular_values = torch.linalg.svdvals(block)
    return bool(singular_values[-1] <= singular_values[0] * 1e-12) or not bool(torch.isfinite(singular_values).all())
