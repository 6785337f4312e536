"""LDR families, Krylov products and kernel matrices (SPEC.md §4.8–4.11, checks E1–E3)."""

import warnings

import pytest
import torch

import structmat as sm
from structmat.families.cauchy import Cauchy, cauchy_rows
from structmat.families.ldr import (
    CauchyLike,
    HankelLike,
    LDRSubdiagonal,
    ToeplitzLike,
    VandermondeLike,
    displacement_rank,
    shift_matrix,
    subdiagonal_matrix,
)
from structmat.families.vandermonde import Vandermonde, vandermonde_rows
from structmat.ops import circulant as C
from structmat.ops import kernel_matrix, krylov

from helpers import rel_error

F64 = torch.float64


def Z(n, f):
    return shift_matrix(n, f, F64)


# ------------------------------------------------------------------ E1: displacement ranks
@pytest.mark.parametrize("n", [5, 16, 33])
def test_displacement_ranks_of_classical_matrices(n):
    T = C.toeplitz_matrix(torch.randn(2 * n - 1, dtype=F64), n, n)
    assert displacement_rank(T, Z(n, 1), Z(n, -1)) <= 2
    h = torch.randn(2 * n - 1, dtype=F64)
    i = torch.arange(n)
    H = h[i[:, None] + i[None, :]]
    assert displacement_rank(H, Z(n, 1), Z(n, -1).T) <= 2
    a = torch.linspace(-1, 1, n, dtype=F64)
    assert displacement_rank(vandermonde_rows(a, n), torch.diag(a), Z(n, 0)) <= 1
    s, t = torch.arange(n, dtype=F64) + 0.5, -torch.arange(n, dtype=F64) - 0.25
    Cm = cauchy_rows(s, t)
    assert displacement_rank(Cm, torch.diag(s), torch.diag(t)) == 1
    assert rel_error(torch.diag(s) @ Cm - Cm @ torch.diag(t), torch.ones(n, n, dtype=F64)) <= 1e-12


# ------------------------------------------------------------------ E2: Krylov identity
@pytest.mark.parametrize("n,r", [(6, 2), (17, 3)])
def test_krylov_identity_toeplitz_like(n, r):
    layer = ToeplitzLike(n, n, rank=r, dtype=F64)
    M = layer.to_dense()
    A, B = layer.stein_operators()
    G, H = layer.left_generators, layer.right_generators
    assert rel_error(M - A @ M @ B, 2 * G.T @ H) <= 1e-10
    # Sylvester form (SPEC table): Z₁M - MZ₋₁ = -2 G (Z₋₁ᵀ H)ᵀ, rank <= r
    assert displacement_rank(M, Z(n, 1), Z(n, -1)) <= r


@pytest.mark.parametrize("n,r", [(6, 2), (17, 3)])
def test_krylov_identity_hankel_like(n, r):
    layer = HankelLike(n, n, rank=r, dtype=F64)
    M = layer.to_dense()
    A, B = layer.stein_operators()
    assert rel_error(M - A @ M @ B, 2 * layer.left_generators.T @ layer.right_generators) <= 1e-10
    assert displacement_rank(M, Z(n, 1), Z(n, -1).T) <= r


@pytest.mark.parametrize("n,r", [(5, 1), (12, 3)])
def test_krylov_identity_learned_subdiagonal(n, r):
    layer = LDRSubdiagonal(n, n, rank=r, dtype=F64)
    with torch.no_grad():
        layer.subdiagonal_a.copy_(1 + 0.3 * torch.randn(n, dtype=F64))
        layer.subdiagonal_b.copy_(1 + 0.3 * torch.randn(n, dtype=F64))
    M = layer.to_dense()
    A, B = layer.stein_operators()
    f, g = layer.subdiagonal_a.prod(), layer.subdiagonal_b.prod()
    assert rel_error(torch.linalg.matrix_power(A, n), f * torch.eye(n, dtype=F64)) <= 1e-12
    expected = (1 - f * g) * layer.left_generators.T @ layer.right_generators
    assert rel_error(M - A @ M @ B, expected) <= 1e-10


def test_vandermonde_like_stein_identity():
    layer = VandermondeLike(7, 9, rank=2, dtype=F64)
    M = layer.to_dense()
    A, B = layer.stein_operators()
    assert rel_error(M - A @ M @ B, layer.left_generators.T @ layer.right_generators) <= 1e-10


