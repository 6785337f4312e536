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


def test_real_part_dtype_moves_keep_the_imaginary_parts():
    import scipy.fft

    layer = sm.transforms.dct(16, type=2, norm="ortho")  # float32 layer over complex64 factors
    reference = scipy.fft.dct(torch.eye(16, dtype=torch.float64).numpy(), type=2, norm="ortho", axis=0)
    for move in (lambda m: m.to(torch.float64), lambda m: m.double()):
        moved = move(sm.transforms.dct(16, type=2, norm="ortho"))
        assert moved.dtype == torch.float64
        assert all(p.is_complex() for p in moved.matrix.inner.parameters())
        dense = moved.to_dense()
        assert dense.dtype == torch.float64
        assert float((dense.detach() - torch.as_tensor(reference)).abs().max()) <= 1e-5
        x = torch.randn(3, 16, dtype=torch.float64)
        bias = 0 if moved.bias is None else moved.bias
        assert float((moved(x) - x @ dense.T - bias).detach().abs().max()) <= 1e-10
    back = layer.double().float()
    assert back.dtype == torch.float32 and float((back.to_dense().detach().double() - torch.as_tensor(reference)).abs().max()) <= 1e-5


def test_kronecker_product_of_operators():
    from structmat.core.compose import KroneckerProduct

    A, B = Dense(3, 2, dtype=torch.complex128), LowRank(5, 4, rank=2, dtype=torch.complex128)  # (2 x 3) ⊗ (4 x 5)
    K = KroneckerProduct(A, B)
    dense = torch.kron(A.to_dense(), B.to_dense())
    assert K.shape == (8, 15) and torch.equal(K.to_dense(), dense)
    x = torch.randn(4, 15, dtype=torch.complex128)
    assert rel_error(K(x), x @ dense.T) <= 1e-12
    y = torch.randn(4, 8, dtype=torch.complex128)
    assert rel_error(K.transpose()(y), y @ dense) <= 1e-12
    assert rel_error(K.adjoint()(y), y @ dense.conj()) <= 1e-12
    assert K.flops() == 3 * B.flops() + 4 * A.flops() and K.num_parameters == A.num_parameters + B.num_parameters
    rebuilt = build_from_config(K.config())
    rebuilt.load_state_dict(K.state_dict())
    assert torch.equal(rebuilt.to_dense(), dense)


def test_direct_sum_and_sparse_from_entries():
    from structmat.core.compose import DirectSum
    from structmat.families.permutation import Permutation
    from structmat.families.sparse import Sparse

    S = Sparse.from_entries([2, 0, 1], [0, 1, 1], torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), 2, 3)
    assert torch.equal(S.to_dense(), torch.tensor([[0.0, 2.0], [0.0, 3.0], [1.0, 0.0]], dtype=torch.float64))
    D = DirectSum(S, Permutation(2, 2, kind="identity", dtype=torch.float64), Dense(1, 2, dtype=torch.float64))
    dense = torch.block_diag(S.to_dense(), torch.eye(2, dtype=torch.float64), D.blocks[2].to_dense())
    assert D.shape == (7, 5) and torch.equal(D.to_dense(), dense)
    x = torch.randn(3, 5, dtype=torch.float64)
    assert rel_error(D(x), x @ dense.T) <= 1e-12
    y = torch.randn(3, 7, dtype=torch.float64)
    assert rel_error(D.transpose()(y), y @ dense) <= 1e-12
    assert D.flops() == S.flops() + D.blocks[2].flops() and D.num_parameters == 3 + 2
    rebuilt = build_from_config(D.config())
    rebuilt.load_state_dict(D.state_dict())
    assert torch.equal(rebuilt.to_dense(), dense)
    with pytest.raises(ValueError, match="rows/cols: expected distinct positions"):
        Sparse.from_entries([0, 0], [1, 1], torch.ones(2), 2, 2)
    with pytest.raises(ValueError, match="rows/cols: expected positions inside a \\(2, 2\\) matrix"):
        Sparse.from_entries([0, 2], [1, 1], torch.ones(2), 2, 2)


def test_low_rank_schur_product():
    from structmat.core.compose import LowRankSchurProduct

    A = LowRank(6, 5, rank=2, dtype=torch.float64)
    U, V = torch.randn(5, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    M = LowRankSchurProduct(A, U, V)
    dense = A.to_dense() * (U @ V.T)
    assert rel_error(M.to_dense(), dense) <= 1e-12
    x, y = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    assert rel_error(M(x), x @ dense.T) <= 1e-12
    assert rel_error(M.transpose()(y), y @ dense) <= 1e-12
    assert M.num_parameters == A.num_parameters + 3 * (5 + 6)
    assert M.flops() == 3 * A.flops() + 3 * 11 + 2 * 5
    rebuilt = build_from_config(M.config())
    rebuilt.load_state_dict(M.state_dict())
    assert torch.equal(rebuilt.to_dense(), M.to_dense())
    with pytest.raises(ValueError, match=r"left: expected a tensor of shape \(5, rank >= 1\)"):
        LowRankSchurProduct(A, torch.ones(4, 3), V)
