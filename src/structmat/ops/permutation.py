"""Permutations as gathers, and the relaxed (learnable) permutations of [BF19] (SPEC.md §1.3, §7.2).

Convention (SPEC.md §1.3): a permutation vector ``σ`` of ``[n]`` acts as ``(P_σ x)_i = x_{σ(i)}``,
i.e. ``x[..., σ]``; ``P_σ^T = P_{σ^{-1}}``. Nothing here forms a matrix: every product is a gather
(``O(n)`` memory moves per row, no arithmetic) or, for relaxed permutations, a gather and a convex
combination per factor (``3 n`` multiply-adds per factor and row).

Example::

    >>> bit_reversal_permutation(8)
    tensor([0, 4, 2, 6, 1, 5, 3, 7])
    >>> x = torch.arange(8.0)
    >>> permute(x[None], bit_reversal_permutation(8))
    tensor([[0., 4., 2., 6., 1., 5., 3., 7.]])
"""

from __future__ import annotations

import torch

from ..core.errors import describe
from ..core.sizes import log2_exact


def bit_reversal_permutation(n: int, device=None) -> torch.Tensor:
    """``br_k`` for ``n = 2^k`` as a ``LongTensor`` (SPEC.md §1.3): reverses the ``k``-bit index.

    ``P_br`` is a symmetric involution; e.g. ``n = 8`` gives ``(0, 4, 2, 6, 1, 5, 3, 7)``.
    """
    k = log2_exact(n, "n")
    index = torch.arange(n, device=device)
    result = torch.zeros_like(index)
    for bit in range(k):
        result |= ((index >> bit) & 1) << (k - 1 - bit)
    return result


def even_reversed_odd_permutation(n: int, device=None) -> torch.Tensor:
    """``P'`` of the DCT via the FFT (SPEC.md §6): ``(0, 2, 4, …, then the odd indices in
    decreasing order)``, e.g. ``n = 6`` gives ``(0, 2, 4, 5, 3, 1)``; any ``n >= 1``."""
    index = torch.arange(n, device=device)
    return torch.cat([index[0::2], index[1::2].flip(0)])


def check_permutation(name: str, perm) -> torch.Tensor:
    """Validate a permutation vector of ``[n]`` and return it as a ``LongTensor``.

    Raises ``TypeError`` for non-integer input and ``ValueError`` (naming ``name``) for a wrong
    shape or a repeated / missing / out-of-range index.
    """
    if not isinstance(perm, torch.Tensor):
        try:
            perm = torch.as_tensor(perm)
        except Exception as exc:
            raise TypeError(f"{name}: expected a 1-D integer tensor or sequence, got {describe(perm)}") from exc
    if perm.dtype.is_floating_point or perm.dtype.is_complex or perm.dtype == torch.bool:
        raise TypeError(f"{name}: expected integer entries, got {describe(perm)}")
    if perm.dim() != 1 or perm.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D permutation vector, got {describe(perm)}")
    perm = perm.long()
    n = perm.numel()
    if int(perm.min()) < 0 or int(perm.max()) >= n:
        raise ValueError(f"{name}: expected entries in [0, {n - 1}], got min {int(perm.min())} and max {int(perm.max())}")
    counts = torch.bincount(perm.cpu(), minlength=n)
    if bool((counts != 1).any()):
        repeated = torch.nonzero(counts > 1).reshape(-1)[:5].tolist()
        missing = torch.nonzero(counts == 0).reshape(-1)[:5].tolist()
        raise ValueError(f"{name}: expected each of 0..{n - 1} exactly once, got repeated {repeated} and missing {missing}")
    return perm


def invert_permutation(perm: torch.Tensor) -> torch.Tensor:
    """``σ^{-1}``: ``P_{σ^{-1}} = P_σ^T``."""
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel(), device=perm.device)
    return inverse


def permute(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``P_σ`` applied to each row: ``x[..., σ]`` (SPEC.md §1.3)."""
    return x[..., perm]


# ---------------------------------------------------------------------------------------------
# Relaxed permutations of [BF19] (SPEC.md §7.2)


def even_odd_permutation(m: int, device=None) -> torch.Tensor:
    """``P^a_m``: even/odd separation ``(x_0, x_2, ..., x_1, x_3, ...)``."""
    index = torch.arange(m, device=device)
    return torch.cat([index[0::2], index[1::2]])


def reverse_first_half_permutation(m: int, device=None) -> torch.Tensor:
    """``P^b_m``: reverse the first half."""
    index = torch.arange(m, device=device)
    return torch.cat([index[: m // 2].flip(0), index[m // 2 :]])


def reverse_second_half_permutation(m: int, device=None) -> torch.Tensor:
    """``P^c_m``: reverse the second half."""
    index = torch.arange(m, device=device)
    return torch.cat([index[: m // 2], index[m // 2 :].flip(0)])


_RELAXED_GENERATORS = (even_odd_permutation, reverse_first_half_permutation, reverse_second_half_permutation)


def relaxed_permutation_levels(n: int) -> int:
    """Number of recursion levels ``log n - 1`` of a relaxed permutation of size ``n`` (0 for n <= 2)."""
    return max(0, log2_exact(n, "n") - 1)


def relaxed_permutation_multiply(probabilities: torch.Tensor, x: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """``P(λ)`` (or its transpose) applied to each row of ``x`` (SPEC.md §7.2).

    Args:
        probabilities: ``(log n - 1, 3)`` real tensor; row ``t`` holds ``(p_a, p_b, p_c)`` of level
            ``t`` (blocks of size ``m = n / 2^t``), usually ``sigmoid(logits)``.
        x: ``(B, n)`` with ``n`` a power of two.
        transpose: apply ``P(λ)^T`` (levels in reverse order, each factor transposed).

    Each level applies ``P̃_m = (p_c P^c + (1-p_c) I)(p_b P^b + (1-p_b) I)(p_a P^a + (1-p_a) I)``
    to every block of size ``m`` (``a`` first); the full-size level is applied first. Cost
    ``3 (log n - 1)`` gathers and ``9 (log n - 1) n`` real flops per row (2 mult + 1 add per entry
    and factor).
    """
    n = x.shape[-1]
    levels = relaxed_permutation_levels(n)
    if probabilities.shape != (levels, 3):
        raise ValueError(f"probabilities: expected shape ({levels}, 3) for size {n}, got {describe(probabilities)}")
    steps = [(t, s) for t in range(levels) for s in range(3)]
    if transpose:
        steps = steps[::-1]
    batch = x.shape[:-1]
    for t, s in steps:
        m = n >> t
        perm = _RELAXED_GENERATORS[s](m, device=x.device)
        if transpose:
            perm = invert_permutation(perm)
        p = probabilities[t, s].to(x.dtype)
        blocks = x.reshape(*batch, n // m, m)
        x = (p * blocks[..., perm] + (1 - p) * blocks).reshape(*batch, n)
    return x


def relaxed_permutation_hard(probabilities: torch.Tensor, n: int) -> torch.Tensor:
    """The permutation vector obtained by rounding every ``p_s`` to {0, 1} (SPEC.md §7.2)."""
    levels = relaxed_permutation_levels(n)
    if probabilities.shape != (levels, 3):
        raise ValueError(f"probabilities: expected shape ({levels}, 3) for size {n}, got {describe(probabilities)}")
    rounded = (probabilities.detach() >= 0.5).to(torch.float64).cpu()
    index = torch.arange(n, dtype=torch.float64)[None]
    return relaxed_permutation_multiply(rounded, index)[0].round().long()