# ------------------------------------------------------------------ reconstruction (projection)
@pytest.mark.parametrize("n", [8, 13])
def test_toeplitz_reconstruction_from_displacement(n):
    T = C.toeplitz_matrix(torch.randn(2 * n - 1, dtype=F64), n, n)
    layer = ToeplitzLike.from_dense(T, rank=2)
    assert rel_error(layer.to_dense(), T) <= 1e-10
    assert layer.projection_report["rel_error"] <= 1e-10
    i = torch.arange(n)
    Hm = torch.randn(2 * n - 1, dtype=F64)[i[:, None] + i[None, :]]
    assert rel_error(HankelLike.from_dense(Hm, rank=2).to_dense(), Hm) <= 1e-10


def test_classical_members_reconstructed():
    # Stein (D_b, Z₀) = Sylvester (D_a, Z₀) with a = 1/b: V(a) has displacement rank 1
    V = VandermondeLike(6, 8, rank=1, dtype=F64)
    Va = vandermonde_rows(1 / V.nodes, 6)
    A, B = V.stein_operators()
    assert displacement_rank(Va, A, B, stein=True) == 1
    assert rel_error(VandermondeLike.from_dense(Va, rank=1).to_dense(), Va) <= 1e-10
    s, t = torch.arange(5, dtype=F64) + 0.5, -torch.arange(7, dtype=F64) - 0.5
    hilbert = cauchy_rows(s, t)
    assert rel_error(CauchyLike.from_dense(hilbert, rank=1).to_dense(), hilbert) <= 1e-10


def test_projection_report_on_generic_matrix():
    W = torch.randn(10, 10, dtype=F64)
    low = ToeplitzLike.from_dense(W, rank=1).projection_report
    high = ToeplitzLike.from_dense(W, rank=10).projection_report
    assert 0 < low["rel_error"] and high["rel_error"] <= 1e-10
    assert low["displacement_rel_error"] > high["displacement_rel_error"]


@pytest.mark.parametrize("cls", [ToeplitzLike, HankelLike], ids=lambda c: c.family)
@pytest.mark.parametrize("in_features,out_features,rank", [(7, 5, 2), (4, 9, 1), (13, 3, 3), (1, 6, 1)])
def test_rectangular_members_recovered(cls, in_features, out_features, rank):
    """The corner of a rank-r N × N member is completed to a rank-r displacement (not zero-padded)."""
    for dtype in (F64, torch.complex128):
        W = cls(in_features, out_features, rank=rank, dtype=dtype).to_dense().detach()
        layer = cls.from_dense(W, rank=rank)
        assert rel_error(layer.to_dense(), W) <= 1e-10
        assert layer.projection_report["displacement_rel_error"] <= 1e-10


def test_rectangular_toeplitz_recovered_at_rank_two():
    T = C.toeplitz_matrix(torch.randn(18, dtype=F64), 7, 12)
    assert rel_error(ToeplitzLike.from_dense(T, rank=2).to_dense(), T) <= 1e-10
    assert ToeplitzLike.from_dense(T, rank=1).projection_report["rel_error"] > 1e-3


# ------------------------------------------------------------------ fast multiply vs dense
FAMILIES = [ToeplitzLike, HankelLike, VandermondeLike, CauchyLike, LDRSubdiagonal]


@pytest.mark.parametrize("cls", FAMILIES, ids=lambda c: c.family)
@pytest.mark.parametrize("dtype,tol", [(F64, 1e-10), (torch.float32, 1e-4)])
def test_fast_multiply_matches_dense(cls, dtype, tol):
    layer = cls(130, 97, rank=3, dtype=dtype)
    if cls is LDRSubdiagonal:
        with torch.no_grad():
            layer.subdiagonal_a.copy_(1 + 0.01 * torch.randn(130))
            layer.subdiagonal_b.copy_(1 + 0.01 * torch.randn(130))
    x = torch.randn(6, 130, dtype=dtype)
    M = layer.to_dense().double()
    assert rel_error(layer(x).double(), x.double() @ M.T) <= tol
    y = torch.randn(6, 97, dtype=dtype)
    assert rel_error(layer.transpose()(y).double(), y.double() @ M) <= tol


