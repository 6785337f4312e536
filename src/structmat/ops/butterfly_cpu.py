"""Fused Numba CPU kernels for :mod:`structmat.ops.butterfly` (SPEC.md §1.4, §4.14).

Two layouts. Every dtype from ``N = T`` on runs the *row layout* (:func:`_forward_rows`,
:func:`_backward_rows`; plan :func:`_rows_plan`): the rows of the batch stay as they are, features
along the 64-byte vectors (``T`` = 16 float32 / complex64, 8 float64 / complex128 features; a
complex block of ``T`` features is held *block-planar*, its ``T`` real parts then its ``T``
imaginary parts, converted from and to torch's interleaved layout per block of rows while it is
in cache, :func:`~structmat.ops.simd.rows_planar`). Blocks of 4-256 rows (about 32 KiB, :func:`_rows_block`;
the backward's about 128 KiB and at least 8 rows, :data:`ROWS_BACKWARD_BLOCK_BYTES`)
go through every step while they sit in the level-1/2 cache; the ``log2 T`` factors of strides
``< T`` of each butterfly run in registers (lane permutations), the others two at a time (radix
4) on whole vectors, with the coefficients of ``T`` consecutive pairs as four vectors from a
planar copy of the twiddles made once per call. Each kernel call (:mod:`structmat.ops.simd`)
keeps its coefficient vectors in registers across the block's rows. No transposition is needed,
and a single row runs as fast per row as a batch.

Sizes ``N < T`` (and the real backward below ``N = 8 T``) run the *transposed layout*: the batch is cut into chunks of ``C`` rows; each chunk of one stack is transposed
(64-byte register tiles, :func:`structmat.ops.simd.transpose_tile`) into a scratch buffer ``(N,
C)`` -- the batch is the contiguous (SIMD) dimension --, all factors are applied there while it
stays in cache, and the result is transposed back. Two consecutive factors (strides ``h`` and
``2h``, either order) are applied per pass (radix 4), so the chunk is swept ``⌈K log N / 2⌉``
times instead of ``K log N``, ping-ponging between two buffers (in place, LLVM's run-time
aliasing check fails and the loops run scalar; see also :mod:`structmat.ops.llvm_options`).
Chunks run in parallel (``numba.prange``).

Backward (both layouts) by recomputation, never storing ``K log N`` copies of the batch. Row layout,
per block: recompute every step's input into the worker's block buffers (a few blocks of rows each,
in the level-2 cache; rows a cache line longer than ``N``), then walk the steps back, adding the
coefficient gradients ``Σ_rows ȳ x*`` (SPEC.md §4.14 "Grad"; ``*`` conjugates complex inputs,
torch's convention) in registers over the block's rows -- radix-4 steps their 4 x 4 matrix gradient
instead, turned into coefficient gradients once at the end -- and turning the output adjoint into
the input adjoint over the step input just consumed (the first step's, with one input row per stack,
straight into the input gradient's rows). Transposed layout, per chunk: recompute the forward,
keeping the input of every radix-4 step (``act[0]``, the chunk's input, lives in the chunk's rows of
the input gradient when there is one stack), then walk the steps back. The per-pair gradient
reductions are paid once per chunk, so wide chunks matter (n = 1024, batch 256, two threads: 32-row
chunks 0.53 ms, 64-row 0.38 ms); when the memory cap below admits a wider chunk only with fewer
stored step inputs (at least half of them), the inputs are recomputed in segments from the top and
the lower segments again (:func:`_backward_chunks`). Extra training memory is the input gradient,
the workers' buffers and twiddle-gradient partials, together capped at
:data:`BACKWARD_EXTRA_X_INPUT` times the input. Scratch and partials come from a per-thread
workspace reused across calls (:func:`_workspace`).

Compiled signatures: one per dtype (float32/64, complex64/128) and kernel, cached on disk
(``cache=True``).
"""

from __future__ import annotations

import functools
import math
import threading

import numba
import numpy as np
import torch
from numba import njit, prange, types
from numba.extending import overload
from numba.np.numpy_support import as_dtype

from .backend import numpy_dtype
from .backend import plain as _plain
from .butterfly import FUSED_BACKENDS, butterfly_schedule, check_backend_operands
from .numba_rows import compile_variant
from .simd import (
    VECTOR_BYTES,
    array_at,
    row_lanes,
    rows_low_levels,
    rows_low_levels_backward,
    rows_planar,
    rows_radix2,
    rows_radix2_backward,
    rows_radix4,
    rows_radix4_backward,
    rows_radix4_project,
    transpose_tile,
)

_FASTMATH = {"reassoc", "contract", "nsz"}
#: target size in bytes of one chunk's two ping-pong buffers in the transposed-layout forward
#: (``N < T``; about the L2 size)
CHUNK_BYTES = 1 << 20
#: fewest rows per transposed-layout forward chunk: shorter inner loops lose more to the per-group
#: set-up (twiddle loads, the run-time aliasing check, the vector loop's prologue and remainder)
#: than large buffers to cache misses (measured when float32 still ran this layout:
#: single-threaded, batch 256, 32 -> 96 rows took n = 4096 from 1.24 to 0.97 ms and n = 16384
#: from 6.8 to 4.9 ms, even though the two buffers then spill L2 into L3)
MIN_CHUNK = 96
#: most bytes of one thread's backward scratch (the stored step inputs of a chunk): the L3 size --
#: wide chunks amortise the per-pair gradient reductions, which dominate below 64 rows
BACKWARD_CHUNK_BYTES = 32 << 20
#: most memory the backward allocates (input gradient + all threads' scratch + twiddle-gradient
#: partials), in multiples of the input's size: issue 3's "extra peak memory <= 3x the input" (the
#: scratch gets what the other two leave; chunks never drop below MIN_BACKWARD_CHUNK rows and keep
#: at least two step inputs, so tiny batches can exceed it)
BACKWARD_EXTRA_X_INPUT = 2.95
#: fewest rows per backward chunk
MIN_BACKWARD_CHUNK = 16


def _zero_like(value):
    """Zero of ``value``'s type, for the twiddle-gradient accumulators (``0 * value`` would type
    the literal as int64 and make float32 accumulators float64: half-width SIMD plus a conversion
    per product, ~15 % of the backward)."""
    return type(value)(0)


@overload(_zero_like)
def _zero_like_numba(value):
    scalar = as_dtype(value).type
    return lambda value: scalar(0)


@njit(cache=True, fastmath=_FASTMATH, inline="always")
def _entries(t, p, transposed):
    if transposed:
        return t[p, 0, 0], t[p, 1, 0], t[p, 0, 1], t[p, 1, 1]
    return t[p, 0, 0], t[p, 0, 1], t[p, 1, 0], t[p, 1, 1]


@njit(cache=True, fastmath=_FASTMATH, inline="always")
def _add_grad(gt, p, ga, gb, gc, gd, transposed):
    """Add the gradient of the effective block ``[[a, b], [c, d]]`` of pair ``p`` to ``gt``."""
    gt[p, 0, 0] += ga
    gt[p, 1, 1] += gd
    if transposed:
        gt[p, 1, 0] += gb
        gt[p, 0, 1] += gc
    else:
        gt[p, 0, 1] += gb
        gt[p, 1, 0] += gc


