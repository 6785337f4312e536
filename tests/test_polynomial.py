"""Orthogonal-polynomial transforms (SPEC.md §4.12, §6.11, check C6): the recurrence-built matrix
equals numpy.polynomial's Vandermonde-type matrices, Chebyshev at Chebyshev nodes is a DCT-III,
and the fast divide-and-conquer multiply matches Clenshaw within the documented accuracy."""

import numpy as np
import numpy.polynomial as P
import pytest
import scipy.fft
import scipy.special
import torch

from structmat.families.polynomial import FAST_PATH_MAX_DEGREE, OrthogonalPolynomial, chebyshev_points

from helpers import rel_error

VANDER = {
    "chebyshev": P.chebyshev.chebvander,
    "legendre": P.legendre.legvander,
    "hermite": P.hermite.hermvander,
    "laguerre": P.laguerre.lagvander,
}


@pytest.mark.parametrize("preset", sorted(VANDER))
@pytest.mark.parametrize("nodes", ["chebyshev", "gauss"])
@pytest.mark.parametrize("n,m", [(1, 3), (7, 7), (12, 20), (30, 9)])
def test_matrix_equals_numpy_vander(preset, nodes, n, m):
    layer = OrthogonalPolynomial(n, m, preset=preset, nodes=nodes, dtype=torch.float64)
    expected = torch.from_numpy(VANDER[preset](layer.nodes.numpy(), n - 1))
    assert rel_error(layer.to_dense(), expected) <= 1e-10
    c = torch.randn(4, n, dtype=torch.float64)
    assert rel_error(layer(c), c @ expected.T) <= 1e-10
    u = torch.randn(4, m, dtype=torch.float64)
    assert rel_error(layer.apply_transpose(u), u @ expected) <= 1e-10


def test_jacobi_matches_scipy():
    alpha, beta = 0.7, -0.4
    layer = OrthogonalPolynomial(15, 10, preset="jacobi", alpha=alpha, beta=beta, dtype=torch.float64)
    z = layer.nodes.numpy()
    expected = np.stack([scipy.special.eval_jacobi(i, alpha, beta, z) for i in range(15)], axis=1)
    assert rel_error(layer.to_dense(), torch.from_numpy(expected)) <= 1e-12
    c = torch.randn(3, 15, dtype=torch.float64)
    assert rel_error(layer(c), c @ torch.from_numpy(expected).T) <= 1e-10


@pytest.mark.parametrize("n", [1, 8, 13, 64])
def test_chebyshev_at_chebyshev_nodes_is_dct3(n):
    layer = OrthogonalPolynomial(n, n, preset="chebyshev", dtype=torch.float64)
    assert torch.allclose(layer.nodes, chebyshev_points(n), rtol=0, atol=1e-15)
    c = torch.randn(3, n, dtype=torch.float64)
    halved = c.clone()
    halved[:, 1:] /= 2
    expected = torch.from_numpy(scipy.fft.dct(halved.numpy(), type=3))  # SPEC.md §4.12
    assert rel_error(layer(c), expected) <= 1e-12


def test_factorisation_through_monomials():
    """T = V_z Pᵀ with P the monomial coefficients of p_i (SPEC.md §4.12, small n)."""
    n = 6
    layer = OrthogonalPolynomial(n, 8, preset="legendre", dtype=torch.float64)
    z = layer.nodes.numpy()
    Pmat = np.stack([np.pad(P.legendre.leg2poly(np.eye(n)[i]), (0, n))[:n] for i in range(n)])
    assert rel_error(layer.to_dense(), torch.from_numpy(np.vander(z, n, increasing=True) @ Pmat.T)) <= 1e-12


@pytest.mark.parametrize(
    "preset,n,options",
    [("chebyshev", 256, {}), ("legendre", 256, {}), ("jacobi", 128, {"alpha": 0.5, "beta": -0.25}), ("hermite", 64, {}), ("laguerre", 64, {})],
)
def test_fast_matches_clenshaw_within_documented_accuracy(preset, n, options):
    fast = OrthogonalPolynomial(n, n + 5, preset=preset, algorithm="fast", dtype=torch.float64, **options)
    slow = OrthogonalPolynomial(n, n + 5, preset=preset, algorithm="clenshaw", dtype=torch.float64, **options)
    c = torch.randn(3, n, dtype=torch.float64)
    assert rel_error(fast(c), slow(c)) <= 1e-10
    u = torch.randn(3, n + 5, dtype=torch.float64)
    assert rel_error(fast.apply_transpose(u), slow.apply_transpose(u)) <= 1e-10
    small = min(n, FAST_PATH_MAX_DEGREE[preset][torch.float32])
    fast32 = OrthogonalPolynomial(small, small, preset=preset, algorithm="fast", dtype=torch.float32, **options)
    ref = OrthogonalPolynomial(small, small, preset=preset, algorithm="clenshaw", dtype=torch.float64, **options)
    c = torch.randn(3, small, dtype=torch.float64)
    assert rel_error(fast32(c.float()).double(), ref(c)) <= 1e-4


