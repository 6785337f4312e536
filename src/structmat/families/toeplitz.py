"""Families ``circulant``, ``toeplitz`` and ``hankel`` (SPEC.md §4.5–4.7).

All three are multiplied by FFTs in ``O(n log n)`` (:mod:`structmat.ops.circulant`), have a
Frobenius-optimal projection (the matrices of each family form a linear space spanned by
0/1 matrices with disjoint supports, so the nearest member averages ``W`` over each support:
the (wrapped) diagonals or anti-diagonals, SPEC.md §7.5), and are rectangular:

* ``circulant``: ``M = S_{m,N} C(c) S_{n,N}ᵀ`` with ``N = max(m, n)`` (corner embedding, §1.6);
  ``N`` parameters;
* ``toeplitz``: ``T[i, j] = t_{i-j}`` natively rectangular, ``m + n - 1`` parameters;
* ``hankel``: ``H[i, j] = h_{i+j}`` natively rectangular, ``m + n - 1`` parameters; ``H = T J``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core import StructuredMatrix, register
from ..core.errors import check_matrix
from ..core.init import linear_bound, uniform_
from ..core.registry import Sample
from ..core.sizes import pad_last, truncate_last
from ..ops.circulant import (
    f_circulant_matrix,
    f_circulant_multiply,
    f_circulant_transpose_multiply,
    fast_fft_length,
    fft_flops,
    toeplitz_matrix,
    toeplitz_multiply,
)


def _samples():
    return [Sample(7, 5), Sample(4, 9), Sample(16, 16), Sample(12, 3), Sample(1, 1)]


def fft_product_flops(length: int, dtype: torch.dtype) -> int:
    """Per-row flops of one FFT product of ``length`` points: forward and inverse transform of
    the row and the pointwise product with a (per-call, batch-amortised) parameter spectrum."""
    real = not dtype.is_complex
    bins = length // 2 + 1 if real else length
    return 2 * fft_flops(length, real) + 6 * bins


def diagonal_average(W: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Mean of ``W`` over each class of ``index`` (an ``W``-shaped tensor of labels in
    ``[0, size)``): the Frobenius projection onto matrices constant on those classes."""
    flat = index.reshape(-1)
    sums = torch.zeros(size, dtype=W.dtype, device=W.device).index_add(0, flat, W.reshape(-1))
    counts = torch.bincount(flat, minlength=size).clamp_min(1).to(sums.real.dtype)
    return sums / counts


