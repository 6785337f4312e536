"""dtype helpers: defaults, real/complex counterparts, validation of inputs."""

from __future__ import annotations

import torch

from .errors import describe

SUPPORTED = (torch.float32, torch.float64, torch.complex64, torch.complex128)

_TO_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}
_TO_REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64}


def resolve_dtype(dtype: torch.dtype | None, name: str = "dtype") -> torch.dtype:
    """``dtype`` or the default dtype; only float32/64 and complex64/128 are accepted."""
    if dtype is None:
        dtype = torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{name}: expected a torch.dtype, got {describe(dtype)}")
    if dtype not in SUPPORTED:
        # float16/bfloat16 are rejected here rather than deep inside a kernel: the FFT-, Numba-
        # and Krylov-based families have no half-precision path.
        raise TypeError(
            f"{name}: expected one of float32, float64, complex64, complex128, got {dtype}"
        )
    return dtype


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """The complex counterpart of a real dtype (identity for complex dtypes)."""
    if dtype.is_complex:
        return dtype
    return _TO_COMPLEX.get(dtype, torch.complex64)


def real_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real counterpart of a complex dtype (identity for real dtypes)."""
    return _TO_REAL.get(dtype, dtype)


def flop_scale(dtype: torch.dtype) -> tuple[int, int]:
    """(flops per multiplication, flops per addition) in ``dtype`` (SPEC.md §1.7)."""
    return (6, 2) if dtype.is_complex else (1, 1)


def mult_add_flops(count: int, dtype: torch.dtype) -> int:
    """Flops of ``count`` fused multiply-adds (one multiplication and one addition each)."""
    mul, add = flop_scale(dtype)
    return count * (mul + add)
