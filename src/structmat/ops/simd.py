"""LLVM-level helpers for the Numba kernels: register-level transposition (vector shuffles) and
arrays over raw tensor memory.

Numba has no SIMD types, and LLVM's vectorisers do not turn a scalar tile copy into a transposition
network, so a tile transposed element by element costs a load and a store per element (about 1.5
elements per cycle here). :func:`transpose_tile` emits LLVM IR directly (``numba.extending.intrinsic``):
it loads ``T`` rows of one 64-byte vector each, transposes the ``T x T`` tile with ``T log2 T``
two-input shuffles and stores ``T`` rows -- about 3x fewer instructions per element. ``T`` is 64
bytes over the element size: 16 (float32), 8 (float64, complex64), 4 (complex128).

The network (any ``T`` a power of two): for ``d = T/2, T/4, ..., 1`` and every row pair
``(i, i + d)`` with ``i & d == 0``, within every ``2d``-element column chunk, row ``i`` keeps its
first ``d`` elements and takes the first ``d`` of row ``i + d``; row ``i + d`` takes the last ``d``
of row ``i`` and keeps its own last ``d``. That swaps the off-diagonal ``d x d`` blocks of every
``2d x 2d`` block; applied for every ``d`` down to 1 it transposes the tile.

Used by :mod:`structmat.ops.butterfly_cpu` to move a chunk of the batch between the ``(B, N)``
layout and the kernels' ``(N, C)`` layout (the batch as the SIMD dimension).

:func:`array_at` rebuilds, inside compiled code, an array over a tensor's memory from its address
and shape (:func:`structmat.ops.backend.tensor_address`), cheaper per call than exporting the
tensor to NumPy.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

#: bytes of one row of a tile (one AVX-512 register; LLVM splits it on narrower machines)
VECTOR_BYTES = 64


@intrinsic
def _void_pointer(typingctx, address):
    """An integer address as ``void*``."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(address), codegen


@njit(cache=True, inline="always")
def array_at(at, like):
    """The C-contiguous array of ``like``'s dtype at ``at = (address, shape)``
    (:func:`structmat.ops.backend.tensor_address`)."""
    return numba.carray(_void_pointer(at[0]), at[1], like.dtype)


def tile_size(dtype) -> int:
    """Side ``T`` of the square tiles :func:`transpose_tile` moves for elements of ``dtype``."""
    return VECTOR_BYTES // np.dtype(dtype).itemsize


def _network(T: int, k: int) -> list[tuple[int, int, list[int], list[int]]]:
    """The shuffle stages as ``(i, i + d, mask_low, mask_high)`` over units (``k`` units per
    element; indices ``>= T k`` select from the second row)."""
    stages = []
    d = T // 2
    while d >= 1:
        for i in range(T):
            if i & d:
                continue
            low, high = [], []
            for c in range(0, T, 2 * d):
                low += list(range(c, c + d)) + [T + e for e in range(c, c + d)]
                high += list(range(c + d, c + 2 * d)) + [T + e for e in range(c + d, c + 2 * d)]
            stages.append((i, i + d, [e * k + u for e in low for u in range(k)], [e * k + u for e in high for u in range(k)]))
        d //= 2
    return stages


def _unit(dtype: types.Type) -> tuple[ir.Type, int, int]:
    """(LLVM unit type, units per element, unit bytes) for a Numba scalar type."""
    if isinstance(dtype, types.Complex):
        part = ir.FloatType() if dtype.underlying_float.bitwidth == 32 else ir.DoubleType()
        return part, 2, dtype.underlying_float.bitwidth // 8
    if isinstance(dtype, types.Float):
        return (ir.FloatType() if dtype.bitwidth == 32 else ir.DoubleType()), 1, dtype.bitwidth // 8
    raise TypeError(f"transpose_tile: expected float or complex arrays, got {dtype}")


def _int64_args(context, builder, signature, args, positions):
    """The arguments at ``positions`` cast to int64 (offsets and strides)."""
    return [context.cast(builder, args[i], signature.args[i], types.int64) for i in positions]


def _data(context, builder, signature, args, position):
    """The data pointer of the array argument at ``position``."""
    return context.make_array(signature.args[position])(context, builder, args[position]).data


