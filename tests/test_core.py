import pytest
import torch

import structmat as sm
from structmat.core import registry, sizes

from helpers import rel_error


def test_version_and_families():
    assert isinstance(sm.__version__, str)
    assert "dense" in sm.families()


@pytest.mark.parametrize("structure", ["dense", "low_rank", "sparse", "sparse_low_rank"])
def test_acceptance_37_by_101(structure):
    layer = sm.StructuredLinear(37, 101, structure, dtype=torch.float64)
    x = torch.randn(9, 37, dtype=torch.float64)
    ref = x @ layer.to_dense().T + layer.bias
    assert float((layer(x) - ref).detach().abs().max()) <= 1e-12


def test_size_helpers():
    assert sizes.next_power_of_two(1) == 1
    assert sizes.next_power_of_two(5) == 8
    assert sizes.next_power_of_two(1024) == 1024
    assert sizes.log2_exact(64) == 6
    with pytest.raises(ValueError, match="power of two"):
        sizes.log2_exact(12)
    assert sizes.divisors(12) == [1, 2, 3, 4, 6, 12]
    assert sizes.balanced_factorization(12) == (3, 4)
    assert sizes.balanced_factorization(13) == (1, 13)
    x = torch.randn(2, 3)
    assert sizes.pad_last(x, 5).shape == (2, 5)
    assert torch.equal(sizes.truncate_last(sizes.pad_last(x, 5), 3), x)


@pytest.mark.parametrize("structure", ["low_rank", "sparse", "sparse_low_rank"])
@pytest.mark.parametrize("budget", [0.05, 0.25, 0.5, 500])
def test_params_budget(structure, budget):
    layer = sm.StructuredLinear(64, 48, structure, params=budget)
    limit = budget if isinstance(budget, int) else int(budget * 64 * 48)
    assert layer.num_parameters <= limit
    assert layer.num_parameters >= 0.5 * limit  # the budget is used, not wasted


def test_params_budget_too_small():
    with pytest.raises(ValueError, match="params"):
        sm.StructuredLinear(64, 64, "low_rank", params=10)
    with pytest.raises(ValueError, match="params"):
        sm.StructuredLinear(64, 64, "low_rank", params=1.5)
    with pytest.raises(TypeError, match="params"):
        sm.StructuredLinear(64, 64, "low_rank", params="half")


def test_rank_validation():
    with pytest.raises(ValueError, match="rank"):
        sm.StructuredLinear(10, 20, "low_rank", rank=0)
    with pytest.raises(ValueError, match="rank"):
        sm.StructuredLinear(10, 20, "low_rank", rank=11)
    with pytest.raises(TypeError, match="rank"):
        sm.StructuredLinear(10, 20, "low_rank", rank=2.5)


def test_low_rank_projection_is_eckart_young():
    W = torch.randn(30, 20, dtype=torch.float64)
    s = torch.linalg.svdvals(W)
    from structmat.families.low_rank import LowRank

    for r in [1, 5, 20]:
        proj = LowRank.from_dense(W, rank=r)
        err = float(torch.linalg.norm(W - proj.to_dense()) ** 2)
        assert abs(err - float((s[r:] ** 2).sum())) <= 1e-8 * float((W ** 2).sum())


def test_low_rank_projection_complex():
    W = torch.randn(12, 9, dtype=torch.complex128)
    from structmat.families.low_rank import LowRank

    proj = LowRank.from_dense(W, rank=9)
    assert rel_error(proj.to_dense(), W) <= 1e-10


def test_sparse_topk_projection_optimal():
    from structmat.families.sparse import Sparse

    W = torch.randn(20, 30, dtype=torch.float64)
    proj = Sparse.from_dense(W, nnz=50)
    kept = proj.to_dense()
    assert int((kept != 0).sum()) == 50
    threshold = W.abs().reshape(-1).topk(50).values[-1]
    assert bool((W.abs()[kept == 0] <= threshold).all())
    mask = torch.rand(20, 30) < 0.3
    proj = Sparse.from_dense(W, mask=mask)
    assert torch.equal(proj.to_dense(), W * mask)


def test_sparse_gradient_only_on_support():
    layer = sm.StructuredLinear(20, 10, "sparse", nnz=15, bias=False, dtype=torch.float64)
    x = torch.randn(4, 20, dtype=torch.float64)
    layer(x).sum().backward()
    m = layer.matrix
    assert m.values.grad.shape == (15,)
    # d/dv_t sum_b (x_b M^T) = sum_b x[b, cols_t]
    torch.testing.assert_close(m.values.grad, x[:, m.cols].sum(0), rtol=1e-12, atol=1e-12)


def test_sparse_options_errors():
    with pytest.raises(ValueError, match="nnz"):
        sm.StructuredLinear(4, 4, "sparse", nnz=17)
    with pytest.raises(ValueError, match="density"):
        sm.StructuredLinear(4, 4, "sparse", density=0.0)
    with pytest.raises(ValueError, match="mask"):
        sm.StructuredLinear(4, 4, "sparse", mask=torch.zeros(4, 4, dtype=torch.bool))


