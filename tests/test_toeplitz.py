"""Circulant / Toeplitz / Hankel: FFT kernels (SPEC.md §4.5–4.7, check E3) and optimal projections."""

import pytest
import torch

from structmat.families.toeplitz import Circulant, Hankel, Toeplitz
from structmat.ops import circulant as C
from structmat.ops import use_reference
from structmat.ops.krylov import krylov_matrix

from helpers import rel_error


def shift(n, f):
    from structmat.families.ldr import shift_matrix

    return shift_matrix(n, f, torch.float64)


@pytest.mark.parametrize("f", [1.0, -1.0, 0.0, 2.5])
@pytest.mark.parametrize("n", [1, 5, 8, 13])
def test_krylov_of_shift_is_f_circulant(n, f):
    """E3: K(Z_f, v) is the f-circulant with first column v."""
    v = torch.randn(n, dtype=torch.float64)
    K = krylov_matrix(lambda u: u @ shift(n, f).T, v[None])[0]
    assert rel_error(K, C.f_circulant_matrix(v, f)) <= 1e-12


@pytest.mark.parametrize("n", [1, 6, 16, 33])
def test_skew_circulant_by_beta_scaling(n):
    """E3: Z_{-1}(c) = D_β⁻¹ C(D_β c) D_β, the reference path."""
    c = torch.randn(n, dtype=torch.float64)
    x = torch.randn(3, n, dtype=torch.float64)
    dense = C.f_circulant_matrix(c, -1.0)
    assert rel_error(C.f_circulant_multiply_reference(c, x, -1.0), x @ dense.T) <= 1e-12


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128, torch.float32, torch.complex64])
@pytest.mark.parametrize("n", [1, 7, 64, 100])
def test_fast_kernels_match_reference_and_dense(dtype, n):
    tol = 1e-10 if dtype in (torch.float64, torch.complex128) else 1e-4
    c = torch.randn(n, dtype=dtype)
    x = torch.randn(4, n, dtype=dtype)
    for f in (1.0, -1.0, 0.0):
        dense = C.f_circulant_matrix(c.to(torch.complex128 if dtype.is_complex else torch.float64), f)
        expected = x.to(dense.dtype) @ dense.T
        assert rel_error(C.f_circulant_multiply(c, x, f), expected) <= tol
        with use_reference():
            assert rel_error(C.f_circulant_multiply(c, x, f), expected) <= tol
        assert rel_error(C.f_circulant_transpose_multiply(c, x, f), x.to(dense.dtype) @ dense) <= tol
    G, H = torch.randn(3, n, dtype=dtype), torch.randn(3, n, dtype=dtype)
    fast = C.f_circulant_krylov_multiply(G, H, x, 1, -1)
    reference = C.f_circulant_krylov_multiply_reference(G, H, x, 1, -1)
    assert rel_error(fast, reference) <= tol
    m = 5
    d = torch.randn(m + n - 1, dtype=dtype)
    assert rel_error(C.toeplitz_multiply(d, x, m), x @ C.toeplitz_matrix(d, m, n).T) <= tol


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("f, g", [(1, -1), (-1, 1), (1, 1), (-1, -1)])
def test_krylov_sum_in_row_blocks_matches_reference(monkeypatch, dtype, f, g):
    """Rows processed in several cache-sized blocks (the last one ragged) give the one-call result;
    the gradients through the blocks too."""
    n, rank, batch = 12, 3, 11
    monkeypatch.setattr(C, "KRYLOV_BLOCK_BYTES", 4 * rank * n * torch.empty((), dtype=dtype).element_size())
    monkeypatch.setattr(C, "MIN_BLOCK_ROWS", 1)
    G = torch.randn(rank, n, dtype=dtype, requires_grad=True)
    H = torch.randn(rank, n, dtype=dtype, requires_grad=True)
    x = torch.randn(batch, n, dtype=dtype)
    fast = C.f_circulant_krylov_multiply(G, H, x, f, g)
    reference = C.f_circulant_krylov_multiply_reference(G, H, x, f, g)
    assert rel_error(fast, reference) <= 1e-10
    weights = torch.randn_like(fast)
    fast_grads = torch.autograd.grad((fast * weights.conj()).real.sum(), (G, H))
    reference_grads = torch.autograd.grad((reference * weights.conj()).real.sum(), (G, H))
    for fast_grad, reference_grad in zip(fast_grads, reference_grads):
        assert rel_error(fast_grad, reference_grad) <= 1e-10


def test_empty_batch():
    c = torch.randn(6)
    assert C.f_circulant_multiply(c, torch.randn(0, 6), -1.0).shape == (0, 6)
    assert C.toeplitz_multiply(torch.randn(8), torch.randn(0, 6), 3).shape == (0, 3)


def _least_squares_projection(W, basis):
    """Frobenius projection of W onto span(basis) by least squares (the reference)."""
    A = torch.stack([b.reshape(-1) for b in basis], dim=1)
    coef = torch.linalg.lstsq(A, W.reshape(-1, 1)).solution
    return (A @ coef).reshape(W.shape)


def _basis(layer_cls, m, n):
    layer = layer_cls(n, m, dtype=torch.float64)
    (param,) = list(layer.parameters())
    basis = []
    for k in range(param.numel()):
        with torch.no_grad():
            param.zero_()
            param[k] = 1.0
        basis.append(layer.to_dense().detach().clone())
    return basis


@pytest.mark.parametrize("cls", [Circulant, Toeplitz, Hankel])
@pytest.mark.parametrize("shape", [(6, 6), (4, 9), (9, 4), (1, 5)])
def test_projection_is_optimal(cls, shape):
    W = torch.randn(*shape, dtype=torch.float64)
    projected = cls.from_dense(W).to_dense()
    assert rel_error(projected, _least_squares_projection(W, _basis(cls, *shape))) <= 1e-10


@pytest.mark.parametrize("cls", [Circulant, Toeplitz, Hankel])
def test_projection_recovers_members(cls):
    layer = cls(11, 7, dtype=torch.float64)
    assert rel_error(cls.from_dense(layer.to_dense()).to_dense(), layer.to_dense()) <= 1e-12


@pytest.mark.parametrize("cls", [Circulant, Toeplitz, Hankel])
def test_large_float32_multiply(cls):
    layer = cls(300, 257, dtype=torch.float32)
    x = torch.randn(8, 300)
    expected = x.double() @ layer.to_dense().double().T
    assert rel_error(layer(x).double(), expected) <= 1e-4
