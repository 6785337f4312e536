"""Permutations as 0/1 butterfly networks: Beneš routing (SPEC.md §5.2, Theorem 2 of [KS20]).

Twiddles are NumPy arrays in the canonical layout of SPEC.md §1.4 without the stack axis:
a *unit* is ``(2, log N, N/2, 2, 2)`` -- butterfly 0 decreasing-stride (level ``ℓ`` has stride
``N/2^{ℓ+1}``), butterfly 1 increasing-stride (stride ``2^ℓ``); in application order "the
decreasing half, then the increasing half", i.e. one ``𝓑𝓑*`` factor.
"""

from __future__ import annotations

import numpy as np

from ..core.sizes import log2_exact
from ..ops.permutation import bit_reversal_permutation

IDENTITY = np.array([[1.0, 0.0], [0.0, 1.0]])
SWAP = np.array([[0.0, 1.0], [1.0, 0.0]])


def pair_low_index(n: int, stride: int) -> np.ndarray:
    """Low index ``i(p) = ⌊p/h⌋·2h + (p mod h)`` of every pair ``p`` of stride ``h`` (SPEC.md §1.4)."""
    p = np.arange(n // 2)
    return (p // stride) * 2 * stride + p % stride


def benes_switches(perm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Route ``P_σ`` (``(P_σ x)_j = x_{σ(j)}``, ``n = 2^k >= 2``) through a Beneš network by the
    looping algorithm (SPEC.md §5.2, steps 1–6).

    Returns boolean ``(first, last)`` of shape ``(k, n/2)``: ``first[r, p]`` says whether pair ``p``
    of stride ``n/2^{r+1}`` crosses in stage ``r + 1``; ``last[r, p]`` the same for stage
    ``2k − r`` (same stride). All sub-networks of one recursion depth are handled in one pass;
    cost ``O(n log n)`` steps.
    """
    n = perm.shape[0]
    k = log2_exact(n, "n")
    first = np.zeros((k, n // 2), dtype=bool)
    last = np.zeros((k, n // 2), dtype=bool)
    sigma = perm.astype(np.int64).copy()
    for r in range(k):
        m = n >> r
        h = m // 2
        next_sigma = np.empty_like(sigma)
        for block in range(n // m):
            base = block * m
            local = sigma[base : base + m]
            inverse = np.empty(m, dtype=np.int64)
            inverse[local] = np.arange(m)
            colour = np.full(m, -1, dtype=np.int64)
            local_list, inverse_list, colour_list = local.tolist(), inverse.tolist(), colour.tolist()
            for start in range(m):
                element, c = start, 0
                while colour_list[element] < 0:
                    colour_list[element] = c
                    partner = element ^ h
                    colour_list[partner] = 1 - c
                    element = local_list[inverse_list[partner] ^ h]
            colour = np.array(colour_list, dtype=np.int64)
            first[r, block * h : (block + 1) * h] = colour[:h] == 1
            upper_out, lower_out = local[:h], local[h:]
            through_upper = colour[upper_out] == 0
            last[r, block * h : (block + 1) * h] = ~through_upper
            next_sigma[base : base + h] = np.where(through_upper, upper_out, lower_out) % h
            next_sigma[base + h : base + m] = np.where(through_upper, lower_out, upper_out) % h
        sigma = next_sigma
    return first, last


def _switch_twiddles(swaps: np.ndarray) -> np.ndarray:
    return np.where(swaps[..., None, None], SWAP, IDENTITY)


def benes_unit(perm: np.ndarray) -> np.ndarray:
    """The ``𝓑𝓑*`` unit ``(2, k, n/2, 2, 2)`` with 0/1 twiddles whose product is ``P_σ``: stages
    ``1..k`` (strides ``n/2, …, 1``) form the decreasing half, stages ``k+1..2k`` (strides
    ``1, …, n/2``) the increasing half."""
    first, last = benes_switches(perm)
    return np.stack([_switch_twiddles(first), _switch_twiddles(last[::-1])])


def benes_unit_bstar_b(perm: np.ndarray) -> np.ndarray:
    """The ``𝓑*𝓑`` variant (SPEC.md §5.2): ``(2, k, n/2, 2, 2)`` where butterfly 0 is now the
    *increasing*-stride half applied first and butterfly 1 the decreasing-stride half applied
    second, with ``P_σ = (dec half)·(inc half)``. Obtained by routing ``σ' = br∘σ∘br`` and
    conjugating every stage by ``P_br`` (stride ``h ↦ n/2h``, pair ``p ↦ br_{k−1}(p)``)."""
    n = perm.shape[0]
    reverse_n = bit_reversal_permutation(n).numpy()  # validates n = 2^k
    routed = benes_unit(reverse_n[perm[reverse_n]])
    reverse_pairs = bit_reversal_permutation(n // 2).numpy()
    conjugated = np.empty_like(routed)
    conjugated[:, :, reverse_pairs] = routed
    return conjugated


def complete_permutation(n: int, targets: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """A permutation ``σ`` of ``[n]`` with ``σ[targets] = sources`` (both duplicate-free); the other
    positions receive the unused sources in increasing order."""
    sigma = np.full(n, -1, dtype=np.int64)
    sigma[targets] = sources
    free_sources = np.setdiff1d(np.arange(n), sources, assume_unique=False)
    sigma[sigma < 0] = free_sources
    return sigma
