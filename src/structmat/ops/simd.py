"""Register-level transposition for Numba kernels (LLVM vector shuffles).

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
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

#: bytes of one row of a tile (one AVX-512 register; LLVM splits it on narrower machines)
VECTOR_BYTES = 64


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
    mask_type = ir.VectorType(ir.IntType(32), T * k)
    stages = _network(T, k)
    sig = types.void(src, src_offset, src_stride, dst, dst_offset, dst_stride)

    def codegen(context, builder, signature, args):
        src_v, src_off, src_str, dst_v, dst_off, dst_str = args
        i64 = ir.IntType(64)
        src_off, src_str, dst_off, dst_str = (
            context.cast(builder, value, ty, types.int64) for value, ty in zip((src_off, src_str, dst_off, dst_str), signature.args[1:3] + signature.args[4:6])
        )
        src_data = builder.bitcast(context.make_array(signature.args[0])(context, builder, src_v).data, unit.as_pointer())
        dst_data = builder.bitcast(context.make_array(signature.args[3])(context, builder, dst_v).data, unit.as_pointer())
        rows = []
        for r in range(T):
            index = builder.mul(builder.add(src_off, builder.mul(src_str, ir.Constant(i64, r))), ir.Constant(i64, k))
            pointer = builder.bitcast(builder.gep(src_data, [index]), vector.as_pointer())
            rows.append(builder.load(pointer, align=unit_bytes))
        for i, j, low, high in stages:
            a, b = rows[i], rows[j]
            rows[i] = builder.shuffle_vector(a, b, ir.Constant(mask_type, low))
            rows[j] = builder.shuffle_vector(a, b, ir.Constant(mask_type, high))
        for r in range(T):
            index = builder.mul(builder.add(dst_off, builder.mul(dst_str, ir.Constant(i64, r))), ir.Constant(i64, k))
            pointer = builder.bitcast(builder.gep(dst_data, [index]), vector.as_pointer())
            builder.store(rows[r], pointer, align=unit_bytes)
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
    mask_type = ir.VectorType(ir.IntType(32), T)
    stages = _network(T, 1)
    sig = types.void(src, src_offset, src_stride, dst, dst_offset, dst_stride, twiddle, twiddle_offset, level_stride, transposed)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        src_v, src_off, src_str, dst_v, dst_off, dst_str, tw_v, tw_off, lvl_str, flip = args
        src_off, src_str, dst_off, dst_str, tw_off, lvl_str = (
            context.cast(builder, value, ty, types.int64)
            for value, ty in zip((src_off, src_str, dst_off, dst_str, tw_off, lvl_str), signature.args[1:3] + signature.args[4:6] + signature.args[7:9])
        )
        flip = context.cast(builder, flip, signature.args[9], types.boolean)
        src_data = context.make_array(signature.args[0])(context, builder, src_v).data
        dst_data = context.make_array(signature.args[3])(context, builder, dst_v).data
        tw_data = context.make_array(signature.args[6])(context, builder, tw_v).data
        rows = []
        for r in range(T):
            index = builder.add(src_off, builder.mul(src_str, ir.Constant(i64, r)))
            rows.append(builder.load(builder.bitcast(builder.gep(src_data, [index]), vector.as_pointer()), align=unit_bytes))
        for i, j, low, high in stages:
            a, b = rows[i], rows[j]
            rows[i] = builder.shuffle_vector(a, b, ir.Constant(mask_type, low))
            rows[j] = builder.shuffle_vector(a, b, ir.Constant(mask_type, high))
        zeros = ir.Constant(mask_type, [0] * T)
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
        for r in range(T):
            index = builder.add(dst_off, builder.mul(dst_str, ir.Constant(i64, r)))
            builder.store(rows[r], builder.bitcast(builder.gep(dst_data, [index]), vector.as_pointer()), align=unit_bytes)
        return context.get_dummy_value()

    return sig, codegen
