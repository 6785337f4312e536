"""The LLVM-level helpers of :mod:`structmat.ops.simd`: register transposition against NumPy (every
dtype the kernels use), arrays over tensor memory."""

import numpy as np
import pytest
import torch
from numba import njit

from structmat.ops.backend import tensor_address
from structmat.ops.simd import TILE_ROWS, VECTOR_BYTES, array_at, fused_levels, tile_rows, tile_size, transpose_tile, transpose_tile_butterfly, transpose_tile_to_rows


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


@njit
def _one_tile_butterfly(src, src_offset, src_stride, dst, dst_offset, dst_stride, tw, tw_offset, level_stride, transposed):
    transpose_tile_butterfly(src, src_offset, src_stride, dst, dst_offset, dst_stride, tw, tw_offset, level_stride, transposed)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("transposed", [False, True])
def test_transpose_tile_butterfly_matches_numpy(dtype, transposed):
    """The tile of features f0 .. f0 + T - 1 of T rows, transposed, then factors of strides 1, 2,
    ..., T/2 with the blocks of pairs f0/2 + p (level l at l * level_stride), written as 2 x 2
    matrices applied to NumPy arrays."""
    t, levels = tile_size(dtype), fused_levels(dtype)
    n, f0 = 4 * t, t
    rng = np.random.default_rng(1)
    x = rng.standard_normal((t + 2, n)).astype(dtype)
    tw = rng.standard_normal((levels + 1, n // 2, 2, 2)).astype(dtype)
    dst = np.zeros((t, t + 3), dtype)
    level_stride = n // 2 * 4
    _one_tile_butterfly(x, 2 * n + f0, n, dst, 3, dst.shape[1], tw.reshape(-1), f0 // 2 * 4, level_stride, transposed)
    expected = x[2 : 2 + t, f0 : f0 + t].T.astype(np.float64)  # rows: features, columns: batch rows
    for level in range(levels):
        h = 1 << level
        out = expected.copy()
        for p in range(t // 2):
            i = (p // h) * 2 * h + p % h
            block = tw[level, f0 // 2 + p].astype(np.float64)
            block = block.T if transposed else block
            out[i], out[i + h] = block @ np.stack([expected[i], expected[i + h]])
        expected = out
    np.testing.assert_allclose(dst[:, 3:], expected, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5 if dtype == np.float32 else 1e-12)
    assert not dst[:, :3].any()


def test_fused_levels_only_for_real_dtypes():
    assert (fused_levels(np.float32), fused_levels(np.float64)) == (4, 3)
    assert fused_levels(np.complex64) == fused_levels(np.complex128) == 0


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



@njit
def _one_tile_to_rows(src, src_offset, src_stride, dst, dst_offset, dst_stride):
    transpose_tile_to_rows(src, src_offset, src_stride, dst, dst_offset, dst_stride)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
def test_transpose_tile_to_rows_matches_numpy(dtype):
    """``T`` source rows of ``R = tile_rows`` elements land as ``R`` destination rows of ``T``."""
    t, r = tile_size(dtype), tile_rows(dtype)
    assert r == min(t, TILE_ROWS) and t % r == 0
    rng = np.random.default_rng(2)
    src = rng.standard_normal((2 * t, 3 * r + 1))
    if np.dtype(dtype).kind == "c":
        src = src + 1j * rng.standard_normal(src.shape)
    src = src.astype(dtype)
    dst = np.zeros((r + 3, 2 * t + 5), dtype)
    # source rows 3 .. 3 + T, columns 2 .. 2 + R -> destination rows 1 .. 1 + R, columns 4 .. 4 + T
    _one_tile_to_rows(src, 3 * src.shape[1] + 2, src.shape[1], dst, dst.shape[1] + 4, dst.shape[1])
    expected = np.zeros_like(dst)
    expected[1 : 1 + r, 4 : 4 + t] = src[3 : 3 + t, 2 : 2 + r].T
    np.testing.assert_array_equal(dst, expected)
