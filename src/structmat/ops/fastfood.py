"""Fastfood products ``V = S H G Π H B`` and ``Vᵀ`` (SPEC.md §4.13, §6.3), fused on CPU.

Parameters (``K`` stacked blocks of size ``N``, a power of two, SPEC.md §1.6): diagonals
``S, G, B`` of shape ``(K, N)``, and ``permutation`` ``(K, N)`` (int64) with
``(Π u)_i = u_{permutation[k, i]}``. ``H`` is the unnormalised Walsh–Hadamard matrix. Block ``k``
maps the zero-padded input ``x̃`` (length ``N``) to ``S_k H G_k Π_k H B_k x̃``; the outputs of the
blocks are concatenated and truncated to ``out_features``:

* :func:`fastfood_multiply` ``(x, S, G, B, permutation, out_features)``: ``x`` ``(batch, n)`` with
  ``n <= N`` -> ``(batch, out_features)``, ``out_features <= K N``;
* :func:`fastfood_multiply_transpose` ``(y, S, G, B, permutation, in_features)``: ``y``
  ``(batch, m)`` -> ``(batch, in_features)``, row by row ``Σ_k B_k H Π_kᵀ G_k H S_k ỹ_k``
  (``ỹ_k`` the ``k``-th zero-padded length-``N`` slice of ``y``; ``H`` and the diagonals are
  symmetric), truncated.

Cost per row: ``K (2 N log2 N + 3 N)`` real flops (complex: twice the additions, six real flops
per product), no matrix formed; the backward twice the transforms plus three products and three
accumulations per entry.

Backends (DESIGN.md §4):

* ``reference`` -- the torch expression of the definition (:func:`fastfood_reference`,
  :func:`fastfood_transpose_reference`) over :func:`structmat.ops.hadamard.hadamard_transform`,
  differentiated by autograd; used for non-CPU tensors, under ``structmat.ops.use_reference()``
  (``STRUCTMAT_REFERENCE=1``), and for autograd through the reference.
* ``cpu`` -- one fused Numba kernel per direction: rows are split into one contiguous range per
  thread (one parallel region per call); per row and block the chain scale, in-place WHT
  (:func:`structmat.ops.hadamard_cpu.hadamard_inplace`), permute + scale, WHT, scale runs in two
  length-``N`` scratch rows that stay in L1/L2, padding and truncation included. All four dtypes
  (float32/64, complex64/128) go through the same kernel source (Numba compiles one signature
  per dtype; the WHT on a complex row transforms real and imaginary parts together). The
  backward is a second fused kernel per direction: it recomputes the two WHT intermediates of a
  row in the scratch rows, runs the transposed chain on the output gradient to get the input
  gradient, and adds ``grad_S, grad_G, grad_B`` (``Σ_rows g · conj(activation)``) into one partial
  per thread, summed afterwards. Memory beyond the inputs: the output (or input gradient), two
  rows of scratch and ``3 K N`` partial sums per thread.

Why fused: a chain of separate ops alternates between Numba's and torch's OpenMP thread pools,
and each pool's workers spin after their region while the other one runs, so the torch
multiplications between two WHTs ran ~10x slower than alone (lead's measurement, 2 threads,
N = 4096); here one call is one parallel region.

The fused kernels are the ``torch.library`` custom ops ``structmat::fastfood`` and
``structmat::fastfood_backward`` (fake implementations and an autograd formula registered, so
``torch.compile`` and ``gradcheck`` go through them). The backward op itself is not
differentiable: a backward with ``create_graph=True`` runs the vector-Jacobian product of the
reference instead (exact second derivatives), and under ``torch.func`` transforms (``grad``,
``vmap``, ``jacrev``, ``hessian``: any of them may differentiate or batch the backward, even a
single ``grad`` level inside eager autograd) the whole product runs through the reference, which
they all handle.
"""

from __future__ import annotations

import functools

import numba
import torch

from ..core.errors import check_int, describe
from ..core.sizes import is_power_of_two, pad_last, truncate_last
from .backend import choose, functorch_transforms, numpy_view
from .hadamard import hadamard_transform
from .hadamard_cpu import fastfood_backward_rows, fastfood_rows, fastfood_transpose_backward_rows, fastfood_transpose_rows

__all__ = ["fastfood_multiply", "fastfood_multiply_transpose", "fastfood_reference", "fastfood_transpose_reference"]

_FUSED_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)


# ---------------------------------------------------------------------------------------------
# Reference (torch ops, SPEC.md §4.13 line by line)


def fastfood_reference(x, S, G, B, permutation, out_features: int) -> torch.Tensor:
    """``x Vᵀ``: per block ``S H G Π H B x̃``, concatenated, truncated (pure torch + WHT op)."""
    blocks, size = S.shape
    u = pad_last(x, size).unsqueeze(1) * B  # (batch, K, N)
    u = hadamard_transform(u)
    u = torch.gather(u, 2, permutation.expand(u.shape[0], -1, -1)) * G
    u = hadamard_transform(u) * S
    return truncate_last(u.reshape(x.shape[0], blocks * size), out_features)


