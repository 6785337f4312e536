"""Triton GPU kernels for :mod:`structmat.ops.butterfly` (DESIGN.md §4; SPEC.md §1.4, §4.14).

Registered in :data:`structmat.ops.butterfly.FUSED_BACKENDS` under ``"cuda"`` at the op's first call
with CUDA tensors where an NVIDIA GPU of compute capability 8.0+ and Triton are present
(:func:`structmat.ops.backend.triton_available`; not at import, which would initialise CUDA); the op's autograd formula, ``torch.compile`` support, vmap rule and
reference fallbacks are the ones the CPU backend uses (:mod:`structmat.ops.butterfly`), so the
families run on the GPU unchanged.

Layout: one program takes a block of ``BLOCK_B`` rows of one stack and runs every factor of the
product over them, in the output's own rows (level-1/2 cache). The factors go two at a time
(radix 4): each butterfly's levels in pairs, strides ``h`` and ``2h`` in either order, a last level
alone when ``log N`` is odd (:func:`_pass_geometry`), so a product takes ``K ⌈log N / 2⌉`` passes
over the row block. A radix-4 pass works on quads ``(e0, e0 + h, e0 + 2h, e0 + 3h)``, a radix-2
pass on pairs ``lo = (p // h) 2h + p % h`` and ``lo + h`` (SPEC.md §1.4, as
:func:`structmat.ops.butterfly.butterfly_factor_multiply`), a tile of them at a time, with a block
barrier between passes and between a tile's loads and its in-place stores. Complex tensors are
read as interleaved real and imaginary parts (``torch.view_as_real``). Cost: ``3 N log N`` real
flops per butterfly and row (SPEC.md §4.14).

Backward by recomputation (training memory ``O(B N)``, never ``K log N`` copies of the batch):
a persistent grid of ``P`` programs per stack loops over the row blocks; for each block it
recomputes every pass's input into its own scratch slots (``K ⌈log N / 2⌉`` slots of one row
block), then walks the passes back -- a radix-4 pass recomputes its middle level in registers --,
turning the output adjoint into the input adjoint in the rows of ``grad_x`` and adding the
coefficient gradients ``Σ_rows ȳ x*`` (torch's convention: ``*`` conjugates complex values) into
the program's own partial twiddle gradient. The ``P`` partials are summed afterwards
(deterministic: no atomics). ``P`` is capped so that the scratch slots and partials stay under
:data:`BACKWARD_WORKSPACE_BYTES` or twice the input's size, whichever is larger.

Launches go to the input's device (:func:`_launching_on`); a launch takes at most
:data:`MAX_STACKS` stacks.

The kernels also run under Triton's interpreter (``TRITON_INTERPRET=1``, on CPU tensors), which
is how the test suite checks them on machines without a GPU.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from ..core.sizes import next_power_of_two
from .backend import plain
from .butterfly import MAX_STACKS, check_backend_operands

#: quads of elements (rows x quads) in one tile of a radix-4 pass of the forward and of the
#: backward (radix-2 tiles take twice as many pairs)
FORWARD_TILE_QUADS = 1024
BACKWARD_TILE_QUADS = 512
#: warps per program of the forward and of the backward
FORWARD_WARPS = 8
BACKWARD_WARPS = 8
#: elements of one program's row block (rows x N): the rows stay in the level-1/2 cache between steps
ROW_BLOCK_ELEMENTS = 4096
#: cap on the backward's workspace (recomputed pass inputs of the programs' row blocks plus their
#: partial twiddle gradients): this or twice the input's size, whichever is larger; fewer programs
#: run when a larger workspace would be needed
BACKWARD_WORKSPACE_BYTES = 256 * 2**20

#: fewest rows per block of the backward: every block adds its coefficient gradients into its
#: program's partial (reading and writing ``2 N`` values per step), so short blocks multiply that
#: traffic
BACKWARD_FEWEST_ROWS = 4



@triton.jit
def _step_geometry(q, K, LOG_N, N, INCREASING, TRANSPOSE: tl.constexpr):
    """Factor index ``idx = block · log N + level`` and stride of application step ``q``
    (:func:`structmat.ops.butterfly.butterfly_schedule`; reversed for the transposed product)."""
    if TRANSPOSE:
        idx = K - 1 - q
    else:
        idx = q
    blk = idx // LOG_N
    lvl = idx - blk * LOG_N
    inc = (INCREASING + blk) % 2
    stride = inc * (1 << lvl) + (1 - inc) * (N >> (lvl + 1))
    return idx, stride


@triton.jit
def _pair_offsets(p, stride):
    """Element offsets ``(lo, hi)`` of pairs ``p`` of a factor of stride ``stride``."""
    j = p // stride
    lo = j * (2 * stride) + (p - j * stride)
    return lo, lo + stride


@triton.jit
def _pair_tile(p, HALF, rmask, stride):
    """A tile of pairs ``p``: ``(p, pair mask, element mask, lo, hi)``."""
    pmask = p < HALF
    lo, hi = _pair_offsets(p, stride)
    return p, pmask, rmask & pmask, lo, hi


@triton.jit
def _coefficients(tw, tw_offset, mask, COMPLEX: tl.constexpr, TRANSPOSE: tl.constexpr):
    """The 2x2 blocks ``(a, b, c, d)`` of the pairs (real parts, then imaginary parts; zeros for a
    real dtype), transposed when ``TRANSPOSE``."""
    if COMPLEX:
        base = tw + tw_offset * 8
        ar = tl.load(base, mask=mask, other=0.0)
        ai = tl.load(base + 1, mask=mask, other=0.0)
        br = tl.load(base + 2, mask=mask, other=0.0)
        bi = tl.load(base + 3, mask=mask, other=0.0)
        cr = tl.load(base + 4, mask=mask, other=0.0)
        ci = tl.load(base + 5, mask=mask, other=0.0)
        dr = tl.load(base + 6, mask=mask, other=0.0)
        di = tl.load(base + 7, mask=mask, other=0.0)
    else:
        base = tw + tw_offset * 4
        ar = tl.load(base, mask=mask, other=0.0)
        br = tl.load(base + 1, mask=mask, other=0.0)
        cr = tl.load(base + 2, mask=mask, other=0.0)
        dr = tl.load(base + 3, mask=mask, other=0.0)
        ai = ar * 0
        bi = ai
        ci = ai
        di = ai
    if TRANSPOSE:
        return ar, ai, cr, ci, br, bi, dr, di
    return ar, ai, br, bi, cr, ci, dr, di


@triton.jit
def _load(ptr, offset, mask, COMPLEX: tl.constexpr):
    """Values at element ``offset`` (real and imaginary parts; zeros for a real dtype)."""
    if COMPLEX:
        re = tl.load(ptr + 2 * offset, mask=mask, other=0.0)
        im = tl.load(ptr + 2 * offset + 1, mask=mask, other=0.0)
    else:
        re = tl.load(ptr + offset, mask=mask, other=0.0)
        im = re * 0
    return re, im


@triton.jit
def _store(ptr, offset, re, im, mask, COMPLEX: tl.constexpr):
    if COMPLEX:
        tl.store(ptr + 2 * offset, re, mask=mask)
        tl.store(ptr + 2 * offset + 1, im, mask=mask)
    else:
        tl.store(ptr + offset, re, mask=mask)


@triton.jit
def _mul_add(ar, ai, xr, xi, br, bi, yr, yi, COMPLEX: tl.constexpr):
    """``a x + b y``."""
    if COMPLEX:
        return ar * xr - ai * xi + br * yr - bi * yi, ar * xi + ai * xr + br * yi + bi * yr
    return ar * xr + br * yr, xi


@triton.jit
def _conj_mul_add(ar, ai, xr, xi, br, bi, yr, yi, COMPLEX: tl.constexpr):
    """``a* x + b* y``."""
    if COMPLEX:
        return ar * xr + ai * xi + br * yr + bi * yi, ar * xi - ai * xr + br * yi - bi * yr
    return ar * xr + br * yr, xi


@triton.jit
def _conj_mul(ar, ai, xr, xi, COMPLEX: tl.constexpr):
    """``a* x``."""
    if COMPLEX:
        return ar * xr + ai * xi, ar * xi - ai * xr
    return ar * xr, xi


@triton.jit
def _copy_rows(src, src_row, dst, dst_row, rmask, N, BLOCK: tl.constexpr, C: tl.constexpr):
    """``dst`` rows = ``src`` rows (``C`` reals per element)."""
    e = tl.arange(0, BLOCK)[None, :]
    for e0 in range(0, N * C, BLOCK):
        mask = rmask & (e0 + e < N * C)
        tl.store(dst + dst_row + e0 + e, tl.load(src + src_row + e0 + e, mask=mask, other=0.0), mask=mask)


@triton.jit
def _pass_geometry(step, LOG_N, K, N, INCREASING, TRANSPOSE: tl.constexpr):
    """Pass ``step`` of the radix-4 schedule: the levels of each butterfly (in application order)
    two at a time, a last one alone when ``log N`` is odd. Returns the factor indices and strides
    of its first and second level and whether it has a second one (else ``idx2, h2`` are
    unused)."""
    per_block = (LOG_N + 1) // 2
    blk = step // per_block
    first = blk * LOG_N + 2 * (step - blk * per_block)
    idx1, h1 = _step_geometry(first, K, LOG_N, N, INCREASING, TRANSPOSE)
    idx2, h2 = _step_geometry(first + 1, K, LOG_N, N, INCREASING, TRANSPOSE)
    return idx1, h1, idx2, h2, (2 * (step - blk * per_block) + 1 < LOG_N).to(tl.int32)


@triton.jit
def _quad_offsets(t, h, small_first):
    """Quads ``t`` of a radix-4 pass over strides ``h`` and ``2h``: element offsets ``a0..a3`` and
    pair indices ``P0, P1`` (the same in both levels). Element ``e0 = (t // h) 4h + t % h`` with
    ``e0 + h, e0 + 2h, e0 + 3h``; ``a1, a2`` are ``e0 + h, e0 + 2h`` when the stride-``h`` level comes
    first, else swapped, so that the first level pairs ``(a0, a1)`` at ``P0`` and ``(a2, a3)`` at
    ``P1``, and the second ``(a0, a2)`` at ``P0`` and ``(a1, a3)`` at ``P1``."""
    j = t // h
    i = t - j * h
    e0 = j * (4 * h) + i
    p0 = j * (2 * h) + i
    return e0, e0 + h * (2 - small_first), e0 + h * (1 + small_first), e0 + 3 * h, p0, p0 + h


@triton.jit
def _quad_tile(t, QUARTER, rmask, h, small_first):
    """A tile of quads ``t``: ``(quad mask, element mask, a0, a1, a2, a3, P0, P1)``."""
    qmask = t < QUARTER
    a0, a1, a2, a3, p0, p1 = _quad_offsets(t, h, small_first)
    return qmask, rmask & qmask, a0, a1, a2, a3, p0, p1


@triton.jit
def _butterfly2(ar, ai, br, bi, cr, ci, dr, di, xr, xi, yr, yi, COMPLEX: tl.constexpr):
    """``(x, y) -> (a x + b y, c x + d y)``."""
    ur, ui = _mul_add(ar, ai, xr, xi, br, bi, yr, yi, COMPLEX)
    vr, vi = _mul_add(cr, ci, xr, xi, dr, di, yr, yi, COMPLEX)
    return ur, ui, vr, vi


@triton.jit
def _butterfly2_adjoint(ar, ai, br, bi, cr, ci, dr, di, ur, ui, vr, vi, COMPLEX: tl.constexpr):
    """``(ū, v̄) -> (a* ū + c* v̄, b* ū + d* v̄)``: the input adjoint of :func:`_butterfly2`."""
    xr, xi = _conj_mul_add(ar, ai, ur, ui, cr, ci, vr, vi, COMPLEX)
    yr, yi = _conj_mul_add(br, bi, ur, ui, dr, di, vr, vi, COMPLEX)
    return xr, xi, yr, yi


@triton.jit
def _accumulate(ptr, re, im, mask, COMPLEX: tl.constexpr):
    """``*ptr += Σ_rows (re, im)`` (only this program writes its partial)."""
    if COMPLEX:
        tl.store(ptr, tl.load(ptr, mask=mask, other=0.0) + tl.sum(re, axis=0)[None, :], mask=mask)
        tl.store(ptr + 1, tl.load(ptr + 1, mask=mask, other=0.0) + tl.sum(im, axis=0)[None, :], mask=mask)
    else:
        tl.store(ptr, tl.load(ptr, mask=mask, other=0.0) + tl.sum(re, axis=0)[None, :], mask=mask)


@triton.jit
def _accumulate_block(part, offset, xr, xi, yr, yi, ur, ui, vr, vi, mask, COMPLEX: tl.constexpr, TRANSPOSE: tl.constexpr):
    """Adds the gradient of the applied 2x2 blocks at pair offsets ``offset`` of the partial,
    summed over the rows: ``[[ū x*, ū y*], [v̄ x*, v̄ y*]]`` for inputs ``(x, y)`` and output adjoints
    ``(ū, v̄)`` (transposed back for the transposed product, whose blocks are the twiddles')."""
    C: tl.constexpr = 2 if COMPLEX else 1
    base = part + offset * (4 * C)
    g00r, g00i = _conj_mul(xr, xi, ur, ui, COMPLEX)
    g01r, g01i = _conj_mul(yr, yi, ur, ui, COMPLEX)
    g10r, g10i = _conj_mul(xr, xi, vr, vi, COMPLEX)
    g11r, g11i = _conj_mul(yr, yi, vr, vi, COMPLEX)
    if TRANSPOSE:
        g01r, g10r = g10r, g01r
        g01i, g10i = g10i, g01i
    _accumulate(base, g00r, g00i, mask, COMPLEX)
    _accumulate(base + C, g01r, g01i, mask, COMPLEX)
    _accumulate(base + 2 * C, g10r, g10i, mask, COMPLEX)
    _accumulate(base + 3 * C, g11r, g11i, mask, COMPLEX)


@triton.jit
def _block_backward(tw, tw_offset, part, part_offset, xr, xi, yr, yi, ur, ui, vr, vi, pmask,
                    COMPLEX: tl.constexpr, TRANSPOSE: tl.constexpr):
    """Backward of :func:`_butterfly2` with the blocks at ``tw_offset``, inputs ``(x, y)`` and output
    adjoints ``(ū, v̄)``: adds the blocks' gradients at ``part_offset`` of the partial
    (:func:`_accumulate_block`) and returns the input adjoints."""
    ar, ai, br, bi, cr, ci, dr, di = _coefficients(tw, tw_offset, pmask, COMPLEX, TRANSPOSE)
    _accumulate_block(part, part_offset, xr, xi, yr, yi, ur, ui, vr, vi, pmask, COMPLEX, TRANSPOSE)
    return _butterfly2_adjoint(ar, ai, br, bi, cr, ci, dr, di, ur, ui, vr, vi, COMPLEX)


@triton.jit
def _load4(ptr, a0, a1, a2, a3, mask, COMPLEX: tl.constexpr):
    """The four values of each quad (real and imaginary parts)."""
    v0r, v0i = _load(ptr, a0, mask, COMPLEX)
    v1r, v1i = _load(ptr, a1, mask, COMPLEX)
    v2r, v2i = _load(ptr, a2, mask, COMPLEX)
    v3r, v3i = _load(ptr, a3, mask, COMPLEX)
    return v0r, v0i, v1r, v1i, v2r, v2i, v3r, v3i


@triton.jit
def _store4(ptr, a0, a1, a2, a3, v0r, v0i, v1r, v1i, v2r, v2i, v3r, v3i, mask, COMPLEX: tl.constexpr):
    _store(ptr, a0, v0r, v0i, mask, COMPLEX)
    _store(ptr, a1, v1r, v1i, mask, COMPLEX)
    _store(ptr, a2, v2r, v2i, mask, COMPLEX)
    _store(ptr, a3, v3r, v3i, mask, COMPLEX)


@triton.jit
def _level_of_quads(tw, tw_level, p0, p1, v0r, v0i, v1r, v1i, v2r, v2i, v3r, v3i, qmask, COMPLEX: tl.constexpr, TRANSPOSE: tl.constexpr):
    """One level on quads: ``(v0, v1)`` by the block of pair ``p0``, ``(v2, v3)`` by that of ``p1``
    (the second level of a pass takes ``(v0, v2, v1, v3)``, :func:`_quad_offsets`)."""
    ar, ai, br, bi, cr, ci, dr, di = _coefficients(tw, tw_level + p0, qmask, COMPLEX, TRANSPOSE)
    v0r, v0i, v1r, v1i = _butterfly2(ar, ai, br, bi, cr, ci, dr, di, v0r, v0i, v1r, v1i, COMPLEX)
    ar, ai, br, bi, cr, ci, dr, di = _coefficients(tw, tw_level + p1, qmask, COMPLEX, TRANSPOSE)
    v2r, v2i, v3r, v3i = _butterfly2(ar, ai, br, bi, cr, ci, dr, di, v2r, v2i, v3r, v3i, COMPLEX)
    return v0r, v0i, v1r, v1i, v2r, v2i, v3r, v3i


@triton.jit
def _radix2_pass(tw, tw_base, src, src_row, dst, dst_row, stride, rmask,
                 N, BLOCK_P: tl.constexpr, COMPLEX: tl.constexpr, TRANSPOSE: tl.constexpr):
    """One factor: ``dst`` rows = factor · ``src`` rows (``src`` may be ``dst``: each tile is
    read before it is written)."""
    HALF = N // 2
    pp = tl.arange(0, BLOCK_P)[None, :]
    for p0 in range(0, HALF, BLOCK_P):
        p, pmask, mask, lo, hi = _pair_tile(p0 + pp, HALF, rmask, stride)
        ar, ai, br, bi, cr, ci, dr, di = _coefficients(tw, tw_base + p, pmask, COMPLEX, TRANSPOSE)
        xr, xi = _load(src + src_row, lo, mask, COMPLEX)
        yr, yi = _load(src + src_row, hi, mask, COMPLEX)
        tl.debug_barrier()  # every thread has read its tile before any thread writes it
        ur, ui, vr, vi = _butterfly2(ar, ai, br, bi, cr, ci, dr, di, xr, xi, yr, yi, COMPLEX)
        _store(dst + dst_row, lo, ur, ui, mask, COMPLEX)
        _store(dst + dst_row, hi, vr, vi, mask, COMPLEX)
    tl.debug_barrier()  # the pass is complete before the next one reads it


@triton.jit
def _radix4_pass(tw, tw1, tw2, src, src_row, dst, dst_row, h, small_first, rmask,
                 N, BLOCK_Q: tl.constexpr, COMPLEX: tl.constexpr, TRANSPOSE: tl.constexpr):
    """Two factors (strides ``h`` and ``2h``, coefficients from pair offsets ``tw1`` and ``tw2``)
    in one pass over the rows: ``dst`` = second · first · ``src`` (``src`` may be ``dst``)."""
    QUARTER = N // 4
    tt = tl.arange(0, BLOCK_Q)[None, :]
    for t0 in range(0, QUARTER, BLOCK_Q):
        qmask, mask, a0, a1, a2, a3, p0, p1 = _quad_tile(t0 + tt, QUARTER, rmask, h, small_first)
        w0r, w0i, w1r, w1i, w2r, w2i, w3r, w3i = _load4(src + src_row, a0, a1, a2, a3, mask, COMPLEX)
        tl.debug_barrier()
        w0r, w0i, w1r, w1i, w2r, w2i, w3r, w3i = _level_of_quads(tw, tw1, p0, p1, w0r, w0i, w1r, w1i, w2r, w2i, w3r, w3i, qmask, COMPLEX, TRANSPOSE)
        w0r, w0i, w2r, w2i, w1r, w1i, w3r, w3i = _level_of_quads(tw, tw2, p0, p1, w0r, w0i, w2r, w2i, w1r, w1i, w3r, w3i, qmask, COMPLEX, TRANSPOSE)
        _store4(dst + dst_row, a0, a1, a2, a3, w0r, w0i, w1r, w1i, w2r, w2i, w3r, w3i, mask, COMPLEX)
    tl.debug_barrier()


@triton.jit
def _apply_pass(tw, tw_row, src, src_row, dst, dst_row, step, rmask, N, LOG_N, K, INCREASING,
                BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, COMPLEX: tl.constexpr, TRANSPOSE: tl.constexpr):
    """Pass ``step`` (:func:`_pass_geometry`) of the product; ``tw_row``: the stack's first factor."""
    idx1, h1, idx2, h2, four = _pass_geometry(step, LOG_N, K, N, INCREASING, TRANSPOSE)
    if four:
        _radix4_pass(tw, tw_row + idx1 * (N // 2), tw_row + idx2 * (N // 2), src, src_row, dst, dst_row,
                     tl.minimum(h1, h2), (h1 < h2).to(tl.int32), rmask, N, BLOCK_Q, COMPLEX, TRANSPOSE)
    else:
        _radix2_pass(tw, tw_row + idx1 * (N // 2), src, src_row, dst, dst_row, h1, rmask, N, BLOCK_P, COMPLEX, TRANSPOSE)


@triton.jit
def _radix2_backward(tw, tw_base, part, idx, step_in, slot_row, grad_x, g_row, stride, rmask,
                     N, BLOCK_P: tl.constexpr, COMPLEX: tl.constexpr, TRANSPOSE: tl.constexpr):
    """The walk back through one factor: ``grad_x`` rows (the adjoint of its output) become the
    adjoint of its input ``step_in``; its coefficient gradients go to the partial."""
    HALF = N // 2
    pp = tl.arange(0, BLOCK_P)[None, :]
    for p0 in range(0, HALF, BLOCK_P):
        p, pmask, mask, lo, hi = _pair_tile(p0 + pp, HALF, rmask, stride)
        xr, xi = _load(step_in + slot_row, lo, mask, COMPLEX)
        yr, yi = _load(step_in + slot_row, hi, mask, COMPLEX)
        ur, ui = _load(grad_x + g_row, lo, mask, COMPLEX)
        vr, vi = _load(grad_x + g_row, hi, mask, COMPLEX)
        tl.debug_barrier()
        gr, gi, hr, hi_ = _block_backward(tw, tw_base + p, part, idx * HALF + p, xr, xi, yr, yi, ur, ui, vr, vi, pmask, COMPLEX, TRANSPOSE)
        _store(grad_x + g_row, lo, gr, gi, mask, COMPLEX)
        _store(grad_x + g_row, hi, hr, hi_, mask, COMPLEX)
    tl.debug_barrier()


@triton.jit
def _radix4_backward(tw, tw1, tw2, part, idx1, idx2, step_in, slot_row, grad_x, g_row, h, small_first, rmask,
                     N, BLOCK_Q: tl.constexpr, COMPLEX: tl.constexpr, TRANSPOSE: tl.constexpr):
    """The walk back through a radix-4 pass (:func:`_radix4_pass`): the middle level is recomputed
    in registers from the pass input ``step_in``."""
    HALF = N // 2
    QUARTER = N // 4
    tt = tl.arange(0, BLOCK_Q)[None, :]
    for t0 in range(0, QUARTER, BLOCK_Q):
        qmask, mask, a0, a1, a2, a3, p0, p1 = _quad_tile(t0 + tt, QUARTER, rmask, h, small_first)
        w0r, w0i, w1r, w1i, w2r, w2i, w3r, w3i = _load4(step_in + slot_row, a0, a1, a2, a3, mask, COMPLEX)
        u0r, u0i, u1r, u1i, u2r, u2i, u3r, u3i = _load4(grad_x + g_row, a0, a1, a2, a3, mask, COMPLEX)
        tl.debug_barrier()
        # the middle level, and the second level's adjoint and gradients
        m0r, m0i, m1r, m1i, m2r, m2i, m3r, m3i = _level_of_quads(tw, tw1, p0, p1, w0r, w0i, w1r, w1i, w2r, w2i, w3r, w3i, qmask, COMPLEX, TRANSPOSE)
        n0r, n0i, n2r, n2i = _block_backward(tw, tw2 + p0, part, idx2 * HALF + p0, m0r, m0i, m2r, m2i, u0r, u0i, u2r, u2i, qmask, COMPLEX, TRANSPOSE)
        n1r, n1i, n3r, n3i = _block_backward(tw, tw2 + p1, part, idx2 * HALF + p1, m1r, m1i, m3r, m3i, u1r, u1i, u3r, u3i, qmask, COMPLEX, TRANSPOSE)
        # the first level's adjoint and gradients
        g0r, g0i, g1r, g1i = _block_backward(tw, tw1 + p0, part, idx1 * HALF + p0, w0r, w0i, w1r, w1i, n0r, n0i, n1r, n1i, qmask, COMPLEX, TRANSPOSE)
        g2r, g2i, g3r, g3i = _block_backward(tw, tw1 + p1, part, idx1 * HALF + p1, w2r, w2i, w3r, w3i, n2r, n2i, n3r, n3i, qmask, COMPLEX, TRANSPOSE)
        _store4(grad_x + g_row, a0, a1, a2, a3, g0r, g0i, g1r, g1i, g2r, g2i, g3r, g3i, mask, COMPLEX)
    tl.debug_barrier()


@triton.jit
def _forward_kernel(tw, x, out, B, S, S_IN, N, LOG_N, K, INCREASING, PASSES,
                    TRANSPOSE: tl.constexpr, COMPLEX: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr):
    """Rows ``BLOCK_B · program_id(0) + [0, BLOCK_B)`` of stack ``program_id(1)``, in place in the
    output's rows."""
    C: tl.constexpr = 2 if COMPLEX else 1
    s = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)[:, None]
    rmask = rows < B
    rows = rows.to(tl.int64)
    x_row = (rows * S_IN + s % S_IN) * (N * C)
    out_row = (rows * S + s) * (N * C)
    _copy_rows(x, x_row, out, out_row, rmask, N, 2 * BLOCK_P, C)
    tl.debug_barrier()
    for step in range(PASSES):
        _apply_pass(tw, s * K * (N // 2), out, out_row, out, out_row, step, rmask, N, LOG_N, K, INCREASING, BLOCK_P, BLOCK_Q, COMPLEX, TRANSPOSE)


@triton.jit
def _backward_kernel(tw, x, grad, grad_x, partial, scratch, B, S, S_IN, ROW_BLOCKS, N, LOG_N, K, INCREASING, PASSES,
                     TRANSPOSE: tl.constexpr, COMPLEX: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr):
    """Program ``program_id(0)`` of ``P`` takes row blocks ``program_id(0) + k P`` of stack
    ``program_id(1)``; ``grad_x`` is per stack ``(B, S, N)``, ``partial`` ``(P, S, K, N/2, 2, 2)``
    (zeroed), ``scratch`` ``(P, S, PASSES, BLOCK_B, N)``: the input of every pass."""
    HALF = N // 2
    C: tl.constexpr = 2 if COMPLEX else 1
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    s = tl.program_id(1)
    slot = BLOCK_B * N * C
    slots = scratch + ((pid * S + s) * PASSES).to(tl.int64) * slot
    part = partial + ((pid * S + s) * K).to(tl.int64) * (HALF * 4 * C)
    tw_row = s * K * HALF
    local = tl.arange(0, BLOCK_B)[:, None]
    slot_row = local * (N * C)
    for block in range(pid, ROW_BLOCKS, programs):
        rows = block * BLOCK_B + local
        rmask = rows < B
        rows = rows.to(tl.int64)
        x_row = (rows * S_IN + s % S_IN) * (N * C)
        g_row = (rows * S + s) * (N * C)
        # the input of every pass (rows past B are masked out of every load: they add nothing)
        _copy_rows(x, x_row, slots, slot_row, rmask, N, 2 * BLOCK_P, C)
        _copy_rows(grad, g_row, grad_x, g_row, rmask, N, 2 * BLOCK_P, C)
        tl.debug_barrier()
        for step in range(PASSES - 1):
            _apply_pass(tw, tw_row, slots + step * slot, slot_row, slots + (step + 1) * slot, slot_row, step, rmask,
                        N, LOG_N, K, INCREASING, BLOCK_P, BLOCK_Q, COMPLEX, TRANSPOSE)
        # the walk back: grad_x rows hold the adjoint of the current pass's output
        for r in range(PASSES):
            step = PASSES - 1 - r
            idx1, h1, idx2, h2, four = _pass_geometry(step, LOG_N, K, N, INCREASING, TRANSPOSE)
            if four:
                _radix4_backward(tw, tw_row + idx1 * HALF, tw_row + idx2 * HALF, part, idx1, idx2, slots + step * slot, slot_row,
                                 grad_x, g_row, tl.minimum(h1, h2), (h1 < h2).to(tl.int32), rmask, N, BLOCK_Q, COMPLEX, TRANSPOSE)
            else:
                _radix2_backward(tw, tw_row + idx1 * HALF, part, idx1, slots + step * slot, slot_row, grad_x, g_row, h1, rmask,
                                 N, BLOCK_P, COMPLEX, TRANSPOSE)


def _launching_on(x: torch.Tensor):
    """Context making ``x``'s GPU the current device: Triton launches on the current device and
    its stream (a tensor on ``cuda:1`` with ``cuda:0`` current would otherwise be read from the
    wrong device)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _units(x: torch.Tensor) -> int:
    """Programs that fill the device twice over: twice its multiprocessors (1 under Triton's
    interpreter, which runs the programs one after the other)."""
    return 2 * torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 1


def _rows(n: int, complex_: bool, batch: int, stacks: int, units: int, fewest_rows: int) -> int:
    """Rows per program: up to :data:`ROW_BLOCK_ELEMENTS` elements and 16 rows (at least
    ``fewest_rows``), halved down to ``fewest_rows`` while there are fewer row blocks than
    ``units``."""
    block_b = max(fewest_rows, min(16, ROW_BLOCK_ELEMENTS // (n * (2 if complex_ else 1))))
    while block_b > fewest_rows and triton.cdiv(batch, block_b) * stacks < units:
        block_b //= 2
    return block_b


def _tiles(n: int, block_b: int, quads: int) -> tuple[int, int]:
    """``(BLOCK_P, BLOCK_Q)``: pairs per radix-2 tile and quads per radix-4 tile of ``block_b``
    rows, about ``2 quads`` and ``quads`` in all."""
    block_p = max(1, min(next_power_of_two(n // 2), 2 * quads // block_b))
    block_q = max(1, min(next_power_of_two(max(1, n // 4)), quads // block_b))
    return block_p, block_q


def _check(twiddle: torch.Tensor, x: torch.Tensor, grad: torch.Tensor | None = None) -> None:
    """One device for all, and :func:`structmat.ops.butterfly.check_backend_operands`."""
    for name, t in (("twiddle", twiddle), ("grad", grad)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name}: expected a tensor on {x.device} like x, got one on {t.device}")
    check_backend_operands(twiddle, x, grad, "Triton")
    if twiddle.shape[0] > MAX_STACKS:
        raise ValueError(f"twiddle: the Triton butterfly kernels take at most {MAX_STACKS} stacks (one grid dimension), got {twiddle.shape[0]}")


def _real(t: torch.Tensor) -> torch.Tensor:
    """The kernels' view of ``t``: real, contiguous (complex values as interleaved real and imaginary
    parts, lazy conjugation resolved)."""
    t = plain(t)
    return torch.view_as_real(t) if t.is_complex() else t


def _geometry(twiddle: torch.Tensor) -> tuple[int, int, int, int, int]:
    """``(stacks, N, log N, K log N, passes)`` of a canonical twiddle tensor: the product's factors
    and its passes, each butterfly's levels two at a time (:func:`_pass_geometry`)."""
    stacks, n_blocks, log_n, half = twiddle.shape[:4]
    return stacks, 2 * half, log_n, n_blocks * log_n, n_blocks * ((log_n + 1) // 2)


def butterfly_forward_triton(twiddle: torch.Tensor, x: torch.Tensor, increasing_stride: bool, transpose: bool) -> torch.Tensor:
    """Fused forward: ``x`` ``(B, S_in, N)`` -> ``(B, S, N)`` (see :mod:`structmat.ops.butterfly`)."""
    _check(twiddle, x)
    stacks, n, log_n, k, passes = _geometry(twiddle)
    batch = x.shape[0]
    out = torch.empty(batch, stacks, n, dtype=x.dtype, device=x.device)
    if batch == 0:
        return out
    block_b = _rows(n, x.is_complex(), batch, stacks, _units(x), 1)
    block_p, block_q = _tiles(n, block_b, FORWARD_TILE_QUADS)
    grid = (triton.cdiv(batch, block_b), stacks)
    with _launching_on(x):
        _forward_kernel[grid](_real(twiddle), _real(x), _real(out), batch, stacks, x.shape[1], n, log_n, k, int(bool(increasing_stride)),
                              passes, TRANSPOSE=bool(transpose), COMPLEX=x.is_complex(),
                              BLOCK_B=block_b, BLOCK_P=block_p, BLOCK_Q=block_q, num_warps=FORWARD_WARPS)
    return out


def _programs(units: int, row_blocks: int, stacks: int, per_program_bytes: int, input_bytes: int = 0) -> int:
    """Programs per stack of the backward's persistent grid: ``units`` in all, no more than there
    are row blocks, and within a workspace of :data:`BACKWARD_WORKSPACE_BYTES` or twice the input's
    ``input_bytes``, whichever is larger."""
    by_memory = max(BACKWARD_WORKSPACE_BYTES, 2 * input_bytes) // max(1, stacks * per_program_bytes)
    return max(1, min(row_blocks, -(-units // stacks), by_memory))


def butterfly_backward_triton(
    twiddle: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, increasing_stride: bool, transpose: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused backward: ``(grad_twiddle, grad_x)`` by recomputation (see the module docstring)."""
    _check(twiddle, x, grad)
    if not (grad.is_floating_point() or grad.is_complex()):
        raise TypeError(f"grad: expected a floating-point or complex tensor, got {grad.dtype}")
    grad = grad.to(x.dtype)
    stacks, n, log_n, k, passes = _geometry(twiddle)
    batch, s_in = x.shape[0], x.shape[1]
    grad_x = torch.empty(batch, stacks, n, dtype=x.dtype, device=x.device)
    if batch == 0:
        return torch.zeros_like(twiddle), grad_x[:, :s_in]
    units = _units(x)
    block_b = _rows(n, x.is_complex(), batch, stacks, units, BACKWARD_FEWEST_ROWS)
    block_p, block_q = _tiles(n, block_b, BACKWARD_TILE_QUADS)
    row_blocks = triton.cdiv(batch, block_b)
    per_program = (passes * block_b * n + k * 2 * n) * x.element_size()  # pass inputs + partial (N/2 pairs x 4 entries)
    programs = _programs(units, row_blocks, stacks, per_program, x.numel() * x.element_size())
    scratch = torch.empty(programs, stacks, passes, block_b, n, dtype=x.dtype, device=x.device)
    partial = torch.zeros(programs, *twiddle.shape, dtype=x.dtype, device=x.device)
    with _launching_on(x):
        _backward_kernel[(programs, stacks)](
            _real(twiddle), _real(x), _real(grad), _real(grad_x), _real(partial), _real(scratch), batch, stacks, s_in, row_blocks,
            n, log_n, k, int(bool(increasing_stride)), passes, TRANSPOSE=bool(transpose), COMPLEX=x.is_complex(),
            BLOCK_B=block_b, BLOCK_P=block_p, BLOCK_Q=block_q, num_warps=BACKWARD_WARPS)
    grad_twiddle = partial.sum(0) if programs > 1 else partial[0]
    if s_in == 1 and stacks > 1:
        grad_x = grad_x.sum(1, keepdim=True)
    return grad_twiddle, grad_x
