"""Monarch, MM*, BTT, Kronecker and block-diagonal: SPEC.md §4.17, §4.18, §5.6, checks D1--D6."""

import math

import pytest
import torch

import structmat as sm
from structmat.families.block_diagonal import BlockDiagonal
from structmat.families.kronecker import BlockTensorTrain, Kronecker
from structmat.families.monarch import Monarch, Monarch2, factorize_mm
from structmat.ops import use_reference
from structmat.ops.blockdiag import (
    block_diagonal_multiply,
    block_diagonal_multiply_transpose,
    monarch_multiply,
    monarch_multiply_transpose,
    monarch_to_dense,
)

from helpers import rel_error

F64 = torch.float64


def reshape_transpose_permutation(a: int, b: int) -> torch.Tensor:
    """``T_{a,b}`` of SPEC.md §1.3 as a dense matrix: ``(T x)[j·a + i] = x[i·b + j]``."""
    perm = torch.arange(a * b).reshape(a, b).T.reshape(-1)
    return torch.eye(a * b, dtype=F64)[perm]


def frobenius_error(layer, W):
    return float(torch.linalg.norm(layer.to_dense().detach() - W))


# ---------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.complex64, torch.complex128])
@pytest.mark.parametrize("shape", [(3, 4, 5, 2, 1), (2, 3, 4, 5, 3), (8, 8, 8, 8, 1)])
def test_fast_path_matches_reference(dtype, shape):
    """The bmm fast path (forward, transpose mode and hand-written backward) equals the einsum reference."""
    P, J, Q, I, r = shape
    tol = 1e-5 if dtype in (torch.float32, torch.complex64) else 1e-12
    left = torch.randn(J, P, Q, r, dtype=dtype, requires_grad=True)
    right = torch.randn(Q, J, r, I, dtype=dtype, requires_grad=True)
    for op, features in [(monarch_multiply, Q * I), (monarch_multiply_transpose, P * J)]:
        x = torch.randn(7, features, dtype=dtype, requires_grad=True)
        g = torch.randn(7, P * J if op is monarch_multiply else Q * I, dtype=dtype)
        fast = op(x, left, right)
        fast_grads = torch.autograd.grad(fast, (x, left, right), g)
        with use_reference():
            ref = op(x, left, right)
            ref_grads = torch.autograd.grad(ref, (x, left, right), g)
        assert rel_error(fast, ref) <= tol
        for a, b in zip(fast_grads, ref_grads):
            assert rel_error(a, b) <= tol
    blocks = torch.randn(3, 4, 5, dtype=dtype)
    x = torch.randn(6, 15, dtype=dtype)
    y = torch.randn(6, 12, dtype=dtype)
    with use_reference():
        ref_fwd, ref_t = block_diagonal_multiply(x, blocks), block_diagonal_multiply_transpose(y, blocks)
    assert rel_error(block_diagonal_multiply(x, blocks), ref_fwd) <= tol
    assert rel_error(block_diagonal_multiply_transpose(y, blocks), ref_t) <= tol


