"""Closed-form hierarchical factorisation onto ``bp`` and ``kaleidoscope`` (SPEC.md §4.14(ii),
§4.15, §4.16, §7.2, §7.5).

**BP** (``T = B P``, ``B`` a butterfly with *tied* twiddles, ``P`` the gate permutation of SPEC.md
§7.2). With ``h = N/2``, tying makes the two half-size butterflies equal,
``B = F_h · diag(M, M)``, and the permutation composes as ``P = diag(Q, Q) · P_top`` (SPEC.md §4.15:
the full-size level is applied first; the deeper levels act on both halves with the same gates,
:func:`structmat.ops.permutation.relaxed_permutation_multiply`). Hence

    ``T P_top⁻¹ = F_h · diag(MQ, MQ)``,  i.e.  ``(T P_top⁻¹)[r·h + i, c·h + j] = t_i[r, c] (MQ)[i, j]``:

for every ``i`` the ``4 x h`` stack of the rows ``i`` of the four quadrants has rank 1. For each of
the 8 gate settings of the top level (``T P_top⁻¹ = T[:, σ]``) the best rank-1 approximations
``u_i v_iᵀ`` (unit ``u_i``, :func:`structmat.ops.hierarchical.rank_one_rows`) give the tied
twiddles ``t_i`` and the rows of ``MQ``, a BP of size ``h`` on which the search recurses. The
discarded parts are orthogonal to everything the deeper levels can produce, so the squared error of
the result is exactly the sum of the squared singular values discarded on the way down. A beam search
keeps the ``beam`` settings with the smallest accumulated error at every level (``beam = 1`` is the
greedy search). Exact for every BP member (DFT with bit reversal, Hadamard with the identity, a random
BP with a random gate permutation, real or complex) up to rounding; a greedy projection otherwise.
Cost ``O(beam · 8 · N²)`` flops (the levels shrink geometrically; ``8 · N/2`` SVDs of ``4 x N/2`` at
the top), ``O(beam · 8 · N²)`` memory.

``n_modules = k > 1`` (BPBP, …): ``T = B_k P_k ⋯ B_1 P_1``; the outer module ``B_k P_k`` is
factored as above, the inner butterflies are the identity (a warm start for the fit, not a
projection onto the product class).

**Kaleidoscope** (``BB*`` and wider): the better of the increasing-stride factorisation placed in the
last (outermost) butterfly and the decreasing-stride one placed in the first, every other
butterfly the identity.

:data:`HIERARCHICAL_PROJECTIONS` maps these families to their factorisation;
:func:`structmat.fit.project` uses it as their closed form (``method`` ``"hierarchical"``).

Example::

    >>> T = torch.fft.fft(torch.eye(64, dtype=torch.complex128), dim=0)
    >>> layer = bp_from_dense(T)                       # learned gates set to one permutation
    >>> float((layer.to_dense() - T).abs().max()) < 1e-10
    True
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..core.base import StructuredMatrix
from ..core.errors import check_matrix, describe
from ..core.sizes import log2_exact
from ..families.bp import BP
from ..families.kaleidoscope import Kaleidoscope
from ..ops.hierarchical import butterfly_factorisation, rank_one_rows, two_sided_factorisation
from ..ops.permutation import relaxed_permutation_hard
from .batched_bp import gate_indices

#: default beam width of the BP gate search
DEFAULT_BEAM = 4
#: logit magnitude of the gates set by the search: ``sigmoid(−40) = 4·10⁻¹⁸`` is below half the
#: float64 epsilon, so the relaxed factor is the hard permutation to rounding (SPEC.md §7.2)
HARD_LOGIT = 40.0


@dataclass
class BPFactorisation:
    """Result of :func:`factor_bp` for an ``N x N`` matrix.

    Attributes:
        twiddle: tied twiddles ``(N − 1, 2, 2)`` in the layout of :class:`~structmat.families.bp.BP`
            (level ``ℓ`` in rows ``2^ℓ − 1 … 2^{ℓ+1} − 2``).
        gates: ``(log N − 1, 3)`` booleans ``(s_a, s_b, s_c)`` per level (full size first).
        permutation: the permutation vector ``σ`` of the gates (``P = P_σ``, SPEC.md §1.3).
        squared_error: ``‖E − B P‖_F²``.
    """

    twiddle: torch.Tensor
    gates: torch.Tensor
    permutation: torch.Tensor
    squared_error: float


def _distinct_gate_gathers(m: int) -> tuple[list[int], torch.Tensor]:
    """The gate subsets ``S = 4 s_c + 2 s_b + s_a`` of size ``m`` with distinct permutations (first of
    each) and their gather indices ``(C, m)``."""
    gathers = gate_indices(m)[0].reshape(8, m)
    subsets, seen = [], set()
    for subset in range(8):
        key = tuple(gathers[subset].tolist())
        if key not in seen:
            seen.add(key)
            subsets.append(subset)
    return subsets, gathers[subsets]


#: relative squared error below which candidates count as tied with the best (rounding level):
#: the beam keeps every tied candidate (up to :data:`TIE_CAP`) besides the ``beam`` best. Members have
#: many settings that are exact for a few levels and fail deeper (the DCT at n = 16: ~60 of 512
#: combinations in :func:`complete_real_bp`); a fixed beam drops the right one at random. This is the
#: float64/complex128 value; data of lower precision use ``(1000 ε)²`` where that is larger
#: (float32/complex64: ``1.4·10⁻⁸``, i.e. a relative error ``1.2·10⁻⁴``), see :func:`_tie`.
TIE_TOLERANCE = 1e-20
#: near-member regime of the tie rule: while the best squared error is below this fraction of
#: ``‖E‖²`` (a relative error of 1e-4), every candidate within :data:`TIE_FACTOR` times it is kept too,
#: so noise on a member does not break the ties that keep its exact setting
NEAR_MEMBER = 1e-8
TIE_FACTOR = 1e4
#: most candidates kept per level
TIE_CAP = 256
#: complex elements per chunk of candidates in one level of the gate search (bounds its memory)
_CHUNK_ELEMENTS = 1 << 23


def _search_level(chunks, m: int, search: bool, beam: int, conjugates: bool, tie: _Tie):
    """One level of the BP gate search over candidate blocks ``MQ`` of size ``m``, given in chunks.

    ``chunks`` yields ``(blocks (K_c, m, m), errors (K_c,))`` or ``(blocks, errors, settings (K_c,))``:
    the candidates in order (their global index is their position across the chunks); ``settings``
    restricts each candidate to one gate setting of the level (an index into the distinct settings).
    For every candidate and gate setting the ``4 x m/2`` row stacks get their best rank-1
    approximation; with ``conjugates`` also the stack with its second row group conjugated (a real
    part cannot tell ``M`` from ``conj(M)`` row by row, see :func:`complete_real_bp`) and the better
    of the two is kept. Returns the ``beam`` best and every one within ``tie`` of the best (up to
    :data:`TIE_CAP`), best first: ``(errors, blocks (·, m/2, m/2), parent, subset,
    twiddle rows (·, m/2, 2, 2), flips)`` (``flips`` ``(·, m/2)`` booleans, or ``None`` without
    ``conjugates``).
    """
    h = m // 2
    subsets, gathers = _distinct_gate_gathers(m) if search else ([0], torch.arange(m)[None])
    subsets = torch.tensor(subsets)
    kept, offset = None, 0
    for blocks, errors, *settings in chunks:
        settings = settings[0] if settings else None
        count = 1 if settings is not None else len(subsets)
        step = max(1, _CHUNK_ELEMENTS // (count * m * m))
        for first in range(0, blocks.shape[0], step):
            part, part_errors = blocks[first : first + step], errors[first : first + step]
            size = part.shape[0]
            if settings is None:
                candidates = part[:, :, gathers.to(part.device)].permute(0, 2, 1, 3)  # (K, C, m, m) = MQ[:, σ_S]
                table = subsets.expand(size, -1)
            else:
                chosen = settings[first : first + step].cpu()
                index = gathers[chosen].to(part.device)[:, None, :].expand(-1, m, -1)
                candidates = torch.take_along_dim(part, index, dim=2)[:, None]  # (K, 1, m, m)
                table = subsets[chosen][:, None]
            stacks = _row_stacks(candidates)
            u, v, discarded = rank_one_rows(stacks)
            flips = None
            if conjugates:
                cu, cv, cd = rank_one_rows(torch.cat([stacks[..., :2, :], stacks[..., 2:, :].conj()], -2))
                flips = cd < discarded
                u, v = torch.where(flips[..., None], cu, u), torch.where(flips[..., None], cv, v)
                discarded = torch.where(flips, cd, discarded)
            totals = (part_errors[:, None] + discarded.sum(-1)).reshape(-1)
            order = _select(totals, beam, tie)
            local = order.cpu()
            entry = (
                totals[order], v.reshape(-1, h, h)[order], local // count + offset + first, table[local // count, local % count],
                u.reshape(-1, h, 2, 2)[order], None if flips is None else flips.reshape(-1, h)[order],
            )
            if kept is not None:  # merge with the best so far, earlier candidates first on ties
                merged = [torch.cat([a, b.to(a.device)]) if a is not None else None for a, b in zip(kept, entry)]
                order = _select(merged[0], beam, tie)
                entry = tuple(x[order.to(x.device)] if x is not None else None for x in merged)
            kept = entry
        offset += blocks.shape[0]
    return kept


def _row_stacks(blocks: torch.Tensor) -> torch.Tensor:
    """``(…, m, m) -> (…, h, 4, h)`` (``h = m/2``): ``stacks[…, i, 2r + c, j] = block[r·h + i, c·h + j]``,
    the rows ``i`` of the four quadrants (rank 1 for ``F_h · diag(X, X)``, rank 2 for its real part)."""
    m = blocks.shape[-1]
    h = m // 2
    lead = blocks.shape[:-2]
    stacks = blocks.reshape(*lead, 2, h, 2, h).movedim(-3, -4)  # (…, h, 2, 2, h)
    return stacks.reshape(*lead, h, 4, h)


class _Tie(NamedTuple):
    """When candidates count as tied with the best (:func:`_tie`): within ``absolute`` of it, or -- while
    the best is below ``near`` (a near-member: noise on a member) -- within :data:`TIE_FACTOR` times it."""

    absolute: float
    near: float


def _select(totals: torch.Tensor, beam: int, tie: _Tie) -> torch.Tensor:
    """Indices of the ``beam`` smallest ``totals`` and of every total tied with the smallest (``tie``;
    at most :data:`TIE_CAP`), smallest first (stable: earlier candidates first on equal totals)."""
    order = torch.argsort(totals, stable=True)
    best = float(totals[order[0]])
    bound = best + tie.absolute
    if best <= tie.near:
        bound = max(bound, TIE_FACTOR * best)
    tied = int((totals[order] <= bound).sum())
    return order[: min(max(beam, tied), max(beam, TIE_CAP))]


def _factor_candidates(chunks, n: int, search: bool, beam: int, tie: _Tie, conjugates: bool = False):
    """Beam search of the BP nearest to the best of several candidate matrices (see
    :func:`factor_bp`). Returns ``(BPFactorisation, candidate index, row flips (n,) booleans)``:
    the rows to conjugate so that the candidate is one BP (all ``False`` without ``conjugates``)."""
    levels = n.bit_length() - 1
    trail = []
    m = n
    while m > 2:
        errors, blocks, parent, subset, rows, flips = _search_level(chunks, m, search, beam, conjugates, tie)
        trail.append((parent, subset, rows, flips))
        chunks, m = [(blocks, errors)], m // 2
    # size 2: the remaining 2x2 block is the stride-1 twiddle (N = 2: the candidate of least error)
    chunks = list(chunks)
    blocks, errors = torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks])
    best = 0 if trail else int(torch.argmin(errors))
    twiddle = blocks.new_zeros(n - 1, 2, 2)
    twiddle[0] = blocks[best]
    squared_error = float(errors[best])
    gates = torch.zeros(max(0, levels - 1), 3, dtype=torch.bool)
    flipped = torch.zeros(n, dtype=torch.bool)
    index = torch.arange(n)
    for depth in reversed(range(len(trail))):  # depth t: size n >> t, stride h = n >> (t + 1)
        parent, subset, rows, flips = trail[depth]
        h = n >> (depth + 1)
        twiddle[h - 1 : 2 * h - 1] = rows[best]
        gates[depth] = torch.tensor([bool(int(subset[best]) >> s & 1) for s in range(3)])
        if flips is not None:  # the second row group of pair i is the rows i + h + 2h·k of the candidate
            position = index % (2 * h)
            flipped ^= (position >= h) & flips[best].cpu()[(position - h).clamp(min=0)]
        best = int(parent[best])
    permutation = relaxed_permutation_hard(gates.to(torch.float64), n)
    return BPFactorisation(twiddle, gates, permutation, squared_error), best, flipped


def _check_beam(beam: int) -> None:
    if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
        raise ValueError(f"beam: expected an int >= 1, got {describe(beam)}")


def _check_square(E: torch.Tensor, beam: int) -> int:
    if not isinstance(E, torch.Tensor) or E.dim() != 2 or E.shape[0] != E.shape[1]:
        raise ValueError(f"E: expected a square (N, N) tensor, got {describe(E)}")
    n = E.shape[0]
    if log2_exact(n, "E.shape[0]") < 1:
        raise ValueError(f"E: expected N >= 2, got shape {tuple(E.shape)}")
    _check_beam(beam)
    return n


def _tie(E: torch.Tensor) -> _Tie:
    """Tie rule for factorisations of ``E`` (``(…, N, N)``): absolute tolerance = the relative tolerance
    of ``E``'s precision (:data:`TIE_TOLERANCE`, or ``(1000 ε)²`` where larger: float32 data is exact
    only to its rounding) times the largest squared norm; near-member regime below
    :data:`NEAR_MEMBER` times it."""
    relative = max(TIE_TOLERANCE, (1000 * torch.finfo(E.dtype).eps) ** 2)
    scale = float(E.abs().square().sum((-1, -2)).max())
    return _Tie(relative * scale, NEAR_MEMBER * scale)


def factor_bp(E: torch.Tensor, search: bool = True, beam: int = DEFAULT_BEAM) -> BPFactorisation:
    """Tied twiddles and gate permutation of the BP ``B P`` nearest to ``E`` (see the module docstring).

    Args:
        E: ``(N, N)`` real or complex, ``N`` a power of two ``>= 2``.
        search: search the gates (``False``: ``P = I``, the tied butterfly nearest to ``E``).
        beam: gate settings kept per level (``>= 1``).
    """
    n = _check_square(E, beam)
    errors = E.new_zeros(1, dtype=E.real.dtype if E.is_complex() else E.dtype)
    return _factor_candidates([(E[None], errors)], n, search, beam, _tie(E))[0]


def _real_rank_two(stacks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best rank-2 approximation ``A G`` of real ``k x h`` stacks ``(…, k, h)``: ``A`` ``(…, k, 2)``
    orthonormal columns, ``G = Aᵀ S`` ``(…, 2, h)``, and the discarded ``‖S − A G‖_F²`` ``(…,)``."""
    _, vectors = torch.linalg.eigh(stacks @ stacks.transpose(-1, -2))
    A = vectors[..., -2:]
    G = A.transpose(-1, -2) @ stacks
    return A, G, (stacks - A @ G).square().sum((-1, -2))


