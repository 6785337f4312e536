"""Level-by-level evaluation of a circuit on a batch (SPEC.md §2.1 "Evaluation", §2.2).

A circuit is evaluated one *depth level* at a time. The state is a tensor of shape
``(live values, B)`` -- one row per gate value that is still needed, the batch along the
contiguous dimension, so that every gather copies whole rows. A level is four index vectors and
two coefficient vectors (a :class:`Level`): the new gates of the level read rows ``left`` and
``right`` of the state and compute ``left_coef * left + right_coef * right`` (or ``left * right``
for product gates); rows ``keep`` of the old state survive (values still read by a later level
or designated as outputs). So a level costs two gathers, two scalings, one addition and one
concatenation over ``B`` columns -- no Python loop over gates -- and the memory is
``O(B * max live values)`` instead of ``O(B * size)``.

Backends (:func:`structmat.ops.backend.choose`):

* ``reference`` -- :func:`evaluate_levels_reference`, plain ``index_select`` / ``mul`` / ``cat``:
  differentiable, ``torch.compile``-able and ``vmap``-able; used for product gates, for
  coefficients that need gradients and when the reference is forced.
* ``cpu`` -- for linear levels: the custom op ``structmat::circuit_levels``, a Numba kernel
  blocked over the batch: each thread takes 16 batch columns and runs *all* levels on them in two
  scratch slabs of ``(max live values, 16)`` that stay in cache (every new row
  ``α·state[a] + β·state[b]``, every kept row a copy), so the state crosses main memory once
  instead of the reference's gather/scale/add/concatenate round trips at every level. Its autograd formula is the transposed evaluation
  (``structmat::circuit_levels_transpose``: scatter-adds with conjugated constants, parallel over
  batch columns so that no two threads add into the same entry), itself differentiable through
  the forward op -- the transposition principle (SPEC.md §2.3) in kernel form.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import torch

from .backend import choose, functorch_transforms, numpy_view
from .numba_rows import row_kernel


@dataclass
class Level:
    """One depth level of a circuit evaluation plan.

    Attributes:
        keep: ``(k,)`` rows of the current state that stay alive.
        left, right: ``(w,)`` rows of the current state read by the ``w`` new gates.
        left_coef, right_coef: ``(w,)`` constants of the new linear gates.
        product: ``(w,)`` boolean mask of product gates (``left * right``), or ``None`` when the
            level has none (linear circuits).
    The new state is ``cat(state[keep], new_values)``.
    """

    keep: torch.Tensor
    left: torch.Tensor
    right: torch.Tensor
    left_coef: torch.Tensor
    right_coef: torch.Tensor
    product: torch.Tensor | None = None

    def to(self, dtype: torch.dtype, device: torch.device | str | None) -> "Level":
        """Coefficients cast to ``dtype``, everything moved to ``device``."""
        return Level(
            keep=self.keep.to(device),
            left=self.left.to(device),
            right=self.right.to(device),
            left_coef=self.left_coef.to(device=device, dtype=dtype),
            right_coef=self.right_coef.to(device=device, dtype=dtype),
            product=None if self.product is None else self.product.to(device),
        )


def evaluate_levels(state: torch.Tensor, levels: list[Level], output_index: torch.Tensor) -> torch.Tensor:
    """Run the levels of a plan on ``state`` of shape ``(sources, B)``; returns ``(outputs, B)``.

    ``state`` holds the depth-0 values (inputs, constants) in the order the plan expects, with
    the dtype of the computation (the coefficients must have the same dtype). Cost per level
    ``w``: ``2 w B`` multiplications and ``w B`` additions plus ``k B`` row copies. Dispatches to
    the fused CPU op for linear levels (see the module docstring), else to
    :func:`evaluate_levels_reference`.
    """
    fused = (
        choose(state) == "cpu"
        and state.dtype in _FUSED_DTYPES
        and all(level.product is None for level in levels)
        and not any(level.left_coef.requires_grad or level.right_coef.requires_grad for level in levels)
        and not set(functorch_transforms()) - {"Grad"}  # (the op has no vmap rule)
    )
    if not fused:
        return evaluate_levels_reference(state, levels, output_index)
    flat = _flatten(levels)
    return _CircuitLevels.apply(state.contiguous(), *flat, output_index)


def evaluate_levels_reference(state: torch.Tensor, levels: list[Level], output_index: torch.Tensor) -> torch.Tensor:
    """Pure-PyTorch :func:`evaluate_levels`: per level two row gathers, a fused scale-and-add
    (or the product-gate selection) and a concatenation."""
    for level in levels:
        left = state.index_select(0, level.left)
        right = state.index_select(0, level.right)
        if level.product is not None:
            linear = left * level.left_coef[:, None] + right * level.right_coef[:, None]
            new = torch.where(level.product[:, None], left * right, linear)
        else:
            # ``left`` is a fresh gather that nothing else reads: scale it in place, fuse the rest
            new = torch.addcmul(left.mul_(level.left_coef[:, None]), right, level.right_coef[:, None])
        state = torch.cat([state.index_select(0, level.keep), new], dim=0)
    return state.index_select(0, output_index)


# ---------------------------------------------------------------------------- fused CPU backend
_FUSED_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)


def _flatten(levels: list[Level]) -> tuple[torch.Tensor, ...]:
    """The linear levels as six flat tensors: ``keep``, ``left``, ``right``, ``left_coef``,
    ``right_coef`` concatenated over levels, and ``offsets`` ``(levels + 1, 2)`` with the start of
    each level's ``keep`` (column 0) and gate (column 1) entries."""
    device = levels[0].keep.device if levels else torch.device("cpu")
    offsets = torch.zeros(len(levels) + 1, 2, dtype=torch.long)
    if levels:
        sizes = torch.tensor([[level.keep.numel(), level.left.numel()] for level in levels], dtype=torch.long)
        offsets[1:] = sizes.cumsum(0)
        joined = [torch.cat([getattr(level, field) for level in levels]) for field in ("keep", "left", "right", "left_coef", "right_coef")]
    else:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        joined = [empty, empty, empty, empty.float(), empty.float()]
    return (*joined, offsets.to(device))


