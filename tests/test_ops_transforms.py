"""Parity tests of the fast Walsh–Hadamard and DCT kernels (SPEC.md §6.3, §6.4, check C1):
every backend present against the pure-PyTorch reference and against scipy (E64)."""

import pytest
import scipy.fft
import scipy.linalg
import torch

from structmat import ops
from structmat.ops.dct import dct2, dct2_reference, dct3, dct3_reference, dct_flops
from structmat.ops.hadamard import hadamard_flops, hadamard_reference, hadamard_transform

from helpers import rel_error

DTYPES = [torch.float64, torch.complex128]


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 32, 64, 128, 1024])
@pytest.mark.parametrize("dtype", DTYPES)
def test_hadamard_matches_scipy_and_reference(n, dtype):
    x = torch.randn(3, 2, n, dtype=dtype)
    H = torch.tensor(scipy.linalg.hadamard(n), dtype=dtype)
    fast, ref = hadamard_transform(x), hadamard_reference(x)
    assert rel_error(fast, x @ H) <= 1e-12
    assert rel_error(ref, x @ H) <= 1e-12
    with ops.use_reference():
        assert rel_error(hadamard_transform(x), ref) == 0.0


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 17, 100, 1024])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dct_matches_scipy_and_reference(n, dtype):
    x = torch.randn(4, n, dtype=dtype)
    for fast, reference, kind in [(dct2, dct2_reference, 2), (dct3, dct3_reference, 3)]:
        expected = torch.from_numpy(scipy.fft.dct(x.numpy(), type=kind, norm="ortho"))
        assert rel_error(fast(x), expected) <= 1e-12
        assert rel_error(reference(x), expected) <= 1e-12
    assert rel_error(dct3(dct2(x)), x) <= 1e-12


def test_float32_and_batch_shapes():
    x = torch.randn(2, 3, 64)
    assert hadamard_transform(x).dtype == torch.float32 and dct2(x).shape == (2, 3, 64)
    expected = torch.from_numpy(scipy.fft.dct(x.double().numpy(), type=2, norm="ortho"))
    assert rel_error(dct2(x).double(), expected) <= 1e-5
    assert hadamard_transform(torch.randn(0, 8)).shape == (0, 8)
    assert dct3(torch.randn(0, 5)).shape == (0, 5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gradcheck_custom_ops(dtype):
    x = torch.randn(3, 16, dtype=dtype, requires_grad=True)
    for fn in (hadamard_transform, dct2, dct3):
        assert torch.autograd.gradcheck(fn, (x,))
    y = torch.randn(2, 7, dtype=dtype, requires_grad=True)
    assert torch.autograd.gradcheck(dct2, (y,)) and torch.autograd.gradcheck(dct3, (y,))


def test_custom_ops_under_torch_compile():
    torch._dynamo.reset()

    def pipeline(x):
        return dct3(hadamard_transform(x) * 2.0) + dct2(x)

    compiled = torch.compile(pipeline, backend="aot_eager", fullgraph=True)
    x = torch.randn(4, 32, dtype=torch.float64, requires_grad=True)
    assert rel_error(compiled(x), pipeline(x)) <= 1e-12
    compiled(x).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    torch.library.opcheck(torch.ops.structmat.hadamard.default, (torch.randn(3, 8),))
    torch.library.opcheck(torch.ops.structmat.dct2.default, (torch.randn(3, 6),))
    torch.library.opcheck(torch.ops.structmat.dct3.default, (torch.randn(3, 6),))


def test_bad_input():
    with pytest.raises(ValueError, match="power of two"):
        hadamard_transform(torch.randn(2, 6))
    with pytest.raises(TypeError, match="x"):
        hadamard_transform(torch.ones(2, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="x"):
        dct2([1.0, 2.0])
    with pytest.raises(ValueError, match="x"):
        dct3(torch.tensor(1.0))


def test_flop_counts():
    assert hadamard_flops(8) == 24 and hadamard_flops(8, torch.complex64) == 48
    assert dct_flops(1024) > dct_flops(512) > 0