def _row_pointers(builder, data, unit, k, offset, stride, vector):
    """Pointers to the ``T`` row vectors at elements ``offset + r stride`` (``k`` units each)."""
    data = builder.bitcast(data, unit.as_pointer())
    i64 = ir.IntType(64)
    pointers = []
    for r in range(vector.count // k):
        index = builder.mul(builder.add(offset, builder.mul(stride, ir.Constant(i64, r))), ir.Constant(i64, k))
        pointers.append(builder.bitcast(builder.gep(data, [index]), vector.as_pointer()))
    return pointers


def _transpose_rows(builder, rows, T, k):
    """The shuffle network of the module docstring on ``rows`` (``T`` vectors of ``T k`` units)."""
    mask_type = ir.VectorType(ir.IntType(32), T * k)
    for i, j, low, high in _network(T, k):
        a, b = rows[i], rows[j]
        rows[i] = builder.shuffle_vector(a, b, ir.Constant(mask_type, low))
        rows[j] = builder.shuffle_vector(a, b, ir.Constant(mask_type, high))
    return rows


@intrinsic
def transpose_tile(typingctx, src, src_offset, src_stride, dst, dst_offset, dst_stride):
    """``dst[dst_offset + j * dst_stride + i] = src[src_offset + i * src_stride + j]`` for
    ``i, j < T`` (offsets and strides in elements of the flat arrays' data; one ``T x T`` tile,
    ``T = tile_size(dtype)``). No bounds checks: the caller keeps every row in range."""
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array)) or src.dtype != dst.dtype:
        return None
    unit, k, unit_bytes = _unit(src.dtype)
    T = VECTOR_BYTES // (k * unit_bytes)
    vector = ir.VectorType(unit, T * k)
    sig = types.void(src, src_offset, src_stride, dst, dst_offset, dst_stride)

    def codegen(context, builder, signature, args):
        src_off, src_str, dst_off, dst_str = _int64_args(context, builder, signature, args, (1, 2, 4, 5))
        loads = _row_pointers(builder, _data(context, builder, signature, args, 0), unit, k, src_off, src_str, vector)
        rows = _transpose_rows(builder, [builder.load(p, align=unit_bytes) for p in loads], T, k)
        for row, pointer in zip(rows, _row_pointers(builder, _data(context, builder, signature, args, 3), unit, k, dst_off, dst_str, vector)):
            builder.store(row, pointer, align=unit_bytes)
        return context.get_dummy_value()

    return sig, codegen


#: most rows a tile written by :func:`transpose_tile_to_rows` spans: the associativity of the
#: level-1 data cache (8 ways on AMD Zen 4; 12 on recent Intel cores)
TILE_ROWS = 8
#: rows whose stride is a multiple of this many bytes all map to the same level-1 cache set (64 sets
#: of 64-byte lines)
CACHE_SET_PERIOD = 4096


def tile_rows(dtype) -> int:
    """Rows ``R`` of the tiles :func:`transpose_tile_to_rows` writes: ``min(T, TILE_ROWS)``."""
    return min(tile_size(dtype), TILE_ROWS)


def _group_network(R: int, T: int, k: int) -> list[tuple[int, int, list[int], list[int]]]:
    """:func:`_network` for ``R`` rows applied independently to each of the ``T / R`` groups of
    ``R`` elements of ``T``-element vectors (masks over the two rows' ``2 T k`` units)."""
    stages = []
    for i, j, low, high in _network(R, k):
        masks = []
        for mask in (low, high):
            full = []
            for g in range(T // R):
                full += [g * R * k + u if u < R * k else T * k + g * R * k + (u - R * k) for u in mask]
            masks.append(full)
        stages.append((i, j, *masks))
    return stages


@intrinsic
def transpose_tile_to_rows(typingctx, src, src_offset, src_stride, dst, dst_offset, dst_stride):
    """``dst[dst_offset + i * dst_stride + j] = src[src_offset + j * src_stride + i]`` for
    ``i < R``, ``j < T`` (``R = tile_rows(dtype)``): ``T`` source rows of ``R`` elements become
    ``R`` rows of one 64-byte vector each. For ``R = T`` this is :func:`transpose_tile`.

    Why (float32, ``T = 16 > R = 8``): ``T`` destination rows whose stride is a multiple of
    :data:`CACHE_SET_PERIOD` bytes -- rows of a power-of-two length ``N >= 1024`` -- all fall into one
    level-1 cache set, and 16 lines in an 8-way set evict each other while they are written: such
    a store ran at ~15 GB/s here against ~50 GB/s at other strides; 8 rows per tile run at ~34 GB/s.
    The tile is two ``8 x 8`` transpositions side by side in each vector: row ``m`` of the
    network's input holds source rows ``m`` and ``R + m`` (group ``g`` of the vector: source row
    ``g R + m``), and the network of :func:`_network` for ``R`` rows runs within each group."""
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array)) or src.dtype != dst.dtype:
        return None
    unit, k, unit_bytes = _unit(src.dtype)
    T = VECTOR_BYTES // (k * unit_bytes)
    R = min(T, TILE_ROWS)
    groups = T // R
    vector, part = ir.VectorType(unit, T * k), ir.VectorType(unit, R * k)
    sig = types.void(src, src_offset, src_stride, dst, dst_offset, dst_stride)

    def codegen(context, builder, signature, args):
        src_off, src_str, dst_off, dst_str = _int64_args(context, builder, signature, args, (1, 2, 4, 5))
        loads = _row_pointers(builder, _data(context, builder, signature, args, 0), unit, k, src_off, src_str, vector)
        parts = [builder.load(builder.bitcast(p, part.as_pointer()), align=unit_bytes) for p in loads]
        i32 = ir.IntType(32)
        rows = []
        for m in range(R):
            row = [parts[g * R + m] for g in range(groups)]
            width = R * k
            while len(row) > 1:  # concatenate the groups pairwise
                mask = ir.Constant(ir.VectorType(i32, 2 * width), list(range(2 * width)))
                row = [builder.shuffle_vector(row[e], row[e + 1], mask) for e in range(0, len(row), 2)]
                width *= 2
            rows.append(row[0])
        mask_type = ir.VectorType(i32, T * k)
        for i, j, low, high in _group_network(R, T, k):
            a, b = rows[i], rows[j]
            rows[i] = builder.shuffle_vector(a, b, ir.Constant(mask_type, low))
            rows[j] = builder.shuffle_vector(a, b, ir.Constant(mask_type, high))
        stores = _row_pointers(builder, _data(context, builder, signature, args, 3), unit, k, dst_off, dst_str, vector)
        for row, pointer in zip(rows, stores[:R]):
            builder.store(row, pointer, align=unit_bytes)
        return context.get_dummy_value()

    return sig, codegen