@register(
    "circulant",
    samples=_samples,
    params_formula="max(m, n)",
    flops_formula="2 FFTs of length max(m, n) + max(m, n) products",
    size_ladder=lambda m, n: [{}],
)
class Circulant(StructuredMatrix):
    """Circulant matrix ``C(c)[i, j] = c_{(i-j) mod N}`` with ``N = max(m, n)``, corner-embedded
    for rectangular shapes (SPEC.md §4.5, §1.6).

    Shapes: ``x (B, n) -> (B, m)``; cost ``O(N log N)`` per row (a real FFT of ``N`` points for
    real dtypes); ``N`` parameters. ``from_dense`` averages the wrapped diagonals of the corner
    (optimal in Frobenius norm; every wrapped diagonal meets the corner in ``min(m, n)`` entries).

    Example::

        >>> Circulant(8, 8).num_parameters
        8
    """

    def __init__(self, in_features: int, out_features: int, *, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, device=device, dtype=dtype)
        self.size = max(in_features, out_features)
        self.c = nn.Parameter(torch.empty(self.size, device=device, dtype=self.dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        uniform_(self.c, linear_bound(self.in_features))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return truncate_last(f_circulant_multiply(self.c, pad_last(x, self.size)), self.out_features)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        return truncate_last(f_circulant_transpose_multiply(self.c, pad_last(y, self.size)), self.in_features)

    def to_dense(self) -> torch.Tensor:
        return f_circulant_matrix(self.c)[: self.out_features, : self.in_features]

    def _matvec_flops(self) -> int:
        return fft_product_flops(self.size, self.dtype)

    @classmethod
    def from_dense(cls, W: torch.Tensor) -> "Circulant":
        """The Frobenius-nearest (corner-embedded) circulant: ``c_k`` = mean of ``W`` over the
        wrapped diagonal ``(i - j) mod N = k`` (SPEC.md §4.5 Proj)."""
        W = check_matrix("W", W)
        m, n = W.shape
        layer = cls(n, m, device=W.device, dtype=W.dtype)
        i = torch.arange(m, device=W.device)[:, None]
        j = torch.arange(n, device=W.device)[None, :]
        with torch.no_grad():
            layer.c.copy_(diagonal_average(W, (i - j) % layer.size, layer.size))
        return layer


@register(
    "toeplitz",
    samples=_samples,
    params_formula="m + n - 1",
    flops_formula="2 FFTs of length L >= m + n - 1 + L products",
    size_ladder=lambda m, n: [{}],
)
class Toeplitz(StructuredMatrix):
    """Toeplitz matrix ``T[i, j] = t_{i-j}`` (SPEC.md §4.6), stored as
    ``diagonals[d + n - 1] = t_d`` for ``d ∈ [-(n-1), m-1]``.

    Shapes: ``x (B, n) -> (B, m)``; cost: circulant embedding of length
    ``L = fast_fft_length(m + n - 1)``, two FFTs per row, ``O((m+n) log(m+n))``; ``m + n - 1``
    parameters. ``from_dense`` averages each diagonal (Frobenius-optimal). The transpose is the
    Toeplitz matrix of the reversed diagonals.

    Example::

        >>> Toeplitz(5, 3).num_parameters
        7
    """

    def __init__(self, in_features: int, out_features: int, *, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, device=device, dtype=dtype)
        self.diagonals = nn.Parameter(torch.empty(in_features + out_features - 1, device=device, dtype=self.dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        uniform_(self.diagonals, linear_bound(self.in_features))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return toeplitz_multiply(self.diagonals, x, self.out_features)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        return toeplitz_multiply(self.diagonals.flip(0), y, self.in_features)

    def to_dense(self) -> torch.Tensor:
        return toeplitz_matrix(self.diagonals, self.out_features, self.in_features)

    def _matvec_flops(self) -> int:
        length = fast_fft_length(self.in_features + self.out_features - 1)
        return fft_product_flops(length, self.dtype)

    @classmethod
    def from_dense(cls, W: torch.Tensor) -> "Toeplitz":
        """The Frobenius-nearest Toeplitz matrix: the mean of each diagonal (SPEC.md §4.6 Proj)."""
        W = check_matrix("W", W)
        m, n = W.shape
        layer = cls(n, m, device=W.device, dtype=W.dtype)
        i = torch.arange(m, device=W.device)[:, None]
        j = torch.arange(n, device=W.device)[None, :]
        with torch.no_grad():
            layer.diagonals.copy_(diagonal_average(W, i - j + n - 1, m + n - 1))
        return layer


@register(
    "hankel",
    samples=_samples,
    params_formula="m + n - 1",
    flops_formula="2 FFTs of length L >= m + n - 1 + L products",
    size_ladder=lambda m, n: [{}],
)
class Hankel(StructuredMatrix):
    """Hankel matrix ``H[i, j] = h_{i+j}`` (SPEC.md §4.7), ``h`` of length ``m + n - 1``.

    ``H = T J`` with ``J`` the reversal and ``T`` the Toeplitz matrix whose diagonal vector is
    ``h`` itself, so the multiply is :func:`~structmat.ops.circulant.toeplitz_multiply` of the
    reversed input (``O((m+n) log(m+n))`` per row); ``Hᵀ`` is the Hankel matrix of the same ``h``.
    ``from_dense`` averages the anti-diagonals (Frobenius-optimal).

    Example::

        >>> Hankel(4, 6).num_parameters
        9
    """

    def __init__(self, in_features: int, out_features: int, *, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, device=device, dtype=dtype)
        self.h = nn.Parameter(torch.empty(in_features + out_features - 1, device=device, dtype=self.dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        uniform_(self.h, linear_bound(self.in_features))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return toeplitz_multiply(self.h, x.flip(-1), self.out_features)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        return toeplitz_multiply(self.h, y.flip(-1), self.in_features)

    def to_dense(self) -> torch.Tensor:
        i = torch.arange(self.out_features, device=self.h.device)[:, None]
        j = torch.arange(self.in_features, device=self.h.device)[None, :]
        return self.h[i + j]

    def _matvec_flops(self) -> int:
        length = fast_fft_length(self.in_features + self.out_features - 1)
        return fft_product_flops(length, self.dtype)

    @classmethod
    def from_dense(cls, W: torch.Tensor) -> "Hankel":
        """The Frobenius-nearest Hankel matrix: the mean of each anti-diagonal (SPEC.md §4.7)."""
        W = check_matrix("W", W)
        m, n = W.shape
        layer = cls(n, m, device=W.device, dtype=W.dtype)
        i = torch.arange(m, device=W.device)[:, None]
        j = torch.arange(n, device=W.device)[None, :]
        with torch.no_grad():
            layer.h.copy_(diagonal_average(W, i + j, m + n - 1))
        return layer