def test_sparse_low_rank_recovers_sparse_plus_low_rank():
    from structmat.families.sparse_low_rank import SparseLowRank

    g = torch.Generator().manual_seed(1)
    L = torch.randn(40, 2, dtype=torch.float64, generator=g) @ torch.randn(2, 30, dtype=torch.float64, generator=g)
    S = torch.zeros(40, 30, dtype=torch.float64)
    idx = torch.randperm(1200, generator=g)[:40]
    S.view(-1)[idx] = 10 * torch.randn(40, dtype=torch.float64, generator=g)
    proj = SparseLowRank.from_dense(L + S, rank=2, nnz=40)
    assert proj.projection_report["method"] in ("rpca", "alternating")
    assert rel_error(proj.to_dense(), L + S) <= 1e-8
    for method in ("rpca", "alternating"):
        p = SparseLowRank.from_dense(L + S, rank=2, nnz=40, method=method)
        assert set(p.projection_report["rel_error"]) == {method}


def test_robust_pca_separates():
    from structmat.families.sparse_low_rank import robust_pca

    g = torch.Generator().manual_seed(2)
    L = torch.randn(50, 2, dtype=torch.float64, generator=g) @ torch.randn(2, 50, dtype=torch.float64, generator=g)
    S = torch.zeros(50, 50, dtype=torch.float64)
    S.view(-1)[torch.randperm(2500, generator=g)[:100]] = 5.0
    Lh, Sh = robust_pca(L + S)
    assert rel_error(Lh, L) <= 1e-4
    assert rel_error(Sh, S) <= 1e-4


def test_structured_linear_api():
    layer = sm.StructuredLinear(8, 6, "low_rank", rank=2, bias=False)
    assert layer.bias is None
    assert layer.structure == "low_rank"
    assert layer.rank == 2  # family attributes are forwarded
    assert "low_rank" in repr(layer)
    layer.reset_parameters()
    t = layer.transpose()
    assert (t.in_features, t.out_features) == (6, 8)
    wrapped = sm.StructuredLinear.from_matrix(layer.matrix, bias=torch.zeros(6))
    assert torch.equal(wrapped.to_dense(), layer.to_dense())
    with pytest.raises(TypeError, match="matrix"):
        sm.StructuredLinear.from_matrix(torch.randn(3, 3))


def test_apply_transpose_and_adjoint_modes():
    matrix = sm.StructuredLinear(5, 7, "low_rank", rank=2, bias=False, dtype=torch.complex128).matrix
    M = matrix.to_dense()
    y = torch.randn(3, 2, 7, dtype=torch.complex128)
    assert rel_error(matrix.apply_transpose(y), y @ M) <= 1e-12
    assert rel_error(matrix.apply_adjoint(y), y @ M.conj()) <= 1e-12
    real = sm.StructuredLinear(5, 7, "low_rank", rank=2, bias=False, dtype=torch.float64).matrix
    y = torch.randn(4, 7, dtype=torch.float64)
    assert rel_error(real.apply_adjoint(y), y @ real.to_dense()) <= 1e-12


def test_from_dense_rejects_non_matrix():
    from structmat.families.dense import Dense

    with pytest.raises(ValueError, match="W"):
        Dense.from_dense(torch.randn(2, 2, 2))
    with pytest.raises(TypeError, match="W"):
        Dense.from_dense(torch.ones(2, 2, dtype=torch.bool))


def test_nan_propagates_like_linear():
    layer = sm.StructuredLinear(5, 4, "dense")
    x = torch.randn(2, 5)
    x[0, 0] = float("nan")
    y = layer(x)
    assert bool(torch.isnan(y[0]).all()) and bool(torch.isfinite(y[1]).all())


def test_bad_input_names_the_argument():
    from structmat.families.diagonal import Diagonal
    from structmat.families.low_rank import LowRank
    from structmat.families.sparse import Sparse
    from structmat.families.sparse_low_rank import SparseLowRank

    with pytest.raises(TypeError, match=r"^in_features: expected an integer, got 'a' \(str\)"):
        LowRank("a", 5, rank=2)
    W = torch.randn(6, 5, dtype=torch.float64)
    W[0, 0] = float("nan")
    for cls in (LowRank, SparseLowRank):  # an SVD of a non-finite matrix fails deep inside LAPACK
        with pytest.raises(ValueError, match=r"^W: expected finite entries"):
            cls.from_dense(W, rank=2)
    with pytest.raises(TypeError, match=r"^mask: expected a boolean tensor of shape \(3, 3\), got .*\(list\)"):
        Sparse(3, 3, mask=[[True] * 3] * 3)
    with pytest.raises(TypeError, match=r"^d: expected a 1-D tensor, got .*\(list\)"):
        Diagonal.from_vector([1.0, 2.0])
    with pytest.raises(TypeError, match=r"^dtype: expected one of float32, float64, complex64, complex128, got torch.bfloat16"):
        sm.StructuredLinear(3, 3, "low_rank", dtype=torch.bfloat16)


def test_budget_with_conflicting_fixed_option_says_why():
    with pytest.raises(ValueError, match=r"params: no member of structure 'sparse' .* options \{'density': 0.3\} \(reason: nnz/density: give at most one"):
        sm.StructuredLinear(10, 10, "sparse", params=50, density=0.3)


def test_sparse_low_rank_iterations_validated():
    from structmat.families.sparse_low_rank import SparseLowRank

    with pytest.raises(TypeError, match="iterations"):
        SparseLowRank.from_dense(torch.randn(6, 5, dtype=torch.float64), rank=1, nnz=3, iterations="many")
    with pytest.raises(ValueError, match="iterations"):
        SparseLowRank.from_dense(torch.randn(6, 5, dtype=torch.float64), rank=1, nnz=3, iterations=0)
