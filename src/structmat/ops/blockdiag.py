"""Block-diagonal multiply and the Monarch / block tensor-train product (SPEC.md §4.17, §4.18).

Canonical 4-index form of SPEC.md §4.17: rows of ``M`` are indexed by ``(p, j)`` (flat
``p·J + j``), columns by ``(q, i)`` (flat ``q·I + i``), and with rank ``r``

    ``M[(p, j), (q, i)] = Σ_{a<r} L[j, p, q, a] · R[q, j, a, i]``.

The factors are stored in exactly that index order: ``left`` of shape ``(J, P, Q, r)`` and
``right`` of shape ``(Q, J, r, I)``. ``r = 1`` is the Monarch class (square ``n = m²``:
``P = J = Q = I = m``, ``M = P L Pᵀ R``); ``r > 1`` the two-core block tensor-train (BTT).

The product is two batched matmuls with a reshape--transpose between them:

1. ``z[q, (j, a)] = Σ_i R[q, (j, a), i] · x[q, i]`` -- ``Q`` blocks of shape ``(J r) × I``;
2. ``y[p, j] = Σ_{(q, a)} L[j, p, (q, a)] · z[q, (j, a)]`` -- ``J`` blocks of shape ``P × (Q r)``.

Cost ``r (Q J I + J P Q)`` multiply-adds per row; the dense matrix is never formed. The backward
is written by hand: the input gradient is the transpose-mode product (transposition principle,
SPEC.md §2.3) and each weight gradient one batched matmul, so fwd+bwd costs three products and
training memory stays ``O(batch · (Q I + J Q r + P J))``.

Each op has a reference written with ``torch.einsum`` (it reads like the formulas above) and a
fast path written with ``torch.bmm`` on block-outermost layouts (see "Layout" below), chosen by
:func:`structmat.ops.backend.choose`; the two agree to rounding (tests/test_monarch.py).
"""

from __future__ import annotations

import torch

from .backend import choose, forward_mode_active, functorch_transforms, legacy_batched