@njit(cache=True, fastmath=_FASTMATH)
def _radix2(src, dst, t, h, cols, transposed):
    """One factor of stride ``h``: ``dst[:, :cols] = factor · src[:, :cols]`` (distinct arrays:
    LLVM vectorises over ``k`` only when its run-time aliasing check passes)."""
    for p in range(src.shape[0] // 2):
        i = (p // h) * 2 * h + p % h
        j = i + h
        a, b, c, d = _entries(t, p, transposed)
        for k in range(cols):
            lo = src[i, k]
            hi = src[j, k]
            dst[i, k] = a * lo + b * hi
            dst[j, k] = c * lo + d * hi


@njit(cache=True, fastmath=_FASTMATH, inline="always")
def _quad(g, q, small_first):
    """Group ``g`` of a stride pair ``{q, 2q}``: its four indices ordered so that the first factor
    joins ``(j0, j1)``, ``(j2, j3)`` and the second ``(j0, j2)``, ``(j1, j3)``, and the pair ``p``
    (both factors use the blocks of pairs ``p`` and ``p + q``)."""
    i0 = (g // q) * 4 * q + g % q
    p = (g // q) * 2 * q + g % q
    if small_first:
        return i0, i0 + q, i0 + 2 * q, i0 + 3 * q, p
    return i0, i0 + 2 * q, i0 + q, i0 + 3 * q, p


@njit(cache=True, fastmath=_FASTMATH)
def _radix4(src, dst, t1, h1, t2, h2, cols, transposed):
    """Two consecutive factors (strides ``h1`` then ``h2``, ``{h1, h2} = {q, 2q}``) in one sweep,
    ``dst = F2 F1 src`` (distinct arrays, as for :func:`_radix2`)."""
    q = min(h1, h2)
    small_first = h1 == q
    for g in range(src.shape[0] // 4):
        j0, j1, j2, j3, p = _quad(g, q, small_first)
        a0, b0, c0, d0 = _entries(t1, p, transposed)
        a1, b1, c1, d1 = _entries(t1, p + q, transposed)
        a2, b2, c2, d2 = _entries(t2, p, transposed)
        a3, b3, c3, d3 = _entries(t2, p + q, transposed)
        for k in range(cols):
            v0, v1, v2, v3 = src[j0, k], src[j1, k], src[j2, k], src[j3, k]
            w0 = a0 * v0 + b0 * v1
            w1 = c0 * v0 + d0 * v1
            w2 = a1 * v2 + b1 * v3
            w3 = c1 * v2 + d1 * v3
            dst[j0, k] = a2 * w0 + b2 * w2
            dst[j2, k] = c2 * w0 + d2 * w2
            dst[j1, k] = a3 * w1 + b3 * w3
            dst[j3, k] = c3 * w1 + d3 * w3


@njit(cache=True, fastmath=_FASTMATH)
def _radix4_backward(act, g, t1, gt1, h1, t2, gt2, h2, cols, transposed):
    """Backward of a radix-4 step ``F2 F1``: ``act`` its input, ``g`` the output adjoint
    (overwritten by the input adjoint); the intermediate ``F1 act`` is recomputed in registers and
    both factors' twiddle gradients are added to ``gt1``, ``gt2``."""
    q = min(h1, h2)
    small_first = h1 == q
    for grp in range(act.shape[0] // 4):
        j0, j1, j2, j3, p = _quad(grp, q, small_first)
        a0, b0, c0, d0 = _entries(t1, p, transposed)
        a1, b1, c1, d1 = _entries(t1, p + q, transposed)
        a2, b2, c2, d2 = _entries(t2, p, transposed)
        a3, b3, c3, d3 = _entries(t2, p + q, transposed)
        ca0, cb0, cc0, cd0 = np.conj(a0), np.conj(b0), np.conj(c0), np.conj(d0)
        ca1, cb1, cc1, cd1 = np.conj(a1), np.conj(b1), np.conj(c1), np.conj(d1)
        ca2, cb2, cc2, cd2 = np.conj(a2), np.conj(b2), np.conj(c2), np.conj(d2)
        ca3, cb3, cc3, cd3 = np.conj(a3), np.conj(b3), np.conj(c3), np.conj(d3)
        zero = _zero_like(a0)
        e00 = e01 = e02 = e03 = e10 = e11 = e12 = e13 = zero
        f00 = f01 = f02 = f03 = f10 = f11 = f12 = f13 = zero
        for k in range(cols):
            v0, v1, v2, v3 = act[j0, k], act[j1, k], act[j2, k], act[j3, k]
            w0 = a0 * v0 + b0 * v1
            w1 = c0 * v0 + d0 * v1
            w2 = a1 * v2 + b1 * v3
            w3 = c1 * v2 + d1 * v3
            g0, g1, g2, g3 = g[j0, k], g[j1, k], g[j2, k], g[j3, k]
            cw0, cw1, cw2, cw3 = np.conj(w0), np.conj(w1), np.conj(w2), np.conj(w3)
            f00 += g0 * cw0  # second factor, pair p: (j0, j2)
            f01 += g0 * cw2
            f02 += g2 * cw0
            f03 += g2 * cw2
            f10 += g1 * cw1  # second factor, pair p + q: (j1, j3)
            f11 += g1 * cw3
            f12 += g3 * cw1
            f13 += g3 * cw3
            u0 = ca2 * g0 + cc2 * g2
            u2 = cb2 * g0 + cd2 * g2
            u1 = ca3 * g1 + cc3 * g3
            u3 = cb3 * g1 + cd3 * g3
            cv0, cv1, cv2, cv3 = np.conj(v0), np.conj(v1), np.conj(v2), np.conj(v3)
            e00 += u0 * cv0  # first factor, pair p: (j0, j1)
            e01 += u0 * cv1
            e02 += u1 * cv0
            e03 += u1 * cv1
            e10 += u2 * cv2  # first factor, pair p + q: (j2, j3)
            e11 += u2 * cv3
            e12 += u3 * cv2
            e13 += u3 * cv3
            g[j0, k] = ca0 * u0 + cc0 * u1
            g[j1, k] = cb0 * u0 + cd0 * u1
            g[j2, k] = ca1 * u2 + cc1 * u3
            g[j3, k] = cb1 * u2 + cd1 * u3
        _add_grad(gt1, p, e00, e01, e02, e03, transposed)
        _add_grad(gt1, p + q, e10, e11, e12, e13, transposed)
        _add_grad(gt2, p, f00, f01, f02, f03, transposed)
        _add_grad(gt2, p + q, f10, f11, f12, f13, transposed)


@njit(cache=True, inline="always")
def _tile(buf):
    """Side of the register tiles :func:`_load` and :func:`_store` transpose (64 bytes of elements;
    :func:`structmat.ops.simd.tile_size` inside compiled code)."""
    return VECTOR_BYTES // buf.itemsize


@njit(cache=True, inline="always")
def _tile_grid(buf, rows, row0, cols, stack):
    """``(n, width, t, k_full, i_full, row, base)`` shared by :func:`_load` and :func:`_store`: the buffer's shape, the tile side, the extent of whole tiles, and the flat
    row length and offset of batch row ``row0``, stack ``stack`` in ``rows`` ``(B, S, N)``."""
    n, width = buf.shape
    t = _tile(buf)
    row = rows.shape[1] * n
    return n, width, t, cols - cols % t, n - n % t, row, row0 * row + stack * n


@njit(cache=True, fastmath=_FASTMATH)
def _load(buf, x, row0, cols, stack):
    """``buf[i, k] = x[row0 + k, stack, i]`` for ``k < cols``: whole ``T x T`` tiles by register
    transposition (:func:`~structmat.ops.simd.transpose_tile`), the edges element by element."""
    n, width, t, k_full, i_full, row, base = _tile_grid(buf, x, row0, cols, stack)
    for k0 in range(0, k_full, t):
        for i0 in range(0, i_full, t):
            transpose_tile(x, base + k0 * row + i0, row, buf, i0 * width + k0, width)
        for i in range(i_full, n):
            for k in range(k0, k0 + t):
                buf[i, k] = x[row0 + k, stack, i]
    for k in range(k_full, cols):
        for i in range(n):
            buf[i, k] = x[row0 + k, stack, i]


@njit(cache=True, fastmath=_FASTMATH)
def _store(out, buf, row0, cols, stack, accumulate):
    """``out[row0 + k, stack, i] (+)= buf[i, k]`` for ``k < cols`` (whole tiles by register
    transposition, see :func:`_load`; accumulating, element by element in tiles)."""
    n, width, t, k_full, i_full, row, base = _tile_grid(buf, out, row0, cols, stack)
    for k0 in range(0, k_full, t):
        for i0 in range(0, i_full, t):
            if accumulate:
                for kk in range(t):
                    for ii in range(t):
                        out[row0 + k0 + kk, stack, i0 + ii] += buf[i0 + ii, k0 + kk]
            else:
                transpose_tile(buf, i0 * width + k0, width, out, base + k0 * row + i0, row)
        for i in range(i_full, n):
            for k in range(k0, k0 + t):
                if accumulate:
                    out[row0 + k, stack, i] += buf[i, k]
                else:
                    out[row0 + k, stack, i] = buf[i, k]
    for k in range(k_full, cols):
        for i in range(n):
            if accumulate:
                out[row0 + k, stack, i] += buf[i, k]
            else:
                out[row0 + k, stack, i] = buf[i, k]


@njit(cache=True, fastmath=_FASTMATH)
def _step_forward(src, dst, tw, blocks, levels, strides, first, size, cols, transposed):
    """Step ``(first, size)`` of the plan (one factor, or two fused): ``dst = step · src``."""
    t1 = tw[blocks[first], levels[first]]
    if size == 2:
        t2 = tw[blocks[first + 1], levels[first + 1]]
        _radix4(src, dst, t1, strides[first], t2, strides[first + 1], cols, transposed)
    else:
        _radix2(src, dst, t1, strides[first], cols, transposed)


def _forward_chunks(tw_at, x_at, out_at, scratch, blocks, levels, strides, firsts, sizes, transposed, chunk):
    """The transposed-layout forward (``N < T``; module docstring): worker ``w``
    runs chunks ``w, w + W, ...`` in its ping-pong buffers ``scratch[w]`` ``(2, N, chunk)``
    (distinct source and target). Tensors arrive as ``(address, shape)`` (:func:`array_at`)."""
    tw, x, out = array_at(tw_at, scratch), array_at(x_at, scratch), array_at(out_at, scratch)
    batch, stacks_in, n = x.shape
    stacks = tw.shape[0]
    n_chunks = (batch + chunk - 1) // chunk
    workers = scratch.shape[0]
    for worker in prange(workers):
        bufs = scratch[worker]
        for c in range(worker, n_chunks, workers):
            row0 = c * chunk
            cols = min(chunk, batch - row0)
            for s in range(stacks):
                _load(bufs[0], x, row0, cols, s if stacks_in > 1 else 0)
                for step in range(firsts.shape[0]):
                    _step_forward(bufs[step % 2], bufs[1 - step % 2], tw[s], blocks, levels, strides, firsts[step], sizes[step], cols, transposed)
                _store(out, bufs[firsts.shape[0] % 2], row0, cols, s, False)


def _is_complex(array):
    """Whether ``array`` holds complex numbers (a compile-time constant inside compiled code)."""
    return np.iscomplexobj(array)


@overload(_is_complex)
def _is_complex_numba(array):
    value = isinstance(array.dtype, types.Complex)
    return lambda array: value


def _plane_copy(blocks, plane, to_planar):
    """``plane[:] = blocks`` (``to_planar``), else ``blocks += plane``; complex planes are
    block-planar (:class:`structmat.ops.simd._Lanes`)."""
    if to_planar:
        plane[:] = blocks
    else:
        blocks += plane


@overload(_plane_copy)
def _plane_copy_numba(blocks, plane, to_planar):
    if not isinstance(plane.dtype, types.Complex):
        return _plane_copy
    real = as_dtype(plane.dtype.underlying_float)
    t = row_lanes(as_dtype(plane.dtype))

    def block_planar(blocks, plane, to_planar):
        units = plane.view(real)
        # T pairs: T real parts, then T imaginary parts (planes exist for strides >= T only, so
        # N / 2 is a multiple of T)
        for c in range(plane.shape[0] // t):
            for i in range(t):
                p, u = c * t + i, 2 * c * t + i
                if to_planar:
                    units[u], units[u + t] = blocks[p].real, blocks[p].imag
                else:
                    blocks[p] += complex(units[u], units[u + t])

    return block_planar


@njit(cache=True)
def _planar_copy(tw_flat, planar, offsets, slots, transposed, to_planar):
    """``to_planar``: ``planar[s, slots[f]]`` = the planes ``a, b, c, d`` of factor ``f``'s blocks in
    stack ``s`` (``transposed`` swaps ``b, c``) for every factor with a slot (strides ``>= T``);
    else the inverse, added: ``tw_flat[s]`` += the planes (the twiddle gradient). Complex planes
    are block-planar (:func:`_plane_copy`)."""
    half = planar.shape[3]
    for s in range(planar.shape[0]):
        for f in range(slots.shape[0]):
            k = slots[f]
            if k < 0:
                continue
            for e in range(4):
                # plane e holds entry e of every block (b and c swapped when transposed): a
                # stride-4 walk through the factor's blocks, which LLVM vectorises
                blocks = tw_flat[s, offsets[f] + ((3 - e) if transposed and 0 < e < 3 else e) : offsets[f] + 4 * half : 4]
                _plane_copy(blocks, planar[s, k, e], to_planar)


@njit(cache=True, fastmath=_FASTMATH)
def _rows_step(src, src_off, src_str, dst, dst_off, dst_str, rows, half, kind, h1, h2, positions, tw_s, planar_s, transposed):
    """One step of a row-layout plan (:func:`_rows_plan`) on ``rows`` rows of ``2 half`` features:
    ``dst = step · src`` (flat arrays, row offsets and strides in elements)."""
    for q in range(positions.shape[0]):
        f0, c0, c1, c2, c3 = positions[q, 0], positions[q, 1], positions[q, 2], positions[q, 3], positions[q, 4]
        if kind == 0:
            rows_low_levels(src, src_off + f0, src_str, dst, dst_off + f0, dst_str, rows, tw_s, c0, c1, h1 == 1, transposed)
        elif kind == 1:
            rows_radix4(src, src_off + f0, src_str, dst, dst_off + f0, dst_str, rows, h1, h2, planar_s, half, c0, c1, c2, c3)
        else:
            rows_radix2(src, src_off + f0, src_str, dst, dst_off + f0, dst_str, rows, h1, planar_s, half, c0)


@njit(cache=True, fastmath=_FASTMATH)
def _rows_step_backward(act, act_off, act_str, gsrc, gsrc_off, gsrc_str, gdst, gdst_off, gdst_str, rows, half, kind, h1, h2, positions, tw_s, planar_s, grad_s, grad_planar_s, transposed):
    """Backward of :func:`_rows_step`: ``act`` the step's input, ``gsrc`` its output adjoint,
    ``gdst`` receives the input adjoint (it may be ``act``'s or ``gsrc``'s rows, same offset and
    stride); gradients added to ``grad_s`` (the runs of small strides, see :func:`_rows_plan`) and
    ``grad_planar_s`` (planar: the other factors; radix-4 steps add their matrix gradients there,
    which :func:`~structmat.ops.simd.rows_radix4_project` turns into coefficient gradients)."""
    for q in range(positions.shape[0]):
        f0, c0, c1, c2, c3 = positions[q, 0], positions[q, 1], positions[q, 2], positions[q, 3], positions[q, 4]
        a, g, d = act_off + f0, gsrc_off + f0, gdst_off + f0
        if kind == 0:
            rows_low_levels_backward(act, a, act_str, gsrc, g, gsrc_str, gdst, d, gdst_str, rows, tw_s, c0, c1, grad_s, c2, c3, h1 == 1, transposed)
        elif kind == 1:
            rows_radix4_backward(act, a, act_str, gsrc, g, gsrc_str, gdst, d, gdst_str, rows, h1, h2, planar_s, half, c0, c1, c2, c3, grad_planar_s)
        else:
            rows_radix2_backward(act, a, act_str, gsrc, g, gsrc_str, gdst, d, gdst_str, rows, h1, planar_s, half, c0, grad_planar_s)


@njit(cache=True, inline="always")
def _worker_blocks(worker, workers, batch, block_rows):
    """Worker ``worker``'s contiguous range of row blocks (interleaved blocks ran 1.5x slower on
    two threads)."""
    n_blocks = (batch + block_rows - 1) // block_rows
    return range(worker * n_blocks // workers, (worker + 1) * n_blocks // workers)


@njit(cache=True, inline="always")
def _input_rows(row0, stack, stacks_in, n):
    """``(offset, stride)`` in elements of stack ``stack``'s input rows from batch row ``row0`` on
    (``x`` is ``(B, S_in, N)``; with ``S_in = 1`` every stack reads stack 0)."""
    return (row0 * stacks_in + (stack if stacks_in > 1 else 0)) * n, stacks_in * n


def _forward_rows(tw_at, x_at, out_at, planar, kinds, h1s, h2s, starts, positions, offsets, slots, transposed, block_rows, workers):
    """The row-layout forward (:func:`_rows_plan`): blocks of ``block_rows`` batch rows (each worker
    a contiguous range, :func:`_worker_blocks`), each stack's steps applied in place in ``out`` (the
    first step reads ``x``; see :func:`_rows_step`). Complex rows (:func:`_is_complex`) are made
    block-planar in ``out`` first and interleaved again at the end (:func:`rows_planar`, in
    cache). ``planar`` ``(S, slots, 4, N/2)`` receives the planar coefficients first
    (:func:`_planar_copy`). Tensors arrive as ``(address, shape)`` (:func:`array_at`)."""
    tw, x, out = array_at(tw_at, planar), array_at(x_at, planar), array_at(out_at, planar)
    complex_ = _is_complex(planar)
    batch, stacks_in, n = x.shape
    stacks = tw.shape[0]
    tw_flat = tw.reshape(stacks, tw.size // stacks)
    _planar_copy(tw_flat, planar, offsets, slots, transposed, True)
    x_flat, out_flat = x.reshape(x.size), out.reshape(out.size)
    for worker in prange(workers):
        for block in _worker_blocks(worker, workers, batch, block_rows):
            row0 = block * block_rows
            rows = min(block_rows, batch - row0)
            for s in range(stacks):
                dst_off, dst_str = (row0 * stacks + s) * n, stacks * n
                src_off, src_str = _input_rows(row0, s, stacks_in, n)
                src = x_flat
                if complex_:
                    rows_planar(x_flat, src_off, src_str, out_flat, dst_off, dst_str, rows, n, True)
                    src, src_off, src_str = out_flat, dst_off, dst_str
                planar_s = planar[s].reshape(planar[s].size)
                for k in range(kinds.shape[0]):
                    step = (rows, n // 2, kinds[k], h1s[k], h2s[k], positions[starts[k] : starts[k + 1]], tw_flat[s], planar_s, transposed)
                    if k == 0:
                        _rows_step(src, src_off, src_str, out_flat, dst_off, dst_str, *step)
                    else:
                        _rows_step(out_flat, dst_off, dst_str, out_flat, dst_off, dst_str, *step)
                if complex_:
                    rows_planar(out_flat, dst_off, dst_str, out_flat, dst_off, dst_str, rows, n, False)


def _backward_rows(tw_at, x_at, grad_at, grad_tw_at, grad_x_at, planar, parts, planar_parts, scratch, kinds, h1s, h2s, starts, positions, offsets, slots, low_slots, transposed, block_rows):
    """The row-layout backward: per block of ``block_rows`` rows and stack, the inputs of steps 1,
    2, ... are recomputed into the worker's ``scratch[w, :steps - 1]`` (a block of rows each, flat,
    rows ``pitch = N + one cache line`` apart, so that the same feature of consecutive rows falls
    into different level-1 cache sets even when ``N`` is a multiple of 4 KiB), then the steps are
    walked back (:func:`_rows_step_backward`): step ``k``'s input adjoint overwrites its input in
    ``scratch[w, k - 1]``, where step ``k - 1`` reads it, and step 0's goes straight into
    ``grad_x``'s rows (with several stacks sharing one input row, or complex rows, it stays in place
    -- in ``scratch[w, 0]`` when the step reads the caller's gradient -- and is added or converted
    there). ``grad`` of one row stands for every row (a broadcast gradient, e.g. ``sum()``'s).
    Complex rows (:func:`_is_complex`) run block-planar (:func:`rows_planar`): the block's input in
    ``scratch[w, x_buffer]``, the output adjoint converted into the adjoint's rows (stacks sharing
    one input row: into ``scratch[w, steps - 1]``) and interleaved again at the end.

    Worker ``w`` adds its twiddle gradients to ``parts[w]`` (the runs of small strides, ``(S, low
    slots · N/2 · 4)``) and to planar partials (the other factors, laid out as ``planar``):
    worker 0 in ``grad_tw``'s own memory (its first ``slots · N/2 · 4`` elements per stack),
    worker ``w > 0`` in ``planar_parts[w - 1]``. Radix-4 steps add their 4 x 4 matrix gradients
    there instead of the coefficients' (:func:`rows_radix4_backward`); once the workers' partials
    are summed, :func:`rows_radix4_project` turns them into coefficient gradients. At the end the
    planar sums move to ``planar`` (the coefficients are no longer needed) and everything is added
    into ``grad_tw`` in the twiddle's layout: beyond ``grad_tw``, every worker takes the runs'
    gradients (``log2 T / log2 N`` of a twiddle) and every further worker the planar partials (the
    rest of one). Tensors arrive as ``(address, shape)``."""
    tw, x, grad = array_at(tw_at, planar), array_at(x_at, planar), array_at(grad_at, planar)
    grad_tw, grad_x = array_at(grad_tw_at, planar), array_at(grad_x_at, planar)
    complex_ = _is_complex(planar)
    batch, stacks_in, n = x.shape
    stacks = tw.shape[0]
    steps = kinds.shape[0]
    grad_rows = stacks * n if grad.shape[0] > 1 or batch == 1 else 0  # one row: broadcast over the batch
    workers = parts.shape[0]
    tw_flat = tw.reshape(stacks, tw.size // stacks)
    _planar_copy(tw_flat, planar, offsets, slots, transposed, True)
    x_flat, grad_flat, grad_x_flat = x.reshape(x.size), grad.reshape(grad.size), grad_x.reshape(grad_x.size)
    shared = stacks_in == 1 and stacks > 1
    pitch = scratch.shape[2] // block_rows  # the block buffers' row stride: N and one cache line
    top_buffer = steps - 1  # complex, stacks sharing one input row: the output adjoint, block-planar
    x_buffer = steps - 1 + (1 if shared and complex_ else 0)  # complex: the block's input, block-planar
    direct = not (complex_ or shared)  # the first step's adjoint goes straight into grad_x's rows
    grad_tw_flat = grad_tw.reshape(stacks, grad_tw.size // stacks)
    planar_size = planar[0].size  # per stack
    for worker in prange(workers):
        parts[worker] = 0
        if worker > 0:
            planar_parts[worker - 1] = 0
        else:
            grad_tw_flat[:, :planar_size] = 0
        for block in _worker_blocks(worker, workers, batch, block_rows):
            row0 = block * block_rows
            rows = min(block_rows, batch - row0)
            for s in range(stacks):
                planar_s = planar[s].reshape(planar_size)
                grad_s = parts[worker, s]
                if worker > 0:
                    grad_planar_s = planar_parts[worker - 1, s].reshape(planar_size)
                else:
                    grad_planar_s = grad_tw_flat[s, :planar_size]
                x_off, x_str = _input_rows(row0, s, stacks_in, n)
                x0, x0_off, x0_str = x_flat, x_off, x_str
                if complex_:
                    x0, x0_off, x0_str = scratch[worker, x_buffer], 0, pitch
                    if s == 0 or not shared:  # stacks sharing one input row convert it once
                        rows_planar(x_flat, x_off, x_str, x0, 0, pitch, rows, n, True)
                for k in range(steps - 1):  # act[k + 1] = step k (act[k]) in scratch[k], act[0] = x
                    step = (rows, n // 2, kinds[k], h1s[k], h2s[k], positions[starts[k] : starts[k + 1]], tw_flat[s], planar_s, transposed)
                    if k == 0:
                        _rows_step(x0, x0_off, x0_str, scratch[worker, k], 0, pitch, *step)
                    else:
                        _rows_step(scratch[worker, k - 1], 0, pitch, scratch[worker, k], 0, pitch, *step)
                top, top_off, top_str = grad_flat, row0 * grad_rows + s * n, grad_rows
                if complex_:
                    if shared:
                        planar_top, planar_off, planar_str = scratch[worker, top_buffer], 0, pitch
                    else:
                        planar_top, planar_off, planar_str = grad_x_flat, x_off, x_str
                    rows_planar(grad_flat, top_off, top_str, planar_top, planar_off, planar_str, rows, n, True)
                    top, top_off, top_str = planar_top, planar_off, planar_str
                # step k's input adjoint overwrites its input act[k] (each row's vectors are read
                # before they are written), where step k - 1 reads it; step 0's goes to grad_x's
                # rows, else it stays in place (in scratch[0] if it would be the caller's grad)
                for k in range(steps - 1, -1, -1):
                    if k == steps - 1:
                        gsrc, gsrc_off, gsrc_str = top, top_off, top_str
                    else:
                        gsrc, gsrc_off, gsrc_str = scratch[worker, k], 0, pitch
                    if k > 0:
                        act, act_off, act_str = scratch[worker, k - 1], 0, pitch
                        gdst, gdst_off, gdst_str = act, act_off, act_str
                    else:
                        act, act_off, act_str = x0, x0_off, x0_str
                        if direct:
                            gdst, gdst_off, gdst_str = grad_x_flat, x_off, x_str
                        elif steps > 1 or complex_:  # gsrc is a buffer of ours
                            gdst, gdst_off, gdst_str = gsrc, gsrc_off, gsrc_str
                        else:  # never write into the caller's grad
                            gdst, gdst_off, gdst_str = scratch[worker, 0], 0, pitch
                    _rows_step_backward(
                        act, act_off, act_str, gsrc, gsrc_off, gsrc_str, gdst, gdst_off, gdst_str, rows, n // 2, kinds[k], h1s[k], h2s[k],
                        positions[starts[k] : starts[k + 1]], tw_flat[s], planar_s, grad_s, grad_planar_s, transposed,
                    )
                if direct:
                    continue
                if steps == 1 and complex_:  # the adjoint where step 0 left it
                    g, g_off, g_str = top, top_off, top_str
                else:
                    g, g_off, g_str = scratch[worker, 0], 0, pitch
                if complex_:
                    if shared:
                        rows_planar(g, g_off, g_str, g, g_off, g_str, rows, n, False)
                    else:
                        rows_planar(g, g_off, g_str, grad_x_flat, x_off, x_str, rows, n, False)
                if shared:
                    for r in range(rows):
                        target = grad_x_flat[(row0 + r) * n : (row0 + r + 1) * n]
                        source = g[g_off + r * g_str : g_off + r * g_str + n]
                        if s == 0:
                            target[:] = source
                        else:
                            target += source
    for s in range(stacks):
        sums = grad_tw_flat[s, :planar_size]
        for worker in range(1, workers):
            sums += planar_parts[worker - 1, s].reshape(planar_size)
        planar_s = planar[s].reshape(planar_size)
        for k in range(steps):  # radix-4 steps summed their matrix gradients: to the coefficients'
            if kinds[k] == 1:
                for q in range(starts[k], starts[k + 1]):
                    rows_radix4_project(planar_s, sums, n // 2, positions[q, 1], positions[q, 2], positions[q, 3], positions[q, 4])
        planar_s[:] = sums
    grad_tw_flat[:] = 0
    _planar_copy(grad_tw_flat, planar, offsets, slots, transposed, False)
    block_size = n // 2 * 4
    for worker in range(workers):
        for s in range(stacks):
            for f in range(low_slots.shape[0]):
                if low_slots[f] >= 0:
                    start = low_slots[f] * block_size
                    grad_tw_flat[s, offsets[f] : offsets[f] + block_size] += parts[worker, s, start : start + block_size]


@njit(cache=True, fastmath=_FASTMATH)
def _radix2_backward(act, g, t, gt, h, cols, transposed):
    """Backward of one factor: ``act`` its input, ``g`` the output adjoint (overwritten by the
    input adjoint), twiddle gradients added to ``gt``."""
    for p in range(act.shape[0] // 2):
        i = (p // h) * 2 * h + p % h
        j = i + h
        a, b, c, d = _entries(t, p, transposed)
        ca, cb, cc, cd = np.conj(a), np.conj(b), np.conj(c), np.conj(d)
        ga = gb = gc = gd = _zero_like(a)
        for k in range(cols):
            xl = act[i, k]
            xh = act[j, k]
            gl = g[i, k]
            gh = g[j, k]
            cxl = np.conj(xl)
            cxh = np.conj(xh)
            ga += gl * cxl
            gb += gl * cxh
            gc += gh * cxl
            gd += gh * cxh
            g[i, k] = ca * gl + cc * gh
            g[j, k] = cb * gl + cd * gh
        _add_grad(gt, p, ga, gb, gc, gd, transposed)


@njit(cache=True, fastmath=_FASTMATH)
def _step_backward(act, g, tw, gtw, blocks, levels, strides, first, size, cols, transposed):
    b1, l1 = blocks[first], levels[first]
    if size == 2:
        b2, l2 = blocks[first + 1], levels[first + 1]
        _radix4_backward(
            act, g, tw[b1, l1], gtw[b1, l1], strides[first], tw[b2, l2], gtw[b2, l2], strides[first + 1], cols, transposed
        )
    else:
        _radix2_backward(act, g, tw[b1, l1], gtw[b1, l1], strides[first], cols, transposed)


def _backward_chunks(tw_at, x_at, grad_at, grad_tw_at, grad_tw_parts, grad_x_at, scratch, blocks, levels, strides, firsts, sizes, transposed, chunk, kept, x_in_grad):
    """Worker ``w`` runs chunks ``w, w + W, ...`` in ``scratch[w]`` ``(buffers, N, chunk)``: buffer 0
    the adjoint, buffers ``1 .. kept`` step inputs, and (unless ``x_in_grad``) one more for the
    chunk's input ``act[0]``; with ``x_in_grad`` (a single stack) ``act[0]`` lives in the chunk's
    rows of ``grad_x``, which the final input adjoint overwrites once ``act[0]`` is dead.

    The steps' inputs ``act[1 .. steps - 1]`` are recomputed from ``act[0]`` in segments from the
    top, ``kept`` at a time (``act[t]`` in buffer ``1 + (t - 1) % kept``): with ``kept = steps -
    1`` all at once (one recomputation), with fewer buffers the lower segments are recomputed again
    -- a few more flops for twice the rows per chunk, whose per-pair twiddle-gradient reductions
    then cost half as much (module docstring). Twiddle gradients: worker 0 sums into ``grad_tw``,
    worker ``w > 0`` into ``grad_tw_parts[w - 1]`` (each zeroed first), added to ``grad_tw`` at the
    end. Tensors arrive as ``(address, shape)`` (:func:`array_at`)."""
    tw, x, grad = array_at(tw_at, scratch), array_at(x_at, scratch), array_at(grad_at, scratch)
    grad_tw, grad_x = array_at(grad_tw_at, scratch), array_at(grad_x_at, scratch)
    batch, stacks_in, n = x.shape
    stacks = tw.shape[0]
    steps = firsts.shape[0]
    n_chunks = (batch + chunk - 1) // chunk
    workers = scratch.shape[0]
    flat_grad_x = grad_x.reshape(grad_x.size)
    for worker in prange(workers):
        g = scratch[worker, 0]
        gt = grad_tw if worker == 0 else grad_tw_parts[worker - 1]
        gt[:] = 0
        for c in range(worker, n_chunks, workers):
            row0 = c * chunk
            cols = min(chunk, batch - row0)
            if x_in_grad:
                act0 = flat_grad_x[row0 * n : (row0 + cols) * n].reshape(n, cols)
            else:
                act0 = scratch[worker, kept + 1]
            for s in range(stacks):
                _load(act0, x, row0, cols, s if stacks_in > 1 else 0)
                _load(g, grad, row0, cols, s)
                top = steps - 1
                while top >= 0:
                    low = 0 if top <= kept else top - kept + 1
                    for step in range(top):  # act[step + 1] = step(act[step])
                        src = act0 if step == 0 else scratch[worker, 1 + (step - 1) % kept]
                        _step_forward(src, scratch[worker, 1 + step % kept], tw[s], blocks, levels, strides, firsts[step], sizes[step], cols, transposed)
                    for step in range(top, low - 1, -1):
                        act = act0 if step == 0 else scratch[worker, 1 + (step - 1) % kept]
                        _step_backward(act, g, tw[s], gt[s], blocks, levels, strides, firsts[step], sizes[step], cols, transposed)
                    top = low - 1
                _store(grad_x, g, row0, cols, s if stacks_in > 1 else 0, stacks_in == 1 and s > 0)
    for part in range(workers - 1):
        grad_tw += grad_tw_parts[part]


# Each kernel is compiled twice: parallel over chunks, and serial for a single chunk (small
# batches), where waking the thread pool would cost more than the work.
_forward_parallel = compile_variant(_forward_chunks, parallel=True, fastmath=_FASTMATH)
_forward_rows_parallel = compile_variant(_forward_rows, parallel=True, fastmath=_FASTMATH)
_forward_rows_serial = compile_variant(_forward_rows, parallel=False, fastmath=_FASTMATH)
_backward_rows_parallel = compile_variant(_backward_rows, parallel=True, fastmath=_FASTMATH)
_backward_rows_serial = compile_variant(_backward_rows, parallel=False, fastmath=_FASTMATH)
_forward_serial = compile_variant(_forward_chunks, parallel=False, fastmath=_FASTMATH)
_backward_parallel = compile_variant(_backward_chunks, parallel=True, fastmath=_FASTMATH)
_backward_serial = compile_variant(_backward_chunks, parallel=False, fastmath=_FASTMATH)


@functools.lru_cache(maxsize=256)
def _schedule_arrays(n: int, n_blocks: int, increasing_stride: bool, transpose: bool):
    """The factors ``(blocks, levels, strides)`` in application order and the steps
    ``(firsts, sizes)``: consecutive factors of strides ``h``, ``2h`` (either order) are fused into
    one radix-4 step (``size`` 2), the rest run alone (``size`` 1)."""
    schedule = butterfly_schedule(n, n_blocks, increasing_stride)
    if transpose:
        schedule = schedule[::-1]
    blocks, levels, strides = ([entry[i] for entry in schedule] for i in range(3))
    return tuple(np.array(a, dtype=np.int64) for a in (blocks, levels, strides, *_steps(strides)))


def _steps(strides: list[int]) -> tuple[list[int], list[int]]:
    """``(firsts, sizes)`` of the transposed layout's steps (see :func:`_schedule_arrays`)."""
    firsts, sizes, step = [], [], 0
    while step < len(strides):
        pair = step + 1 < len(strides) and strides[step + 1] in (2 * strides[step], strides[step] // 2)
        firsts.append(step)
        sizes.append(2 if pair else 1)
        step += sizes[-1]
    return firsts, sizes


def _pair_of(f: int, h: int) -> int:
    """Pair of stride ``h`` whose low feature is ``f`` (SPEC.md §1.4: ``i = ⌊p/h⌋ 2h + p mod h``)."""
    return (f // (2 * h)) * h + f % h


@functools.lru_cache(maxsize=256)
def _rows_plan(n: int, n_blocks: int, increasing_stride: bool, transpose: bool, dtype: np.dtype):
    """The row-layout plan ``(kinds, h1, h2, starts, positions, strides, offsets, slots, low_slots,
    n_slots, n_low_slots)``, or ``None`` where the row layout does not apply (``N < T``; complex
    dtypes take the plan of their real parts' dtype).

    Factors of strides ``< T`` come in runs of ``log2 T`` (every butterfly of size ``N >= T`` has
    its small strides together, ``1 .. T/2`` or ``T/2 .. 1``): a step of kind 0
    (:func:`~structmat.ops.simd.rows_low_levels`, ``h1`` its first stride); the others are paired
    into radix-4 steps of kind 1 where two consecutive strides ``h1, h2`` differ
    (:func:`~structmat.ops.simd.rows_radix4`), else run alone (kind 2). Step ``k`` visits the
    vector positions ``positions[starts[k]:starts[k + 1]]``, rows ``(f0, c0, c1, c2, c3)``: feature
    ``f0`` and the coefficient offsets the kernel takes (kind 0: the run's first block entry at
    ``f0`` in one stack's flat twiddle, the stride between the run's factors there, and the same
    two in the backward's gradient of the runs, ``(low slots, N/2, 2, 2)``; kinds 1, 2: the pairs'
    offsets in one stack's planar coefficients). ``offsets[f]``: factor ``f``'s first element in
    one stack's flat twiddle; ``slots[f]``: its slot among the planar coefficients ``(slots, 4,
    N/2)`` (strides ``>= T``), ``low_slots[f]`` among the gradients of the runs (strides ``< T``);
    ``-1`` otherwise."""
    if dtype.kind not in "fc" or n < row_lanes(dtype):
        return None
    t = row_lanes(dtype)
    run = t.bit_length() - 1
    half = n // 2
    blocks, levels, strides = _schedule_arrays(n, n_blocks, increasing_stride, transpose)[:3]
    log_n = n.bit_length() - 1
    offsets = [(int(b) * log_n + int(level)) * half * 4 for b, level in zip(blocks, levels)]
    strides = [int(h) for h in strides]
    kinds, h1s, h2s, starts, positions, slots, low_slots = [], [], [], [0], [], [-1] * len(strides), [-1] * len(strides)
    f = 0
    while f < len(strides):
        h1 = strides[f]
        if h1 < t:
            if strides[f : f + run] not in ([1 << j for j in range(run)], [t >> (j + 1) for j in range(run)]):
                return None
            level_steps = {offsets[f + j + 1] - offsets[f + j] for j in range(run - 1)}
            if len(level_steps) > 1:
                return None
            (level_step,) = level_steps
            low = max(low_slots) + 1
            low_slots[f : f + run] = range(low, low + run)
            kinds.append(0), h1s.append(h1), h2s.append(h1)
            positions += [(f0, offsets[f] + f0 // 2 * 4, level_step, low * half * 4 + f0 // 2 * 4, half * 4) for f0 in range(0, n, t)]
            f += run
        elif f + 1 < len(strides) and t <= strides[f + 1] != h1:
            h2 = strides[f + 1]
            slots[f], slots[f + 1] = max(slots) + 1, max(slots) + 2
            a, b = slots[f] * 4 * half, slots[f + 1] * 4 * half
            kinds.append(1), h1s.append(h1), h2s.append(h2)
            for f0 in range(0, n, t):
                if not (f0 & h1 or f0 & h2):
                    positions.append((f0, a + _pair_of(f0, h1), a + _pair_of(f0 + h2, h1), b + _pair_of(f0, h2), b + _pair_of(f0 + h1, h2)))
            f += 2
        else:
            slots[f] = max(slots) + 1
            a = slots[f] * 4 * half
            kinds.append(2), h1s.append(h1), h2s.append(h1)
            positions += [(f0, a + _pair_of(f0, h1), 0, 0, 0) for f0 in range(0, n, t) if not f0 & h1]
            f += 1
        starts.append(len(positions))
    arrays = [np.array(v, dtype=np.int64) for v in (kinds, h1s, h2s, starts, positions, strides, offsets, slots, low_slots)]
    return (*arrays, max(slots) + 1, max(low_slots) + 1)


#: largest scratch (bytes) kept between calls by :func:`_workspace`; larger requests are allocated
#: per call
WORKSPACE_MAX_BYTES = 64 << 20
_workspaces = threading.local()


def _workspace(shape: tuple[int, ...], dtype: np.dtype, slot: str = "scratch") -> np.ndarray:
    """An uninitialised scratch array of ``shape``, reused across calls from the same Python
    thread (grown as needed, at most :data:`WORKSPACE_MAX_BYTES` kept per dtype and ``slot``;
    arrays of distinct slots may be used at the same time).

    The kernels' scratch is megabytes per call; allocated fresh, glibc returns it to the operating
    system on free (its trim/mmap thresholds) and every call then pays page faults for it -- in a
    training loop, whose forward and backward allocate several input-sized tensors between
    kernel calls, that doubled the measured forward+backward time (docs/benchmarks.md,
    "Butterfly (history, sessions before s14)")."""
    numel = math.prod(shape)
    if numel * dtype.itemsize > WORKSPACE_MAX_BYTES:
        return _aligned_empty(numel, dtype).reshape(shape)
    cache = getattr(_workspaces, "arrays", None)
    if cache is None:
        cache = _workspaces.arrays = {}
    buffer = cache.get((slot, dtype))
    if buffer is None or buffer.size < numel:
        buffer = cache[slot, dtype] = _aligned_empty(numel, dtype)
        getattr(_workspaces, "views", {}).clear()  # no remembered view keeps the old array alive
    return buffer[:numel].reshape(shape)


#: workspace slots of the row-layout backward's buffers (:func:`_backward_rows_launch`'s shapes)
_BACKWARD_SLOTS = ("planar", "partials", "planar_partials", "scratch")


def _workspace_set(shapes: tuple[tuple[int, ...], ...], dtype: np.dtype, slots: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    """:func:`_workspace` of every ``(shape, slot)`` pair, remembered per thread until a slot's array
    is replaced (:func:`_workspace` then forgets them all): one lookup instead of a call per buffer.
    Requests beyond :data:`WORKSPACE_MAX_BYTES` are allocated per call, as :func:`_workspace` does."""
    views = getattr(_workspaces, "views", None)
    if views is None:
        views = _workspaces.views = {}
    key = (shapes, dtype, slots)
    result = views.get(key)
    if result is None:
        result = tuple(_workspace(shape, dtype, slot) for shape, slot in zip(shapes, slots))
        if all(math.prod(shape) * dtype.itemsize <= WORKSPACE_MAX_BYTES for shape in shapes):
            if len(views) >= 256:  # as many configurations as the launch caches keep
                views.clear()
            views[key] = result
    return result


#: alignment (bytes) of scratch arrays: whole cache lines, so that no SIMD load straddles two
ALIGNMENT = 64


def _aligned_empty(numel: int, dtype: np.dtype) -> np.ndarray:
    """``np.empty(numel)`` starting on an :data:`ALIGNMENT` boundary (NumPy only guarantees 16
    bytes: a 64-byte vector load then spans two cache lines, ~30 % slower sweeps)."""
    raw = np.empty(numel * dtype.itemsize + ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start : start + numel * dtype.itemsize].view(dtype)


def _chunk_size(batch: int, row_bytes: int, budget: int, minimum: int, workers: int, multiple: int = 16) -> int:
    """Rows per chunk: about ``budget`` bytes of scratch (rounded down to a ``multiple`` of rows:
    whole SIMD vectors and register tiles), at least ``minimum`` rows (long SIMD loops), at most an
    equal share of the batch per worker rounded up to the ``multiple`` (so every thread gets work
    and every chunk but the last is whole tiles)."""
    chunk = max(minimum, budget // max(1, row_bytes) // multiple * multiple)
    share = -(-batch // workers)
    chunk = min(chunk, -(-share // multiple) * multiple)
    return max(1, min(chunk, batch))


#: bytes of one block of rows in the row-layout forward (about two thirds of the level-1 cache)
ROWS_BLOCK_BYTES = 32 << 10
#: fewest and most rows per block: fewer rows reload the twiddles more often; the block budget
#: keeps rows whose stride is a multiple of 4 KiB -- all in one level-1 cache set (64 sets of
#: 64-byte lines), 8-12 ways -- at <= 8 (n = 1024, float32, batch 256: 8 rows 47 us, 16 rows
#: 73 us; n = 16384: 4 rows 1.8 ms, 8 rows 3.0 ms); small N gets long blocks (n = 16, batch 256,
#: backward: 16 rows 21 us, 256 rows 16 us)
ROWS_BLOCK_MIN, ROWS_BLOCK_MAX = 4, 256
#: bytes of one row block of the row-layout backward, and its fewest rows. A block streams the
#: coefficients and updates the worker's twiddle-gradient partials once per step, so longer blocks
#: pay; its buffers' rows are one cache line longer than ``N`` (no 4 KiB set aliasing), so they
#: may outgrow the level-1 cache into level 2 (batch 256, two threads, after the padding: n = 1024
#: float32, 8 rows 0.17-0.18 ms, 32 rows 0.14-0.16; n = 4096, 8 rows 0.94-1.05, 16 rows 0.82-0.89;
#: n = 16384, 8 rows 6.7-7.6, 16 rows 7.2-8.0 -- 128 KiB keeps 8 rows from 4096 on, giving up
#: ~13 % at 4096 for ~6 % at 16384; 256 KiB would take 16 rows at 4096 but also 256-row blocks at
#: n = 256, one block per worker at batch 256: unmeasured, left). Under the memory cap blocks shrink back to the
#: forward's block (:func:`_rows_block`) before workers are dropped, and below it only after: at
#: small N one worker with long blocks beats two with short ones (n = 256, batch 64, two threads:
#: 1 worker x 32 rows 30-48 us, 2 x 16 rows 64-67 us; n = 512: 1 x 16 rows 53-80 us, 2 x 8 rows 86
#: us)
ROWS_BACKWARD_BLOCK_BYTES = 128 << 10
ROWS_BACKWARD_BLOCK_MIN = 8
#: the row-layout backward for real dtypes from ``N >= ROWS_BACKWARD_MIN_VECTORS * T`` on; below,
#: its per-block set-up costs more than the transpositions it saves (n = 64, float32, batch 256: 25
#: against 21 us). Complex dtypes take it from ``N = T`` on: their transposed backward runs scalar
#: complex arithmetic (n = 64, complex64, batch 256: 64 against 194 us)
ROWS_BACKWARD_MIN_VECTORS = 8


@functools.lru_cache(maxsize=256)
def _forward_launch(n: int, n_blocks: int, increasing_stride: bool, transpose: bool, dtype: torch.dtype, stacks: int, batch: int, threads: int):
    """``(kernel, scratch shape, NumPy dtype, trailing kernel arguments)`` of a forward call, cached
    per configuration: the planning costs several microseconds of Python per call, 5-10 % of a
    batch-256 forward at N = 1024 (docs/benchmarks.md). ``N >= T`` runs the row layout
    (:func:`_forward_rows`, scratch: the planar twiddles), smaller sizes the transposed chunks
    (:func:`_forward_chunks`, scratch: the ping-pong buffers)."""
    np_dtype = numpy_dtype(dtype)
    rows = _rows_plan(n, n_blocks, increasing_stride, transpose, np_dtype)
    if rows is not None:
        kinds, h1s, h2s, starts, positions, _, offsets, slot_of, _, slots, _ = rows
        arrays = (kinds, h1s, h2s, starts, positions, offsets, slot_of)
        block = _rows_block(n, np_dtype)
        workers = min(threads, -(-batch // block))
        kernel = _forward_rows_parallel if workers > 1 else _forward_rows_serial
        return kernel, (stacks, max(1, slots), 4, n // 2), np_dtype, (*arrays, bool(transpose), block, workers)
    chunk = _chunk_size(batch, 2 * n * np_dtype.itemsize, CHUNK_BYTES, MIN_CHUNK, threads)
    workers = min(threads, -(-batch // chunk))
    plan = _schedule_arrays(n, n_blocks, increasing_stride, transpose)
    kernel = _forward_parallel if workers > 1 else _forward_serial
    return kernel, (workers, 2, n, chunk), np_dtype, (*plan, bool(transpose), chunk)


def butterfly_forward_cpu(twiddle: torch.Tensor, x: torch.Tensor, increasing_stride: bool, transpose: bool) -> torch.Tensor:
    """Fused forward: ``x`` ``(B, S_in, N)`` -> ``(B, S, N)`` (see :mod:`structmat.ops.butterfly`)."""
    _check_operands(twiddle, x)
    stacks, n_blocks, _, half = twiddle.shape[:4]
    batch = x.shape[0]
    out = torch.empty(batch, stacks, 2 * half, dtype=x.dtype, device="cpu")  # (not a default device's)
    if batch == 0:
        return out
    kernel, scratch_shape, dtype, arguments = _forward_launch(2 * half, n_blocks, bool(increasing_stride), bool(transpose), x.dtype, stacks, batch, numba.get_num_threads())
    twiddle, x = _plain(twiddle), _plain(x)
    kernel(_address(twiddle), _address(x), _address(out), _workspace(scratch_shape, dtype), *arguments)
    return out


#: bytes of one iteration of the backward's vectorised column loop (LLVM runs two 64-byte vectors
#: per iteration and leaves the remainder to a 16-byte and a scalar loop)
BACKWARD_LOOP_BYTES = 128


def _backward_rows_multiple(x: torch.Tensor) -> int:
    """Backward chunks are whole iterations of the vectorised column loop (float32: 32 rows; at
    batch 256 single-threaded, 64 rows run faster than 80 and 32 faster than 40), but at least 8."""
    return max(8, BACKWARD_LOOP_BYTES // x.element_size())


#: widest backward chunk in vector-loop iterations (:func:`_backward_rows_multiple` rows each)
BACKWARD_TARGET_ITERATIONS = 4


def _backward_plan(twiddle: torch.Tensor, x: torch.Tensor, increasing_stride: bool, transpose: bool):
    """Schedule, chunk, worker count, stored step inputs ``kept`` and ``x_in_grad`` of the
    backward (:func:`_backward_chunks`). Every backward allocation -- input gradient, the workers'
    buffers of ``N x chunk`` and twiddle-gradient partials -- stays within
    :data:`BACKWARD_EXTRA_X_INPUT` times the input (memory), each worker's buffers within
    :data:`BACKWARD_CHUNK_BYTES` (cache). From :data:`BACKWARD_TARGET_ITERATIONS` vector-loop
    iterations down, the chunk is the widest for which all step inputs fit, or -- at one or two
    iterations, where wider chunks pay most (module docstring) -- at least half of them (at least
    2); at :data:`MIN_BACKWARD_CHUNK` rows any 2 will do (and if not even 2 fit -- tiny batches,
    large twiddles -- 2 are kept over the cap). Wider chunks that keep fewer inputs lose
    to the extra recomputation (n = 16384, batch 1024: 128 rows keeping 3 of 6 inputs 77 ms, 64 rows
    keeping all 63 ms)."""
    n_blocks, _, half = twiddle.shape[1:4]
    n, batch = 2 * half, x.shape[0]
    plan = _schedule_arrays(n, n_blocks, increasing_stride, transpose)
    inputs = len(plan[3]) - 1  # act[1 .. steps - 1]
    x_in_grad = twiddle.shape[0] == 1
    fixed = 1 + (0 if x_in_grad else 1)  # the adjoint, act[0] unless it lives in grad_x
    buffer_row = n * x.element_size()
    cap = int((BACKWARD_EXTRA_X_INPUT - 1) * x.numel() * x.element_size())  # beyond the input gradient
    multiple = _backward_rows_multiple(x)
    for workers in range(numba.get_num_threads(), 0, -1):  # fewer workers when the cap is too tight
        partial_bytes = workers * twiddle.numel() * twiddle.element_size()
        budget = min(BACKWARD_CHUNK_BYTES, max(0, cap - partial_bytes) // workers)
        share = -(-batch // workers)
        chunk = max(1, min(batch, -(-share // 8) * 8, BACKWARD_TARGET_ITERATIONS * multiple))
        while True:
            fit = budget // (chunk * buffer_row) - fixed
            smallest = chunk <= MIN_BACKWARD_CHUNK
            if fit >= inputs:
                kept = inputs
                break
            if fit >= max(2, -(-inputs // 2)) and multiple <= chunk <= 2 * multiple or smallest and fit >= 2:
                kept = fit
                break
            if smallest:
                kept = min(inputs, 2)  # over the cap (tiny batches, large twiddles): the least that works
                break
            chunk = max(MIN_BACKWARD_CHUNK, (chunk - 1) // multiple * multiple if chunk > multiple else chunk // 2)
        if workers * chunk * buffer_row * (fixed + kept) + partial_bytes <= cap:
            break
    n_chunks = -(-batch // chunk) if batch else 0
    workers = max(1, min(workers, n_chunks))
    return plan, chunk, workers, kept, x_in_grad  # kept = 0 only with one step (no slots used)


def backward_extra_bytes(twiddle: torch.Tensor, x: torch.Tensor, increasing_stride: bool = True) -> int:
    """Bytes the fused backward allocates beyond its inputs: the input gradient and the workers'
    buffers -- row layout (:func:`_backward_rows`): the twiddle gradient (which holds worker 0's
    planar partials), the planar coefficients, every worker's small-stride gradients and step inputs
    of one block, every further worker's planar partials; transposed layout: the
    adjoint, ``kept`` step inputs and, with several stacks, the chunk's input (each ``N · chunk``)
    and twiddle-gradient partials (worker 0's is the returned gradient)."""
    stacks, n_blocks, _, half = twiddle.shape[:4]
    n = 2 * half
    rows = _backward_rows_launch(n, n_blocks, bool(increasing_stride), False, x.dtype, stacks, x.shape[1], x.shape[0], numba.get_num_threads())
    if rows is not None:  # the input and twiddle gradients, the planar coefficients, the workers' buffers
        return (x.numel() + twiddle.numel() + sum(math.prod(shape) for shape in rows[1])) * x.element_size()
    _, chunk, workers, kept, x_in_grad = _backward_plan(twiddle, x, increasing_stride, False)
    scratch = workers * (1 + kept + (0 if x_in_grad else 1)) * n * chunk
    return (x.numel() + scratch + workers * twiddle.numel()) * x.element_size()


def _rows_block(n: int, dtype: np.dtype, minimum: int | None = None, budget: int | None = None) -> int:
    """Rows per block of the row-layout kernels: ``budget`` bytes (default :data:`ROWS_BLOCK_BYTES`),
    at least ``minimum`` (default :data:`ROWS_BLOCK_MIN`) and at most :data:`ROWS_BLOCK_MAX` rows."""
    minimum = ROWS_BLOCK_MIN if minimum is None else minimum
    budget = ROWS_BLOCK_BYTES if budget is None else budget
    return min(ROWS_BLOCK_MAX, max(minimum, budget // (n * dtype.itemsize)))


@functools.lru_cache(maxsize=256)
def _backward_rows_launch(n: int, n_blocks: int, increasing_stride: bool, transpose: bool, dtype: torch.dtype, stacks: int, stacks_in: int, batch: int, threads: int):
    """``(kernel, shapes of planar / parts / planar parts / scratch, NumPy dtype, trailing
    arguments)`` of the row-layout backward (:func:`_backward_rows`), or ``None`` where the row
    layout does not apply or does not pay (:data:`ROWS_BACKWARD_MIN_VECTORS`). Blocks are halved
    down to the forward's block (:func:`_rows_block`), then workers dropped, then blocks halved down
    to one row,
    while the workers' block buffers and twiddle-gradient
    partials would take the backward beyond :data:`BACKWARD_EXTRA_X_INPUT` times the input. Small
    batches whose input is not much larger than the twiddle can still exceed it: the twiddle
    gradient (which holds worker 0's planar partials), the planar coefficients and one worker's
    small-stride gradients alone are about 2 twiddles."""
    np_dtype = numpy_dtype(dtype)
    plan = _rows_plan(n, n_blocks, increasing_stride, transpose, np_dtype)
    complex_ = np_dtype.kind == "c"
    if plan is None or (not complex_ and n < ROWS_BACKWARD_MIN_VECTORS * row_lanes(np_dtype)):
        return None
    kinds, h1s, h2s, starts, positions, _, offsets, slot_of, low_slot_of, slots, low_slots = plan
    arrays = (kinds, h1s, h2s, starts, positions, offsets, slot_of, low_slot_of)
    block = _rows_block(n, np_dtype, ROWS_BACKWARD_BLOCK_MIN, ROWS_BACKWARD_BLOCK_BYTES)
    steps = len(kinds)
    # step inputs; complex: the block's input and, with stacks sharing one input row, the output adjoint
    buffers = max(1, steps - 1 + ((2 if stacks_in == 1 and stacks > 1 else 1) if complex_ else 0))
    pitch = n + ALIGNMENT // np_dtype.itemsize  # rows one cache line apart beyond N: no 4 KiB aliasing
    per_stack = max(1, low_slots) * n // 2 * 4
    planar = (stacks, max(1, slots), 4, n // 2)
    cap = (BACKWARD_EXTRA_X_INPUT - 1) * batch * stacks_in * n  # elements beyond the input gradient
    workers = max(1, min(threads, -(-batch // block)))
    shared = math.prod(planar) + stacks * n_blocks * (n.bit_length() - 1) * n // 2 * 4  # planar coefficients, twiddle gradient
    # worker 0's planar partials live in the twiddle gradient's memory
    needed = lambda workers, block: workers * (buffers * block * pitch + stacks * per_stack) + (workers - 1) * math.prod(planar) + shared  # noqa: E731
    while block > _rows_block(n, np_dtype) and needed(workers, block) > cap:  # the backward's longer blocks first
        block //= 2
    while workers > 1 and needed(workers, block) > cap:
        workers -= 1
    while block > 1 and needed(workers, block) > cap:  # small batches: fewer rows per block
        block //= 2
    kernel = _backward_rows_parallel if workers > 1 else _backward_rows_serial
    shapes = (planar, (workers, stacks, per_stack), (workers - 1, *planar), (workers, buffers, block * pitch))
    return kernel, shapes, np_dtype, (*arrays, bool(transpose), block)


def butterfly_backward_cpu(
    twiddle: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, increasing_stride: bool, transpose: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused backward: ``(grad_twiddle, grad_x)`` by recomputation (see the module docstring): the
    row layout (:func:`_backward_rows`; real dtypes from ``N = 8 T``, complex ones from ``N = T``),
    else the transposed chunks."""
    _check_operands(twiddle, x, grad)
    stacks, n_blocks, _, half = twiddle.shape[:4]
    twiddle, x = _plain(twiddle), _plain(x)
    grad_twiddle, grad_x = torch.empty_like(twiddle), torch.empty_like(x)  # contiguous, like their models
    if not x.shape[0]:
        return grad_twiddle.zero_(), grad_x
    rows = _backward_rows_launch(2 * half, n_blocks, bool(increasing_stride), bool(transpose), x.dtype, stacks, x.shape[1], x.shape[0], numba.get_num_threads())
    if rows is not None and grad.stride(0) == 0:
        # a gradient broadcast over the batch (sum()'s: autograd hands over an expanded scalar):
        # one row instead of a batch-sized copy -- a torch copy whose OpenMP threads then spin
        # against the kernel's (n = 1024, batch 256: ~45 us)
        grad = grad[:1]
    grad = _plain(grad if grad.dtype == x.dtype else grad.to(x.dtype))
    if rows is not None:
        kernel, shapes, dtype, arguments = rows
        kernel(_address(twiddle), _address(x), _address(grad), _address(grad_twiddle), _address(grad_x), *_workspace_set(shapes, dtype, _BACKWARD_SLOTS), *arguments)
    else:
        _backward_transposed(twiddle, x, grad, grad_twiddle, grad_x, increasing_stride, transpose)
    return grad_twiddle, grad_x


def _backward_transposed(twiddle, x, grad, grad_twiddle, grad_x, increasing_stride, transpose) -> None:
    """The transposed-layout backward (:func:`_backward_chunks`) into ``grad_twiddle``, ``grad_x``.
    The partials are zeroed and added up inside the kernel: no torch op (whose OpenMP pool would
    spin against Numba's) runs between the two kernels of a training step (a caller's contiguous
    copy of an expanded gradient, e.g. ``sum()``'s, still does)."""
    plan, chunk, workers, kept, x_in_grad = _backward_plan(twiddle, x, increasing_stride, transpose)
    dtype = numpy_dtype(x.dtype)
    parts = _workspace((workers - 1,) + tuple(twiddle.shape), dtype, slot="partials")
    scratch = _workspace((workers, 1 + kept + (0 if x_in_grad else 1), x.shape[2], chunk), dtype)
    kernel = _backward_parallel if workers > 1 else _backward_serial
    kernel(_address(twiddle), _address(x), _address(grad), _address(grad_twiddle), parts, _address(grad_x), scratch, *plan, bool(transpose), chunk, kept, x_in_grad)


def _check_operands(twiddle: torch.Tensor, x: torch.Tensor, grad: torch.Tensor | None = None) -> None:
    """CPU tensors, and :func:`structmat.ops.butterfly.check_backend_operands`."""
    for name, t in (("twiddle", twiddle), ("x", x), ("grad", grad)):
        if t is not None and not t.is_cpu:
            raise ValueError(f"{name}: the fused CPU butterfly kernels take CPU tensors, got one on {t.device}")
    check_backend_operands(twiddle, x, grad, "fused CPU")


def _address(t: torch.Tensor) -> tuple[int, tuple[int, ...]]:
    """:func:`structmat.ops.backend.tensor_address` of a CPU tensor that :func:`_plain` returned or this module allocated
    (its checks, ~0.5 us per tensor, already hold)."""
    return t.data_ptr(), tuple(t.shape)


FUSED_BACKENDS["cpu"] = (butterfly_forward_cpu, butterfly_backward_cpu)
