"""LLVM-level helpers for the Numba kernels: register-level transposition (vector shuffles),
butterfly steps on rows of 64-byte vectors, and arrays over raw tensor memory.

Numba has no SIMD types, and LLVM's vectorisers do not turn a scalar tile copy into a transposition
network, so a tile transposed element by element costs a load and a store per element (about 1.5
elements per cycle here). :func:`transpose_tile` emits LLVM IR directly (``numba.extending.intrinsic``):
it loads ``T`` rows of one 64-byte vector each, transposes the ``T x T`` tile with ``T log2 T``
two-input shuffles and stores ``T`` rows -- about 3x fewer instructions per element. ``T`` is 64
bytes over the element size: 16 (float32), 8 (float64, complex64), 4 (complex128) (the row kernels'
``T``, :func:`row_lanes`, counts real numbers instead: 16 float32 and complex64, 8 float64 and
complex128).

The network (any ``T`` a power of two): for ``d = T/2, T/4, ..., 1`` and every row pair
``(i, i + d)`` with ``i & d == 0``, within every ``2d``-element column chunk, row ``i`` keeps its
first ``d`` elements and takes the first ``d`` of row ``i + d``; row ``i + d`` takes the last ``d``
of row ``i`` and keeps its own last ``d``. That swaps the off-diagonal ``d x d`` blocks of every
``2d x 2d`` block; applied for every ``d`` down to 1 it transposes the tile.

Used by :mod:`structmat.ops.butterfly_cpu` to move a chunk of the batch between the ``(B, N)``
layout and the kernels' ``(N, C)`` layout (the batch as the SIMD dimension).

Row-layout butterfly steps (:func:`rows_low_levels`, :func:`rows_radix4`, :func:`rows_radix2` and
their backwards; the row layout of :mod:`structmat.ops.butterfly_cpu`): the features stay along
the vector, so no transposition is needed. Complex rows are block-planar (:class:`_Lanes`,
:func:`rows_planar`): the same code paths run on ``(re, im)`` pairs of vectors. A factor of stride ``h >= T`` pairs whole vectors ``h`` features apart,
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



def row_lanes(dtype) -> int:
    """Features ``T`` of one vector block in the row-layout kernels: 64 bytes over the size of one
    real number (16 for float32 and complex64, 8 for float64 and complex128)."""
    dtype = np.dtype(dtype)
    return VECTOR_BYTES // (dtype.itemsize // (2 if dtype.kind == "c" else 1))


def _rows_dtype(*arrays):
    """The dtype of ``arrays`` when they are all arrays of one float or complex dtype, else ``None``."""
    if not all(isinstance(a, types.Array) for a in arrays) or len({a.dtype for a in arrays}) != 1:
        return None
    dtype = arrays[0].dtype
    return dtype if isinstance(dtype, (types.Float, types.Complex)) else None


class _Lanes:
    """The values of one ``T``-feature block in the row kernels, and their arithmetic.

    Real dtypes: a value is one vector of ``T`` features. Complex dtypes: blocks are *block-planar*
    -- the ``T`` real parts, then the ``T`` imaginary parts (:func:`rows_planar` converts rows from
    and to the interleaved layout) -- and a value is the pair ``(re, im)`` of vectors. A complex
    product costs four real ones. Offsets, strides and plane sizes stay in elements of the arrays'
    dtype (a complex element is two units)."""

    def __init__(self, builder, dtype):
        self.builder = builder
        self.unit, self.parts, self.unit_bytes = _unit(dtype)
        self.complex = self.parts == 2
        self.T = VECTOR_BYTES // self.unit_bytes
        self.vector = ir.VectorType(self.unit, self.T)

    def pointer(self, context, signature, args, position):
        """The data pointer of the array argument at ``position`` as ``unit*``."""
        return self.builder.bitcast(_data(context, self.builder, signature, args, position), self.unit.as_pointer())

    def units(self, element):
        """The unit index of element ``element`` (an int64 value)."""
        return self.builder.mul(element, ir.Constant(ir.IntType(64), 2)) if self.complex else element

    def vector_at(self, data, unit_index, part=0, vector=None):
        """Pointer to the vector (default: one block part) at ``unit_index + part T`` of ``data``."""
        index = self.builder.add(unit_index, ir.Constant(ir.IntType(64), part * self.T)) if part else unit_index
        return self.builder.bitcast(self.builder.gep(data, [index]), (vector or self.vector).as_pointer())

    def load(self, data, element):
        u = self.units(element)
        return tuple(self.builder.load(self.vector_at(data, u, p), align=self.unit_bytes) for p in range(self.parts))

    def store(self, value, data, element):
        u = self.units(element)
        for p, part in enumerate(value):
            self.builder.store(part, self.vector_at(data, u, p), align=self.unit_bytes)

    def add_to(self, data, element, value):
        """``data[element block] += value``."""
        self.store(self.add(self.load(data, element), value), data, element)

    def zeros(self, count):
        return [tuple(ir.Constant(self.vector, None) for _ in range(self.parts)) for _ in range(count)]

    def add(self, x, y):
        return tuple(_contract(self.builder.fadd(p, q)) for p, q in zip(x, y))

    def mul(self, a, x, conj_a=False, conj_x=False):
        """``a x`` lane by lane, ``a`` conjugated first when ``conj_a``, ``x`` when ``conj_x`` (not
        both)."""
        b = self.builder
        prod = lambda p, q: _contract(b.fmul(p, q))  # noqa: E731
        if not self.complex:
            return (prod(a[0], x[0]),)
        (ar, ai), (xr, xi) = a, x
        # (ar + i sa ai)(xr + i sx xi) = ar xr - sa sx ai xi + i (sx ar xi + sa ai xr)
        real = _contract((b.fadd if conj_a or conj_x else b.fsub)(prod(ar, xr), prod(ai, xi)))
        if conj_x:
            imag = b.fsub(prod(ai, xr), prod(ar, xi))
        elif conj_a:
            imag = b.fsub(prod(ar, xi), prod(ai, xr))
        else:
            imag = b.fadd(prod(ar, xi), prod(ai, xr))
        return real, _contract(imag)

    def shuffle(self, x, mask):
        """The lane permutation ``mask`` of every part of ``x``."""
        return tuple(self.builder.shuffle_vector(p, p, mask) for p in x)

    def flat(self, values):
        return [p for v in values for p in v]

    def unflat(self, vectors):
        return [tuple(vectors[i : i + self.parts]) for i in range(0, len(vectors), self.parts)]


def _row_operands(context, builder, signature, args, lanes, positions):
    """``(src, src_offset, src_stride, dst, dst_offset, dst_stride, rows)`` at ``positions``: the
    data pointers as ``unit*`` and the integers as int64."""
    s, so, ss, d, do, ds, r = positions
    so_, ss_, do_, ds_, r_ = _int64_args(context, builder, signature, args, (so, ss, do, ds, r))
    return lanes.pointer(context, signature, args, s), so_, ss_, lanes.pointer(context, signature, args, d), do_, ds_, r_


def _mask(values):
    return ir.Constant(ir.VectorType(ir.IntType(32), len(values)), list(values))


@intrinsic
def rows_planar(typingctx, src, src_offset, src_stride, dst, dst_offset, dst_stride, rows, n, to_planar):
    """``rows`` rows of ``n`` features (a multiple of ``T``) from ``src`` to ``dst`` (may be the same
    rows), complex ones converted from the interleaved layout to the row kernels' block-planar one
    (``to_planar``) or back (:class:`_Lanes`); real ones copied. Offsets and strides in
    elements."""
    dtype = _rows_dtype(src, dst)
    if dtype is None:
        return None
    sig = types.void(src, src_offset, src_stride, dst, dst_offset, dst_stride, rows, n, to_planar)

    def codegen(context, builder, signature, args):
        lanes = _Lanes(builder, dtype)
        T, i64 = lanes.T, ir.IntType(64)
        src_p, src_off, src_str, dst_p, dst_off, dst_str, n_rows = _row_operands(context, builder, signature, args, lanes, (0, 1, 2, 3, 4, 5, 6))
        (n_,) = _int64_args(context, builder, signature, args, (7,))
        planar = context.cast(builder, args[8], signature.args[8], types.boolean)
        blocks = builder.udiv(n_, ir.Constant(i64, T))
        halves = [_mask(range(p, 2 * T, 2)) for p in (0, 1)]  # interleaved pairs -> real, imaginary parts
        pairs = [_mask([h * T // 2 + k // 2 + (k % 2) * T for k in range(T)]) for h in (0, 1)]  # and back

        def convert(masks):
            with cgutils.for_range(builder, n_rows) as row:
                src_row = _row_start(builder, src_off, src_str, row.index)
                dst_row = _row_start(builder, dst_off, dst_str, row.index)
                with cgutils.for_range(builder, blocks) as block:
                    f = builder.mul(block.index, ir.Constant(i64, T))
                    value = lanes.load(src_p, builder.add(src_row, f))
                    if masks:
                        value = tuple(builder.shuffle_vector(value[0], value[1], m) for m in masks)
                    lanes.store(value, dst_p, builder.add(dst_row, f))

        if not lanes.complex:
            convert(None)
        else:
            with builder.if_else(planar) as (then, otherwise):
                with then:
                    convert(halves)
                with otherwise:
                    convert(pairs)
        return context.get_dummy_value()

    return sig, codegen


def _pair_fma(lanes, coefficients, low, high):
    """``(a low + b high, c low + d high)`` for values ``coefficients = (a, b, c, d)``."""
    a, b, c, d = coefficients
    return lanes.add(lanes.mul(a, low), lanes.mul(b, high)), lanes.add(lanes.mul(c, low), lanes.mul(d, high))


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


def _low_coefficients(lanes, twiddle, base, h, flip):
    """``(A, B, to_entries, to_entries_transposed)`` for the factor of stride ``h < T`` on one
    ``T``-feature block whose ``T/2`` pairs' blocks are the ``2 T`` elements at ``base``: the lane
    coefficients (``A``: ``a`` on a pair's low lane, ``d`` on its high lane; ``B``: ``b`` and ``c``,
    swapped when ``flip``) and the shuffle masks taking ``(A, B)``-shaped vectors back to the
    ``2 T`` block entries (for the gradients; one per value of ``flip``). Complex twiddles are
    interleaved: their real and imaginary parts are separated first."""
    builder, T = lanes.builder, lanes.T
    u = lanes.units(base)
    loaded = [builder.load(lanes.vector_at(twiddle, u, e), align=lanes.unit_bytes) for e in range(2 * lanes.parts)]
    if lanes.complex:  # units (re, im) of entries 0 .. T-1, then of T .. 2T-1
        halves = [[builder.shuffle_vector(loaded[2 * k], loaded[2 * k + 1], _mask(range(p, 2 * T, 2))) for k in (0, 1)] for p in (0, 1)]
    else:
        halves = [loaded]
    pairs = [_local_pair(lane, h) for lane in range(T)]
    entries = {}
    for flipped in (False, True):
        roles = [(4 * q + (0 if low else 3), 4 * q + ((2 if low else 1) if flipped else (1 if low else 2))) for q, low in pairs]
        entries[flipped] = [tuple(builder.shuffle_vector(part[0], part[1], _mask([r[k] for r in roles])) for part in halves) for k in (0, 1)]
        source = {}
        for lane, (a_entry, b_entry) in enumerate(roles):
            source[a_entry], source[b_entry] = lane, T + lane
        entries[flipped].append(_mask([source[e] for e in range(2 * T)]))
    a = entries[False][0]
    b = tuple(builder.select(flip, t, f) for t, f in zip(entries[True][1], entries[False][1]))
    return a, b, entries[False][2], entries[True][2]


def _run_levels(lanes, twiddle, offset, level_stride, strides, flip):
    """Per factor of a run of small strides (application order; factor ``j``'s blocks at ``offset
    + j level_stride``): ``(lane permutation, A, B, to_entries, to_entries_transposed)``
    (:func:`_low_coefficients`)."""
    builder, i64 = lanes.builder, ir.IntType(64)
    levels = []
    for j, h in enumerate(strides):
        base = builder.add(offset, builder.mul(level_stride, ir.Constant(i64, j)))
        levels.append((_mask([lane ^ h for lane in range(lanes.T)]), *_low_coefficients(lanes, twiddle, base, h, flip)))
    return levels


def _add_low_gradient(lanes, grad, base, sum_a, sum_b, flip, to_entries, to_entries_t):
    """Adds the lane sums ``(Ā, B̄)`` of one factor back to the ``2 T`` block entries at ``base``
    (the twiddle's layout, interleaved for complex dtypes)."""
    builder, T = lanes.builder, lanes.T
    parts = [builder.select(flip, builder.shuffle_vector(a, b, to_entries_t), builder.shuffle_vector(a, b, to_entries)) for a, b in zip(sum_a, sum_b)]
    if lanes.complex:
        parts = [builder.shuffle_vector(parts[0], parts[1], _mask([k // 2 + (k % 2) * 2 * T for k in range(4 * T)]))]
    wide = ir.VectorType(lanes.unit, 2 * T * lanes.parts)
    pointer = lanes.vector_at(grad, lanes.units(base), vector=wide)
    builder.store(builder.fadd(builder.load(pointer, align=lanes.unit_bytes), parts[0]), pointer, align=lanes.unit_bytes)


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
    §1.4 factors, §4.14 cost; four times that for complex rows, which are block-planar)."""
    dtype = _rows_dtype(src, dst, twiddle)
    if dtype is None:
        return None
    sig = types.void(src, src_offset, src_stride, dst, dst_offset, dst_stride, rows, twiddle, twiddle_offset, level_stride, increasing, transposed)

    def codegen(context, builder, signature, args):
        lanes = _Lanes(builder, dtype)
        src_p, src_off, src_str, dst_p, dst_off, dst_str, n_rows = _row_operands(context, builder, signature, args, lanes, (0, 1, 2, 3, 4, 5, 6))
        tw = lanes.pointer(context, signature, args, 7)
        tw_off, lvl_str = _int64_args(context, builder, signature, args, (8, 9))
        rising = context.cast(builder, args[10], signature.args[10], types.boolean)
        flip = context.cast(builder, args[11], signature.args[11], types.boolean)

        def apply(strides):
            levels = _run_levels(lanes, tw, tw_off, lvl_str, strides, flip)
            with cgutils.for_range(builder, n_rows) as loop:
                x = lanes.load(src_p, _row_start(builder, src_off, src_str, loop.index))
                for permutation, a, b, *_ in levels:
                    x = lanes.add(lanes.mul(a, x), lanes.mul(b, lanes.shuffle(x, permutation)))
                lanes.store(x, dst_p, _row_start(builder, dst_off, dst_str, loop.index))

        _in_run_order(builder, rising, lanes.T, apply)
        return context.get_dummy_value()

    return sig, codegen


def _plane_offsets(builder, offset, half):
    """The element offsets of entries ``a, b, c, d`` of the pairs at ``offset`` (in plane ``a``) of
    a planar twiddle whose planes hold ``half`` elements each."""
    return [builder.add(offset, builder.mul(half, ir.Constant(ir.IntType(64), e))) for e in range(4)]


def _planar_coefficients(lanes, planar, offset, half):
    """The values ``(a, b, c, d)`` of ``T`` consecutive pairs from a planar twiddle (planes ``a, b,
    c, d`` of ``half`` elements each, ``offset`` the first pair's element in plane ``a``;
    block-planar for complex dtypes)."""
    return tuple(lanes.load(planar, at) for at in _plane_offsets(lanes.builder, offset, half))


@intrinsic
def rows_radix4(typingctx, src, src_offset, src_stride, dst, dst_offset, dst_stride, rows, h1, h2, planar, half, s1a, s1b, s2a, s2b):
    """Two factors of strides ``h1`` then ``h2`` (both multiples of ``T``) on the ``T``-feature
    vectors at features ``f + {0, h1, h2, h1 + h2}`` of ``rows`` rows (``src_offset``,
    ``dst_offset``: feature ``f`` of row 0; ``src`` and ``dst`` may be the same rows). First
    factor: pairs ``(f, f + h1)`` with the coefficients at ``s1a``, ``(f + h2, f + h1 + h2)`` at
    ``s1b``; second: ``(f, f + h2)`` at ``s2a``, ``(f + h1, f + h1 + h2)`` at ``s2b`` -- element
    offsets of ``T`` consecutive pairs in plane ``a`` of a planar twiddle (planes ``a, b, c, d``
    ``half`` elements apart, any transposition already applied). The sixteen coefficient values
    stay in registers over the rows (SPEC.md §1.4, §4.14)."""
    dtype = _rows_dtype(src, dst, planar)
    if dtype is None:
        return None
    sig = types.void(src, src_offset, src_stride, dst, dst_offset, dst_stride, rows, h1, h2, planar, half, s1a, s1b, s2a, s2b)

    def codegen(context, builder, signature, args):
        lanes = _Lanes(builder, dtype)
        src_p, src_off, src_str, dst_p, dst_off, dst_str, n_rows = _row_operands(context, builder, signature, args, lanes, (0, 1, 2, 3, 4, 5, 6))
        first, second, half_, *sets = _int64_args(context, builder, signature, args, (7, 8, 10, 11, 12, 13, 14))
        tw = lanes.pointer(context, signature, args, 9)
        coefficients = [_planar_coefficients(lanes, tw, s, half_) for s in sets]
        offsets = [ir.Constant(ir.IntType(64), 0), first, second, builder.add(first, second)]
        with cgutils.for_range(builder, n_rows) as loop:
            src_row = _row_start(builder, src_off, src_str, loop.index)
            dst_row = _row_start(builder, dst_off, dst_str, loop.index)
            x = [lanes.load(src_p, builder.add(src_row, o)) for o in offsets]
            x[0], x[1] = _pair_fma(lanes, coefficients[0], x[0], x[1])
            x[2], x[3] = _pair_fma(lanes, coefficients[1], x[2], x[3])
            x[0], x[2] = _pair_fma(lanes, coefficients[2], x[0], x[2])
            x[1], x[3] = _pair_fma(lanes, coefficients[3], x[1], x[3])
            for value, o in zip(x, offsets):
                lanes.store(value, dst_p, builder.add(dst_row, o))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def rows_radix2(typingctx, src, src_offset, src_stride, dst, dst_offset, dst_stride, rows, h, planar, half, s):
    """One factor of stride ``h`` (a multiple of ``T``) on the pairs ``(f, f + h)`` of ``rows`` rows
    (see :func:`rows_radix4`; coefficients of the ``T`` pairs at ``s`` in plane ``a``)."""
    dtype = _rows_dtype(src, dst, planar)
    if dtype is None:
        return None
    sig = types.void(src, src_offset, src_stride, dst, dst_offset, dst_stride, rows, h, planar, half, s)

    def codegen(context, builder, signature, args):
        lanes = _Lanes(builder, dtype)
        src_p, src_off, src_str, dst_p, dst_off, dst_str, n_rows = _row_operands(context, builder, signature, args, lanes, (0, 1, 2, 3, 4, 5, 6))
        stride, half_, first = _int64_args(context, builder, signature, args, (7, 9, 10))
        tw = lanes.pointer(context, signature, args, 8)
        coefficients = _planar_coefficients(lanes, tw, first, half_)
        offsets = [ir.Constant(ir.IntType(64), 0), stride]
        with cgutils.for_range(builder, n_rows) as loop:
            src_row = _row_start(builder, src_off, src_str, loop.index)
            dst_row = _row_start(builder, dst_off, dst_str, loop.index)
            x = _pair_fma(lanes, coefficients, *(lanes.load(src_p, builder.add(src_row, o)) for o in offsets))
            for value, o in zip(x, offsets):
                lanes.store(value, dst_p, builder.add(dst_row, o))
        return context.get_dummy_value()

    return sig, codegen


# Backward of the row-layout steps: each call turns the output adjoint ``g`` (read from ``gsrc``)
# into the input adjoint (written to ``gdst``, which may be ``act``'s or ``gsrc``'s rows at the same
# offset and stride: every row's vectors are read before its results are stored) and adds
# gradients ``Σ_rows ȳ conj(x)`` (SPEC.md §4.14 "Grad"; torch's convention for complex tensors: the
# input adjoint is ``conj(W)^T ȳ``) to a per-worker accumulator -- the coefficients' for the runs
# of small strides (recomputing the run's intermediate vectors in registers from the stored step
# input ``act``) and radix-2 steps, the step's 4 x 4 matrix for radix-4 steps
# (:func:`rows_radix4_project` turns those into the coefficients').


def _backward_pair(lanes, coefficients, accumulators, low, high, g_low, g_high):
    """Adjoint of ``(y_lo, y_hi) = (a lo + b hi, c lo + d hi)``: adds ``(g_lo lo*, g_lo hi*, g_hi
    lo*, g_hi hi*)`` to ``accumulators`` (a list, updated; ``*`` conjugates) and returns ``(a* g_lo
    + c* g_hi, b* g_lo + d* g_hi)``."""
    for e, (g, v) in enumerate(((g_low, low), (g_low, high), (g_high, low), (g_high, high))):
        accumulators[e] = lanes.add(accumulators[e], lanes.mul(g, v, conj_x=True))
    return _adjoint_pair(lanes, coefficients, g_low, g_high)


def _adjoint_pair(lanes, coefficients, g_low, g_high):
    """The input adjoint of ``(y_lo, y_hi) = (a lo + b hi, c lo + d hi)``: ``(a* g_lo + c* g_hi,
    b* g_lo + d* g_hi)``."""
    a, b, c, d = coefficients
    return (
        lanes.add(lanes.mul(a, g_low, conj_a=True), lanes.mul(c, g_high, conj_a=True)),
        lanes.add(lanes.mul(b, g_low, conj_a=True), lanes.mul(d, g_high, conj_a=True)),
    )


def _accumulating_loop(lanes, n_rows, initial, body):
    """A loop over ``n_rows`` rows carrying the values ``initial`` (phi nodes); ``body(row,
    values)`` returns the updated values. Returns the values after the loop."""
    builder, i64 = lanes.builder, ir.IntType(64)
    entry = builder.basic_block
    header = builder.append_basic_block("rows.header")
    loop = builder.append_basic_block("rows.body")
    done = builder.append_basic_block("rows.done")
    builder.branch(header)
    builder.position_at_end(header)
    index = builder.phi(i64)
    index.add_incoming(ir.Constant(i64, 0), entry)
    phis = []
    for vector in lanes.flat(initial):
        phi = builder.phi(vector.type)
        phi.add_incoming(vector, entry)
        phis.append(phi)
    builder.cbranch(builder.icmp_signed("<", index, n_rows), loop, done)
    builder.position_at_end(loop)
    updated = lanes.flat(body(index, lanes.unflat(phis)))
    latch = builder.basic_block
    index.add_incoming(builder.add(index, ir.Constant(i64, 1)), latch)
    for phi, vector in zip(phis, updated):
        phi.add_incoming(vector, latch)
    builder.branch(header)
    builder.position_at_end(done)
    return lanes.unflat(phis)


def _backward_rows_loop(context, signature, args, lanes, offsets, initial, step):
    """The rows loop of the radix backward intrinsics, whose first ten arguments are ``act, offset,
    stride, gsrc, offset, stride, gdst, offset, stride, rows``: per row, the step input ``x`` and
    the output adjoint ``g`` at the vector ``offsets``, ``step(x, g, sums) -> (input adjoint,
    sums)``, the adjoint stored to ``gdst`` (after every load of the row, so ``gdst`` may be
    ``act``'s or ``gsrc``'s rows). Returns the sums after the last row."""
    builder = lanes.builder
    act_p, act_off, act_str, gdst_p, gdst_off, gdst_str, n_rows = _row_operands(context, builder, signature, args, lanes, (0, 1, 2, 6, 7, 8, 9))
    gsrc_p = lanes.pointer(context, signature, args, 3)
    gsrc_off, gsrc_str = _int64_args(context, builder, signature, args, (4, 5))

    def body(row, sums):
        act_row, gsrc_row = _row_start(builder, act_off, act_str, row), _row_start(builder, gsrc_off, gsrc_str, row)
        x = [lanes.load(act_p, builder.add(act_row, o)) for o in offsets]
        g, sums = step(x, [lanes.load(gsrc_p, builder.add(gsrc_row, o)) for o in offsets], sums)
        gdst_row = _row_start(builder, gdst_off, gdst_str, row)
        for value, o in zip(g, offsets):
            lanes.store(value, gdst_p, builder.add(gdst_row, o))
        return sums

    return _accumulating_loop(lanes, n_rows, initial, body)


@intrinsic
def rows_low_levels_backward(typingctx, act, act_offset, act_stride, gsrc, gsrc_offset, gsrc_stride, gdst, gdst_offset, gdst_stride, rows, twiddle, twiddle_offset, level_stride, grad, grad_offset, grad_level_stride, increasing, transposed):
    """Backward of :func:`rows_low_levels` on one ``T``-feature block of ``rows`` rows: ``act`` the
    run's input, ``gsrc`` its output adjoint, ``gdst`` receives the input adjoint (``y = A x + B
    x_{xor h}`` per factor: ``x̄ = A* ȳ + (B* ȳ)_{xor h}``, ``Ā += ȳ x*``, ``B̄ += ȳ x*_{xor h}``);
    the gradients of the blocks are added to ``grad`` in the twiddle's layout, factor ``j``'s at
    ``grad_offset + j grad_level_stride``."""
    dtype = _rows_dtype(act, gsrc, gdst, twiddle, grad)
    if dtype is None:
        return None
    sig = types.void(act, act_offset, act_stride, gsrc, gsrc_offset, gsrc_stride, gdst, gdst_offset, gdst_stride, rows, twiddle, twiddle_offset, level_stride, grad, grad_offset, grad_level_stride, increasing, transposed)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        lanes = _Lanes(builder, dtype)
        act_p, act_off, act_str, gdst_p, gdst_off, gdst_str, n_rows = _row_operands(context, builder, signature, args, lanes, (0, 1, 2, 6, 7, 8, 9))
        gsrc_p = lanes.pointer(context, signature, args, 3)
        gsrc_off, gsrc_str, tw_off, lvl_str = _int64_args(context, builder, signature, args, (4, 5, 11, 12))
        tw, grad_p = lanes.pointer(context, signature, args, 10), lanes.pointer(context, signature, args, 13)
        grad_off, grad_str = _int64_args(context, builder, signature, args, (14, 15))
        rising = context.cast(builder, args[16], signature.args[16], types.boolean)
        flip = context.cast(builder, args[17], signature.args[17], types.boolean)

        def apply(strides):
            levels_ = _run_levels(lanes, tw, tw_off, lvl_str, strides, flip)

            def body(row, sums):
                x = [lanes.load(act_p, _row_start(builder, act_off, act_str, row))]
                partners = []
                for permutation, a, b, *_ in levels_:
                    partners.append(lanes.shuffle(x[-1], permutation))
                    x.append(lanes.add(lanes.mul(a, x[-1]), lanes.mul(b, partners[-1])))
                g = lanes.load(gsrc_p, _row_start(builder, gsrc_off, gsrc_str, row))
                for j in range(len(levels_) - 1, -1, -1):
                    permutation, a, b, *_ = levels_[j]
                    sums[2 * j] = lanes.add(sums[2 * j], lanes.mul(g, x[j], conj_x=True))
                    sums[2 * j + 1] = lanes.add(sums[2 * j + 1], lanes.mul(g, partners[j], conj_x=True))
                    g = lanes.add(lanes.mul(a, g, conj_a=True), lanes.shuffle(lanes.mul(b, g, conj_a=True), permutation))
                lanes.store(g, gdst_p, _row_start(builder, gdst_off, gdst_str, row))
                return sums

            sums = _accumulating_loop(lanes, n_rows, lanes.zeros(2 * len(levels_)), body)
            for j, (_, _, _, inverse, inverse_t) in enumerate(levels_):
                base = builder.add(grad_off, builder.mul(grad_str, ir.Constant(i64, j)))
                _add_low_gradient(lanes, grad_p, base, sums[2 * j], sums[2 * j + 1], flip, inverse, inverse_t)

        _in_run_order(builder, rising, lanes.T, apply)
        return context.get_dummy_value()

    return sig, codegen


def _radix4_entries(builder, half, sets):
    """Offsets of the 16 planar entries of a radix-4 step's coefficient sets ``(s1a, s1b, s2a,
    s2b)``: set ``k``, entry ``e`` at ``16``-index ``4 k + e``."""
    return [at for s in sets for at in _plane_offsets(builder, s, half)]


@intrinsic
def rows_radix4_backward(typingctx, act, act_offset, act_stride, gsrc, gsrc_offset, gsrc_stride, gdst, gdst_offset, gdst_stride, rows, h1, h2, planar, half, s1a, s1b, s2a, s2b, grad_planar):
    """Backward of :func:`rows_radix4` (same positions and coefficients): ``act`` the step's input,
    ``gsrc`` its output adjoint, ``gdst`` receives the input adjoint.

    The step maps its four vectors by one 4 x 4 matrix ``M`` per lane, ``y = M x``, every entry a
    product of one first-level and one second-level coefficient (derived from the factors of
    SPEC.md §1.4: each output of the second level takes one value of the first). Instead of the
    coefficient gradients (which need the intermediate level, recomputed in registers), the call
    adds the step's *matrix* gradient ``M̄[r, c] = Σ_rows ȳ_r conj(x_c)`` to ``grad_planar`` at the
    coefficients' 16 offsets (``M̄[r, c]`` at set ``r``, entry ``c``): 16 multiply-adds per row
    instead of 16 plus the 8 of the recomputation. It is linear, so it is summed over blocks and
    workers first and turned into the coefficient gradients once (:func:`rows_radix4_project`)."""
    dtype = _rows_dtype(act, gsrc, gdst, planar, grad_planar)
    if dtype is None:
        return None
    sig = types.void(act, act_offset, act_stride, gsrc, gsrc_offset, gsrc_stride, gdst, gdst_offset, gdst_stride, rows, h1, h2, planar, half, s1a, s1b, s2a, s2b, grad_planar)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        lanes = _Lanes(builder, dtype)
        first, second, half_, *sets = _int64_args(context, builder, signature, args, (10, 11, 13, 14, 15, 16, 17))
        tw, grad_p = lanes.pointer(context, signature, args, 12), lanes.pointer(context, signature, args, 18)
        coefficients = [_planar_coefficients(lanes, tw, s, half_) for s in sets]
        offsets = [ir.Constant(i64, 0), first, second, builder.add(first, second)]

        def step(x, g, sums):
            sums = [lanes.add(sums[4 * r + c], lanes.mul(g[r], x[c], conj_x=True)) for r in range(4) for c in range(4)]
            g[0], g[2] = _adjoint_pair(lanes, coefficients[2], g[0], g[2])
            g[1], g[3] = _adjoint_pair(lanes, coefficients[3], g[1], g[3])
            g[0], g[1] = _adjoint_pair(lanes, coefficients[0], g[0], g[1])
            g[2], g[3] = _adjoint_pair(lanes, coefficients[1], g[2], g[3])
            return g, sums

        sums = _backward_rows_loop(context, signature, args, lanes, offsets, lanes.zeros(16), step)
        for entry, value in zip(_radix4_entries(builder, half_, sets), sums):
            lanes.add_to(grad_p, entry, value)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def rows_radix4_project(typingctx, planar, grad_planar, half, s1a, s1b, s2a, s2b):
    """Turns the matrix gradient ``M̄`` of one radix-4 position that :func:`rows_radix4_backward`
    left at the coefficients' offsets of ``grad_planar`` into the coefficient gradients, in place.

    With the first level's pairs ``(a0 b0; c0 d0)``, ``(a1 b1; c1 d1)`` (sets ``s1a, s1b``) and the
    second's ``(a2 b2; c2 d2)``, ``(a3 b3; c3 d3)`` (``s2a, s2b``), ``M[r, c] = P[r, c] Q[r, c]``
    with ``P`` the second-level and ``Q`` the first-level factor of the entry; then ``P̄ = Σ M̄
    conj(Q)`` and ``Q̄ = Σ conj(P) M̄`` over the entries each coefficient takes part in (two each),
    e.g. ``ā2 = conj(a0) M̄00 + conj(b0) M̄01``, ``ā0 = conj(a2) M̄00 + conj(c2) M̄20``."""
    dtype = _rows_dtype(planar, grad_planar)
    if dtype is None:
        return None
    sig = types.void(planar, grad_planar, half, s1a, s1b, s2a, s2b)

    def codegen(context, builder, signature, args):
        lanes = _Lanes(builder, dtype)
        tw, grad_p = lanes.pointer(context, signature, args, 0), lanes.pointer(context, signature, args, 1)
        half_, *sets = _int64_args(context, builder, signature, args, (2, 3, 4, 5, 6))
        entries = _radix4_entries(builder, half_, sets)
        (a0, b0, c0, d0), (a1, b1, c1, d1), (a2, b2, c2, d2), (a3, b3, c3, d3) = (_planar_coefficients(lanes, tw, s, half_) for s in sets)
        m = [lanes.load(grad_p, entry) for entry in entries]  # m[4 r + c] = M̄[r, c]

        def dot(p, i, q, j):  # conj(p) M̄[i] + conj(q) M̄[j]
            return lanes.add(lanes.mul(p, m[i], conj_a=True), lanes.mul(q, m[j], conj_a=True))

        # rows of M: y0 = a2 m0 + b2 m2, y1 = a3 m1 + b3 m3, y2 = c2 m0 + d2 m2, y3 = c3 m1 + d3 m3,
        # with m0 = a0 x0 + b0 x1, m1 = c0 x0 + d0 x1, m2 = a1 x2 + b1 x3, m3 = c1 x2 + d1 x3
        grads = [
            dot(a2, 0, c2, 8), dot(a2, 1, c2, 9), dot(a3, 4, c3, 12), dot(a3, 5, c3, 13),  # a0 b0 c0 d0
            dot(b2, 2, d2, 10), dot(b2, 3, d2, 11), dot(b3, 6, d3, 14), dot(b3, 7, d3, 15),  # a1 b1 c1 d1
            dot(a0, 0, b0, 1), dot(a1, 2, b1, 3), dot(a0, 8, b0, 9), dot(a1, 10, b1, 11),  # a2 b2 c2 d2
            dot(c0, 4, d0, 5), dot(c1, 6, d1, 7), dot(c0, 12, d0, 13), dot(c1, 14, d1, 15),  # a3 b3 c3 d3
        ]
        for entry, value in zip(entries, grads):
            lanes.store(value, grad_p, entry)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def rows_radix2_backward(typingctx, act, act_offset, act_stride, gsrc, gsrc_offset, gsrc_stride, gdst, gdst_offset, gdst_stride, rows, h, planar, half, s, grad_planar):
    """Backward of :func:`rows_radix2` (see :func:`rows_radix4_backward`)."""
    dtype = _rows_dtype(act, gsrc, gdst, planar, grad_planar)
    if dtype is None:
        return None
    sig = types.void(act, act_offset, act_stride, gsrc, gsrc_offset, gsrc_stride, gdst, gdst_offset, gdst_stride, rows, h, planar, half, s, grad_planar)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        lanes = _Lanes(builder, dtype)
        stride, half_, first = _int64_args(context, builder, signature, args, (10, 12, 13))
        tw, grad_p = lanes.pointer(context, signature, args, 11), lanes.pointer(context, signature, args, 14)
        coefficients = _planar_coefficients(lanes, tw, first, half_)

        def step(x, g, sums):
            return _backward_pair(lanes, coefficients, sums, x[0], x[1], g[0], g[1]), sums

        sums = _backward_rows_loop(context, signature, args, lanes, [ir.Constant(i64, 0), stride], lanes.zeros(4), step)
        for at, value in zip(_plane_offsets(builder, first, half_), sums):
            lanes.add_to(grad_p, at, value)
        return context.get_dummy_value()

    return sig, codegen
