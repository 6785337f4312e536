"""LLVM-level helpers for the Numba kernels: register-level transposition (vector shuffles),
butterfly steps on rows of 64-byte vectors, and arrays over raw tensor memory.

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

Row-layout butterfly steps (:func:`rows_low_levels`, :func:`rows_radix4`, :func:`rows_radix2`; the
real-dtype forward of :mod:`structmat.ops.butterfly_cpu`): the features stay along the vector, so
no transposition is needed. A factor of stride ``h >= T`` pairs whole vectors ``h`` features apart,
with ``T`` consecutive pairs' coefficients as four vectors from a planar copy of the twiddles; the
``log2 T`` factors of strides ``< T`` pair lanes of one vector (a lane permutation, a multiply and
a fused multiply-add each). Every call runs a block of rows, keeping the coefficient vectors in
registers across them (one row at a time, the coefficient loads dominated: 4-19 GFLOP/s).

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


def _contract(instruction):
    """Allow LLVM to fuse a multiply and an add into one FMA (what Numba's ``fastmath`` allows)."""
    instruction.flags.append("contract")
    return instruction


# ---------------------------------------------------------------------------------------------
# Row-layout butterfly steps: the batch rows stay as they are (features along the vector), so no
# transposition is needed; each call applies its factors to ``rows`` rows at once, keeping the
# twiddle vectors in registers across the rows.


def _vector_at(builder, data, index, vector):
    """Pointer to the vector starting at element ``index`` of ``data`` (a ``unit*``)."""
    return builder.bitcast(builder.gep(data, [index]), vector.as_pointer())


def _row_operands(context, builder, signature, args, unit, positions):
    """``(src, src_offset, src_stride, dst, dst_offset, dst_stride, rows)`` at ``positions``: the
    data pointers as ``unit*`` and the integers as int64."""
    s, so, ss, d, do, ds, r = positions
    src = builder.bitcast(_data(context, builder, signature, args, s), unit.as_pointer())
    dst = builder.bitcast(_data(context, builder, signature, args, d), unit.as_pointer())
    so_, ss_, do_, ds_, r_ = _int64_args(context, builder, signature, args, (so, ss, do, ds, r))
    return src, so_, ss_, dst, do_, ds_, r_


def _real_rows_types(*arrays):
    """``(unit, T, vector, unit_bytes)`` for the row kernels, or ``None`` unless ``arrays`` are all
    arrays of one real dtype."""
    if not all(isinstance(a, types.Array) for a in arrays) or len({a.dtype for a in arrays}) != 1:
        return None
    if not isinstance(arrays[0].dtype, types.Float):
        return None
    unit, _, unit_bytes = _unit(arrays[0].dtype)
    T = VECTOR_BYTES // unit_bytes
    return unit, T, ir.VectorType(unit, T), unit_bytes


def _pair_fma(builder, coefficients, low, high):
    """``(a low + b high, c low + d high)`` for vectors ``coefficients = (a, b, c, d)``."""
    a, b, c, d = coefficients
    first = _contract(builder.fadd(_contract(builder.fmul(a, low)), _contract(builder.fmul(b, high))))
    second = _contract(builder.fadd(_contract(builder.fmul(c, low)), _contract(builder.fmul(d, high))))
    return first, second


def _local_pair(lane: int, h: int) -> tuple[int, bool]:
    """``(pair, is_low)`` of lane ``lane`` of a ``T``-feature block for the factor of stride ``h``
    (``h < T``; SPEC.md §1.4 pair ``p`` joins ``i = ⌊p/h⌋ 2h + p mod h`` and ``i + h``)."""
    low = lane & ~h
    return ((low >> 1) & ~(h - 1)) | (low & (h - 1)), not lane & h


def _in_run_order(builder, rising, T, apply):
    """``apply(strides)`` for a run of the ``log2 T`` small strides, generated for both orders and
    picked at run time by ``rising`` (``1, 2, ..., T/2``, else ``T/2, ..., 1``)."""
    levels = T.bit_length() - 1
    with builder.if_else(rising) as (then, otherwise):
        with then:
            apply([1 << j for j in range(levels)])
        with otherwise:
            apply([T >> (j + 1) for j in range(levels)])


def _row_start(builder, offset, stride, row):
    """Element index ``offset + row · stride`` (int64 values)."""
    return builder.add(offset, builder.mul(row, stride))


def _low_coefficients(builder, twiddle, base, h, T, vector, unit_bytes, flip):
    """``(A, B, to_entries, to_entries_transposed)`` for the factor of stride ``h < T`` on one
    ``T``-feature block whose ``T/2`` pairs' blocks are the ``2 T`` elements at ``base``: the lane
    coefficients (``A``: ``a`` on a pair's low lane, ``d`` on its high lane; ``B``: ``b`` and ``c``,
    swapped when ``flip``) and the shuffle masks taking ``(A, B)``-shaped vectors back to the
    ``2 T`` block entries (for the gradients; one per value of ``flip``)."""
    i64, i32 = ir.IntType(64), ir.IntType(32)
    mask = lambda values: ir.Constant(ir.VectorType(i32, len(values)), values)  # noqa: E731
    halves = [builder.load(_vector_at(builder, twiddle, builder.add(base, ir.Constant(i64, e * T)), vector), align=unit_bytes) for e in (0, 1)]
    pairs = [_local_pair(lane, h) for lane in range(T)]
    entries = {}
    for flipped in (False, True):
        roles = [(4 * q + (0 if low else 3), 4 * q + ((2 if low else 1) if flipped else (1 if low else 2))) for q, low in pairs]
        entries[flipped] = [builder.shuffle_vector(halves[0], halves[1], mask([r[k] for r in roles])) for k in (0, 1)]
        source = {}
        for lane, (a_entry, b_entry) in enumerate(roles):
            source[a_entry], source[b_entry] = lane, T + lane
        entries[flipped].append(mask([source[e] for e in range(2 * T)]))
    a = entries[False][0]
    b = builder.select(flip, entries[True][1], entries[False][1])
    return a, b, entries[False][2], entries[True][2]


@intrinsic
def rows_low_levels(typingctx, src, src_offset, src_stride, dst, dst_offset, dst_stride, rows, twiddle, twiddle_offset, level_stride, increasing, transposed):
    """The ``log2 T`` factors of strides ``< T`` on one ``T``-feature block of ``rows`` rows, in
    registers: ``dst[dst_offset + r dst_stride + l] = (F_L ⋯ F_1 src[src_offset + r src_stride +
    :])[l]`` for ``r < rows``, ``l < T`` (``src`` and ``dst`` may be the same rows).

    Strides in application order ``1, 2, ..., T/2`` when ``increasing``, else ``T/2, ..., 1``.
    Factor ``j`` (application order) of the block's pairs ``f0/2 + q`` has its ``2 x 2`` blocks at
    ``twiddle[twiddle_offset + j level_stride + 4 q + (r, c)]`` (row major; ``transposed`` uses each
    block's transpose; ``level_stride`` may be negative). Lane ``l`` of stride ``h``: ``y_l = A_l
    x_l + B_l x_{l xor h}`` with ``(A, B) = (a, b)`` on a pair's low lane and ``(d, c)`` on its high
    lane -- one permutation, one multiply and one fused multiply-add per factor and row (SPEC.md
    §1.4 factors, §4.14 cost). Real dtypes only."""
    kinds = _real_rows_types(src, dst, twiddle)
    if kinds is None:
        return None
    unit, T, vector, unit_bytes = kinds
    sig = types.void(src, src_offset, src_stride, dst, dst_offset, dst_stride, rows, twiddle, twiddle_offset, level_stride, increasing, transposed)

    def codegen(context, builder, signature, args):
        i64, i32 = ir.IntType(64), ir.IntType(32)
        src_p, src_off, src_str, dst_p, dst_off, dst_str, n_rows = _row_operands(context, builder, signature, args, unit, (0, 1, 2, 3, 4, 5, 6))
        tw = builder.bitcast(_data(context, builder, signature, args, 7), unit.as_pointer())
        tw_off, lvl_str = _int64_args(context, builder, signature, args, (8, 9))
        rising = context.cast(builder, args[10], signature.args[10], types.boolean)
        flip = context.cast(builder, args[11], signature.args[11], types.boolean)
        mask = lambda values: ir.Constant(ir.VectorType(i32, T), values)  # noqa: E731

        def apply(strides):
            coefficients = []
            for j, h in enumerate(strides):
                base = builder.add(tw_off, builder.mul(lvl_str, ir.Constant(i64, j)))
                coefficients.append((h, *_low_coefficients(builder, tw, base, h, T, vector, unit_bytes, flip)[:2]))
            with cgutils.for_range(builder, n_rows) as loop:
                x = builder.load(_vector_at(builder, src_p, _row_start(builder, src_off, src_str, loop.index), vector), align=unit_bytes)
                for h, a, b in coefficients:
                    partner = builder.shuffle_vector(x, x, mask([lane ^ h for lane in range(T)]))
                    x = _contract(builder.fadd(_contract(builder.fmul(a, x)), _contract(builder.fmul(b, partner))))
                builder.store(x, _vector_at(builder, dst_p, _row_start(builder, dst_off, dst_str, loop.index), vector), align=unit_bytes)

        _in_run_order(builder, rising, T, apply)
        return context.get_dummy_value()

    return sig, codegen


def _planar_coefficients(builder, planar, offset, half, vector, unit_bytes):
    """The vectors ``(a, b, c, d)`` of ``T`` consecutive pairs from a planar twiddle (planes ``a, b,
    c, d`` of ``half`` elements each, ``offset`` the first pair's element in plane ``a``)."""
    i64 = ir.IntType(64)
    return tuple(
        builder.load(_vector_at(builder, planar, builder.add(offset, builder.mul(half, ir.Constant(i64, e))), vector), align=unit_bytes)
        for e in range(4)
    )


@intrinsic
def rows_radix4(typingctx, src, src_offset, src_stride, dst, dst_offset, dst_stride, rows, h1, h2, planar, half, s1a, s1b, s2a, s2b):
    """Two factors of strides ``h1`` then ``h2`` (both multiples of ``T``) on the ``T``-feature
    vectors at features ``f + {0, h1, h2, h1 + h2}`` of ``rows`` rows (``src_offset``,
    ``dst_offset``: feature ``f`` of row 0; ``src`` and ``dst`` may be the same rows). First
    factor: pairs ``(f, f + h1)`` with the coefficients at ``s1a``, ``(f + h2, f + h1 + h2)`` at
    ``s1b``; second: ``(f, f + h2)`` at ``s2a``, ``(f + h1, f + h1 + h2)`` at ``s2b`` -- element
    offsets of ``T`` consecutive pairs in plane ``a`` of a planar twiddle (planes ``a, b, c, d``
    ``half`` elements apart, any transposition already applied). The sixteen coefficient vectors
    stay in registers over the rows (SPEC.md §1.4, §4.14). Real dtypes only."""
    kinds = _real_rows_types(src, dst, planar)
    if kinds is None:
        return None
    unit, T, vector, unit_bytes = kinds
    sig = types.void(src, src_offset, src_stride, dst, dst_offset, dst_stride, rows, h1, h2, planar, half, s1a, s1b, s2a, s2b)

    def codegen(context, builder, signature, args):
        src_p, src_off, src_str, dst_p, dst_off, dst_str, n_rows = _row_operands(context, builder, signature, args, unit, (0, 1, 2, 3, 4, 5, 6))
        first, second, half_, *sets = _int64_args(context, builder, signature, args, (7, 8, 10, 11, 12, 13, 14))
        tw = builder.bitcast(_data(context, builder, signature, args, 9), unit.as_pointer())
        coefficients = [_planar_coefficients(builder, tw, s, half_, vector, unit_bytes) for s in sets]
        offsets = [ir.Constant(ir.IntType(64), 0), first, second, builder.add(first, second)]
        with cgutils.for_range(builder, n_rows) as loop:
            src_row = _row_start(builder, src_off, src_str, loop.index)
            dst_row = _row_start(builder, dst_off, dst_str, loop.index)
            x = [builder.load(_vector_at(builder, src_p, builder.add(src_row, o), vector), align=unit_bytes) for o in offsets]
            x[0], x[1] = _pair_fma(builder, coefficients[0], x[0], x[1])
            x[2], x[3] = _pair_fma(builder, coefficients[1], x[2], x[3])
            x[0], x[2] = _pair_fma(builder, coefficients[2], x[0], x[2])
            x[1], x[3] = _pair_fma(builder, coefficients[3], x[1], x[3])
            for value, o in zip(x, offsets):
                builder.store(value, _vector_at(builder, dst_p, builder.add(dst_row, o), vector), align=unit_bytes)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def rows_radix2(typingctx, src, src_offset, src_stride, dst, dst_offset, dst_stride, rows, h, planar, half, s):
    """One factor of stride ``h`` (a multiple of ``T``) on the pairs ``(f, f + h)`` of ``rows`` rows
    (see :func:`rows_radix4`; coefficients of the ``T`` pairs at ``s`` in plane ``a``)."""
    kinds = _real_rows_types(src, dst, planar)
    if kinds is None:
        return None
    unit, T, vector, unit_bytes = kinds
    sig = types.void(src, src_offset, src_stride, dst, dst_offset, dst_stride, rows, h, planar, half, s)

    def codegen(context, builder, signature, args):
        src_p, src_off, src_str, dst_p, dst_off, dst_str, n_rows = _row_operands(context, builder, signature, args, unit, (0, 1, 2, 3, 4, 5, 6))
        stride, half_, first = _int64_args(context, builder, signature, args, (7, 9, 10))
        tw = builder.bitcast(_data(context, builder, signature, args, 8), unit.as_pointer())
        coefficients = _planar_coefficients(builder, tw, first, half_, vector, unit_bytes)
        with cgutils.for_range(builder, n_rows) as loop:
            src_row = _row_start(builder, src_off, src_str, loop.index)
            dst_row = _row_start(builder, dst_off, dst_str, loop.index)
            offsets = [ir.Constant(ir.IntType(64), 0), stride]
            x = [builder.load(_vector_at(builder, src_p, builder.add(src_row, o), vector), align=unit_bytes) for o in offsets]
            x = _pair_fma(builder, coefficients, x[0], x[1])
            for value, o in zip(x, offsets):
                builder.store(value, _vector_at(builder, dst_p, builder.add(dst_row, o), vector), align=unit_bytes)
        return context.get_dummy_value()

    return sig, codegen


# Backward of the row-layout steps: each call recomputes its factors' intermediate vectors in
# registers from the stored step input ``act``, turns the output adjoint ``g`` (read from ``gsrc``)
# into the input adjoint (written to ``gdst``; may be the same rows) and adds the coefficient
# gradients ``Σ_rows`` (SPEC.md §4.14 "Grad") to a per-worker accumulator.


def _backward_pair(builder, coefficients, accumulators, low, high, g_low, g_high):
    """Adjoint of ``(y_lo, y_hi) = (a lo + b hi, c lo + d hi)``: adds ``(g_lo lo, g_lo hi, g_hi lo,
    g_hi hi)`` to ``accumulators`` (a list, updated) and returns ``(a g_lo + c g_hi, b g_lo + d
    g_hi)``."""
    a, b, c, d = coefficients
    for e, (g, v) in enumerate(((g_low, low), (g_low, high), (g_high, low), (g_high, high))):
        accumulators[e] = _contract(builder.fadd(accumulators[e], _contract(builder.fmul(g, v))))
    return (
        _contract(builder.fadd(_contract(builder.fmul(a, g_low)), _contract(builder.fmul(c, g_high)))),
        _contract(builder.fadd(_contract(builder.fmul(b, g_low)), _contract(builder.fmul(d, g_high)))),
    )


def _phi_vectors(vector, count):
    """``count`` zero vectors to start loop-carried accumulators from (updated through phi nodes)."""
    return [ir.Constant(vector, None) for _ in range(count)]


def _accumulating_loop(builder, n_rows, initial, body):
    """A loop over ``n_rows`` rows carrying the vectors ``initial`` (phi nodes); ``body(row,
    values)`` returns the updated values. Returns the values after the loop."""
    i64 = ir.IntType(64)
    entry = builder.basic_block
    header = builder.append_basic_block("rows.header")
    loop = builder.append_basic_block("rows.body")
    done = builder.append_basic_block("rows.done")
    builder.branch(header)
    builder.position_at_end(header)
    index = builder.phi(i64)
    index.add_incoming(ir.Constant(i64, 0), entry)
    phis = []
    for value in initial:
        phi = builder.phi(value.type)
        phi.add_incoming(value, entry)
        phis.append(phi)
    builder.cbranch(builder.icmp_signed("<", index, n_rows), loop, done)
    builder.position_at_end(loop)
    updated = body(index, list(phis))
    latch = builder.basic_block
    index.add_incoming(builder.add(index, ir.Constant(i64, 1)), latch)
    for phi, value in zip(phis, updated):
        phi.add_incoming(value, latch)
    builder.branch(header)
    builder.position_at_end(done)
    return phis


def _add_to(builder, pointer, value, unit_bytes):
    """``*pointer += value`` (vectors)."""
    builder.store(builder.fadd(builder.load(pointer, align=unit_bytes), value), pointer, align=unit_bytes)


@intrinsic
def rows_low_levels_backward(typingctx, act, act_offset, act_stride, gsrc, gsrc_offset, gsrc_stride, gdst, gdst_offset, gdst_stride, rows, twiddle, twiddle_offset, level_stride, grad, grad_offset, grad_level_stride, increasing, transposed):
    """Backward of :func:`rows_low_levels` on one ``T``-feature block of ``rows`` rows: ``act`` the
    run's input, ``gsrc`` its output adjoint, ``gdst`` receives the input adjoint (``y = A x + B
    x_{xor h}`` per factor: ``x̄ = A ȳ + (B ȳ)_{xor h}``, ``Ā += ȳ x``, ``B̄ += ȳ x_{xor h}``); the
    gradients of the blocks are added to ``grad`` in the twiddle's layout, factor ``j``'s at
    ``grad_offset + j grad_level_stride``."""
    kinds = _real_rows_types(act, gsrc, gdst, twiddle, grad)
    if kinds is None:
        return None
    unit, T, vector, unit_bytes = kinds
    sig = types.void(act, act_offset, act_stride, gsrc, gsrc_offset, gsrc_stride, gdst, gdst_offset, gdst_stride, rows, twiddle, twiddle_offset, level_stride, grad, grad_offset, grad_level_stride, increasing, transposed)

    def codegen(context, builder, signature, args):
        i64, i32 = ir.IntType(64), ir.IntType(32)
        act_p, act_off, act_str, gdst_p, gdst_off, gdst_str, n_rows = _row_operands(context, builder, signature, args, unit, (0, 1, 2, 6, 7, 8, 9))
        gsrc_p = builder.bitcast(_data(context, builder, signature, args, 3), unit.as_pointer())
        gsrc_off, gsrc_str, tw_off, lvl_str = _int64_args(context, builder, signature, args, (4, 5, 11, 12))
        tw = builder.bitcast(_data(context, builder, signature, args, 10), unit.as_pointer())
        grad_p = builder.bitcast(_data(context, builder, signature, args, 13), unit.as_pointer())
        grad_off, grad_str = _int64_args(context, builder, signature, args, (14, 15))
        rising = context.cast(builder, args[16], signature.args[16], types.boolean)
        flip = context.cast(builder, args[17], signature.args[17], types.boolean)
        mask = lambda values: ir.Constant(ir.VectorType(i32, len(values)), values)  # noqa: E731
        wide = ir.VectorType(unit, 2 * T)

        def apply(strides):
            levels_ = []
            for j, h in enumerate(strides):
                base = builder.add(tw_off, builder.mul(lvl_str, ir.Constant(i64, j)))
                a, b, inverse, inverse_t = _low_coefficients(builder, tw, base, h, T, vector, unit_bytes, flip)
                levels_.append((h, a, b, builder.add(grad_off, builder.mul(grad_str, ir.Constant(i64, j))), inverse, inverse_t))
            permutations = [mask([lane ^ h for lane in range(T)]) for h, *_ in levels_]

            def body(row, sums):
                x = [builder.load(_vector_at(builder, act_p, _row_start(builder, act_off, act_str, row), vector), align=unit_bytes)]
                partners = []
                for (h, a, b, *_), perm in zip(levels_, permutations):
                    partners.append(builder.shuffle_vector(x[-1], x[-1], perm))
                    x.append(_contract(builder.fadd(_contract(builder.fmul(a, x[-1])), _contract(builder.fmul(b, partners[-1])))))
                g = builder.load(_vector_at(builder, gsrc_p, _row_start(builder, gsrc_off, gsrc_str, row), vector), align=unit_bytes)
                for j in range(len(levels_) - 1, -1, -1):
                    h, a, b, *_ = levels_[j]
                    sums[2 * j] = _contract(builder.fadd(sums[2 * j], _contract(builder.fmul(g, x[j]))))
                    sums[2 * j + 1] = _contract(builder.fadd(sums[2 * j + 1], _contract(builder.fmul(g, partners[j]))))
                    bg = _contract(builder.fmul(b, g))
                    g = _contract(builder.fadd(_contract(builder.fmul(a, g)), builder.shuffle_vector(bg, bg, permutations[j])))
                builder.store(g, _vector_at(builder, gdst_p, _row_start(builder, gdst_off, gdst_str, row), vector), align=unit_bytes)
                return sums

            sums = _accumulating_loop(builder, n_rows, _phi_vectors(vector, 2 * len(levels_)), body)
            for j, (h, a, b, base, inverse, inverse_t) in enumerate(levels_):
                entries = builder.select(flip, builder.shuffle_vector(sums[2 * j], sums[2 * j + 1], inverse_t), builder.shuffle_vector(sums[2 * j], sums[2 * j + 1], inverse))
                _add_to(builder, builder.bitcast(builder.gep(grad_p, [base]), wide.as_pointer()), entries, unit_bytes)

        _in_run_order(builder, rising, T, apply)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def rows_radix4_backward(typingctx, act, act_offset, act_stride, gsrc, gsrc_offset, gsrc_stride, gdst, gdst_offset, gdst_stride, rows, h1, h2, planar, half, s1a, s1b, s2a, s2b, grad_planar):
    """Backward of :func:`rows_radix4` (same positions and coefficients): ``act`` the step's input,
    ``gsrc`` its output adjoint, ``gdst`` receives the input adjoint; the coefficient gradients
    are added to ``grad_planar`` at the coefficients' offsets (the same planar layout)."""
    kinds = _real_rows_types(act, gsrc, gdst, planar, grad_planar)
    if kinds is None:
        return None
    unit, T, vector, unit_bytes = kinds
    sig = types.void(act, act_offset, act_stride, gsrc, gsrc_offset, gsrc_stride, gdst, gdst_offset, gdst_stride, rows, h1, h2, planar, half, s1a, s1b, s2a, s2b, grad_planar)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        act_p, act_off, act_str, gdst_p, gdst_off, gdst_str, n_rows = _row_operands(context, builder, signature, args, unit, (0, 1, 2, 6, 7, 8, 9))
        gsrc_p = builder.bitcast(_data(context, builder, signature, args, 3), unit.as_pointer())
        gsrc_off, gsrc_str, first, second, half_, *sets = _int64_args(context, builder, signature, args, (4, 5, 10, 11, 13, 14, 15, 16, 17))
        tw = builder.bitcast(_data(context, builder, signature, args, 12), unit.as_pointer())
        grad_p = builder.bitcast(_data(context, builder, signature, args, 18), unit.as_pointer())
        coefficients = [_planar_coefficients(builder, tw, s, half_, vector, unit_bytes) for s in sets]
        offsets = [ir.Constant(i64, 0), first, second, builder.add(first, second)]

        def body(row, sums):
            act_row = _row_start(builder, act_off, act_str, row)
            x = [builder.load(_vector_at(builder, act_p, builder.add(act_row, o), vector), align=unit_bytes) for o in offsets]
            m = list(x)
            m[0], m[1] = _pair_fma(builder, coefficients[0], x[0], x[1])
            m[2], m[3] = _pair_fma(builder, coefficients[1], x[2], x[3])
            gsrc_row = _row_start(builder, gsrc_off, gsrc_str, row)
            g = [builder.load(_vector_at(builder, gsrc_p, builder.add(gsrc_row, o), vector), align=unit_bytes) for o in offsets]
            acc = [sums[4 * k : 4 * k + 4] for k in range(4)]
            g[0], g[2] = _backward_pair(builder, coefficients[2], acc[2], m[0], m[2], g[0], g[2])
            g[1], g[3] = _backward_pair(builder, coefficients[3], acc[3], m[1], m[3], g[1], g[3])
            g[0], g[1] = _backward_pair(builder, coefficients[0], acc[0], x[0], x[1], g[0], g[1])
            g[2], g[3] = _backward_pair(builder, coefficients[1], acc[1], x[2], x[3], g[2], g[3])
            gdst_row = _row_start(builder, gdst_off, gdst_str, row)
            for value, o in zip(g, offsets):
                builder.store(value, _vector_at(builder, gdst_p, builder.add(gdst_row, o), vector), align=unit_bytes)
            return [v for group in acc for v in group]

        sums = _accumulating_loop(builder, n_rows, _phi_vectors(vector, 16), body)
        for k, s in enumerate(sets):
            for e in range(4):
                pointer = _vector_at(builder, grad_p, builder.add(s, builder.mul(half_, ir.Constant(i64, e))), vector)
                _add_to(builder, pointer, sums[4 * k + e], unit_bytes)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def rows_radix2_backward(typingctx, act, act_offset, act_stride, gsrc, gsrc_offset, gsrc_stride, gdst, gdst_offset, gdst_stride, rows, h, planar, half, s, grad_planar):
    """Backward of :func:`rows_radix2` (see :func:`rows_radix4_backward`)."""
    kinds = _real_rows_types(act, gsrc, gdst, planar, grad_planar)
    if kinds is None:
        return None
    unit, T, vector, unit_bytes = kinds
    sig = types.void(act, act_offset, act_stride, gsrc, gsrc_offset, gsrc_stride, gdst, gdst_offset, gdst_stride, rows, h, planar, half, s, grad_planar)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        act_p, act_off, act_str, gdst_p, gdst_off, gdst_str, n_rows = _row_operands(context, builder, signature, args, unit, (0, 1, 2, 6, 7, 8, 9))
        gsrc_p = builder.bitcast(_data(context, builder, signature, args, 3), unit.as_pointer())
        gsrc_off, gsrc_str, stride, half_, first = _int64_args(context, builder, signature, args, (4, 5, 10, 12, 13))
        tw = builder.bitcast(_data(context, builder, signature, args, 11), unit.as_pointer())
        grad_p = builder.bitcast(_data(context, builder, signature, args, 14), unit.as_pointer())
        coefficients = _planar_coefficients(builder, tw, first, half_, vector, unit_bytes)
        offsets = [ir.Constant(i64, 0), stride]

        def body(row, sums):
            act_row = _row_start(builder, act_off, act_str, row)
            x = [builder.load(_vector_at(builder, act_p, builder.add(act_row, o), vector), align=unit_bytes) for o in offsets]
            gsrc_row = _row_start(builder, gsrc_off, gsrc_str, row)
            g = [builder.load(_vector_at(builder, gsrc_p, builder.add(gsrc_row, o), vector), align=unit_bytes) for o in offsets]
            g = _backward_pair(builder, coefficients, sums, x[0], x[1], g[0], g[1])
            gdst_row = _row_start(builder, gdst_off, gdst_str, row)
            for value, o in zip(g, offsets):
                builder.store(value, _vector_at(builder, gdst_p, builder.add(gdst_row, o), vector), align=unit_bytes)
            return sums

        sums = _accumulating_loop(builder, n_rows, _phi_vectors(vector, 4), body)
        for e in range(4):
            _add_to(builder, _vector_at(builder, grad_p, builder.add(first, builder.mul(half_, ir.Constant(i64, e))), vector), sums[e], unit_bytes)
        return context.get_dummy_value()

    return sig, codegen
