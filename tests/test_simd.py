"""Register transposition (:mod:`structmat.ops.simd`) against NumPy, every dtype the kernels use."""

import numpy as np
import pytest
from numba import njit

from structmat.ops.simd import VECTOR_BYTES, tile_size, transpose_tile


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
