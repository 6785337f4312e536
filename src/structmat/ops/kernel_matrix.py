"""Products with matrices whose entries are a closed-form function of a few node vectors
(Vandermonde ``a_i^j``, Cauchy ``1/(s_i - t_j)``, Cauchy-like ``(GᵀH)_{ij}/(s_i - t_j)``),
evaluated in row tiles so that no more than ``tile × n`` entries exist at any time
(SPEC.md §4.8–4.10).

``tiled_kernel_multiply(build_tile, params, x, rows)`` computes ``x @ Kᵀ`` (or ``x @ K`` with
``transpose=True``) where ``build_tile(params, start, stop)`` returns rows ``start:stop`` of the
``(rows, n)`` matrix ``K``. It is a custom autograd function whose backward *recomputes* each tile
(memory ``O(tile · n)`` in training as in inference, like a fused kernel); the reference is plain
autograd through the concatenated tiles (memory ``O(rows · n)``). Cost: ``rows · n`` entry
evaluations plus ``B · rows · n`` multiply-adds at matrix-multiply speed.

Why direct evaluation: the exact ``O(n log² n)`` algorithms for Vandermonde/Cauchy products
(subproduct trees, fast multipoint evaluation and interpolation) lose all accuracy in float32 for
``n`` beyond a few dozen, and fast multipole methods are approximate. Tiled direct evaluation is
backward stable (each entry is computed to full precision) and runs at GEMM speed.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .backend import choose, functorch_transforms, legacy_batched

#: entries per tile (rows × columns) of the kernel matrix
TILE_ENTRIES = 1 << 17

TileBuilder = Callable[[Sequence[torch.Tensor], int, int], torch.Tensor]


def tile_rows(columns: int) -> int:
    return max(1, TILE_ENTRIES // max(1, columns))


class _TiledKernelProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, build_tile, shape, transpose, x, *params):
        ctx.build_tile, ctx.shape, ctx.transpose = build_tile, shape, transpose
        ctx.save_for_backward(x, *params)
        with torch.no_grad():
            return _tiled_product(build_tile, params, x, shape, transpose)

    @staticmethod
    def backward(ctx, grad_out):
        x, *params = ctx.saved_tensors
        build_tile, (rows, columns), transpose = ctx.build_tile, ctx.shape, ctx.transpose
        if torch.is_grad_enabled() or legacy_batched(grad_out):  # create_graph, or is_grads_batched
            return (None, None, None, *_differentiable_vjp(build_tile, params, x, (rows, columns), transpose, grad_out, ctx.needs_input_grad[3:]))
        needs = ctx.needs_input_grad[4:]
        grad_x = torch.zeros_like(x) if ctx.needs_input_grad[3] else None
        grads = [torch.zeros_like(p) if need else None for p, need in zip(params, needs)]
        leaves = [p.detach().requires_grad_(need) for p, need in zip(params, needs)]
        wanted = [i for i, need in enumerate(needs) if need]
        step = tile_rows(columns)
        for start in range(0, rows, step):
            stop = min(rows, start + step)
            with torch.enable_grad():
                tile = build_tile(leaves, start, stop)
            if not transpose:  # out[:, start:stop] = x @ tileᵀ
                g = grad_out[:, start:stop]
                if grad_x is not None:
                    grad_x += g @ tile.detach().conj()
                grad_tile = g.transpose(0, 1) @ x.conj()
            else:  # out = x[:, start:stop] @ tile
                if grad_x is not None:
                    grad_x[:, start:stop] = grad_out @ tile.detach().conj().transpose(0, 1)
                grad_tile = x[:, start:stop].conj().transpose(0, 1) @ grad_out
            if wanted:
                partial = torch.autograd.grad(tile, [leaves[i] for i in wanted], grad_tile, allow_unused=True)
                for index, leaf_grad in zip(wanted, partial):
                    if leaf_grad is not None:
                        grads[index] += leaf_grad
        return (None, None, None, grad_x, *grads)


def _differentiable_vjp(build_tile, params, x, shape, transpose, grad_out, needs):
    """The vector-Jacobian product through the reference (plain autograd over all tiles, memory
    ``O(rows · n)``), built as a graph: the backward of a ``create_graph=True`` backward, whose
    second-order terms the recomputing backward (detached tiles) would silently drop, and of a
    batched output gradient (``is_grads_batched``), which the tile loop's detached leaves refuse."""
    inputs = [t for t, need in zip((x, *params), needs) if need]
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        out = _tiled_product(build_tile, params, x, shape, transpose)
    grads = iter(torch.autograd.grad(out, inputs, grad_out, create_graph=create_graph, allow_unused=True))
    return [next(grads) if need else None for need in needs]


def _tiled_product(build_tile, params, x, shape, transpose):
    rows, columns = shape
    step = tile_rows(columns)
    starts = range(0, rows, step)
    if transpose:
        parts = [x[:, s : min(rows, s + step)] @ build_tile(params, s, min(rows, s + step)) for s in starts]
        return torch.stack(parts).sum(0) if len(parts) > 1 else parts[0]
    return torch.cat([x @ build_tile(params, s, min(rows, s + step)).transpose(0, 1) for s in starts], dim=-1)


def tiled_kernel_multiply_reference(
    build_tile: TileBuilder, params, x: torch.Tensor, shape: tuple[int, int], transpose: bool = False
) -> torch.Tensor:
    """Plain-autograd reference of :func:`tiled_kernel_multiply`."""
    return _tiled_product(build_tile, list(params), x, tuple(shape), transpose)


def tiled_kernel_multiply(
    build_tile: TileBuilder, params, x: torch.Tensor, shape: tuple[int, int], transpose: bool = False
) -> torch.Tensor:
    """``x @ Kᵀ`` (``x``: ``(B, n)`` -> ``(B, rows)``) or, with ``transpose``, ``x @ K``
    (``x``: ``(B, rows)`` -> ``(B, n)``) for the matrix ``K`` of ``shape = (rows, n)`` given tile
    by tile.

    ``build_tile(params, start, stop)`` must be differentiable in ``params``. Tiles hold
    :data:`TILE_ENTRIES` entries; the backward recomputes them (module docstring). A backward with
    ``create_graph=True`` and ``torch.func`` transforms run the reference (exact derivatives of
    every order)."""
    params = list(params)
    shape = (int(shape[0]), int(shape[1]))
    if x.shape[0] == 0 or choose(x, *params) == "reference" or torch.compiler.is_compiling() or functorch_transforms():
        return tiled_kernel_multiply_reference(build_tile, params, x, shape, transpose)
    return _TiledKernelProduct.apply(build_tile, shape, transpose, x, *params)
