"""Backend selection for the kernels in ``structmat.ops`` (DESIGN.md §4).

Every op has a pure-PyTorch *reference* and may have fast backends (fused CPU kernels with
Numba, GPU kernels with Triton). The fast path is chosen automatically; the reference can be
forced for debugging and parity tests:

* environment variable ``STRUCTMAT_REFERENCE=1`` (read at import time and again by
  ``set_reference(None)``: reading the environment on every call cost ~0.6 us per op);
* :func:`set_reference` / the :func:`use_reference` context manager.

Ops call :func:`choose` with the tensors involved to pick a backend name. CPU kernels reach the
data of their tensor arguments through :func:`numpy_view`.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np
import torch
from torch.autograd import forward_ad


def _environment_forced() -> bool:
    return os.environ.get("STRUCTMAT_REFERENCE", "").strip() not in ("", "0", "false", "False")


_FORCED: bool | None = None
_ENV_FORCED = _environment_forced()


def reference_forced() -> bool:
    """True when the reference path must be used everywhere."""
    return _ENV_FORCED if _FORCED is None else _FORCED


def set_reference(enabled: bool | None) -> None:
    """Force (``True``), forbid (``False``) or reset to the environment (``None``, which reads
    ``STRUCTMAT_REFERENCE`` again) the reference."""
    global _FORCED, _ENV_FORCED
    _FORCED = None if enabled is None else bool(enabled)
    if enabled is None:
        _ENV_FORCED = _environment_forced()


@contextmanager
def use_reference(enabled: bool = True):
    """Context manager forcing the pure-PyTorch reference kernels inside the block."""
    global _FORCED
    previous = _FORCED
    _FORCED = bool(enabled)
    try:
        yield
    finally:
        _FORCED = previous


def numpy_view(t: torch.Tensor) -> np.ndarray:
    """A NumPy array sharing the memory of ``t`` (detached, conjugation resolved, contiguous),
    for handing tensor arguments to compiled kernels.

    Goes through DLPack rather than ``Tensor.numpy()``: the latter marks the tensor's storage as
    non-resizable for good, which breaks FSDP2 (it frees an unsharded parameter by resizing its
    storage to zero: "Trying to resize storage that is not resizable"). The array keeps ``t``'s
    memory alive while it exists.
    """
    return np.from_dlpack(t.detach().resolve_conj().contiguous())


def plain(t: torch.Tensor) -> torch.Tensor:
    """``t`` contiguous, without lazy conjugate or negative bits (what compiled kernels read; a no-op
    for the usual inputs)."""
    return t.resolve_conj().resolve_neg().contiguous()


def tensor_address(t: torch.Tensor, name: str = "tensor") -> tuple[int, tuple[int, ...]]:
    """``(data address, shape)`` of a contiguous CPU tensor with no lazy conjugate or negative bit,
    for compiled kernels that rebuild the array from them (:func:`structmat.ops.simd.array_at`):
    ~0.2 µs per tensor against ~2.6 µs for :func:`numpy_view`'s DLPack export, which matters for
    the kernels' per-call overhead. The caller keeps ``t`` alive during the call."""
    if t.device.type != "cpu" or t.is_conj() or t.is_neg() or not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous CPU tensor without lazy conjugation, got {t.device} {tuple(t.shape)} stride {t.stride()}")
    return t.data_ptr(), tuple(t.shape)


_NUMPY_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64), torch.complex64: np.dtype(np.complex64), torch.complex128: np.dtype(np.complex128)}


#: torch dtypes the compiled kernels support
KERNEL_DTYPES = tuple(_NUMPY_DTYPES)


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The NumPy dtype of a :data:`KERNEL_DTYPES` torch dtype."""
    if dtype not in _NUMPY_DTYPES:
        raise TypeError(f"dtype: the compiled kernels take float32, float64, complex64 or complex128, got {dtype}")
    return _NUMPY_DTYPES[dtype]


_NUMBA_AVAILABLE: bool | None = None


def numba_available() -> bool:
    """Whether Numba imports (probed once; a module global rather than ``functools.cache``, which
    ``torch.compile`` warns about when it traces :func:`choose`)."""
    global _NUMBA_AVAILABLE
    if _NUMBA_AVAILABLE is None:
        try:
            import numba  # noqa: F401
        except Exception:  # pragma: no cover - numba is a dependency
            _NUMBA_AVAILABLE = False
        else:
            _NUMBA_AVAILABLE = True
    return _NUMBA_AVAILABLE


_TRITON_AVAILABLE: bool | None = None


def triton_available() -> bool:
    """Whether the GPU kernels can run (probed once): an NVIDIA GPU that Triton compiles for
    (compute capability 8.0 or later; ROCm builds of torch are not tried) and Triton imports.
    Elsewhere CUDA tensors take the reference."""
    global _TRITON_AVAILABLE
    if _TRITON_AVAILABLE is None:
        _TRITON_AVAILABLE = False
        if torch.cuda.is_available() and torch.version.hip is None and torch.cuda.get_device_capability() >= (8, 0):
            try:
                import triton  # noqa: F401
            except ImportError:  # (a GPU without Triton: CUDA tensors take the reference)
                _TRITON_AVAILABLE = False
            else:
                _TRITON_AVAILABLE = True
    return _TRITON_AVAILABLE


def choose(*tensors) -> str:
    """``"reference"``, ``"cpu"`` (fused Numba kernels) or ``"cuda"`` for the given tensors."""
    if reference_forced() or not tensors:
        return "reference"
    if all(t.is_cpu for t in tensors):  # (without building device objects)
        return "cpu" if numba_available() else "reference"
    device = tensors[0].device.type
    if any(t.device.type != device for t in tensors[1:]):
        return "reference"
    return "cuda" if device == "cuda" else "reference"


def functorch_transforms() -> tuple[str, ...]:
    """The ``torch.func`` transforms active around the caller, innermost last (``"Grad"``,
    ``"Vmap"``, ``"Jvp"``, ``"Functionalize"``): empty in plain eager code. Fused kernels whose
    ``autograd.Function`` lacks a rule for one of them (a vmap rule, a derivative of their own
    backward) take the differentiable pure-PyTorch reference instead, which every transform
    handles."""
    if not torch._C._are_functorch_transforms_active():
        return ()
    return tuple(level.key().name for level in torch._C._functorch.get_interpreter_stack() or ())


def forward_mode_active() -> bool:
    """Whether forward-mode AD is on: an eager ``torch.autograd.forward_ad.dual_level``, which
    ``torch.func.jvp``/``jacfwd``/``hessian`` enter too. Fused ops without a forward-mode rule then
    run their differentiable reference, which propagates tangents exactly at every order.
    ``_current_level`` is private to torch (pinned in pyproject.toml); it is a plain module global,
    which ``torch.compile`` can trace."""
    return forward_ad._current_level >= 0


def legacy_batched(*tensors: torch.Tensor) -> bool:
    """Whether a tensor is batched by autograd's own vmap -- a backward run with
    ``is_grads_batched=True`` (``torch.autograd.functional.jacobian(vectorize=True)``) hands its
    output gradient over as one. Such a tensor has no storage and no ``torch.func`` transform is
    active, so fused kernels that read memory must take a path built of torch ops instead."""
    return any(torch._C._functorch.is_legacy_batchedtensor(t) for t in tensors)
