"""Fastfood and ACDC equal their dense definitions (SPEC.md §4.13, §6.9, check C4, E64)."""

import numpy as np
import pytest
import scipy.fft
import scipy.linalg
import torch

import structmat as sm
from structmat.families.fastfood import ACDC, Fastfood

from helpers import rel_error


def _perturb(module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return module


def _permutation_matrix(perm):
    return np.eye(len(perm))[perm.numpy()]


@pytest.mark.parametrize("in_features,out_features", [(16, 16), (12, 20), (3, 17), (100, 7)])
def test_fastfood_equals_definition(in_features, out_features):
    layer = _perturb(Fastfood(in_features, out_features, seed=5, dtype=torch.float64))
    N = layer.size
    H = scipy.linalg.hadamard(N).astype(float)
    blocks = []
    for k in range(layer.blocks):
        S, G, B = (np.diag(p[k].detach().numpy()) for p in (layer.S, layer.G, layer.B))
        blocks.append(S @ H @ G @ _permutation_matrix(layer.permutation[k]) @ H @ B)
    V = torch.from_numpy(np.concatenate(blocks)[:out_features, :in_features])
    assert rel_error(layer.to_dense(), V) <= 1e-12
    x = torch.randn(6, in_features, dtype=torch.float64)
    assert rel_error(layer(x), x @ V.T) <= 1e-10
    y = torch.randn(6, out_features, dtype=torch.float64)
    assert rel_error(layer.apply_transpose(y), y @ V) <= 1e-10


def test_fastfood_shapes_and_seed():
    layer = Fastfood(5, 40)
    assert (layer.size, layer.blocks) == (8, 5) and layer.num_parameters == 3 * 8 * 5
    same = Fastfood(5, 40)
    other = Fastfood(5, 40, seed=1)
    assert torch.equal(layer.permutation, same.permutation)
    assert not torch.equal(layer.permutation, other.permutation)
    assert all(sorted(p.tolist()) == list(range(8)) for p in layer.permutation)
    # variance of the entries matches nn.Linear's 1 / (3 n)
    big = Fastfood(256, 256)
    assert 0.5 < float(big.to_dense().detach().var() * 3 * 256) < 2.0


@pytest.mark.parametrize("order", ["idct_first", "dct_first"])
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("in_features,out_features", [(16, 16), (9, 5), (6, 11)])
def test_acdc_equals_definition(order, layers, in_features, out_features):
    layer = _perturb(ACDC(in_features, out_features, layers=layers, order=order, seed=4, dtype=torch.float64))
    N = layer.size
    C = scipy.fft.dct(np.eye(N), type=2, norm="ortho", axis=0)  # orthonormal DCT-II matrix
    first, second = (C.T, C) if order == "idct_first" else (C, C.T)
    M = np.eye(N)
    for k in range(layers):
        if k > 0:
            M = _permutation_matrix(layer.permutation[k - 1]) @ M
        a, d = layer.A[k].detach().numpy(), layer.D[k].detach().numpy()
        M = np.diag(a) @ second @ np.diag(d) @ first @ M
    M = torch.from_numpy(M[:out_features, :in_features])
    assert rel_error(layer.to_dense(), M) <= 1e-12
    x = torch.randn(5, in_features, dtype=torch.float64)
    assert rel_error(layer(x), x @ M.T) <= 1e-10
    y = torch.randn(5, out_features, dtype=torch.float64)
    assert rel_error(layer.apply_transpose(y), y @ M) <= 1e-10


def test_acdc_identity_diagonals_give_identity():
    layer = ACDC(10, 10)
    with torch.no_grad():
        layer.A.fill_(1.0)
        layer.D.fill_(1.0)
    assert rel_error(layer.to_dense(), torch.eye(10)) <= 1e-6


def test_reference_backend_agrees():
    x = torch.randn(4, 20, dtype=torch.float64)
    for layer in (Fastfood(20, 30, dtype=torch.float64), ACDC(20, 30, layers=2, dtype=torch.float64)):
        fast = layer(x)
        with sm.ops.use_reference():
            assert rel_error(layer(x), fast) <= 1e-12


def test_bad_options():
    with pytest.raises(ValueError, match="order"):
        ACDC(4, 4, order="sideways")
    with pytest.raises(ValueError, match="layers"):
        ACDC(4, 4, layers=0)
    with pytest.raises(ValueError, match="seed"):
        Fastfood(4, 4, seed=-1)
    with pytest.raises(TypeError, match="seed"):
        Fastfood(4, 4, seed=1.5)
