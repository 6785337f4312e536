"""Fast Walsh–Hadamard transform in Sylvester order (SPEC.md §6.3).

``H_n = H_2^{⊗k}`` with ``H_2 = [[1, 1], [1, -1]]`` (unnormalised, entries ±1, symmetric,
``H_n H_n = n I``), applied along the last dimension of ``x`` of shape ``(*, n)``; ``n`` must be a
power of two (callers pad with :func:`structmat.core.sizes.pad_last`). Cost: ``n log2 n`` real
additions per row, no multiplications; the orthonormal transform is ``H_n / sqrt(n)``.

Backends:

* ``reference`` -- pure PyTorch: ``log2 n`` butterfly stages, each a reshape to
  ``(rows, n / 2h, 2, h)`` and one sum/difference (SPEC.md §1.4 stride-``h`` pairing);
* ``cpu`` -- a fused Numba kernel (parallel over rows for large inputs, cached compilation) that runs all stages
  in place on one row while it sits in cache; complex input is transformed as its real and
  imaginary parts.

:func:`hadamard_transform` picks the backend with :func:`structmat.ops.backend.choose`. The fused
kernel is the ``torch.library`` custom op ``structmat::hadamard`` with a fake (meta)
implementation and an autograd formula (``H`` is symmetric, so the backward is the transform of
the gradient), so ``torch.compile`` and ``gradcheck`` go through it.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from ..core.errors import describe
from ..core.sizes import is_power_of_two
from .backend import choose
from .numba_rows import row_kernel

__all__ = ["hadamard_transform", "hadamard_reference", "hadamard_flops"]


def _check_input(x: torch.Tensor) -> int:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {describe(x)}")
    if x.dim() == 0 or not is_power_of_two(x.shape[-1]):
        raise ValueError(f"x: expected shape (*, n) with n a power of two (pad first), got shape {tuple(x.shape)}")
    if not (x.is_floating_point() or x.is_complex()):
        raise TypeError(f"x: expected a floating-point or complex tensor, got {describe(x)}")
    return x.shape[-1]


def hadamard_reference(x: torch.Tensor) -> torch.Tensor:
    """``x @ H_n`` (``= x @ H_n.T``) along the last dimension, pure PyTorch, differentiable."""
    n = _check_input(x)
    lead = x.shape[:-1]
    y = x.reshape(-1, n)
    h = 1
    while h < n:
        pairs = y.reshape(-1, n // (2 * h), 2, h)
        low, high = pairs[:, :, 0, :], pairs[:, :, 1, :]
        y = torch.stack((low + high, low - high), dim=2).reshape(-1, n)
        h *= 2
    return y.reshape(*lead, n)


@row_kernel
def _hadamard_rows_inplace(rows: np.ndarray) -> None:  # pragma: no cover - compiled
    """In-place unnormalised WHT of every row: the strides 1, 2, 4 as one unrolled 8-point
    transform per block of 8, then two strides per sweep (radix 4; the inner loop runs over
    contiguous entries and vectorises), a last radix-2 sweep when an odd number of strides is left.
    Sweeps over a row are ``3 + ⌈(log2 n - 3) / 2⌉`` instead of ``log2 n``."""
    count, n = rows.shape
    for r in numba.prange(count):
        row = rows[r]
        h = 1
        if n >= 8:
            for s in range(0, n, 8):
                b0, b1 = row[s] + row[s + 1], row[s] - row[s + 1]
                b2, b3 = row[s + 2] + row[s + 3], row[s + 2] - row[s + 3]
                b4, b5 = row[s + 4] + row[s + 5], row[s + 4] - row[s + 5]
                b6, b7 = row[s + 6] + row[s + 7], row[s + 6] - row[s + 7]
                c0, c2, c1, c3 = b0 + b2, b0 - b2, b1 + b3, b1 - b3
                c4, c6, c5, c7 = b4 + b6, b4 - b6, b5 + b7, b5 - b7
                row[s], row[s + 4] = c0 + c4, c0 - c4
                row[s + 1], row[s + 5] = c1 + c5, c1 - c5
                row[s + 2], row[s + 6] = c2 + c6, c2 - c6
                row[s + 3], row[s + 7] = c3 + c7, c3 - c7
            h = 8
        while 4 * h <= n:
            for start in range(0, n, 4 * h):
                for i in range(start, start + h):
                    a, b, c, d = row[i], row[i + h], row[i + 2 * h], row[i + 3 * h]
                    ab0, ab1, cd0, cd1 = a + b, a - b, c + d, c - d
                    row[i], row[i + 2 * h] = ab0 + cd0, ab0 - cd0
                    row[i + h], row[i + 3 * h] = ab1 + cd1, ab1 - cd1
            h *= 4
        while h < n:
            for start in range(0, n, 2 * h):
                for i in range(start, start + h):
                    a, b = row[i], row[i + h]
                    row[i], row[i + h] = a + b, a - b
            h *= 2


def _hadamard_numba(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[-1]
    if x.is_complex():
        # (rows, n) complex -> (2 rows, n) real: real parts, then imaginary parts
        parts = torch.view_as_real(x.reshape(-1, n)).movedim(-1, 0).contiguous()
        _hadamard_rows_inplace(parts.reshape(-1, n).numpy())
        return torch.view_as_complex(parts.movedim(0, -1).contiguous()).reshape(x.shape)
    out = x.reshape(-1, n).clone(memory_format=torch.contiguous_format)
    if out.numel():
        _hadamard_rows_inplace(out.numpy())
    return out.reshape(x.shape)


@torch.library.custom_op("structmat::hadamard", mutates_args=())
def _hadamard_op(x: torch.Tensor) -> torch.Tensor:
    return _hadamard_numba(x.contiguous())


@_hadamard_op.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _hadamard_backward(ctx, grad: torch.Tensor) -> torch.Tensor:
    # H is real and symmetric: the vector-Jacobian product of x -> x H is grad H.
    return _hadamard_op(grad)


_hadamard_op.register_autograd(_hadamard_backward)


def hadamard_transform(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh–Hadamard transform of the last dimension of ``x`` (shape ``(*, n)``,
    ``n`` a power of two; float32/float64/complex64/complex128), differentiable.

    Cost ``n log2 n`` additions per row (SPEC.md §6.3). The fused CPU kernel is used for CPU
    tensors in those dtypes unless the reference is forced (``structmat.ops.use_reference()``).
    """
    _check_input(x)
    if choose(x) == "cpu" and x.dtype in (torch.float32, torch.float64, torch.complex64, torch.complex128):
        return _hadamard_op(x)
    return hadamard_reference(x)


def hadamard_flops(n: int, dtype: torch.dtype = torch.float32) -> int:
    """Real flops of one transform of length ``n``: ``n log2 n`` additions (x2 for complex)."""
    additions = n * (n.bit_length() - 1)
    return additions * (2 if dtype.is_complex else 1)