def fastfood_transpose_reference(y, S, G, B, permutation, in_features: int) -> torch.Tensor:
    """``y V``: ``Σ_k B_k H Π_kᵀ G_k H S_k ỹ_k``, truncated (pure torch + WHT op)."""
    blocks, size = S.shape
    u = pad_last(y, blocks * size).reshape(y.shape[0], blocks, size) * S
    u = hadamard_transform(u) * G
    u = torch.zeros_like(u).scatter(2, permutation.expand(u.shape[0], -1, -1), u)
    u = hadamard_transform(u) * B
    return truncate_last(u.sum(dim=1), in_features)


def _workers(batch: int) -> int:
    """Row ranges per call: one per thread (``numba.get_num_threads()``), at most one per row."""
    return max(1, min(numba.get_num_threads(), batch))


def _fused_forward(x, S, G, B, permutation, features: int, transpose: bool) -> torch.Tensor:
    check_permutation_rows(permutation)  # here too: this runs with real tensors under torch.compile
    out = torch.empty(x.shape[0], features, dtype=x.dtype)
    if x.shape[0]:
        kernel = fastfood_transpose_rows if transpose else fastfood_rows
        views = (numpy_view(t) for t in (x, out, S, G, B, permutation))
        kernel(*views, _workers(x.shape[0]))
    return out


def _fused_backward(x, S, G, B, permutation, grad, transpose: bool):
    check_permutation_rows(permutation)
    workers = _workers(x.shape[0])
    parts = torch.zeros((workers, 3) + tuple(S.shape), dtype=x.dtype)
    grad_x = torch.empty_like(x, memory_format=torch.contiguous_format)
    if x.shape[0]:
        kernel = fastfood_transpose_backward_rows if transpose else fastfood_backward_rows
        kernel(
            numpy_view(x), numpy_view(grad.to(x.dtype)), numpy_view(grad_x), numpy_view(parts),
            numpy_view(S), numpy_view(G), numpy_view(B), numpy_view(permutation),
        )
    grad_S, grad_G, grad_B = (parts[:, i].sum(0) for i in range(3))  # distinct tensors (custom ops may not alias)
    return grad_x, grad_S, grad_G, grad_B


# ---------------------------------------------------------------------------------------------
# Custom ops


@torch.library.custom_op("structmat::fastfood", mutates_args=())
def _fastfood_op(
    x: torch.Tensor, S: torch.Tensor, G: torch.Tensor, B: torch.Tensor, permutation: torch.Tensor, features: int, transpose: bool
) -> torch.Tensor:
    return _fused_forward(x.contiguous(), S.contiguous(), G.contiguous(), B.contiguous(), permutation.contiguous(), features, transpose)


@_fastfood_op.register_fake
def _(x, S, G, B, permutation, features, transpose):
    return x.new_empty(x.shape[0], features)


@torch.library.custom_op("structmat::fastfood_backward", mutates_args=())
def _fastfood_backward_op(
    x: torch.Tensor, S: torch.Tensor, G: torch.Tensor, B: torch.Tensor, permutation: torch.Tensor, grad: torch.Tensor, transpose: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    tensors = (t.contiguous() for t in (x, S, G, B, permutation, grad))
    return _fused_backward(*tensors, transpose)


@_fastfood_backward_op.register_fake
def _(x, S, G, B, permutation, grad, transpose):
    return torch.empty_like(x), torch.empty_like(S), torch.empty_like(G), torch.empty_like(B)


def _setup_context(ctx, inputs, output):
    x, S, G, B, permutation, features, transpose = inputs
    ctx.save_for_backward(x, S, G, B, permutation)
    ctx.features, ctx.transpose = features, transpose


def _backward(ctx, grad):
    x, S, G, B, permutation = ctx.saved_tensors
    if torch.is_grad_enabled():
        # create_graph=True: this backward will be differentiated -- the reference's VJP
        reference = fastfood_transpose_reference if ctx.transpose else fastfood_reference
        _, vjp = torch.func.vjp(lambda *a: reference(*a, permutation, ctx.features), x, S, G, B)
        return (*vjp(grad), None, None, None)
    with torch.no_grad():  # first-order gradients (the backward op has no derivative of its own)
        grads = _fastfood_backward_op(x, S, G, B, permutation, grad, ctx.transpose)
    return (*grads, None, None, None)


_fastfood_op.register_autograd(_backward, setup_context=_setup_context)


class _FusedFastfood(torch.autograd.Function):
    """The custom ops as an ``autograd.Function`` with ``setup_context``: the form that
    ``torch.func`` transforms (``grad``, ``vjp``) accept; eager autograd and ``torch.compile``
    see the same two ops."""

    @staticmethod
    def forward(x, S, G, B, permutation, features, transpose):
        return _fastfood_op(x, S, G, B, permutation, features, transpose)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)