@pytest.mark.parametrize("dtype", [F64, torch.complex128])
@pytest.mark.parametrize("n", [1, 3, 16, 17, 70])
def test_divide_and_conquer_krylov_matches_reference(dtype, n):
    a = 1 + 0.3 * torch.randn(n, dtype=dtype)
    G, V, Y = torch.randn(2, n, dtype=dtype), torch.randn(3, 2, n, dtype=dtype), torch.randn(3, n, dtype=dtype)
    assert rel_error(krylov.subdiagonal_krylov_multiply(a, G, V), krylov.subdiagonal_krylov_multiply_reference(a, G, V)) <= 1e-12
    assert rel_error(
        krylov.subdiagonal_krylov_transpose_multiply(a, G, Y), krylov.subdiagonal_krylov_transpose_multiply_reference(a, G, Y)
    ) <= 1e-12


@pytest.mark.parametrize("dtype", [F64, torch.complex128])
@pytest.mark.parametrize("n", [5, 16, 40])
def test_krylov_products_in_row_blocks_with_gradients(monkeypatch, dtype, n):
    """Rows in several cache-sized blocks (the last ragged) give the reference products, and the
    gradients with respect to the operator, the generators and the input match too."""
    rank, batch = 2, 7
    monkeypatch.setattr(krylov, "SUBDIAGONAL_BLOCK_BYTES", 3 * rank * n * torch.empty((), dtype=dtype).element_size())
    monkeypatch.setattr(C, "MIN_BLOCK_ROWS", 1)
    a = (1 + 0.3 * torch.randn(n, dtype=dtype)).requires_grad_()
    G = torch.randn(rank, n, dtype=dtype, requires_grad=True)
    V = torch.randn(batch, rank, n, dtype=dtype, requires_grad=True)
    Y = torch.randn(batch, n, dtype=dtype, requires_grad=True)
    for fast, reference, inputs in [
        (krylov.subdiagonal_krylov_multiply, krylov.subdiagonal_krylov_multiply_reference, (a, G, V)),
        (krylov.subdiagonal_krylov_transpose_multiply, krylov.subdiagonal_krylov_transpose_multiply_reference, (a, G, Y)),
    ]:
        out, expected = fast(*inputs), reference(*inputs)
        assert rel_error(out, expected) <= 1e-12
        weights = torch.randn_like(out)
        grads = torch.autograd.grad((out * weights.conj()).real.sum(), inputs)
        expected_grads = torch.autograd.grad((expected * weights.conj()).real.sum(), inputs)
        for grad, expected_grad in zip(grads, expected_grads):
            assert rel_error(grad, expected_grad) <= 1e-10


def test_ldr_sd_in_row_blocks_matches_dense(monkeypatch):
    """The layer runs both Krylov products per block of rows: several blocks, both directions."""
    monkeypatch.setattr(krylov, "SUBDIAGONAL_BLOCK_BYTES", 2 * 3 * 20 * 8)
    monkeypatch.setattr(C, "MIN_BLOCK_ROWS", 1)
    layer = LDRSubdiagonal(20, 13, rank=3, dtype=F64)
    with torch.no_grad():
        layer.subdiagonal_a.copy_(1 + 0.1 * torch.randn(20, dtype=F64))
        layer.subdiagonal_b.copy_(1 + 0.1 * torch.randn(20, dtype=F64))
    M = layer.to_dense()
    x, y = torch.randn(7, 20, dtype=F64), torch.randn(5, 13, dtype=F64)
    assert rel_error(layer(x), x @ M.T) <= 1e-12
    assert rel_error(layer.transpose()(y), y @ M) <= 1e-12


