"""Fast Walsh–Hadamard transform in Sylvester order (SPEC.md §6.3).

``H_n = H_2^{⊗k}`` with ``H_2 = [[1, 1], [1, -1]]`` (unnormalised, entries ±1, symmetric,
``H_n H_n = n I``), applied along the last dimension of ``x`` of shape ``(*, n)``; ``n`` must be a
power of two (callers pad with :func:`structmat.core.sizes.pad_last`). Cost: ``n log2 n`` real
additions per row, no multiplications; the orthonormal transform is ``H_n / sqrt(n)``.

Backends:

* ``reference`` -- pure PyTorch: ``log2 n`` butterfly stages, each a reshape to
  ``(rows, n / 2h, 2, h)`` and one sum/difference (SPEC.md §1.4 stride-``h`` pairing);
* ``cpu`` -- a fused Numba kernel (:mod:`structmat.ops.hadamard_cpu`; parallel over rows for large inputs, cached compilation) that runs all stages
  in place on one row while it sits in cache; complex input is transformed as its real and
  imaginary parts.

:func:`hadamard_transform` picks the backend with :func:`structmat.ops.backend.choose`. The fused
kernel is the ``torch.library`` custom op ``structmat::hadamard`` with a fake (meta)
implementation and an autograd formula (``H`` is symmetric, so the backward is the transform of
the gradient), so ``torch.compile`` and ``gradcheck`` go through it.
"""

from __future__ import annotations

import torch

from ..core.errors import describe
from ..core.sizes import is_power_of_two
from .backend import choose, functorch_transforms
from .hadamard_cpu import hadamard_rows_inplace

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


def _hadamard_numba(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[-1]
    if x.is_complex():
        # (rows, n) complex -> (2 rows, n) real: real parts, then imaginary parts
        parts = torch.view_as_real(x.reshape(-1, n)).movedim(-1, 0).contiguous()
        hadamard_rows_inplace(parts.reshape(-1, n).numpy())
        return torch.view_as_complex(parts.movedim(0, -1).contiguous()).reshape(x.shape)
    out = x.reshape(-1, n).clone(memory_format=torch.contiguous_format)
    if out.numel():
        hadamard_rows_inplace(out.numpy())
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
    tensors in those dtypes unless the reference is forced (``structmat.ops.use_reference()``) or a
    ``torch.func`` transform is active (the custom op has neither the ``setup_context`` form
    ``torch.func`` asks for nor a vmap rule; the reference has both).
    """
    _check_input(x)
    if choose(x) == "cpu" and x.dtype in (torch.float32, torch.float64, torch.complex64, torch.complex128) and not functorch_transforms():
        return _hadamard_op(x)
    return hadamard_reference(x)


def hadamard_flops(n: int, dtype: torch.dtype = torch.float32) -> int:
    """Real flops of one transform of length ``n``: ``n log2 n`` additions (x2 for complex)."""
    additions = n * (n.bit_length() - 1)
    return additions * (2 if dtype.is_complex else 1)
