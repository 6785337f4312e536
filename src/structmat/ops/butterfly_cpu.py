"""Fused Numba CPU kernels for :mod:`structmat.ops.butterfly` (SPEC.md §1.4, §4.14).

Layout: the batch is cut into chunks of ``C`` rows; each chunk of one stack is copied into a
scratch buffer ``(N, C)`` -- the batch is the contiguous (SIMD) dimension -- all factors are
applied there while it stays in cache, and the result is copied out. Forward passes apply two
consecutive factors at a time (radix 4: strides ``h`` and ``2h`` close a group of 4 entries), so
the buffer is read and written ``⌈K log N / 2⌉`` times instead of ``K log N``. Chunks run in
parallel (``numba.prange``).

Backward recomputes the chunk's intermediates in a per-thread scratch of ``(K log N + 1) · N · C``
entries, independent of the batch size, and walks the factors back: the twiddle gradient of pair
``p`` is ``Σ_b g_b x_b^*``-style outer products of the output adjoint and the stored input pair,
the input adjoint uses the conjugate-transposed block (SPEC.md §4.14 "Grad"). Extra training memory
is therefore ``O(B · N)`` (the input gradient) plus per-thread scratch, never ``K log N`` copies
of the batch.

Compiled signatures: one per dtype (float32/64, complex64/128) and kernel, cached on disk
(``cache=True``).
"""

from __future__ import annotations

import functools
import types

import numba
import numpy as np
import torch
from numba import njit, prange

from .backend import numpy_view
from .butterfly import FUSED_BACKENDS, butterfly_schedule

_FASTMATH = {"reassoc", "contract", "nsz"}
#: target size in bytes of one chunk's scratch buffer (about the L2 size)
CHUNK_BYTES = 1 << 20
#: fewest rows per chunk: shorter inner loops lose more to loop overhead than large buffers to cache misses
MIN_CHUNK = 32
#: target size of one thread's backward scratch (all intermediates of a chunk); keeps the
#: backward's extra memory near 2x the input at batch 256
BACKWARD_CHUNK_BYTES = 1 << 19


@njit(cache=True, fastmath=_FASTMATH, inline="always")
def _entries(t, p, transposed):
    if transposed:
        return t[p, 0, 0], t[p, 1, 0], t[p, 0, 1], t[p, 1, 1]
    return t[p, 0, 0], t[p, 0, 1], t[p, 1, 0], t[p, 1, 1]


