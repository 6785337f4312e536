"""Size helpers: powers of two, padding/slicing, block-size factorisations (SPEC.md §1.6).

A map of shape ``(out, in)`` is realised by an ``N x N`` structured matrix ``E`` with
``N = next_power_of_two(max(in, out))`` as ``M = S_{out,N} E S_{in,N}^T``: zero-pad the input
to length ``N`` (:func:`pad_last`), apply ``E``, keep the first ``out`` outputs
(:func:`truncate_last`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import check_int


def is_power_of_two(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def next_power_of_two(n: int) -> int:
    """Smallest power of two ``>= n`` (``n >= 1``)."""
    n = check_int("n", n, minimum=1)
    return 1 << (n - 1).bit_length()


def log2_exact(n: int, name: str = "n") -> int:
    """``log2(n)`` for a power of two ``n``; ``ValueError`` otherwise."""
    n = check_int(name, n, minimum=1)
    if not is_power_of_two(n):
        raise ValueError(f"{name}: expected a power of two, got {n}")
    return n.bit_length() - 1


def pad_last(x: torch.Tensor, n: int) -> torch.Tensor:
    """Zero-pad (or keep) the last dimension of ``x`` to length ``n`` (corner embedding S^T)."""
    size = x.shape[-1]
    if size == n:
        return x
    if size > n:
        raise ValueError(f"pad_last: cannot pad a last dimension of {size} down to {n}")
    return F.pad(x, (0, n - size))


def truncate_last(x: torch.Tensor, n: int) -> torch.Tensor:
    """Keep the first ``n`` entries of the last dimension (corner selection S)."""
    return x if x.shape[-1] == n else x[..., :n]


def divisors(n: int) -> list[int]:
    """All positive divisors of ``n`` in increasing order."""
    n = check_int("n", n, minimum=1)
    small, large = [], []
    for d in range(1, math.isqrt(n) + 1):
        if n % d == 0:
            small.append(d)
            if d != n // d:
                large.append(n // d)
    return small + large[::-1]


def balanced_factorization(n: int) -> tuple[int, int]:
    """``(a, b)`` with ``a * b == n``, ``a <= b`` and ``a`` as close to ``sqrt(n)`` as possible."""
    n = check_int("n", n, minimum=1)
    a = max(d for d in divisors(n) if d * d <= n)
    return a, n // a


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
