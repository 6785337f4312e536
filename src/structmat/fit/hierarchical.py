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

import torch

from ..core.base import StructuredMatrix
from ..core.errors import check_matrix, describe
from ..core.sizes import log2_exact
from ..families.bp import BP
from ..families.kaleidoscope import Kaleidoscope
from ..ops.hierarchical import butterfly_factorisation, rank_one_rows
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


def factor_bp(E: torch.Tensor, search: bool = True, beam: int = DEFAULT_BEAM) -> BPFactorisation:
    """Tied twiddles and gate permutation of the BP ``B P`` nearest to ``E`` (see the module docstring).

    Args:
        E: ``(N, N)`` real or complex, ``N`` a power of two ``>= 2``.
        search: search the gates (``False``: ``P = I``, the tied butterfly nearest to ``E``).
        beam: gate settings kept per level (``>= 1``).
    """
    if not isinstance(E, torch.Tensor) or E.dim() != 2 or E.shape[0] != E.shape[1]:
        raise ValueError(f"E: expected a square (N, N) tensor, got {describe(E)}")
    n = E.shape[0]
    levels = log2_exact(n, "E.shape[0]")
    if levels < 1:
        raise ValueError(f"E: expected N >= 2, got shape {tuple(E.shape)}")
    if isinstance(beam, bool) or not isinstance(beam, int) or beam < 1:
        raise ValueError(f"beam: expected an int >= 1, got {describe(beam)}")
    blocks = E[None]  # (K, m, m): the matrices MQ still to factor, one per kept setting
    errors = E.new_zeros(1, dtype=E.real.dtype if E.is_complex() else E.dtype)
    trail = []  # per level: (parent, subset, twiddle rows) of every kept setting
    m = n
    while m > 2:
        h = m // 2
        subsets, gathers = _distinct_gate_gathers(m) if search else ([0], torch.arange(m)[None])
        gathers = gathers.to(E.device)
        candidates = blocks[:, :, gathers].permute(0, 2, 1, 3)  # (K, C, m, m) = MQ[:, σ_S]
        kept, count = blocks.shape[0], len(subsets)
        # stacks[k, s, i, 2r + c, j] = candidate[r·h + i, c·h + j]
        stacks = candidates.reshape(kept, count, 2, h, 2, h).permute(0, 1, 3, 2, 4, 5).reshape(kept, count, h, 4, h)
        u, v, discarded = rank_one_rows(stacks)
        totals = (errors[:, None] + discarded.sum(-1)).reshape(-1)
        order = torch.argsort(totals, stable=True)[: min(beam, totals.numel())]
        parent, choice = (order // count).cpu(), (order % count).cpu()
        errors = totals[order]
        blocks = v.reshape(kept * count, h, h)[order]
        trail.append((parent, torch.tensor(subsets)[choice], u.reshape(kept * count, h, 2, 2)[order]))
        m = h
    # size 2: the remaining 2x2 block is the stride-1 twiddle
    best = 0
    twiddle = E.new_zeros(n - 1, 2, 2)
    twiddle[0] = blocks[best]
    gates = torch.zeros(max(0, levels - 1), 3, dtype=torch.bool)
    for depth in reversed(range(len(trail))):  # depth t: size n >> t, stride h = n >> (t + 1)
        parent, subset, rows = trail[depth]
        h = n >> (depth + 1)
        twiddle[h - 1 : 2 * h - 1] = rows[best]
        gates[depth] = torch.tensor([bool(int(subset[best]) >> s & 1) for s in range(3)])
        best = int(parent[best])
    permutation = relaxed_permutation_hard(gates.to(torch.float64), n)
    return BPFactorisation(twiddle, gates, permutation, float(errors[0]) if trail else 0.0)


def _embed(W: torch.Tensor, size: int) -> torch.Tensor:
    padded = W.new_zeros(size, size)
    padded[: W.shape[0], : W.shape[1]] = W
    return padded


def bp_from_dense(
    W: torch.Tensor, *, n_modules: int = 1, permutation: str = "learned", init: str = "randn", beam: int = DEFAULT_BEAM
) -> BP:
    """The ``bp`` member (options ``n_modules``, ``permutation``, ``init``) found by :func:`factor_bp`.

    ``W`` ``(m, n)`` is corner-embedded in ``N x N`` (``N`` = the layer's size). Learned gates are set
    to the logits ``±HARD_LOGIT`` (each relaxed factor is its hard permutation to rounding: mass 1 on
    one permutation); with ``n_modules > 1`` the inner modules are the identity (identity gates) and the
    outer module is factored after the inner fixed permutations. Cost ``O(beam · 8 · N²)``.
    """
    W = check_matrix("W", W)
    out_features, in_features = W.shape
    layer = BP(in_features, out_features, n_modules=n_modules, permutation=permutation, init=init, dtype=W.dtype, device=W.device)
    with torch.no_grad():
        layer.twiddle.copy_(torch.eye(2, dtype=layer.dtype, device=layer.twiddle.device))
        if permutation == "learned":
            layer.logits.fill_(-HARD_LOGIT)
        # T = B_k P_k (P_{k−1} ⋯ P_1) with identity inner butterflies: factor T (P_{k−1} ⋯ P_1)⁻¹
        inner = torch.arange(layer.size, device=W.device)
        permutations = layer.hard_permutations()
        for perm in permutations[:-1]:
            inner = inner[perm]
        target = _embed(W, layer.size)[:, inner]
        if permutation != "learned":
            target = target[:, permutations[-1]]
        result = factor_bp(target, search=permutation == "learned", beam=beam)
        layer.twiddle[-1].copy_(result.twiddle)
        if permutation == "learned":
            layer.logits[-1].copy_(torch.where(result.gates, HARD_LOGIT, -HARD_LOGIT))
    return layer


def kaleidoscope_from_dense(
    W: torch.Tensor, *, width: int = 1, expansion: int = 1, init: str = "randn", padded_size: int | None = None
) -> Kaleidoscope:
    """The K-matrix whose outermost (increasing-stride) or innermost (decreasing-stride) butterfly is
    the hierarchical factorisation of the embedded ``W``, whichever is closer; the other butterflies
    are the identity. Cost ``O(N² log N)``."""
    W = check_matrix("W", W)
    out_features, in_features = W.shape
    layer = Kaleidoscope(in_features, out_features, width=width, expansion=expansion, init=init, padded_size=padded_size,
                         dtype=W.dtype, device=W.device)
    padded = _embed(W, layer.size)
    outer, outer_error = butterfly_factorisation(padded[None])
    inner, inner_error = butterfly_factorisation(padded.transpose(0, 1)[None])
    with torch.no_grad():
        layer.twiddle.copy_(torch.eye(2, dtype=layer.dtype, device=layer.twiddle.device))
        if float(outer_error[0]) <= float(inner_error[0]):
            layer.twiddle[0, -1].copy_(outer[0])
        else:  # E = (Eᵀ)ᵀ: the transposed increasing-stride butterfly is a decreasing-stride one
            layer.twiddle[0, 0].copy_(inner[0].flip(0).transpose(-1, -2))
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
    "BPFactorisation", "DEFAULT_BEAM", "HARD_LOGIT", "HIERARCHICAL_PROJECTIONS", "bp_from_dense", "factor_bp", "hierarchical_projection",
    "kaleidoscope_from_dense",
]