@pytest.mark.parametrize("transpose", [False, True])
def test_tiled_kernel_product_matches_reference_with_gradients(monkeypatch, transpose):
    """Recomputing backward == plain autograd, with many tiles (small tile size)."""
    monkeypatch.setattr(kernel_matrix, "TILE_ENTRIES", 16)
    s = torch.randn(9, dtype=F64, requires_grad=True)
    t = (torch.randn(7, dtype=F64) + 10).requires_grad_(True)
    x = torch.randn(4, 7 if not transpose else 9, dtype=F64, requires_grad=True)

    def build(params, start, stop):
        return 1.0 / (params[0][start:stop, None] - params[1][None, :])

    fast = kernel_matrix.tiled_kernel_multiply(build, [s, t], x, (9, 7), transpose)
    ref = kernel_matrix.tiled_kernel_multiply_reference(build, [s, t], x, (9, 7), transpose)
    assert rel_error(fast, ref) <= 1e-12
    w = torch.randn_like(ref)
    g_fast = torch.autograd.grad((fast * w).sum(), [s, t, x])
    g_ref = torch.autograd.grad((ref * w).sum(), [s, t, x])
    for a, b in zip(g_fast, g_ref):
        assert rel_error(a, b) <= 1e-12


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("name", ["toeplitz_like", "hankel_like", "vandermonde_like", "cauchy_like", "ldr_sd"])
def test_rank_out_of_range(name):
    with pytest.raises(ValueError, match="rank"):
        sm.StructuredLinear(8, 6, name, rank=0)
    with pytest.raises(ValueError, match="rank"):
        sm.StructuredLinear(8, 6, name, rank=9)
    with pytest.raises(TypeError, match="rank"):
        sm.StructuredLinear(8, 6, name, rank=2.5)


def test_repeated_cauchy_nodes():
    with pytest.raises(ValueError, match="s_i != t_j"):
        Cauchy.from_nodes(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 2.0]))
    layer = Cauchy.from_nodes(torch.tensor([1.0, 2.0]), torch.tensor([0.0]))
    assert torch.allclose(layer.to_dense(), torch.tensor([[1.0], [0.5]]))


def test_vandermonde_overflow_warns():
    with pytest.warns(RuntimeWarning, match=r"max \|a_i\|\^\(n-1\)"):
        Vandermonde.from_nodes(torch.tensor([0.5, 3.0], dtype=torch.float32), in_features=100)
    layer = Vandermonde.from_nodes(torch.tensor([0.5, 1.0]), in_features=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(torch.randn(2, 100))
    with torch.no_grad():
        layer.nodes[1] = 4.0
    with pytest.warns(RuntimeWarning, match="overflows"):
        layer(torch.randn(2, 100))


def test_bench_ldr_rows():
    from structmat.experiments.bench_ldr import TORCH_STRUCTURED, run, torch_structured_layers

    rows = run(quick=True, sizes=[64])
    by_name = {row["structure"]: row for row in rows}
    assert by_name["toeplitz_like"]["params"] == 2 * 4 * 64 and by_name["ldr_sd"]["n"] == 64
    assert all(row["structured_s"] > 0 and row["speedup"] > 0 for row in rows)
    installed = torch_structured_layers() is not None
    for name, row in by_name.items():
        timed = installed and name in TORCH_STRUCTURED
        assert (row["torch_structured_s"] is not None) == timed
        if timed:
            assert row["torch_structured_s"] > 0 and row["speedup_vs_torch_structured"] > 0


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")  # torch's forward-AD internals
@pytest.mark.parametrize("reference", [False, True])
def test_vandermonde_second_derivatives_at_a_node_near_zero(reference):
    """An odd count of Chebyshev nodes has one at ``cos(π/2) ≈ 6e-17``: reverse-over-reverse
    Hessians in the nodes (``torch.autograd.functional.hessian``) equal forward-over-reverse ones
    (``torch.func.hessian``) -- the rows are built by products, whose derivatives divide by
    nothing (``cumprod``'s backward divides by the node: off by 2 %)."""
    layer = Vandermonde(7, 5, dtype=torch.float64)  # (5 nodes)
    assert float(layer.nodes.detach().abs().min()) < 1e-15
    x = torch.randn(3, 7, dtype=torch.float64)
    nodes = layer.nodes.detach().clone()

    def loss(a):
        return torch.func.functional_call(layer, {"nodes": a}, (x,)).square().sum()

    with sm.ops.use_reference(reference):
        reverse_reverse = torch.autograd.functional.hessian(loss, nodes)
        forward_reverse = torch.func.hessian(loss)(nodes)
    assert float(forward_reverse.abs().max()) > 1 and rel_error(reverse_reverse, forward_reverse) <= 1e-12
    assert rel_error(vandermonde_rows(nodes, 7), torch.stack([nodes**k for k in range(7)], dim=1)) <= 1e-15