def test_auto_picks_the_accurate_algorithm():
    assert OrthogonalPolynomial(64, 64, dtype=torch.float64).uses_fast_path
    assert not OrthogonalPolynomial(2048, 8, dtype=torch.float64).uses_fast_path
    assert OrthogonalPolynomial(64, 64, dtype=torch.float32).uses_fast_path
    assert not OrthogonalPolynomial(65, 64, dtype=torch.float32).uses_fast_path
    assert not OrthogonalPolynomial(8, 8, nodes="gauss").uses_fast_path
    assert not OrthogonalPolynomial(8, 3, nodes=[0.1, 0.2, 0.3]).uses_fast_path


@pytest.mark.parametrize("algorithm", ["fast", "clenshaw"])
def test_gradients_match_dense(algorithm):
    layer = OrthogonalPolynomial(20, 17, preset="legendre", algorithm=algorithm, dtype=torch.float64)
    with torch.no_grad():
        for p in layer.parameters():
            p.mul_(1 + 0.05 * torch.randn_like(p))
    c = torch.randn(3, 20, dtype=torch.float64)
    w = torch.randn(3, 17, dtype=torch.float64)
    grads = torch.autograd.grad((layer(c) * w).sum(), list(layer.parameters()))
    dense_grads = torch.autograd.grad((c @ layer.to_dense().T * w).sum(), list(layer.parameters()))
    for g, h in zip(grads, dense_grads):
        assert rel_error(g, h) <= 1e-10


def test_custom_recurrence_and_explicit_nodes():
    n = 9
    a, b, g = [2.0] * (n - 1), [0.5] * (n - 1), [-1.0] * (n - 2)
    nodes = [-0.9, -0.2, 0.3, 0.95]
    layer = OrthogonalPolynomial(n, 4, preset="custom", coefficients={"a": a, "b": b, "gamma": g}, nodes=nodes, dtype=torch.float64)
    z = np.array(nodes)
    cols = [np.ones(4), 2 * z + 0.5]
    for i in range(1, n - 1):
        cols.append((2 * z + 0.5) * cols[-1] - cols[-2])
    expected = torch.from_numpy(np.stack(cols, axis=1))
    assert rel_error(layer.to_dense(), expected) <= 1e-12
    c = torch.randn(2, n, dtype=torch.float64)
    assert rel_error(layer(c), c @ expected.T) <= 1e-10
    assert layer.config()["options"]["nodes"] == nodes


def test_bad_options():
    with pytest.raises(ValueError, match="preset.*chebyshev.*legendre"):
        OrthogonalPolynomial(4, 4, preset="zernike")
    with pytest.raises(ValueError, match="coefficients"):
        OrthogonalPolynomial(4, 4, preset="custom", coefficients={"a": [1.0], "b": [0.0], "gamma": []})
    with pytest.raises(ValueError, match="coefficients"):
        OrthogonalPolynomial(4, 4, coefficients={"a": [1.0] * 3, "b": [0.0] * 3, "gamma": [0.0] * 2})
    with pytest.raises(ValueError, match="coefficients.*finite"):
        OrthogonalPolynomial(4, 4, preset="custom", coefficients={"a": [1.0, float("nan"), 1.0], "b": [0.0] * 3, "gamma": [0.0] * 2})
    with pytest.raises(ValueError, match="nodes"):
        OrthogonalPolynomial(4, 3, nodes=[0.0, 1.0])
    with pytest.raises(ValueError, match="nodes"):
        OrthogonalPolynomial(4, 4, nodes="gauss", preset="custom", coefficients={"a": [1.0] * 3, "b": [0.0] * 3, "gamma": [0.0] * 2})
    with pytest.raises(ValueError, match="algorithm"):
        OrthogonalPolynomial(4, 4, nodes="gauss", algorithm="fast")
    with pytest.raises(ValueError, match="interval"):
        OrthogonalPolynomial(4, 4, interval=[1.0, -1.0])
    with pytest.raises(ValueError, match="alpha"):
        OrthogonalPolynomial(4, 4, preset="jacobi", alpha=-2.0)
