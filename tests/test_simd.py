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
    rows_radix4,
    rows_radix4_backward,
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


def _pair(f, h):
    return (f // (2 * h)) * h + f % h


@njit
def _low(src, so, ss, dst, do, ds, rows, tw, to, ls, increasing, transposed):
    rows_low_levels(src, so, ss, dst, do, ds, rows, tw, to, ls, increasing, transposed)


@njit
def _radix4(src, so, ss, dst, do, ds, rows, h1, h2, planar, half, a, b, c, d):
    rows_radix4(src, so, ss, dst, do, ds, rows, h1, h2, planar, half, a, b, c, d)


@njit
def _radix2(src, so, ss, dst, do, ds, rows, h, planar, half, a):
    rows_radix2(src, so, ss, dst, do, ds, rows, h, planar, half, a)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("increasing", [True, False])
@pytest.mark.parametrize("transposed", [False, True])
def test_rows_low_levels_match_numpy(dtype, increasing, transposed):
    """The factors of strides 1 .. T/2 (or T/2 .. 1) on the T-feature block at f0 of 3 rows, read
    from one array and written to another with other row strides and offsets; factor j's blocks
    at twiddle_offset + j level_stride (negative for the decreasing order here)."""
    t = tile_size(dtype)
    levels, n, rows, f0 = t.bit_length() - 1, 4 * t, 3, t
    rng = np.random.default_rng(3)
    x = rng.standard_normal((rows + 1, n + 5)).astype(dtype)
    tw = rng.standard_normal((levels, n // 2, 2, 2)).astype(dtype)
    dst = np.zeros((rows + 2, n + 3), dtype)
    level_size = n // 2 * 4
    strides = [1 << j for j in range(levels)] if increasing else [t >> (j + 1) for j in range(levels)]
    order = list(range(levels)) if increasing else list(range(levels - 1, -1, -1))
    _low(x.ravel(), (n + 5) + 2 + f0, n + 5, dst.ravel(), 2 * (n + 3) + 1 + f0, n + 3, rows, tw.ravel(), order[0] * level_size + f0 // 2 * 4, (order[1] - order[0]) * level_size, increasing, transposed)
    expected = x[1 : 1 + rows, 2 : 2 + n].astype(np.float64)
    for j, h in enumerate(strides):
        expected = _factor(expected, tw[order[j]].astype(np.float64), h, transposed)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(dst[2 : 2 + rows, 1 + f0 : 1 + f0 + t], expected[:, f0 : f0 + t], rtol=tol, atol=tol)
    dst[2 : 2 + rows, 1 + f0 : 1 + f0 + t] = 0
    assert not dst.any()  # nothing else written


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_radix4_and_radix2_match_numpy(dtype):
    """Factors of strides >= T in place on 3 rows, with planar coefficients (planes a, b, c, d of
    N/2 elements; the second factor's planes after the first's)."""
    t = tile_size(dtype)
    n, rows = 8 * t, 3
    rng = np.random.default_rng(4)
    x = rng.standard_normal((rows, n)).astype(dtype)
    tw1, tw2 = (rng.standard_normal((n // 2, 2, 2)).astype(dtype) for _ in range(2))
    planar = np.concatenate([tw.reshape(-1, 4).T.ravel() for tw in (tw1, tw2)])
    half = n // 2
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for h1, h2 in [(t, 2 * t), (2 * t, t), (t, 4 * t)]:
        y = x.ravel().copy()
        for f in range(0, n, t):
            if not (f & h1 or f & h2):
                _radix4(y, f, n, y, f, n, rows, h1, h2, planar, half, _pair(f, h1), _pair(f + h2, h1), 4 * half + _pair(f, h2), 4 * half + _pair(f + h1, h2))
        expected = _factor(_factor(x.astype(np.float64), tw1.astype(np.float64), h1), tw2.astype(np.float64), h2)
        np.testing.assert_allclose(y.reshape(rows, n), expected, rtol=tol, atol=tol)
    for h in (t, 4 * t):
        y = np.zeros(rows * n, dtype)
        for f in range(0, n, t):
            if not f & h:
                _radix2(x.ravel(), f, n, y, f, n, rows, h, planar, half, _pair(f, h))
        np.testing.assert_allclose(y.reshape(rows, n), _factor(x.astype(np.float64), tw1.astype(np.float64), h), rtol=tol, atol=tol)


def test_row_kernels_reject_complex_arrays():
    from numba.core.errors import TypingError

    z = np.zeros(64, np.complex64)
    with pytest.raises(TypingError):
        _radix2(z, 0, 16, z, 0, 16, 1, 16, z, 16, 0)


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
def _radix2_backward(act, ao, ast, gs, go, gst, gd, gdo, gds, rows, h, planar, half, a, grad_planar):
    rows_radix2_backward(act, ao, ast, gs, go, gst, gd, gdo, gds, rows, h, planar, half, a, grad_planar)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("increasing", [True, False])
@pytest.mark.parametrize("transposed", [False, True])
def test_rows_low_levels_backward_matches_autograd(dtype, increasing, transposed):
    """Input adjoint and block gradients of the small strides on the block at f0 of 3 rows
    against torch autograd (float64) of the same factors."""
    t = tile_size(dtype)
    levels, n, rows, f0 = t.bit_length() - 1, 2 * t, 3, t
    rng = np.random.default_rng(5)
    x, g = (rng.standard_normal((rows, n)).astype(dtype) for _ in range(2))
    tw = rng.standard_normal((levels, n // 2, 2, 2)).astype(dtype)
    strides = [1 << j for j in range(levels)] if increasing else [t >> (j + 1) for j in range(levels)]
    order = list(range(levels)) if increasing else list(range(levels - 1, -1, -1))
    level_size = n // 2 * 4
    # the gradients in their own array, factor j (application order) at j + 1 (one block of padding)
    grad, grad_x = np.zeros((levels + 1) * level_size, dtype), np.zeros_like(x)
    _low_backward(
        x.ravel(), f0, n, g.ravel(), f0, n, grad_x.ravel(), f0, n, rows, tw.ravel(), order[0] * level_size + f0 // 2 * 4, (order[1] - order[0]) * level_size,
        grad, level_size + f0 // 2 * 4, level_size, increasing, transposed,
    )
    xt, twt = torch.tensor(x, dtype=torch.float64, requires_grad=True), torch.tensor(tw, dtype=torch.float64, requires_grad=True)
    y = xt
    for j, h in enumerate(strides):
        y = _factor_torch(y, twt[order[j]], h, transposed)
    (y[:, f0 : f0 + t] * torch.tensor(g[:, f0 : f0 + t], dtype=torch.float64)).sum().backward()
    tol = 2e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(grad_x[:, f0 : f0 + t], xt.grad[:, f0 : f0 + t].numpy(), rtol=tol, atol=tol)
    grad = grad.reshape(levels + 1, n // 2, 2, 2)
    assert not grad[0].any()
    np.testing.assert_allclose(grad[1:], twt.grad.numpy()[order], rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_radix4_and_radix2_backward_match_autograd(dtype):
    t = tile_size(dtype)
    n, rows, half = 8 * t, 3, 4 * t
    rng = np.random.default_rng(6)
    tol = 2e-4 if dtype == np.float32 else 1e-11
    x, g = (rng.standard_normal((rows, n)).astype(dtype) for _ in range(2))
    tws = [rng.standard_normal((half, 2, 2)).astype(dtype) for _ in range(2)]
    planar = np.concatenate([tw.reshape(-1, 4).T.ravel() for tw in tws])
    as_torch = lambda a: torch.tensor(a, dtype=torch.float64, requires_grad=True)  # noqa: E731
    unplanar = lambda p: p.reshape(4, half).T.reshape(half, 2, 2)  # noqa: E731
    for h1, h2 in [(t, 2 * t), (2 * t, t), (t, 4 * t)]:
        grad_planar, adjoint = np.zeros_like(planar), g.ravel().copy()
        for f in range(0, n, t):
            if not (f & h1 or f & h2):  # in place: the adjoint overwrites the output adjoint
                _radix4_backward(x.ravel(), f, n, adjoint, f, n, adjoint, f, n, rows, h1, h2, planar, half, _pair(f, h1), _pair(f + h2, h1), 4 * half + _pair(f, h2), 4 * half + _pair(f + h1, h2), grad_planar)
        xt, t1, t2 = as_torch(x), as_torch(tws[0]), as_torch(tws[1])
        (_factor_torch(_factor_torch(xt, t1, h1), t2, h2) * torch.tensor(g, dtype=torch.float64)).sum().backward()
        np.testing.assert_allclose(adjoint.reshape(rows, n), xt.grad.numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(unplanar(grad_planar[: 4 * half]), t1.grad.numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(unplanar(grad_planar[4 * half :]), t2.grad.numpy(), rtol=tol, atol=tol)
    for h in (t, 4 * t):
        grad_planar, adjoint = np.zeros_like(planar), np.zeros(rows * n, dtype)
        for f in range(0, n, t):
            if not f & h:
                _radix2_backward(x.ravel(), f, n, g.ravel(), f, n, adjoint, f, n, rows, h, planar, half, _pair(f, h), grad_planar)
        xt, t1 = as_torch(x), as_torch(tws[0])
        (_factor_torch(xt, t1, h) * torch.tensor(g, dtype=torch.float64)).sum().backward()
        np.testing.assert_allclose(adjoint.reshape(rows, n), xt.grad.numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(unplanar(grad_planar[: 4 * half]), t1.grad.numpy(), rtol=tol, atol=tol)