def _complex_rows(G: torch.Tensor, gathers: torch.Tensor) -> torch.Tensor:
    """Complex rows ``w = c₀ g₀ + c₁ g₁`` from the real row pairs ``G`` ``(…, 2, h)`` such that the two
    halves of ``w[σ_S]`` are parallel, for every next-level gate setting ``σ_S`` of ``gathers`` ``(C, h)``.

    Parallel halves ``w_R = μ w_L`` need ``(g₀_R, g₁_R) = K (g₀_L, g₁_L)`` for a real ``2 x 2`` ``K``
    and ``(c₀, c₁)`` a left eigenvector of ``K`` with a non-real eigenvalue ``μ`` (then ``w`` is not a
    real vector up to phase). Returns the coefficients ``(…, C, 2)``; where ``K`` has no non-real
    eigenvalue (the halves are real up to phase) ``(1, i)`` is taken. ``K`` is a least-squares fit
    whose residual is *not* a usable error: rows whose halves are degenerate (rank 1 each) leave a
    residual although every non-real choice works for them; the gate search judges instead.
    """
    h = G.shape[-1]
    permuted = G[..., gathers].movedim(-2, -3)  # (…, C, 2, h)
    left, right = permuted[..., : h // 2], permuted[..., h // 2 :]
    K_t = torch.linalg.lstsq(left.transpose(-1, -2), right.transpose(-1, -2)).solution  # Kᵀ
    values, vectors = torch.linalg.eig(K_t)  # Kᵀ c = μ c  <=>  cᵀ K = μ cᵀ
    pick = values.imag.argmax(-1)
    c = torch.gather(vectors, -1, pick[..., None, None].expand(*pick.shape, 2, 1))[..., 0]
    real_like = (c[..., 0].conj() * c[..., 1]).imag.abs() < 1e-8
    c = torch.where(real_like[..., None], torch.tensor([1, 1j], dtype=c.dtype, device=c.device), c)
    return c


def _combine(c: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """The complex rows ``w = c₀ g₀ + c₁ g₁``: ``c`` ``(…, h, 2)``, ``G`` ``(…, h, 2, h)`` -> ``(…, h, h)``."""
    return c[..., 0, None] * G[..., 0, :] + c[..., 1, None] * G[..., 1, :]


def complete_real_bp(T: torch.Tensor, search: bool = True, beam: int = DEFAULT_BEAM) -> tuple[torch.Tensor, int]:
    """A complex ``M`` with ``Re(M) ≈ T[k]`` that is a BP member, for the best of the real candidates
    ``T`` ``(K, N, N)``; returns ``(M, k)``. Exact (``Re(M) = T[k]`` to rounding) when some ``T[k]`` is
    the real part of a BP ``B P`` (SPEC.md §4.15, §7.4: DCT, DST, Hartley are real parts of FFTs).

    **Top level** (``h = N/2``). ``Re(B P) P_top⁻¹ [r·h + i, c·h + j] = Re(t_i[r, c] w_i[j])`` with
    ``w_i`` row ``i`` of the complex ``MQ``: the real ``4 x h`` stack of row ``i`` has rank ``≤ 2``,
    ``= A_i G_i`` (best rank 2), and ``w_i`` is a complex combination ``c₀ g₀ + c₁ g₁`` of the rows of
    ``G_i``. **Next level.** ``MQ`` is a BP, so the two halves of ``w_i[σ]`` (``σ`` the next gate
    setting) are parallel; this fixes ``(c₀, c₁)`` up to a complex scale and a conjugation
    (:func:`_complex_rows`). **Conjugation.** ``Re`` cannot tell ``w_i`` from ``conj(w_i)``; the gate
    search on the candidate ``MQ`` (each row a true row or its conjugate, up to scale) also tries, per
    pair, the second row conjugated relative to the first and keeps the better (:func:`_search_level`);
    the chosen rows (the flips of all levels XORed) are conjugated, giving the true ``MQ`` or its
    conjugate, a BP either way; conjugating a row keeps its real part.
    The twiddles ``t_i`` then solve ``Re(t_i c₀) = A_i[:, 0]``, ``Re(t_i c₁) = A_i[:, 1]``.

    The ``K x 8`` (candidate, top gates) pairs are ranked by the discarded rank-2 part; those within
    rounding of the best (all exact ones for a member) and at least the ``beam`` best enter, with each
    of the 8 next gate settings, one beam search that adds the rank-1 errors of the deeper levels
    and keeps every candidate tied with the best (:func:`_select`). Cost ``O(K · 64 · N²)`` flops,
    memory bounded by chunks.
    """
    if (not isinstance(T, torch.Tensor) or T.dim() != 3 or T.shape[0] < 1 or T.shape[1] != T.shape[2]
            or not T.is_floating_point()):
        raise ValueError(f"T: expected a real tensor of shape (K, N, N) (floating point, K >= 1), got {describe(T)}")
    _check_beam(beam)
    count, n = T.shape[0], T.shape[1]
    log2_exact(n, "T.shape[1]")
    complex_dtype = (T[:1, :1, :1] * 1j).dtype
    if n <= 2:  # every 2x2 matrix is a BP
        return T[0].to(complex_dtype), 0
    # ties at the precision of T, arithmetic in float64 (the eigenvector choices of _complex_rows and the
    # 2 x 2 twiddle systems lose too much in float32: a near-real c makes Im(M) explode)
    tie, T = _tie(T), T.to(torch.float64)
    h = n // 2
    top = _distinct_gate_gathers(n)[1] if search else torch.arange(n)[None]
    nxt = _distinct_gate_gathers(h)[1] if search and h >= 4 else torch.arange(h)[None]

    def rows(k: int, coefficients: bool = True):  # A (C0, h, 4, 2), G (C0, h, 2, h), error (C0,), coefficients (C0, C1, h, 2)
        candidates = T[k][:, top].permute(1, 0, 2)  # (C0, N, N) = T P_top⁻¹
        stacks = _row_stacks(candidates)
        A, G, discarded = _real_rank_two(stacks)
        return A, G, discarded.sum(-1), _complex_rows(G, nxt).transpose(1, 2) if coefficients else None

    # the (candidate, top gates) worth searching: every one within rounding of the best rank-2 error (all
    # the exact ones for a member), and at least the beam best; each with all next-level settings
    totals = torch.stack([rows(k, coefficients=False)[2] for k in range(count)]).reshape(-1)
    kept = _select(totals, beam, tie).sort().values.cpu()
    kept = (kept[:, None] * nxt.shape[0] + torch.arange(nxt.shape[0])).reshape(-1)
    combos = [divmod(int(i), top.shape[0] * nxt.shape[0]) for i in kept]  # (k, a·C1 + b), in order

    def chunks():
        for k in range(count):
            mine = [rest for kk, rest in combos if kk == k]
            if not mine:
                continue
            _, G, discarded, c = rows(k)
            a, b = torch.tensor(mine) // nxt.shape[0], torch.tensor(mine) % nxt.shape[0]
            yield _combine(c[a, b], G[a]), discarded[a], b  # (·, h, h); w only makes sense under its next setting b

    _, best, flipped = _factor_candidates(chunks(), h, search, beam, tie, conjugates=True)
    k, rest = combos[best]
    a, b = divmod(rest, nxt.shape[0])
    A, G, _, c = rows(k)
    A, G, c = A[a], G[a], c[a, b]
    c = torch.where(flipped[:, None].to(c.device), c.conj(), c)
    w = _combine(c, G)  # (h, h): MQ
    # Re(t c₀) = A₀, Re(t c₁) = A₁ for the four entries t of each twiddle: [[Re c, −Im c]] [Re t; Im t] = A
    system = torch.stack([c.real, -c.imag], -1)  # (h, 2, 2): row j = [Re c_j, −Im c_j]
    solution = torch.linalg.solve(system[:, None], A[..., None])[..., 0]  # (h, 4, 2)
    t = torch.complex(solution[..., 0], solution[..., 1]).reshape(h, 2, 2)
    quadrants = (t[:, :, :, None] * w[:, None, None, :]).permute(1, 0, 2, 3).reshape(n, n)  # M P_top⁻¹
    M = torch.empty_like(quadrants)
    M[:, top[a].to(M.device)] = quadrants
    return M.to(complex_dtype), k


def _embed(W: torch.Tensor, size: int) -> torch.Tensor:
    padded = W.new_zeros(size, size)
    padded[: W.shape[0], : W.shape[1]] = W
    return padded


def bp_from_dense(
    W: torch.Tensor, *, n_modules: int = 1, permutation: str = "learned", init: str = "randn", beam: int = DEFAULT_BEAM,
    real_part: bool = False,
) -> BP:
    """The ``bp`` member (options ``n_modules``, ``permutation``, ``init``) found by :func:`factor_bp`.

    ``W`` ``(m, n)`` is corner-embedded in ``N x N`` (``N`` = the layer's size). Learned gates are set
    to the logits ``±HARD_LOGIT`` (each relaxed factor is its hard permutation to rounding: mass 1 on
    one permutation). With ``n_modules > 1`` the inner butterflies are the identity; with learned
    gates the full-size level of the innermost permutation ``P₁`` is searched too (its 8 settings
    enter the beam search as candidates), so ``B P₂ P₁`` -- the paper's "BP with an additional
    permutation" for the DCT/DST (SPEC.md §7.4) -- is found exactly; the other inner levels are the
    identity. ``real_part=True`` (real ``W``): a complex member whose **real part** approximates
    ``W`` (:func:`complete_real_bp`: exact for real parts of BP/BPP members, a heuristic otherwise),
    for ``structmat.fit.RealPart``. Cost ``O(K · beam · 8 · N²)`` for the ``K`` inner candidates (1
    for BP, up to 8 with learned ``n_modules > 1``); with ``real_part`` ``O(K · 64 · N²)``.
    """
    W = check_matrix("W", W)
    if not isinstance(real_part, bool):
        raise TypeError(f"real_part: expected a bool, got {describe(real_part)}")
    if real_part and W.is_complex():
        raise ValueError(f"W: real_part=True factors a real matrix as the real part of a complex BP, got dtype {W.dtype}")
    out_features, in_features = W.shape
    dtype = (W[:1, :1] * 1j).dtype if real_part else W.dtype
    layer = BP(in_features, out_features, n_modules=n_modules, permutation=permutation, init=init, dtype=dtype, device=W.device)
    learned = permutation == "learned"
    with torch.no_grad():
        layer.twiddle.copy_(torch.eye(2, dtype=layer.dtype, device=layer.twiddle.device))
        if learned:
            layer.logits.fill_(-HARD_LOGIT)
        permutations = layer.hard_permutations()
        subsets = _distinct_gate_gathers(layer.size)[0] if n_modules > 1 and learned and layer.size >= 4 else [0]
        innermost = [relaxed_permutation_hard(_top_gates(subset, layer.size), layer.size) for subset in subsets] if learned else [permutations[0]]
        padded = _embed(W, layer.size)
        targets = []
        for first in innermost:  # T = B_k P_k (P_{k−1} ⋯ P_1) with identity inner butterflies: factor T (P_{k−1} ⋯ P_1)⁻¹
            inner = torch.arange(layer.size, device=W.device)
            for perm in ([first] + permutations[1:-1]) if n_modules > 1 else []:
                inner = inner[perm.to(W.device)]
            target = padded[:, inner]
            targets.append(target if learned else target[:, permutations[-1].to(W.device)])
        targets = torch.stack(targets)
        if real_part:
            M, candidate = complete_real_bp(targets, search=learned, beam=beam)
            result = factor_bp(M, search=learned, beam=beam)
        else:
            errors = targets.new_zeros(targets.shape[0], dtype=targets.real.dtype if targets.is_complex() else targets.dtype)
            result, candidate, _ = _factor_candidates([(targets, errors)], _check_square(targets[0], beam), learned, beam, _tie(targets))
        layer.twiddle[-1].copy_(result.twiddle)
        if learned:
            layer.logits[-1].copy_(torch.where(result.gates, HARD_LOGIT, -HARD_LOGIT))
            if n_modules > 1:
                layer.logits[0].copy_(torch.where(_top_gates(subsets[candidate], layer.size).bool(), HARD_LOGIT, -HARD_LOGIT))
    return layer


def _top_gates(subset: int, n: int) -> torch.Tensor:
    """Gate probabilities ``(log n − 1, 3)`` with the full-size level set to ``subset`` (``4 s_c + 2 s_b
    + s_a``) and every other level the identity."""
    gates = torch.zeros(max(0, n.bit_length() - 2), 3, dtype=torch.float64)
    if gates.shape[0]:
        gates[0] = torch.tensor([subset >> s & 1 for s in range(3)], dtype=torch.float64)
    return gates


def kaleidoscope_from_dense(
    W: torch.Tensor, *, width: int = 1, expansion: int = 1, init: str = "randn", padded_size: int | None = None
) -> Kaleidoscope:
    """The K-matrix nearest to the embedded ``W`` among three closed forms, the other butterflies the
    identity: the increasing-stride factorisation as the last (outermost) butterfly, the
    decreasing-stride one as the first, or -- for complex layers, or real ones where it comes out real --
    the two-sided ``BB*`` factorisation (:func:`structmat.ops.hierarchical.two_sided_factorisation`:
    exact for well-conditioned ``BB*`` members and for circulant matrices) as the first unit
    ``B₁ B₁'^*``. Cost ``O(N² log N)``."""
    W = check_matrix("W", W)
    out_features, in_features = W.shape
    layer = Kaleidoscope(in_features, out_features, width=width, expansion=expansion, init=init, padded_size=padded_size,
                         dtype=W.dtype, device=W.device)
    padded = _embed(W, layer.size)
    outer, outer_error = butterfly_factorisation(padded[None])
    inner, inner_error = butterfly_factorisation(padded.transpose(0, 1)[None])
    increasing, transposed, two_sided_error = two_sided_factorisation(padded[None])
    if not layer.dtype.is_complex:  # a real layer takes the two-sided form only where it comes out real
        size = max(1.0, float(increasing.abs().max()), float(transposed.abs().max()))
        if max(float(increasing.imag.abs().max()), float(transposed.imag.abs().max())) > 1e-12 * size:
            two_sided_error = torch.full_like(outer_error, float("inf"))
        increasing, transposed = increasing.real, transposed.real
    errors = [float(outer_error[0]), float(inner_error[0]), float(two_sided_error[0])]
    best = errors.index(min(errors))
    with torch.no_grad():
        layer.twiddle.copy_(torch.eye(2, dtype=layer.dtype, device=layer.twiddle.device))
        if best == 0:
            layer.twiddle[0, -1].copy_(outer[0])
        elif best == 1:  # E = (Eᵀ)ᵀ: the transposed increasing-stride butterfly is a decreasing-stride one
            layer.twiddle[0, 0].copy_(inner[0].flip(0).transpose(-1, -2))
        else:  # E = B C: C (decreasing) = (Cᵀ)ᵀ first, then B
            layer.twiddle[0, 0].copy_(transposed[0].flip(0).transpose(-1, -2))
            layer.twiddle[0, 1].copy_(increasing[0])
    return layer


#: family -> closed-form hierarchical projection ``(W, **family options) -> member``
HIERARCHICAL_PROJECTIONS = {"bp": bp_from_dense, "kaleidoscope": kaleidoscope_from_dense}


def hierarchical_projection(structure: str, W: torch.Tensor, **options) -> StructuredMatrix:
    """``HIERARCHICAL_PROJECTIONS[structure](W, **options)``, ignoring options the factorisation does
    not take."""
    function = HIERARCHICAL_PROJECTIONS[structure]
    accepted = inspect.signature(function).parameters
    return function(W, **{k: v for k, v in options.items() if k in accepted})


__all__ = [
    "BPFactorisation", "DEFAULT_BEAM", "HARD_LOGIT", "HIERARCHICAL_PROJECTIONS", "TIE_CAP", "TIE_TOLERANCE", "bp_from_dense",
    "complete_real_bp", "factor_bp", "hierarchical_projection", "kaleidoscope_from_dense",
]