def test_kernel_gradcheck_both_directions():
    left = torch.randn(3, 2, 4, 2, dtype=F64, requires_grad=True)
    right = torch.randn(4, 3, 2, 5, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(monarch_multiply, (torch.randn(3, 20, dtype=F64, requires_grad=True), left, right))
    assert torch.autograd.gradcheck(monarch_multiply_transpose, (torch.randn(3, 6, dtype=F64, requires_grad=True), left, right))


def test_weight_gradients_when_input_needs_none():
    """The backward skips the input-gradient product when x needs no gradient; weights still match."""
    left = torch.randn(3, 2, 4, 2, dtype=F64, requires_grad=True)
    right = torch.randn(4, 3, 2, 5, dtype=F64, requires_grad=True)
    for op, features in [(monarch_multiply, 20), (monarch_multiply_transpose, 6)]:
        x = torch.randn(3, features, dtype=F64)
        fast = torch.autograd.grad(op(x, left, right).square().sum(), (left, right))
        with use_reference():
            ref = torch.autograd.grad(op(x, left, right).square().sum(), (left, right))
        for a, b in zip(fast, ref):
            assert rel_error(a, b) <= 1e-12


# ---------------------------------------------------------------------------- D1, D2
@pytest.mark.parametrize("m", [2, 3, 4, 8])
def test_square_monarch_is_PLPR_and_four_index_identity(m):
    """D1: the two-BMM product equals P L Pᵀ R; D2: M[ℓm + j, km + i] = L_j[ℓ, k]·R_k[j, i]."""
    n = m * m
    layer = Monarch(n, n, nblocks=m, dtype=F64)
    L_blocks = layer.left.detach()[..., 0]  # L_j = L_blocks[j]
    R_blocks = layer.right.detach()[:, :, 0, :]  # R_k = R_blocks[k]
    P = reshape_transpose_permutation(m, m)
    dense = P @ torch.block_diag(*L_blocks) @ P.T @ torch.block_diag(*R_blocks)
    x = torch.randn(5, n, dtype=F64)
    assert rel_error(layer(x), x @ dense.T) <= 1e-10
    M = layer.to_dense().detach()
    for ell in range(m):
        for j in range(m):
            for k in range(m):
                for i in range(m):
                    assert abs(float(M[ell * m + j, k * m + i] - L_blocks[j, ell, k] * R_blocks[k, j, i])) <= 1e-12
    assert layer.num_parameters == 2 * n * m  # 2 n √n


def test_general_canonical_form_entrywise():
    """D1 (general/rectangular): M[(p,j),(q,i)] = Σ_a L[j,p,q,a] R[q,j,a,i], checked entry by entry."""
    P, J, Q, I, r = 3, 2, 4, 5, 2
    left, right = torch.randn(J, P, Q, r, dtype=F64), torch.randn(Q, J, r, I, dtype=F64)
    M = monarch_to_dense(left, right)
    for p in range(P):
        for j in range(J):
            for q in range(Q):
                for i in range(I):
                    expected = sum(left[j, p, q, a] * right[q, j, a, i] for a in range(r))
                    assert abs(float(M[p * J + j, q * I + i] - expected)) <= 1e-12
    x = torch.randn(4, Q * I, dtype=F64)
    assert rel_error(monarch_multiply(x, left, right), x @ M.T) <= 1e-12


def test_general_block_size_matches_MO22_definition():
    """𝓜^{(b,n)} = 𝓓𝓑^{(b,n)} 𝓑𝓓^{(b,n)} with nblocks = n/b (SPEC.md §4.17)."""
    n, b = 32, 8
    layer = Monarch(n, n, nblocks=n // b, dtype=F64)
    M = layer.to_dense().detach()
    R = torch.block_diag(*layer.right.detach()[:, :, 0, :])  # n/b blocks b×b
    assert layer.right.shape == (n // b, b, 1, b)
    L = M @ torch.linalg.inv(R)
    # L is an (n/b)×(n/b) array of b×b diagonal blocks: it only mixes indices with equal residue mod b
    residues = torch.arange(n) % b
    assert float(L[residues[:, None] != residues[None, :]].abs().max()) <= 1e-10


@pytest.mark.parametrize("n", [16, 64, 1024])
def test_parameter_count_square(n):
    m = math.isqrt(n)
    layer = Monarch(n, n, nblocks=m, device="meta")
    assert layer.num_parameters == 2 * n * m
    assert layer.flops() == 2 * (2 * n * m)
    assert Monarch(n, n, device="meta").nblocks == m  # default b = √n


# ---------------------------------------------------------------------------- D3: Algorithm 1
def slice_singular_values(W, P, J, Q, I):
    """Singular values of every P × I slice Ã[:, j, q, :] of the zero-padded W, computed directly."""
    padded = torch.zeros(P * J, Q * I, dtype=W.dtype)
    padded[: W.shape[0], : W.shape[1]] = W
    out = []
    for j in range(J):
        for q in range(Q):
            rows = [p * J + j for p in range(P)]
            cols = [q * I + i for i in range(I)]
            out.append(torch.linalg.svdvals(padded[rows][:, cols]))
    return out


CANONICAL_CASES = [
    (Monarch, 64, 64, {"nblocks": 8}),
    (Monarch, 32, 32, {"nblocks": 4}),
    (Monarch, 30, 45, {"nblocks": 4}),
    (Monarch, 37, 20, {"nblocks": 5}),
    (BlockTensorTrain, 36, 36, {"nblocks": 6, "rank": 2}),
    (BlockTensorTrain, 25, 41, {"nblocks": 5, "rank": 2}),
]


@pytest.mark.parametrize("cls,n_in,n_out,options", CANONICAL_CASES)
@pytest.mark.parametrize("dtype", [F64, torch.complex128])
def test_algorithm1_exact_recovery(cls, n_in, n_out, options, dtype):
    member = cls(n_in, n_out, dtype=dtype, **options).to_dense().detach()
    projected = cls.from_dense(member, **options)
    assert rel_error(projected.to_dense(), member) <= 1e-10


@pytest.mark.parametrize("cls,n_in,n_out,options", CANONICAL_CASES)
def test_algorithm1_error_formula_and_local_optimality(cls, n_in, n_out, options):
    """PR tier: error² = Σ_{j,q} Σ_{t>r} σ_t², and 50 random perturbations never lower it."""
    W = torch.randn(n_out, n_in, dtype=F64)
    projected = cls.from_dense(W, **options)
    P, J, Q, I = projected.canonical_shape
    rank = projected.rank
    predicted = sum(float((s[rank:] ** 2).sum()) for s in slice_singular_values(W, P, J, Q, I))
    error = frobenius_error(projected, W) ** 2
    assert abs(error - predicted) <= 1e-8 * predicted
    base_left, base_right = projected.left.detach().clone(), projected.right.detach().clone()
    generator = torch.Generator().manual_seed(1)
    for _ in range(50):
        with torch.no_grad():
            projected.left.copy_(base_left * (1 + 1e-2 * torch.randn(base_left.shape, generator=generator, dtype=F64)))
            projected.right.copy_(base_right * (1 + 1e-2 * torch.randn(base_right.shape, generator=generator, dtype=F64)))
        assert frobenius_error(projected, W) ** 2 >= error * (1 - 1e-12)


def test_algorithm1_never_beaten_by_gradient_descent():
    torch.manual_seed(3)
    W = torch.randn(16, 16, dtype=F64)
    optimal = frobenius_error(Monarch.from_dense(W, nblocks=4), W)
    layer = Monarch(16, 16, nblocks=4, dtype=F64)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.02)
    for _ in range(600):
        optimizer.zero_grad()
        loss = ((layer.to_dense() - W) ** 2).sum()
        loss.backward()
        optimizer.step()
    learned = frobenius_error(layer, W)
    assert learned >= optimal * (1 - 1e-9)
    assert learned <= 1.5 * optimal  # the fit did make progress: the comparison is meaningful


# ---------------------------------------------------------------------------- D4: butterflies are Monarch
def random_butterfly(n: int, generator: torch.Generator) -> torch.Tensor:
    """Dense ``B = B_n ⋯ B_4 B_2`` (SPEC.md §1.4): stride-h factors mix pairs (i, i+h), i mod 2h < h,
    with random 2×2 twiddles; the stride-1 factor is applied first."""
    M = torch.eye(n, dtype=F64)
    h = 1
    while h < n:
        twiddles = torch.randn(n // (2 * h), h, 2, 2, generator=generator, dtype=F64)
        blocks = M.reshape(n // (2 * h), 2, h, n)
        lo, hi = blocks[:, 0], blocks[:, 1]
        a, b, c, d = (twiddles[..., r, s, None] for r, s in [(0, 0), (0, 1), (1, 0), (1, 1)])
        M = torch.stack([a * lo + b * hi, c * lo + d * hi], dim=1).reshape(n, n)
        h *= 2
    return M


@pytest.mark.parametrize("n", [16, 64, 256, pytest.param(1024, marks=pytest.mark.slow)])
def test_butterflies_project_onto_monarch_exactly(n):
    """D4 / Theorem 4: 𝓑^{(n)} ⊆ 𝓜^{(b,n)} for every power of two b | n (nblocks = n / b)."""
    B = random_butterfly(n, torch.Generator().manual_seed(n))
    b = 1
    while b <= n:
        projected = Monarch.from_dense(B, nblocks=n // b)
        assert rel_error(projected.to_dense(), B) <= 1e-10, f"b = {b}"
        b *= 2


def test_monarch_strictly_larger_than_butterfly_by_jacobian_rank():
    """D4 strictness at n = 16: dim 𝓑 ≤ n(log n + 1) = 80 < dim 𝓜^{(4,16)} = 2n^{3/2} − n = 112."""
    n = 16
    torch.manual_seed(0)
    layer = Monarch(n, n, nblocks=4, dtype=F64)
    params = (layer.left.detach(), layer.right.detach())
    jac = torch.func.jacrev(lambda left, right: monarch_to_dense(left, right).reshape(-1), argnums=(0, 1))(*params)
    jac = torch.cat([j.reshape(n * n, -1) for j in jac], dim=1)
    assert int(torch.linalg.matrix_rank(jac)) == 2 * n**1.5 - n

    def butterfly(twiddles):
        M = torch.eye(n, dtype=F64)
        for level in range(4):
            h = 1 << level
            t = twiddles[level].reshape(n // (2 * h), h, 2, 2)
            blocks = M.reshape(n // (2 * h), 2, h, n)
            lo, hi = blocks[:, 0], blocks[:, 1]
            M = torch.stack(
                [t[..., 0, 0, None] * lo + t[..., 0, 1, None] * hi, t[..., 1, 0, None] * lo + t[..., 1, 1, None] * hi], dim=1
            ).reshape(n, n)
        return M.reshape(-1)

    jac_b = torch.func.jacrev(butterfly)(torch.randn(4, n // 2, 2, 2, dtype=F64))
    assert int(torch.linalg.matrix_rank(jac_b.reshape(n * n, -1))) == n * (4 + 1)


# ---------------------------------------------------------------------------- D5: Algorithm 2
def is_monomial(T: torch.Tensor, tol: float = 1e-8) -> bool:
    """One entry per row and column carries all the mass: a permutation times a diagonal."""
    mags = T.abs()
    big = mags > tol * mags.max()
    return bool((big.sum(0) == 1).all() and (big.sum(1) == 1).all())


@pytest.mark.parametrize("m,dtype", [(2, F64), (4, F64), (8, F64), (16, F64), (4, torch.complex128)])
def test_algorithm2_recovers_factors(m, dtype):
    n = m * m
    torch.manual_seed(m)
    member = Monarch2(n, n, nblocks=m, dtype=dtype)
    W = member.to_dense().detach()
    factors = factorize_mm(W)
    rebuilt = Monarch2.factorize_mm(W)
    assert rel_error(rebuilt.to_dense(), W) <= 1e-10
    A_true = member.left1.detach()[..., 0]  # A_i = L₁'s blocks
    C_true = member.left2.detach()[..., 0].transpose(1, 2)  # C_j = (L₂'s blocks)ᵀ
    for i in range(m):
        assert is_monomial(torch.linalg.solve(A_true[i], factors.A[i]))  # Â_i = A_i Π Δ
        assert is_monomial(factors.C[i] @ torch.linalg.inv(C_true[i]))  # Ĉ_j = Π Δ C_j
    # the recovered pieces satisfy (P W P)_{ij} = Â_i diag(D̂_ij) Ĉ_j
    P = reshape_transpose_permutation(m, m).to(dtype)
    Wt = P @ W @ P.T
    i, j = m - 1, m // 2
    block = Wt[i * m : (i + 1) * m, j * m : (j + 1) * m]
    assert rel_error(factors.A[i] @ torch.diag(factors.D[i, j]) @ factors.C[j], block) <= 1e-10


def test_algorithm2_rejects_inputs_outside_its_assumption():
    with pytest.raises(ValueError, match="W"):
        factorize_mm(torch.randn(12, 12, dtype=F64))  # 12 is not m²
    with pytest.raises(ValueError, match="W"):
        factorize_mm(torch.randn(16, 9, dtype=F64))
    with pytest.raises(ValueError, match="W"):
        factorize_mm(torch.randn(2, 16, 16))
    member = Monarch2(16, 16, nblocks=4, dtype=F64)
    with torch.no_grad():
        member.right1[0].zero_()  # zero middle-factor entries: blocks of the first block row become singular
    with pytest.raises(ValueError, match="singular"):
        factorize_mm(member.to_dense().detach())
    with pytest.raises(ValueError, match="not a member"):
        factorize_mm(torch.randn(16, 16, dtype=F64))  # generic dense matrix: not in MM*


# ---------------------------------------------------------------------------- D6: Kronecker
def rearrange(W, P, Q, J, I):
    """𝓡(W)[(p,q),(j,i)] = W[(p,j),(q,i)], entry by entry (SPEC.md §4.18)."""
    R = torch.empty(P * Q, J * I, dtype=W.dtype)
    for p in range(P):
        for q in range(Q):
            for j in range(J):
                for i in range(I):
                    R[p * Q + q, j * I + i] = W[p * J + j, q * I + i]
    return R


def test_kronecker_rearrangement_has_rank_one():
    A, B = torch.randn(3, 4, dtype=F64), torch.randn(5, 2, dtype=F64)
    R = rearrange(torch.kron(A, B), 3, 4, 5, 2)
    s = torch.linalg.svdvals(R)
    assert float(s[1]) <= 1e-12 * float(s[0])


@pytest.mark.parametrize("dtype", [F64, torch.complex128])
def test_kronecker_projection_optimal(dtype):
    """PR tier: error² = Σ_{t≥2} σ_t(𝓡(W))², members recovered, perturbations never help."""
    P, Q, J, I = 3, 4, 5, 2
    W = torch.randn(P * J, Q * I, dtype=dtype)
    projected = Kronecker.from_dense(W, outer_shape=(P, Q))
    s = torch.linalg.svdvals(rearrange(W, P, Q, J, I))
    predicted = float((s[1:] ** 2).sum())
    error = frobenius_error(projected, W) ** 2
    assert abs(error - predicted) <= 1e-8 * predicted
    generator = torch.Generator().manual_seed(2)
    outer, inner = projected.outer.detach().clone(), projected.inner.detach().clone()
    for _ in range(50):
        with torch.no_grad():
            projected.outer.copy_(outer + 1e-2 * outer.abs().mean() * torch.randn(outer.shape, generator=generator, dtype=F64))
            projected.inner.copy_(inner + 1e-2 * inner.abs().mean() * torch.randn(inner.shape, generator=generator, dtype=F64))
        assert frobenius_error(projected, W) ** 2 >= error * (1 - 1e-12)
    member = torch.kron(torch.randn(P, Q, dtype=dtype), torch.randn(J, I, dtype=dtype))
    assert rel_error(Kronecker.from_dense(member, outer_shape=(P, Q)).to_dense(), member) <= 1e-10


def test_kronecker_padded_sizes_recover_members():
    member = Kronecker(37, 101, outer_shape=(7, 5), dtype=F64)
    W = member.to_dense().detach()
    assert rel_error(Kronecker.from_dense(W, outer_shape=(7, 5)).to_dense(), W) <= 1e-10
    # ALS on the observed entries never does worse than the zero-filled SVD start
    noisy = W + 0.1 * torch.randn_like(W)
    start = frobenius_error(Kronecker.from_dense(noisy, outer_shape=(7, 5), iterations=0), noisy)
    assert frobenius_error(Kronecker.from_dense(noisy, outer_shape=(7, 5)), noisy) <= start


# ---------------------------------------------------------------------------- block-diagonal
def test_block_diagonal_shuffle_and_projection():
    layer = BlockDiagonal(12, 20, nblocks=4, shuffle=True, dtype=F64)
    x = torch.randn(3, 12, dtype=F64)
    blocks = layer.blocks.detach()
    unshuffled = torch.cat([x[:, g * 3 : (g + 1) * 3] @ blocks[g].T for g in range(4)], dim=1)  # (g, c)
    expected = torch.stack([unshuffled[:, g * 5 + c] for c in range(5) for g in range(4)], dim=1)  # c·k + g
    assert rel_error(layer(x), expected) <= 1e-12
    W = torch.randn(20, 12, dtype=F64)
    projected = BlockDiagonal.from_dense(W, nblocks=4, shuffle=True)
    support = projected.to_dense().detach() != 0
    assert rel_error(projected.to_dense()[support], W[support]) <= 1e-12
    assert int(support.sum()) == 4 * 5 * 3


# ---------------------------------------------------------------------------- initialisation
@pytest.mark.parametrize(
    "structure,options",
    [("monarch", {}), ("monarch", {"nblocks": 4}), ("btt", {"rank": 3}), ("monarch2", {}), ("kronecker", {}), ("block_diagonal", {})],
)
def test_initialisation_keeps_nn_linear_variance(structure, options):
    torch.manual_seed(0)
    n_in, n_out = 400, 300
    x = torch.randn(2000, n_in)
    reference = torch.nn.Linear(n_in, n_out, bias=False)(x).var().item()
    layer = sm.StructuredLinear(n_in, n_out, structure, bias=False, **options)
    with torch.no_grad():
        ratio = layer(x).var().item() / reference
    assert 0.7 <= ratio <= 1.4, ratio


# ---------------------------------------------------------------------------- bad input
def test_bad_options_and_inputs():
    with pytest.raises(ValueError, match="nblocks"):
        Monarch(16, 16, nblocks=0)
    with pytest.raises(ValueError, match="nblocks"):
        Monarch(16, 16, nblocks=17)
    with pytest.raises(ValueError, match="nblocks"):
        Monarch2(16, 8, nblocks=20)
    with pytest.raises(ValueError, match="nblocks"):
        BlockDiagonal(6, 4, nblocks=7)
    with pytest.raises(TypeError, match="nblocks"):
        Monarch(16, 16, nblocks=2.5)
    with pytest.raises(ValueError, match="rank"):
        BlockTensorTrain(16, 16, rank=0)
    with pytest.raises(ValueError, match="outer_shape"):
        Kronecker(16, 16, outer_shape=(17, 2))
    with pytest.raises(TypeError, match="outer_shape"):
        Kronecker(16, 16, outer_shape=4)
    for cls in (Monarch, BlockTensorTrain, Kronecker, BlockDiagonal):
        with pytest.raises(ValueError, match="W"):
            cls.from_dense(torch.randn(2, 3, 4))
        with pytest.raises(ValueError, match="W"):
            cls.from_dense(torch.randn(5))


def test_parameter_budgets_use_the_ladders():
    for structure in ["monarch", "monarch2", "btt", "kronecker", "block_diagonal"]:
        layer = sm.StructuredLinear(64, 48, structure, params=0.6)
        assert 0 < layer.num_parameters <= 0.6 * 64 * 48


@pytest.mark.parametrize("structure", ["monarch", "monarch2", "btt", "kronecker", "block_diagonal"])
def test_size_ladders_ordered_by_parameter_count(structure):
    info = sm.core.registry.get(structure)
    for n_in, n_out in [(20, 37), (64, 48)]:
        ladder = info.size_ladder(n_in, n_out)
        counts = [sm.core.registry.count_parameters(info, n_in, n_out, ladder[k]) for k in range(len(ladder))]
        assert counts == sorted(counts)
    if structure == "monarch":
        # nblocks = 9 on 64 -> 48 pads a whole block (P J = 54, Q I = 72): same class as 8, more parameters
        assert {"nblocks": 9} not in info.size_ladder(64, 48) and {"nblocks": 8} in info.size_ladder(64, 48)
        assert Monarch.from_dense(torch.randn(48, 64), nblocks=9).num_parameters > Monarch(64, 48, nblocks=8).num_parameters


def test_bench_monarch_rows():
    from structmat.experiments.bench_monarch import run

    rows = run(sizes=[64])
    assert rows[0]["n"] == 64 and rows[0]["nblocks"] == 8
    assert rows[0]["monarch_params"] == 2 * 64 * 8
    assert rows[0]["monarch_forward_ms"] > 0 and rows[0]["forward_speedup"] > 0