# ---------------------------------------------------------------------------- block-diagonal
def block_diagonal_multiply(x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """``y = x · blockdiag(blocks)ᵀ``: ``blocks`` of shape ``(k, o, i)``, ``x`` of shape ``(B, k·i)``.

    Returns ``(B, k·o)`` with ``y[b, (g, c)] = Σ_t blocks[g, c, t] · x[b, (g, t)]``.
    Cost ``k·o·i`` multiply-adds per row (one batched matmul).
    """
    k, o, i = blocks.shape
    batch = x.shape[0]
    if choose(x, blocks) == "reference":
        return torch.einsum("bgt,gct->bgc", x.reshape(batch, k, i), blocks).reshape(batch, k * o)
    grouped = x.reshape(batch, k, i).transpose(0, 1)  # (k, B, i)
    out = torch.bmm(grouped, blocks.transpose(1, 2))  # (k, B, o)
    return out.transpose(0, 1).reshape(batch, k * o)


def block_diagonal_multiply_transpose(y: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """``x = y · blockdiag(blocks)`` (transpose mode): ``y`` of shape ``(B, k·o)`` -> ``(B, k·i)``."""
    k, o, i = blocks.shape
    batch = y.shape[0]
    if choose(y, blocks) == "reference":
        return torch.einsum("bgc,gct->bgt", y.reshape(batch, k, o), blocks).reshape(batch, k * i)
    grouped = y.reshape(batch, k, o).transpose(0, 1)  # (k, B, o)
    out = torch.bmm(grouped, blocks)  # (k, B, i)
    return out.transpose(0, 1).reshape(batch, k * i)


def block_diagonal_to_dense(blocks: torch.Tensor) -> torch.Tensor:
    """The dense ``(k·o, k·i)`` matrix ``blockdiag(blocks[0], ..., blocks[k-1])``."""
    return torch.block_diag(*blocks.unbind(0))


# ---------------------------------------------------------------------------- Monarch / BTT
# Layout of the fast path. Each direction is two batched matmuls and one reshape--transpose copy.
# The factor that reads the batch-major input computes the *transposed* products
# (``z_qᵀ = R_q x_qᵀ``, a feature-major ``(blocks, rows, B)`` result): BLAS reads ``x`` through a
# transposed view and the result, viewed with the other block index outermost, is already a
# unit-stride operand of the second matmul -- no copy between the factors. The one copy swaps
# two index groups inside each batch row (an ``m × m`` tile per row, in cache): on the output of
# the forward, on the input of the transpose. Backward passes reuse the opposite direction's
# kernel for the input gradient (SPEC.md §2.3) and its intermediates for the weight gradients.


def _bmm_batch_major(blocks_first: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``torch.bmm(blocks_first, weights)`` for ``blocks_first`` of shape ``(k, B, s)``, returned as a
    contiguous ``(B, k, t)`` tensor (the matmul writes into it directly). Where autograd records the
    product (a differentiated backward), a ``torch.func`` transform or a batched backward runs it or
    autocast picks the product's dtype, ``out=`` is not possible: a plain ``bmm``, transposed (a view)."""
    if (
        functorch_transforms()
        or (not torch.compiler.is_compiling() and legacy_batched(blocks_first, weights))  # (Dynamo cannot trace the check)
        or torch.is_autocast_enabled(blocks_first.device.type)
        or (torch.is_grad_enabled() and (blocks_first.requires_grad or weights.requires_grad))
    ):
        return torch.bmm(blocks_first, weights).transpose(0, 1)
    k, batch = blocks_first.shape[:2]
    out = torch.empty(batch, k, weights.shape[-1], dtype=weights.dtype, device=weights.device)
    torch.bmm(blocks_first, weights, out=out.transpose(0, 1))
    return out


def _swap_groups(rows: torch.Tensor, first: int, second: int, rank: int) -> torch.Tensor:
    """``(B, first·second·rank)`` rows -> ``(B, second, first, rank)``: entry ``[b, f, s, a]`` moves to
    ``[b, s, f, a]`` -- the reshape--transpose ``(q, j) -> (j, q)`` of SPEC.md §4.17."""
    return rows.reshape(rows.shape[0], first, second, rank).transpose(1, 2).contiguous()


def _regroup(feature_major: torch.Tensor, outer: int, inner: int, rank: int) -> torch.Tensor:
    """``(outer, inner·rank, B)`` -> ``(inner, outer·rank, B)`` (entry ``[o, (i, a), b]`` to
    ``[i, (o, a), b]``): a view for ``rank = 1``, otherwise a copy of unit-stride batch rows."""
    batch = feature_major.shape[-1]
    return feature_major.reshape(outer, inner, rank, batch).transpose(0, 1).reshape(inner, outer * rank, batch)


def _monarch_forward_fast(x, left, right, finish: bool = True):
    """``(x Mᵀ, intermediate zᵀ as (J, Q r, B))``; ``finish=False`` skips the second factor
    (returns ``None`` for the product: backward passes that only need the intermediate)."""
    J, P, Q, r = left.shape
    I = right.shape[-1]
    batch = x.shape[0]
    z = torch.bmm(right.reshape(Q, J * r, I), x.reshape(batch, Q, I).permute(1, 2, 0))  # (Q, J r, B)
    z = _regroup(z, Q, J, r)  # (J, Q r, B)
    if not finish:
        return None, z
    out = _bmm_batch_major(z.transpose(1, 2), left.reshape(J, P, Q * r).transpose(1, 2))  # (B, J, P)
    return _swap_groups(out, J, P, 1).reshape(batch, P * J), z


def _monarch_transpose_fast(y, left, right, finish: bool = True):
    """``(y M, y in block layout (B, J, P), intermediate wᵀ as (Q, J r, B))``; ``finish`` as above."""
    J, P, Q, r = left.shape
    I = right.shape[-1]
    batch = y.shape[0]
    yj = _swap_groups(y, P, J, 1).reshape(batch, J, P)
    w = torch.bmm(left.reshape(J, P, Q * r).transpose(1, 2), yj.permute(1, 2, 0))  # (J, Q r, B)
    w = _regroup(w, J, Q, r)  # (Q, J r, B)
    if not finish:
        return None, yj, w
    out = _bmm_batch_major(w.transpose(1, 2), right.reshape(Q, J * r, I))  # (B, Q, I)
    return out.reshape(batch, Q * I), yj, w


class _MonarchMultiply(torch.autograd.Function):
    """``x -> x Mᵀ`` on the fast layout, with a hand-written backward (four batched matmuls, three
    when ``x`` needs no gradient). The backward is made of differentiable torch ops: with
    ``create_graph=True`` it recomputes the intermediate (saved as non-differentiable) so that
    second derivatives are exact; ``torch.func.vmap`` runs the generated vmap rule."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, left, right):
        return _monarch_forward_fast(x, left, right)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, left, right = inputs
        ctx.save_for_backward(x, left, right, output[1])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad_y, _grad_z):
        x, left, right, z = ctx.saved_tensors
        if torch.is_grad_enabled():  # differentiated again: z as a function of (x, right)
            _, z = _monarch_forward_fast(x, left, right, finish=False)
        J, P, Q, r = left.shape
        I = right.shape[-1]
        batch = x.shape[0]
        # grad_x = grad_y · conj(M): the transpose-mode kernel with conjugated factors
        grad_x, gy, gw = _monarch_transpose_fast(grad_y, left.conj(), right.conj(), finish=ctx.needs_input_grad[0])
        grad_left = torch.bmm(gy.permute(1, 2, 0), z.transpose(1, 2).conj())  # (J, P, Q r)
        grad_right = torch.bmm(gw, x.reshape(batch, Q, I).transpose(0, 1).conj())  # (Q, J r, I)
        return grad_x, grad_left.reshape(left.shape), grad_right.reshape(right.shape)


class _MonarchMultiplyTranspose(torch.autograd.Function):
    """``y -> y M`` on the fast layout, with a hand-written backward (differentiable, as
    :class:`_MonarchMultiply`'s)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(y, left, right):
        x, _, w = _monarch_transpose_fast(y, left, right)
        return x, w

    @staticmethod
    def setup_context(ctx, inputs, output):
        y, left, right = inputs
        ctx.save_for_backward(y, left, right, output[1])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad_x, _grad_w):
        y, left, right, w = ctx.saved_tensors
        if torch.is_grad_enabled():  # differentiated again: w as a function of (y, left)
            _, _, w = _monarch_transpose_fast(y, left, right, finish=False)
        J, P, Q, r = left.shape
        I = right.shape[-1]
        batch = y.shape[0]
        grad_y, gz = _monarch_forward_fast(grad_x, left.conj(), right.conj(), finish=ctx.needs_input_grad[0])
        grad_right = torch.bmm(w.conj(), grad_x.reshape(batch, Q, I).transpose(0, 1))  # (Q, J r, I)
        yj = y.reshape(batch, P, J).permute(2, 1, 0)  # (J, P, B)
        grad_left = torch.bmm(yj.conj(), gz.transpose(1, 2))  # (J, P, Q r)
        return grad_y, grad_left.reshape(left.shape), grad_right.reshape(right.shape)


def monarch_multiply(x: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``y = x Mᵀ`` for the canonical form ``M[(p,j),(q,i)] = Σ_a L[j,p,q,a] R[q,j,a,i]``.

    Args:
        x: ``(B, Q·I)``.
        left: ``L`` of shape ``(J, P, Q, r)``.
        right: ``R`` of shape ``(Q, J, r, I)``.

    Returns ``(B, P·J)``. Cost ``r (QJI + JPQ)`` multiply-adds per row (SPEC.md §4.17); the
    backward costs two more products of the same size (``grad_x`` by the transpose kernel) plus
    the two weight gradients.
    """
    J, P, Q, r = left.shape
    I = right.shape[-1]
    batch = x.shape[0]
    if choose(x, left, right) == "reference" or forward_mode_active():  # (no forward-mode rule)
        z = torch.einsum("bqi,qjai->bqja", x.reshape(batch, Q, I), right)
        return torch.einsum("jpqa,bqja->bpj", left, z).reshape(batch, P * J)
    return _MonarchMultiply.apply(x, left, right)[0]


def monarch_multiply_transpose(y: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``x = y M`` (transpose mode) for the canonical form; ``y`` of shape ``(B, P·J)`` -> ``(B, Q·I)``.

    ``Mᵀ`` is applied as ``Lᵀ`` (``J`` blocks ``(Q r) × P``), the reshape--transpose, then ``Rᵀ``
    (``Q`` blocks ``I × (J r)``): the same cost as the forward (transposition principle, §2.3).
    """
    J, P, Q, r = left.shape
    I = right.shape[-1]
    batch = y.shape[0]
    if choose(y, left, right) == "reference" or forward_mode_active():  # (no forward-mode rule)
        w = torch.einsum("bpj,jpqa->bqja", y.reshape(batch, P, J), left)
        return torch.einsum("bqja,qjai->bqi", w, right).reshape(batch, Q * I)
    return _MonarchMultiplyTranspose.apply(y, left, right)[0]


def monarch_to_dense(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """The dense ``(P·J, Q·I)`` matrix of the canonical form (tests, projections, reports)."""
    J, P, Q, r = left.shape
    I = right.shape[-1]
    return torch.einsum("jpqa,qjai->pjqi", left, right).reshape(P * J, Q * I)


def monarch_from_dense(dense: torch.Tensor, shape: tuple[int, int, int, int], rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Algorithm 1 in its general form (SPEC.md §5.6): the closest canonical-form matrix.

    ``dense`` of shape ``(P·J, Q·I)`` is reshaped to ``Ã[p, j, q, i]``; every ``P × I`` slice
    ``Ã[:, j, q, :]`` gets its rank-``rank`` truncated SVD ``U_r Σ_r V_r*``, and
    ``L[j, :, q, :] = U_r Σ_r``, ``R[q, j, :, :] = V_r*``. The slices involve disjoint parameters,
    so this is the exact Frobenius-norm projection. Cost ``O(J Q · P I · min(P, I))``.

    Returns ``(left, right, discarded)`` with ``left`` of shape ``(J, P, Q, rank)``, ``right`` of
    shape ``(Q, J, rank, I)`` and ``discarded`` = the squared singular values beyond ``rank`` of
    every slice, shape ``(J, Q, max(0, min(P, I) - rank))`` (their sum is the squared error).
    """
    P, J, Q, I = shape
    slices = dense.reshape(P, J, Q, I).permute(1, 2, 0, 3)  # (J, Q, P, I)
    u, s, vh = torch.linalg.svd(slices, full_matrices=False)
    keep = min(rank, s.shape[-1])
    left = dense.new_zeros(J, Q, P, rank)
    right = dense.new_zeros(J, Q, rank, I)
    left[..., :keep] = u[..., :keep] * s[..., None, :keep].to(dense.dtype)
    right[..., :keep, :] = vh[..., :keep, :]
    discarded = s[..., keep:] ** 2
    return left.permute(0, 2, 1, 3).contiguous(), right.permute(1, 0, 2, 3).contiguous(), discarded
