"""The LLVM-level helpers of :mod:`structmat.ops.simd`: register transposition against NumPy (every
dtype the kernels use), arrays over tensor memory."""

import numpy as np
import pytest
import torch
from numba import njit

from structmat.ops.backend import tensor_address
from structmat.ops.simd import (
    VECTOR_BYTES,
    array_at,
    rows_low_levels,
    rows_low_levels_backward,
    rows_radix2,
    rows_radix2_backward,
    rows_planar,
    rows_radix4,
    rows_radix4_backward,
    rows_radix4_project,
    row_lanes,
    tile_size,
    transpose_tile,
)


@njit
def _one_tile(src, src_offset, src_stride, dst, dst_offset, dst_stride):
    transpose_tile(src, src_offset, src_stride, dst, dst_offset, dst_stride)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
def test_transpose_tile_matches_numpy(dtype):
    t = tile_size(dtype)
    assert t * np.dtype(dtype).itemsize == VECTOR_BYTES
    rng = np.random.default_rng(0)
    src = rng.standard_normal((3 * t, 2 * t + 3))
    if np.dtype(dtype).kind == "c":
        src = src + 1j * rng.standard_normal(src.shape)
    src = src.astype(dtype)
    dst = np.zeros((2 * t + 1, 5 * t), dtype)
    # the tile at rows 1.., columns 3.. of src lands at rows 2.., columns 7.. of dst, transposed
    _one_tile(src, src.shape[1] + 3, src.shape[1], dst, 2 * dst.shape[1] + 7, dst.shape[1])
    expected = np.zeros_like(dst)
    expected[2 : 2 + t, 7 : 7 + t] = src[1 : 1 + t, 3 : 3 + t].T
    np.testing.assert_array_equal(dst, expected)


def test_transpose_tile_rejects_integer_arrays():
    with pytest.raises(Exception, match="float or complex"):
        _one_tile(np.zeros((16, 16), np.int32), 0, 16, np.zeros((16, 16), np.int32), 0, 16)


@njit
def _doubled(at, like):
    array = array_at(at, like)
    array *= 2
    return array.shape


def test_array_at_views_the_tensor_memory():
    t = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    assert _doubled(tensor_address(t), np.empty(0, np.float64)) == (3, 4)
    assert torch.equal(t, 2 * torch.arange(12, dtype=torch.float64).reshape(3, 4))


def test_tensor_address_rejects_views_the_kernels_cannot_read():
    t = torch.randn(4, 6)
    for bad in (t.T, t[:, ::2], torch.randn(3, dtype=torch.complex64).conj()):
        with pytest.raises(ValueError, match="^t: expected a contiguous CPU tensor"):
            tensor_address(bad, "t")



# ---------------------------------------------------------------------------------------------
# Row-layout butterfly steps