@njit(cache=True, fastmath=_FASTMATH)
def _radix2(src, dst, t, h, cols, transposed):
    """One factor of stride ``h``: ``dst[:, :cols] = factor · src[:, :cols]`` (``dst`` may be ``src``)."""
    for p in range(src.shape[0] // 2):
        i = (p // h) * 2 * h + p % h
        j = i + h
        a, b, c, d = _entries(t, p, transposed)
        for k in range(cols):
            lo = src[i, k]
            hi = src[j, k]
            dst[i, k] = a * lo + b * hi
            dst[j, k] = c * lo + d * hi


@njit(cache=True, fastmath=_FASTMATH)
def _radix4(buf, t1, h1, t2, h2, cols, transposed):
    """Two consecutive factors (strides ``h1`` then ``h2``, ``{h1, h2} = {q, 2q}``) in one sweep."""
    q = min(h1, h2)
    small_first = h1 == q
    for g in range(buf.shape[0] // 4):
        i0 = (g // q) * 4 * q + g % q
        i1, i2, i3 = i0 + q, i0 + 2 * q, i0 + 3 * q
        ps = (i0 // (2 * q)) * q + i0 % q  # pairs (i0, i1) = ps and (i2, i3) = ps + q of stride q
        pl = (i0 // (4 * q)) * 2 * q + i0 % (2 * q)  # pairs (i0, i2) = pl and (i1, i3) = pl + q of stride 2q
        if small_first:
            a0, b0, c0, d0 = _entries(t1, ps, transposed)
            a1, b1, c1, d1 = _entries(t1, ps + q, transposed)
            a2, b2, c2, d2 = _entries(t2, pl, transposed)
            a3, b3, c3, d3 = _entries(t2, pl + q, transposed)
            for k in range(cols):
                v0, v1, v2, v3 = buf[i0, k], buf[i1, k], buf[i2, k], buf[i3, k]
                w0 = a0 * v0 + b0 * v1
                w1 = c0 * v0 + d0 * v1
                w2 = a1 * v2 + b1 * v3
                w3 = c1 * v2 + d1 * v3
                buf[i0, k] = a2 * w0 + b2 * w2
                buf[i2, k] = c2 * w0 + d2 * w2
                buf[i1, k] = a3 * w1 + b3 * w3
                buf[i3, k] = c3 * w1 + d3 * w3
        else:
            a0, b0, c0, d0 = _entries(t1, pl, transposed)
            a1, b1, c1, d1 = _entries(t1, pl + q, transposed)
            a2, b2, c2, d2 = _entries(t2, ps, transposed)
            a3, b3, c3, d3 = _entries(t2, ps + q, transposed)
            for k in range(cols):
                v0, v1, v2, v3 = buf[i0, k], buf[i1, k], buf[i2, k], buf[i3, k]
                w0 = a0 * v0 + b0 * v2
                w2 = c0 * v0 + d0 * v2
                w1 = a1 * v1 + b1 * v3
                w3 = c1 * v1 + d1 * v3
                buf[i0, k] = a2 * w0 + b2 * w1
                buf[i1, k] = c2 * w0 + d2 * w1
                buf[i2, k] = a3 * w2 + b3 * w3
                buf[i3, k] = c3 * w2 + d3 * w3


#: rows of the buffer transposed together (a tile of TILE x cols entries stays in L1)
TILE = 16


@njit(cache=True, fastmath=_FASTMATH)
def _load(buf, x, row0, cols, stack):
    """``buf[i, k] = x[row0 + k, stack, i]`` (tiled transposition)."""
    n = buf.shape[0]
    for i0 in range(0, n, TILE):
        i1 = min(n, i0 + TILE)
        for k in range(cols):
            for i in range(i0, i1):
                buf[i, k] = x[row0 + k, stack, i]


@njit(cache=True, fastmath=_FASTMATH)
def _store(out, buf, row0, cols, stack, accumulate):
    """``out[row0 + k, stack, i] (+)= buf[i, k]`` (tiled transposition)."""
    n = buf.shape[0]
    for i0 in range(0, n, TILE):
        i1 = min(n, i0 + TILE)
        for k in range(cols):
            if accumulate:
                for i in range(i0, i1):
                    out[row0 + k, stack, i] += buf[i, k]
            else:
                for i in range(i0, i1):
                    out[row0 + k, stack, i] = buf[i, k]


@njit(cache=True, fastmath=_FASTMATH)
def _run(buf, tw, blocks, levels, strides, cols, transposed):
    """Apply the schedule to ``buf``, fusing consecutive factors of strides ``h``/``2h`` in pairs."""
    step, steps = 0, blocks.shape[0]
    while step < steps:
        h1 = strides[step]
        t1 = tw[blocks[step], levels[step]]
        if step + 1 < steps:
            h2 = strides[step + 1]
            if h2 == 2 * h1 or h1 == 2 * h2:
                _radix4(buf, t1, h1, tw[blocks[step + 1], levels[step + 1]], h2, cols, transposed)
                step += 2
                continue
        _radix2(buf, buf, t1, h1, cols, transposed)
        step += 1


def _forward_chunks(tw, x, out, blocks, levels, strides, transposed, chunk):
    batch, stacks_in, n = x.shape
    stacks = tw.shape[0]
    n_chunks = (batch + chunk - 1) // chunk
    for c in prange(n_chunks):
        row0 = c * chunk
        cols = min(chunk, batch - row0)
        buf = np.empty((n, chunk), dtype=out.dtype)
        for s in range(stacks):
            _load(buf, x, row0, cols, s if stacks_in > 1 else 0)
            _run(buf, tw[s], blocks, levels, strides, cols, transposed)
            _store(out, buf, row0, cols, s, False)


@njit(cache=True, fastmath=_FASTMATH)
def _radix2_backward(act, g, t, gt, h, cols, transposed):
    """Backward of one factor: ``act`` its input, ``g`` the output adjoint (overwritten by the
    input adjoint), twiddle gradients added to ``gt``."""
    for p in range(act.shape[0] // 2):
        i = (p // h) * 2 * h + p % h
        j = i + h
        a, b, c, d = _entries(t, p, transposed)
        ca, cb, cc, cd = np.conj(a), np.conj(b), np.conj(c), np.conj(d)
        ga = gb = gc = gd = 0 * a
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
        gt[p, 0, 0] += ga
        gt[p, 1, 1] += gd
        if transposed:
            gt[p, 1, 0] += gb
            gt[p, 0, 1] += gc
        else:
            gt[p, 0, 1] += gb
            gt[p, 1, 0] += gc


def _backward_chunks(tw, x, grad, grad_tw_parts, grad_x, blocks, levels, strides, transposed, chunk):
    batch, stacks_in, n = x.shape
    stacks = tw.shape[0]
    steps = blocks.shape[0]
    n_chunks = (batch + chunk - 1) // chunk
    workers = grad_tw_parts.shape[0]
    for worker in prange(workers):
        acts = np.empty((steps + 1, n, chunk), dtype=x.dtype)
        g = np.empty((n, chunk), dtype=x.dtype)
        gt = grad_tw_parts[worker]
        for c in range(worker, n_chunks, workers):
            row0 = c * chunk
            cols = min(chunk, batch - row0)
            for s in range(stacks):
                _load(acts[0], x, row0, cols, s if stacks_in > 1 else 0)
                for step in range(steps):
                    _radix2(acts[step], acts[step + 1], tw[s, blocks[step], levels[step]], strides[step], cols, transposed)
                _load(g, grad, row0, cols, s)
                for step in range(steps - 1, -1, -1):
                    _radix2_backward(
                        acts[step], g, tw[s, blocks[step], levels[step]], gt[s, blocks[step], levels[step]],
                        strides[step], cols, transposed,
                    )
                _store(grad_x, g, row0, cols, s if stacks_in > 1 else 0, stacks_in == 1)


def _compiled(fn, parallel: bool):
    """``fn`` compiled serial or parallel. Numba's on-disk cache is keyed by the function's
    qualified name, so each variant gets its own name (otherwise one would load the other)."""
    variant = types.FunctionType(fn.__code__, fn.__globals__, f"{fn.__name__}_{'parallel' if parallel else 'serial'}")
    variant.__qualname__ = variant.__name__
    return njit(cache=True, parallel=parallel, fastmath=_FASTMATH)(variant)


# Each kernel is compiled twice: parallel over chunks, and serial for a single chunk (small
# batches), where waking the thread pool would cost more than the work.
_forward_parallel = _compiled(_forward_chunks, parallel=True)
_forward_serial = _compiled(_forward_chunks, parallel=False)
_backward_parallel = _compiled(_backward_chunks, parallel=True)
_backward_serial = _compiled(_backward_chunks, parallel=False)


@functools.lru_cache(maxsize=256)
def _schedule_arrays(n: int, n_blocks: int, increasing_stride: bool, transpose: bool):
    schedule = butterfly_schedule(n, n_blocks, increasing_stride)
    if transpose:
        schedule = schedule[::-1]
    if not schedule:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    blocks, levels, strides = (np.ascontiguousarray(a, dtype=np.int64) for a in zip(*schedule))
    return blocks, levels, strides


def _chunk_size(batch: int, row_bytes: int, budget: int, minimum: int) -> int:
    """Rows per chunk: about ``budget`` bytes of scratch, at least ``minimum`` rows (long SIMD
    loops), at most an equal share of the batch per thread (so every thread gets work)."""
    chunk = max(minimum, budget // max(1, row_bytes))
    share = -(-batch // numba.get_num_threads())
    chunk = min(chunk, -(-share // 8) * 8)
    return max(1, min(chunk, batch))


def butterfly_forward_cpu(twiddle: torch.Tensor, x: torch.Tensor, increasing_stride: bool, transpose: bool) -> torch.Tensor:
    """Fused forward: ``x`` ``(B, S_in, N)`` -> ``(B, S, N)`` (see :mod:`structmat.ops.butterfly`)."""
    stacks, n_blocks, _, half = twiddle.shape[:4]
    n = 2 * half
    batch = x.shape[0]
    out = torch.empty(batch, stacks, n, dtype=x.dtype)
    if batch == 0:
        return out
    blocks, levels, strides = _schedule_arrays(n, n_blocks, increasing_stride, transpose)
    chunk = _chunk_size(batch, n * x.element_size(), CHUNK_BYTES, MIN_CHUNK)
    kernel = _forward_parallel if batch > chunk else _forward_serial
    kernel(numpy_view(twiddle), numpy_view(x), out.numpy(), blocks, levels, strides, bool(transpose), chunk)
    return out


def _backward_plan(twiddle: torch.Tensor, x: torch.Tensor, increasing_stride: bool, transpose: bool):
    stacks, n_blocks, _, half = twiddle.shape[:4]
    n, batch = 2 * half, x.shape[0]
    blocks, levels, strides = _schedule_arrays(n, n_blocks, increasing_stride, transpose)
    chunk = _chunk_size(batch, (len(blocks) + 2) * n * x.element_size(), BACKWARD_CHUNK_BYTES, 8)
    n_chunks = -(-batch // chunk) if batch else 0
    workers = max(1, min(numba.get_num_threads(), n_chunks))
    return (blocks, levels, strides), chunk, workers


def backward_extra_bytes(twiddle: torch.Tensor, x: torch.Tensor, increasing_stride: bool = True) -> int:
    """Bytes the fused backward allocates beyond its inputs: the input gradient, per-thread
    scratch ``(K log N + 2) · N · chunk`` and per-thread twiddle-gradient partials."""
    (blocks, _, _), chunk, workers = _backward_plan(twiddle, x, increasing_stride, False)
    n = 2 * twiddle.shape[3]
    scratch = workers * (len(blocks) + 2) * n * chunk
    return (x.numel() + scratch + (workers + 1) * twiddle.numel()) * x.element_size()


def butterfly_backward_cpu(
    twiddle: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, increasing_stride: bool, transpose: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused backward: ``(grad_twiddle, grad_x)`` by recomputation (see the module docstring)."""
    (blocks, levels, strides), chunk, workers = _backward_plan(twiddle, x, increasing_stride, transpose)
    batch = x.shape[0]
    parts = np.zeros((workers,) + tuple(twiddle.shape), dtype=torch.empty(0, dtype=twiddle.dtype).numpy().dtype)
    grad_x = torch.zeros(x.shape, dtype=x.dtype)
    if batch:
        kernel = _backward_parallel if workers > 1 else _backward_serial
        kernel(
            numpy_view(twiddle), numpy_view(x), numpy_view(grad.to(x.dtype)), parts, grad_x.numpy(),
            blocks, levels, strides, bool(transpose), chunk,
        )
    return torch.from_numpy(parts.sum(0)), grad_x


FUSED_BACKENDS["cpu"] = (butterfly_forward_cpu, butterfly_backward_cpu)