def _contract(instruction):
    """Allow LLVM to fuse a multiply and an add into one FMA (what Numba's ``fastmath`` allows)."""
    instruction.flags.append("contract")
    return instruction


def fused_levels(dtype) -> int:
    """Butterfly factors :func:`transpose_tile_butterfly` applies inside a tile (strides ``1 ..
    T/2``): 4 for float32, 3 for float64; 0 (no fused path) for complex dtypes."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        return 0
    return tile_size(dtype).bit_length() - 1


@intrinsic
def transpose_tile_butterfly(typingctx, src, src_offset, src_stride, dst, dst_offset, dst_stride, twiddle, twiddle_offset, level_stride, transposed):
    """:func:`transpose_tile`, then the butterfly factors of strides ``1, 2, ..., T/2`` (in that
    order) applied to the transposed tile in registers before it is stored: row ``i`` of the
    transposed tile is feature ``i`` of a contiguous block of ``T`` features (the batch along the
    vector), so every pair of those factors lies inside the tile (SPEC.md §1.4; the block at
    feature ``f0`` uses pairs ``f0/2 + p``). ``twiddle`` is a real array; factor ``l``'s ``2 x 2``
    block of local pair ``p`` starts at element ``twiddle_offset + l level_stride + 4 p`` (row
    major; ``transposed`` uses its transpose). Real dtypes only (:func:`fused_levels`)."""
    if not (isinstance(src, types.Array) and isinstance(dst, types.Array) and isinstance(twiddle, types.Array)):
        return None
    if src.dtype != dst.dtype or twiddle.dtype != src.dtype or not isinstance(src.dtype, types.Float):
        return None
    unit, k, unit_bytes = _unit(src.dtype)
    T = VECTOR_BYTES // unit_bytes
    levels = T.bit_length() - 1
    vector = ir.VectorType(unit, T)
    sig = types.void(src, src_offset, src_stride, dst, dst_offset, dst_stride, twiddle, twiddle_offset, level_stride, transposed)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        src_off, src_str, dst_off, dst_str, tw_off, lvl_str = _int64_args(context, builder, signature, args, (1, 2, 4, 5, 7, 8))
        flip = context.cast(builder, args[9], signature.args[9], types.boolean)
        tw_data = _data(context, builder, signature, args, 6)
        loads = _row_pointers(builder, _data(context, builder, signature, args, 0), unit, 1, src_off, src_str, vector)
        rows = _transpose_rows(builder, [builder.load(p, align=unit_bytes) for p in loads], T, 1)
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), T), [0] * T)
        undef = ir.Constant(vector, ir.Undefined)

        def broadcast(index):
            scalar = builder.load(builder.gep(tw_data, [index]))
            return builder.shuffle_vector(builder.insert_element(undef, scalar, ir.Constant(ir.IntType(32), 0)), undef, zeros)

        for level in range(levels):
            h = 1 << level
            base = builder.add(tw_off, builder.mul(lvl_str, ir.Constant(i64, level)))
            for p in range(T // 2):
                i = (p // h) * 2 * h + p % h
                j = i + h
                entry = [builder.add(base, ir.Constant(i64, 4 * p + e)) for e in range(4)]
                a, d = broadcast(entry[0]), broadcast(entry[3])
                b = broadcast(builder.select(flip, entry[2], entry[1]))
                c = broadcast(builder.select(flip, entry[1], entry[2]))
                lo, hi = rows[i], rows[j]
                rows[i] = _contract(builder.fadd(_contract(builder.fmul(a, lo)), _contract(builder.fmul(b, hi))))
                rows[j] = _contract(builder.fadd(_contract(builder.fmul(c, lo)), _contract(builder.fmul(d, hi))))
        for row, pointer in zip(rows, _row_pointers(builder, _data(context, builder, signature, args, 3), unit, 1, dst_off, dst_str, vector)):
            builder.store(row, pointer, align=unit_bytes)
        return context.get_dummy_value()

    return sig, codegen