# ---------------------------------------------------------------------------------------------
# Public entry points


def _check_parameters(S, G, B, permutation) -> tuple[int, int]:
    """``(K, N)`` of the diagonals and the permutation (equal shapes ``(K, N)``, ``N`` a power of two,
    every row of ``permutation`` a permutation of ``[0, N)``)."""
    tensors = (S, G, B, permutation)
    shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else describe(t) for t in tensors]
    if not (len(set(shapes)) == 1 and isinstance(shapes[0], tuple) and len(shapes[0]) == 2 and is_power_of_two(shapes[0][1])):
        raise ValueError(f"S, G, B, permutation: expected tensors of one shape (K, N) with N a power of two, got {shapes}")
    if not torch.compiler.is_compiling():
        check_permutation_rows(permutation)
    return shapes[0]


def check_permutation_rows(permutation: torch.Tensor) -> None:
    """Raise ``ValueError`` unless every row of the integer tensor ``permutation`` ``(K, N)`` is a
    permutation of ``[0, N)`` (the fused kernels index and scatter with these entries unchecked).
    The sort costs ``O(K N log N)``; a tensor that passed is remembered until it is modified
    (``Tensor._version``), so a layer's buffer is checked once, and again after ``load_state_dict``."""
    if permutation.is_floating_point() or permutation.is_complex():
        raise ValueError(f"permutation: expected an integer tensor, got {describe(permutation)}")
    try:
        version = permutation._version
    except RuntimeError:  # inference tensors have no version counter: check every time
        version = None
    if permutation.device.type == "meta" or (version is not None and getattr(permutation, "_structmat_checked_version", None) == version):
        return
    if permutation.numel():
        expected = torch.arange(permutation.shape[-1], device=permutation.device)
        if not torch.equal(torch.sort(permutation, dim=-1).values, expected.expand_as(permutation)):
            raise ValueError(
                f"permutation: expected every row to be a permutation of [0, {permutation.shape[-1]}) "
                f"(no repeated or missing entries), got {describe(permutation)}"
            )
    if version is not None:
        permutation._structmat_checked_version = version


def _check_input(name: str, t, max_width: int) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[1] > max_width:
        raise ValueError(f"{name}: expected a tensor of shape (batch, <= {max_width}), got {describe(t)}")


def _multiply(t, S, G, B, permutation, features: int, transpose: bool) -> torch.Tensor:
    dtype = functools.reduce(torch.promote_types, (S.dtype, G.dtype, B.dtype), t.dtype)
    t, S, G, B = (p.to(dtype) for p in (t, S, G, B))
    if choose(t, S, G, B, permutation) != "cpu" or dtype not in _FUSED_DTYPES or functorch_transforms():
        reference = fastfood_transpose_reference if transpose else fastfood_reference
        return reference(t, S, G, B, permutation, features)
    if not torch.is_grad_enabled() and not torch.compiler.is_compiling():
        # eager inference: the kernel directly (custom-op dispatch costs tens of microseconds)
        tensors = (p.contiguous() for p in (t, S, G, B, permutation))
        return _fused_forward(*tensors, features, transpose)
    return _FusedFastfood.apply(t, S, G, B, permutation, features, transpose)


def fastfood_multiply(x: torch.Tensor, S, G, B, permutation, out_features: int) -> torch.Tensor:
    """``x Vᵀ`` for ``V = [S_k H G_k Π_k H B_k]_k`` (SPEC.md §4.13): ``x`` ``(batch, n)``, ``n <= N``
    (zero-padded) -> ``(batch, out_features)``, ``out_features <= K N`` (truncated).

    Differentiable in ``x, S, G, B``; cost ``K (2 N log2 N + 3 N)`` flops per row. The fused CPU
    kernel is used for CPU tensors unless the reference is forced (module docstring).
    """
    blocks, size = _check_parameters(S, G, B, permutation)
    _check_input("x", x, size)
    out_features = check_int("out_features", out_features, minimum=1, maximum=blocks * size)
    return _multiply(x, S, G, B, permutation, out_features, transpose=False)


def fastfood_multiply_transpose(y: torch.Tensor, S, G, B, permutation, in_features: int) -> torch.Tensor:
    """``y V`` (``Vᵀ = [B_k H Π_kᵀ G_k H S_k]`` side by side, SPEC.md §2.3): ``y`` ``(batch, m)``,
    ``m <= K N`` -> ``(batch, in_features)``, ``in_features <= N``. Same cost and backends as
    :func:`fastfood_multiply`."""
    blocks, size = _check_parameters(S, G, B, permutation)
    _check_input("y", y, blocks * size)
    in_features = check_int("in_features", in_features, minimum=1, maximum=size)
    return _multiply(y, S, G, B, permutation, in_features, transpose=True)