@row_kernel
def _level_transpose(grad, keep, left, right, left_coef, right_coef, out):  # pragma: no cover - compiled
    # out[keep[r]] += grad[r]; out[left[g]] += conj(α_g) grad[k+g]; out[right[g]] += conj(β_g) grad[k+g].
    # Threads own disjoint column blocks, so the scatter-adds never collide.
    kept = keep.shape[0]
    gates = left.shape[0]
    columns = grad.shape[1]
    block = 64
    for c in numba.prange((columns + block - 1) // block):
        lo = c * block
        hi = min(lo + block, columns)
        for i in range(out.shape[0]):
            for j in range(lo, hi):
                out[i, j] = 0
        for r in range(kept):
            target = keep[r]
            for j in range(lo, hi):
                out[target, j] += grad[r, j]
        for g in range(gates):
            alpha, beta = np.conj(left_coef[g]), np.conj(right_coef[g])
            a, b = left[g], right[g]
            for j in range(lo, hi):
                value = grad[kept + g, j]
                out[a, j] += alpha * value
                out[b, j] += beta * value


@row_kernel
def _all_levels_forward(state, keep, left, right, left_coef, right_coef, offsets, max_rows, output_index, out):  # pragma: no cover - compiled
    # Cache blocking: each thread takes a block of batch columns and runs *all* levels on it in
    # two scratch slabs of (max_rows, block) that stay in cache, so the state crosses memory once.
    columns = state.shape[1]
    block = 32  # columns per thread task: 16 -> 32 took fft(1024) on 256 vectors from 2.9 to 2.3 ms
    levels = offsets.shape[0] - 1
    for c in numba.prange((columns + block - 1) // block):
        lo = c * block
        width = min(block, columns - lo)
        slabs = np.empty((2, max(max_rows, state.shape[0]), block), dtype=out.dtype)
        for r in range(state.shape[0]):
            for j in range(width):
                slabs[0, r, j] = state[r, lo + j]
        current = 0
        for level in range(levels):
            k0, g0 = offsets[level, 0], offsets[level, 1]
            kept = offsets[level + 1, 0] - k0
            gates = offsets[level + 1, 1] - g0
            src = slabs[current]
            dst = slabs[1 - current]
            for r in range(kept):
                row = keep[k0 + r]
                for j in range(width):
                    dst[r, j] = src[row, j]
            for g in range(gates):
                a, b = left[g0 + g], right[g0 + g]
                alpha, beta = left_coef[g0 + g], right_coef[g0 + g]
                for j in range(width):
                    dst[kept + g, j] = alpha * src[a, j] + beta * src[b, j]
            current = 1 - current
        final = slabs[current]
        for r in range(output_index.shape[0]):
            row = output_index[r]
            for j in range(width):
                out[r, lo + j] = final[row, j]


def _run_forward(state, keep, left, right, left_coef, right_coef, offsets, output_index):
    bounds = offsets.numpy()
    max_rows = int((bounds[1:] - bounds[:-1]).sum(axis=1).max()) if bounds.shape[0] > 1 else 0
    out = torch.empty(output_index.shape[0], state.shape[1], dtype=state.dtype)
    if out.numel():
        arrays = [numpy_view(t) for t in (state, keep, left, right, left_coef, right_coef)]
        _all_levels_forward(*arrays, bounds, max_rows, output_index.numpy(), out.numpy())
    return out


def _run_transpose(grad, keep, left, right, left_coef, right_coef, offsets, output_index, sources):
    bounds = offsets.tolist()
    arrays = [numpy_view(t) for t in (keep, left, right, left_coef, right_coef)]
    sizes = [sources] + [(k1 - k0) + (g1 - g0) for (k0, g0), (k1, g1) in zip(bounds[:-1], bounds[1:])]
    current = torch.zeros(sizes[-1], grad.shape[1], dtype=grad.dtype).index_add_(0, output_index, grad).numpy()
    buffers = [np.empty((max(sizes[:-1]), current.shape[1]), dtype=current.dtype) for _ in range(min(len(sizes) - 1, 2))]
    for level in range(len(bounds) - 2, -1, -1):
        (k0, g0), (k1, g1) = bounds[level], bounds[level + 1]
        out = buffers[level % 2][: sizes[level]]
        _level_transpose(
            current, arrays[0][k0:k1], arrays[1][g0:g1], arrays[2][g0:g1], arrays[3][g0:g1], arrays[4][g0:g1], out
        )
        current = out
    return torch.from_numpy(current)


@torch.library.custom_op("structmat::circuit_levels", mutates_args=())
def _circuit_levels_op(
    state: torch.Tensor,
    keep: torch.Tensor,
    left: torch.Tensor,
    right: torch.Tensor,
    left_coef: torch.Tensor,
    right_coef: torch.Tensor,
    offsets: torch.Tensor,
    output_index: torch.Tensor,
) -> torch.Tensor:
    return _run_forward(state.contiguous(), keep, left, right, left_coef, right_coef, offsets, output_index)


@_circuit_levels_op.register_fake
def _(state, keep, left, right, left_coef, right_coef, offsets, output_index):
    return state.new_empty(output_index.shape[0], state.shape[1])


@torch.library.custom_op("structmat::circuit_levels_transpose", mutates_args=())
def _circuit_levels_transpose_op(
    grad: torch.Tensor,
    keep: torch.Tensor,
    left: torch.Tensor,
    right: torch.Tensor,
    left_coef: torch.Tensor,
    right_coef: torch.Tensor,
    offsets: torch.Tensor,
    output_index: torch.Tensor,
    sources: int,
) -> torch.Tensor:
    return _run_transpose(grad.contiguous(), keep, left, right, left_coef, right_coef, offsets, output_index, sources)


@_circuit_levels_transpose_op.register_fake
def _(grad, keep, left, right, left_coef, right_coef, offsets, output_index, sources):
    return grad.new_empty(sources, grad.shape[1])


def _save_plan(ctx, inputs, output):
    ctx.save_for_backward(*inputs[1:8])
    ctx.sources = inputs[0].shape[0]


def _forward_backward(ctx, grad):
    return (_CircuitLevelsTranspose.apply(grad, *ctx.saved_tensors, ctx.sources),) + (None,) * 7


def _save_transpose_plan(ctx, inputs, output):
    ctx.save_for_backward(*inputs[1:8])


def _transpose_backward(ctx, grad):
    # the transposed evaluation is linear in ``grad`` with the conjugated constants: its
    # vector-Jacobian product is the forward evaluation
    return (_CircuitLevels.apply(grad, *ctx.saved_tensors),) + (None,) * 8


_circuit_levels_op.register_autograd(_forward_backward, setup_context=_save_plan)
_circuit_levels_transpose_op.register_autograd(_transpose_backward, setup_context=_save_transpose_plan)


class _CircuitLevels(torch.autograd.Function):
    """``structmat::circuit_levels`` as an ``autograd.Function`` with ``setup_context``, the form
    that ``torch.func`` transforms (``vjp``, used by transpose mode) accept."""

    @staticmethod
    def forward(state, keep, left, right, left_coef, right_coef, offsets, output_index):
        return _circuit_levels_op(state, keep, left, right, left_coef, right_coef, offsets, output_index)

    setup_context = staticmethod(_save_plan)
    backward = staticmethod(_forward_backward)


class _CircuitLevelsTranspose(torch.autograd.Function):
    """``structmat::circuit_levels_transpose`` as an ``autograd.Function`` (see above)."""

    @staticmethod
    def forward(grad, keep, left, right, left_coef, right_coef, offsets, output_index, sources):
        return _circuit_levels_transpose_op(grad, keep, left, right, left_coef, right_coef, offsets, output_index, sources)

    setup_context = staticmethod(_save_transpose_plan)
    backward = staticmethod(_transpose_backward)