def _factor(x, tw, h, transposed=False):
    """One butterfly factor of stride ``h`` on the rows of ``x`` (SPEC.md §1.4), in float64."""
    y = x.copy()
    for p in range(x.shape[1] // 2):
        i = (p // h) * 2 * h + p % h
        block = tw[p].T if transposed else tw[p]
        y[:, i], y[:, i + h] = block @ np.stack([x[:, i], x[:, i + h]])
    return y


def _random(rng, shape, dtype):
    a = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        a = a + 1j * rng.standard_normal(shape)
    return a.astype(dtype)


def _wide(dtype):
    """The float64 / complex128 reference dtype for ``dtype``."""
    return np.complex128 if np.dtype(dtype).kind == "c" else np.float64


def _tolerance(dtype):
    return 2e-4 if np.dtype(dtype) in (np.float32, np.complex64) else 1e-11


def _block_planar(a, to_planar=True, start=0, blocks=None):
    """``a`` (rows of complex numbers; real ones are returned as they are) with the ``T``-element
    blocks from element ``start`` on converted to the row kernels' block-planar layout (the ``T``
    real parts, then the ``T`` imaginary parts) or back."""
    a = np.array(a)
    if a.dtype.kind != "c":
        return a
    t = row_lanes(a.dtype)
    units = a.view(a.real.dtype)
    blocks = (a.shape[-1] - start) // t if blocks is None else blocks
    for b in range(blocks):
        u = 2 * (start + b * t)
        chunk = units[..., u : u + 2 * t].copy()
        if to_planar:
            units[..., u : u + t], units[..., u + t : u + 2 * t] = chunk[..., 0::2], chunk[..., 1::2]
        else:
            units[..., u : u + 2 * t : 2], units[..., u + 1 : u + 2 * t : 2] = chunk[..., :t], chunk[..., t:]
    return a


def _pair(f, h):
    return (f // (2 * h)) * h + f % h


@njit
def _low(src, so, ss, dst, do, ds, rows, tw, to, ls, increasing, transposed):
    rows_low_levels(src, so, ss, dst, do, ds, rows, tw, to, ls, increasing, transposed)


@njit
def _planar(src, so, ss, dst, do, ds, rows, n, to_planar):
    rows_planar(src, so, ss, dst, do, ds, rows, n, to_planar)


@njit
def _radix4(src, so, ss, dst, do, ds, rows, h1, h2, planar, half, a, b, c, d):
    rows_radix4(src, so, ss, dst, do, ds, rows, h1, h2, planar, half, a, b, c, d)


@njit
def _radix2(src, so, ss, dst, do, ds, rows, h, planar, half, a):
    rows_radix2(src, so, ss, dst, do, ds, rows, h, planar, half, a)


DTYPES = [np.float32, np.float64, np.complex64, np.complex128]


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_planar_converts_complex_rows_and_copies_real_ones(dtype):
    """Rows between other row strides and offsets: complex ones become block-planar and back,
    real ones are copied; nothing else is written."""
    t = row_lanes(dtype)
    assert t * np.dtype(dtype).itemsize == VECTOR_BYTES * (2 if np.dtype(dtype).kind == "c" else 1)
    n, rows = 3 * t, 4
    rng = np.random.default_rng(2)
    x = _random(rng, (rows + 1, n + 5), dtype)
    dst = np.zeros((rows + 2, n + 3), dtype)
    _planar(x.ravel(), (n + 5) + 2, n + 5, dst.ravel(), 2 * (n + 3) + 1, n + 3, rows, n, True)
    expected = _block_planar(x[1:, 2 : 2 + n])
    np.testing.assert_array_equal(dst[2:, 1 : 1 + n], expected)
    assert not dst[:2].any() and not dst[:, 0].any() and not dst[:, 1 + n :].any()
    back = dst.copy()  # in place
    _planar(back.ravel(), 2 * (n + 3) + 1, n + 3, back.ravel(), 2 * (n + 3) + 1, n + 3, rows, n, False)
    np.testing.assert_array_equal(back[2:, 1 : 1 + n], x[1:, 2 : 2 + n])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("increasing", [True, False])
@pytest.mark.parametrize("transposed", [False, True])
def test_rows_low_levels_match_numpy(dtype, increasing, transposed):
    """The factors of strides 1 .. T/2 (or T/2 .. 1) on the T-feature block at f0 of 3 rows, read
    from one array and written to another with other row strides and offsets; factor j's blocks
    at twiddle_offset + j level_stride (negative for the decreasing order here). Complex rows
    are block-planar, complex twiddles as they are."""
    t = row_lanes(dtype)
    levels, n, rows, f0 = t.bit_length() - 1, 4 * t, 3, t
    rng = np.random.default_rng(3)
    x = _random(rng, (rows + 1, n + 5), dtype)
    tw = _random(rng, (levels, n // 2, 2, 2), dtype)
    dst = np.zeros((rows + 2, n + 3), dtype)
    level_size = n // 2 * 4
    strides = [1 << j for j in range(levels)] if increasing else [t >> (j + 1) for j in range(levels)]
    order = list(range(levels)) if increasing else list(range(levels - 1, -1, -1))
    src = _block_planar(x, start=2 + f0, blocks=1)
    _low(src.ravel(), (n + 5) + 2 + f0, n + 5, dst.ravel(), 2 * (n + 3) + 1 + f0, n + 3, rows, tw.ravel(), order[0] * level_size + f0 // 2 * 4, (order[1] - order[0]) * level_size, increasing, transposed)
    expected = x[1 : 1 + rows, 2 : 2 + n].astype(_wide(dtype))
    for j, h in enumerate(strides):
        expected = _factor(expected, tw[order[j]].astype(_wide(dtype)), h, transposed)
    tol = 1e-5 if np.dtype(dtype) in (np.float32, np.complex64) else 1e-12
    got = _block_planar(dst, to_planar=False, start=1 + f0, blocks=1)
    np.testing.assert_allclose(got[2 : 2 + rows, 1 + f0 : 1 + f0 + t], expected[:, f0 : f0 + t], rtol=tol, atol=tol)
    dst[2 : 2 + rows, 1 + f0 : 1 + f0 + t] = 0
    assert not dst.any()  # nothing else written


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_radix4_and_radix2_match_numpy(dtype):
    """Factors of strides >= T in place on 3 rows, with planar coefficients (planes a, b, c, d of
    N/2 elements; the second factor's planes after the first's; block-planar for complex)."""
    t = row_lanes(dtype)
    n, rows = 8 * t, 3
    rng = np.random.default_rng(4)
    x = _random(rng, (rows, n), dtype)
    tw1, tw2 = (_random(rng, (n // 2, 2, 2), dtype) for _ in range(2))
    planar = _block_planar(np.concatenate([tw.reshape(-1, 4).T.ravel() for tw in (tw1, tw2)]))
    half = n // 2
    tol = 1e-5 if np.dtype(dtype) in (np.float32, np.complex64) else 1e-12
    wide = _wide(dtype)
    for h1, h2 in [(t, 2 * t), (2 * t, t), (t, 4 * t)]:
        y = _block_planar(x).ravel()
        for f in range(0, n, t):
            if not (f & h1 or f & h2):
                _radix4(y, f, n, y, f, n, rows, h1, h2, planar, half, _pair(f, h1), _pair(f + h2, h1), 4 * half + _pair(f, h2), 4 * half + _pair(f + h1, h2))
        expected = _factor(_factor(x.astype(wide), tw1.astype(wide), h1), tw2.astype(wide), h2)
        np.testing.assert_allclose(_block_planar(y.reshape(rows, n), to_planar=False), expected, rtol=tol, atol=tol)
    for h in (t, 4 * t):
        y = np.zeros(rows * n, dtype)
        for f in range(0, n, t):
            if not f & h:
                _radix2(_block_planar(x).ravel(), f, n, y, f, n, rows, h, planar, half, _pair(f, h))
        np.testing.assert_allclose(_block_planar(y.reshape(rows, n), to_planar=False), _factor(x.astype(wide), tw1.astype(wide), h), rtol=tol, atol=tol)


def test_row_kernels_reject_mixed_and_integer_arrays():
    from numba.core.errors import TypingError

    z, r = np.zeros(64, np.complex64), np.zeros(64, np.float32)
    with pytest.raises(TypingError):
        _radix2(z, 0, 16, r, 0, 16, 1, 16, z, 16, 0)
    with pytest.raises(TypingError):
        _planar(np.zeros(64, np.int32), 0, 16, np.zeros(64, np.int32), 0, 16, 1, 16, True)


def _factor_torch(x, tw, h, transposed=False):
    """:func:`_factor` in torch (differentiable)."""
    p = torch.arange(x.shape[1] // 2)
    i = (p // h) * 2 * h + p % h
    block = tw.transpose(-1, -2) if transposed else tw
    low, high = x[:, i], x[:, i + h]
    y = torch.zeros_like(x).index_copy(1, i, block[:, 0, 0] * low + block[:, 0, 1] * high)
    return y.index_copy(1, i + h, block[:, 1, 0] * low + block[:, 1, 1] * high)


@njit
def _low_backward(act, ao, ast, gs, go, gst, gd, gdo, gds, rows, tw, to, ls, grad, gro, grs, increasing, transposed):
    rows_low_levels_backward(act, ao, ast, gs, go, gst, gd, gdo, gds, rows, tw, to, ls, grad, gro, grs, increasing, transposed)


@njit
def _radix4_backward(act, ao, ast, gs, go, gst, gd, gdo, gds, rows, h1, h2, planar, half, a, b, c, d, grad_planar):
    rows_radix4_backward(act, ao, ast, gs, go, gst, gd, gdo, gds, rows, h1, h2, planar, half, a, b, c, d, grad_planar)


@njit
def _radix4_project(planar, grad_planar, half, a, b, c, d):
    rows_radix4_project(planar, grad_planar, half, a, b, c, d)


@njit
def _radix2_backward(act, ao, ast, gs, go, gst, gd, gdo, gds, rows, h, planar, half, a, grad_planar):
    rows_radix2_backward(act, ao, ast, gs, go, gst, gd, gdo, gds, rows, h, planar, half, a, grad_planar)


def _as_torch(a):
    return torch.tensor(a.astype(_wide(a.dtype)), requires_grad=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("increasing", [True, False])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("over_input", [False, True])
def test_rows_low_levels_backward_matches_autograd(dtype, increasing, transposed, over_input):
    """Input adjoint and block gradients of the small strides on the block at f0 of 3 rows
    against torch autograd (float64 / complex128: torch's conjugate convention) of the same
    factors; ``over_input``: the adjoint overwrites the step input (the row backward's walk)."""
    t = row_lanes(dtype)
    levels, n, rows, f0 = t.bit_length() - 1, 2 * t, 3, t
    rng = np.random.default_rng(5)
    x, g = (_random(rng, (rows, n), dtype) for _ in range(2))
    tw = _random(rng, (levels, n // 2, 2, 2), dtype)
    strides = [1 << j for j in range(levels)] if increasing else [t >> (j + 1) for j in range(levels)]
    order = list(range(levels)) if increasing else list(range(levels - 1, -1, -1))
    level_size = n // 2 * 4
    # the gradients in their own array, factor j (application order) at j + 1 (one block of padding)
    grad, act = np.zeros((levels + 1) * level_size, dtype), _block_planar(x)
    grad_x = act if over_input else np.zeros_like(x)
    _low_backward(
        act.ravel(), f0, n, _block_planar(g).ravel(), f0, n, grad_x.ravel(), f0, n, rows, tw.ravel(), order[0] * level_size + f0 // 2 * 4, (order[1] - order[0]) * level_size,
        grad, level_size + f0 // 2 * 4, level_size, increasing, transposed,
    )
    xt, twt = _as_torch(x), _as_torch(tw)
    y = xt
    for j, h in enumerate(strides):
        y = _factor_torch(y, twt[order[j]], h, transposed)
    y[:, f0 : f0 + t].backward(torch.tensor(g[:, f0 : f0 + t].astype(_wide(dtype))))
    tol = _tolerance(dtype)
    np.testing.assert_allclose(_block_planar(grad_x, to_planar=False)[:, f0 : f0 + t], xt.grad[:, f0 : f0 + t].numpy(), rtol=tol, atol=tol)
    grad = grad.reshape(levels + 1, n // 2, 2, 2)
    assert not grad[0].any()
    np.testing.assert_allclose(grad[1:], twt.grad.numpy()[order], rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_radix4_and_radix2_backward_match_autograd(dtype):
    t = row_lanes(dtype)
    n, rows, half = 8 * t, 3, 4 * t
    rng = np.random.default_rng(6)
    tol = _tolerance(dtype)
    x, g = (_random(rng, (rows, n), dtype) for _ in range(2))
    tws = [_random(rng, (half, 2, 2), dtype) for _ in range(2)]
    planar = _block_planar(np.concatenate([tw.reshape(-1, 4).T.ravel() for tw in tws]))
    unplanar = lambda p: _block_planar(p, to_planar=False).reshape(4, half).T.reshape(half, 2, 2)  # noqa: E731
    g_wide = torch.tensor(g.astype(_wide(dtype)))
    for h1, h2 in [(t, 2 * t), (2 * t, t), (t, 4 * t)]:
        grad_planar = np.zeros_like(planar)
        positions = [(f, _pair(f, h1), _pair(f + h2, h1), 4 * half + _pair(f, h2), 4 * half + _pair(f + h1, h2)) for f in range(0, n, t) if not (f & h1 or f & h2)]
        act, output_adjoint = _block_planar(x).ravel(), _block_planar(g).ravel()
        for r0, count in ((0, 2), (2, 1)):  # two blocks of rows: their matrix gradients add up, projected once
            for f, *sets in positions:  # the adjoint overwrites the step input (the row backward's walk)
                at = r0 * n + f
                _radix4_backward(act, at, n, output_adjoint, at, n, act, at, n, count, h1, h2, planar, half, *sets, grad_planar)
        for f, *sets in positions:
            _radix4_project(planar, grad_planar, half, *sets)
        adjoint = act
        xt, t1, t2 = _as_torch(x), _as_torch(tws[0]), _as_torch(tws[1])
        _factor_torch(_factor_torch(xt, t1, h1), t2, h2).backward(g_wide)
        np.testing.assert_allclose(_block_planar(adjoint.reshape(rows, n), to_planar=False), xt.grad.numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(unplanar(grad_planar[: 4 * half]), t1.grad.numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(unplanar(grad_planar[4 * half :]), t2.grad.numpy(), rtol=tol, atol=tol)
    for h in (t, 4 * t):
        grad_planar, adjoint = np.zeros_like(planar), _block_planar(x).ravel()
        for f in range(0, n, t):
            if not f & h:  # the adjoint overwrites the step input
                _radix2_backward(adjoint, f, n, _block_planar(g).ravel(), f, n, adjoint, f, n, rows, h, planar, half, _pair(f, h), grad_planar)
        xt, t1 = _as_torch(x), _as_torch(tws[0])
        _factor_torch(xt, t1, h).backward(g_wide)
        np.testing.assert_allclose(_block_planar(adjoint.reshape(rows, n), to_planar=False), xt.grad.numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(unplanar(grad_planar[: 4 * half]), t1.grad.numpy(), rtol=tol, atol=tol)
