import pytest
import torch

import structmat as sm
from structmat.core.compose import Product, Sum, build_from_config
from structmat.families.dense import Dense
from structmat.families.diagonal import Diagonal
from structmat.families.low_rank import LowRank

from helpers import rel_error


def test_product_matches_dense_and_transpose():
    P = Product(Dense(8, 4, dtype=torch.float64), LowRank(16, 8, rank=2, dtype=torch.float64))
    x = torch.randn(3, 16, dtype=torch.float64)
    assert rel_error(P(x), x @ P.to_dense().T) <= 1e-12
    y = torch.randn(3, 4, dtype=torch.float64)
    assert rel_error(P.transpose()(y), y @ P.to_dense()) <= 1e-12
    assert P.flops() == P.factors[0].flops() + P.factors[1].flops()
    assert P.num_parameters == 32 + 2 * 24


def test_sum_and_config_roundtrip():
    S = Sum(Dense(5, 6, dtype=torch.complex128), LowRank(5, 6, rank=1, dtype=torch.complex128))
    x = torch.randn(2, 5, dtype=torch.complex128)
    assert rel_error(S(x), x @ S.to_dense().T) <= 1e-12
    assert rel_error(S.adjoint()(torch.ones(1, 6, dtype=torch.complex128)), torch.ones(1, 6, dtype=torch.complex128) @ S.to_dense().conj()) <= 1e-12
    rebuilt = build_from_config(S.config())
    rebuilt.load_state_dict(S.state_dict())
    assert torch.equal(rebuilt.to_dense(), S.to_dense())
    layer = sm.StructuredLinear.from_matrix(S, bias=True)
    assert layer(x).shape == (2, 6)


def test_compose_errors():
    with pytest.raises(ValueError, match="chain"):
        Product(Dense(3, 4), Dense(5, 6))
    with pytest.raises(ValueError, match="shapes"):
        Sum(Dense(3, 4), Dense(4, 3))
    with pytest.raises(TypeError, match="dtype"):
        Sum(Dense(3, 4), Dense(3, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="factors"):
        Product(torch.eye(3))
    with pytest.raises(ValueError, match="config"):
        build_from_config({"structure": "dense"})


def test_diagonal_from_vector():
    d = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    D = Diagonal.from_vector(d, in_features=5, out_features=3)
    assert torch.equal(D.to_dense(), torch.cat([torch.diag(d), torch.zeros(3, 2, dtype=torch.float64)], 1))
    with pytest.raises(ValueError, match="d"):
        Diagonal.from_vector(d, in_features=5, out_features=4)
