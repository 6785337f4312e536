"""Hierarchical factorisation onto butterfly, BP and K-matrices (SPEC.md §4.14(ii), §4.15, §7.5;
``structmat.ops.hierarchical``, ``structmat.fit.hierarchical``): members come back exactly through
``sm.project`` (no fit), whatever their permutation; the error of a non-member is the sum of the
discarded singular values."""

import pytest
import scipy.linalg
import torch

import structmat as sm
from structmat.experiments.recovery import permutation_mass
from structmat.families.bp import BP
from structmat.families.butterfly import Butterfly
from structmat.families.kaleidoscope import Kaleidoscope
from structmat.fit.hierarchical import HARD_LOGIT, bp_from_dense, factor_bp, kaleidoscope_from_dense
from structmat.fit.projection import relative_error
from structmat.ops.butterfly import butterfly_to_dense
from structmat.ops.hierarchical import butterfly_factorisation, rank_one_rows

DTYPES = [torch.float64, torch.complex128]


pytestmark = pytest.mark.usefixtures("one_thread")


def _random_bp(n, dtype, seed, modules=1, permutation="learned"):
    """A BP member with random twiddles and a random *hard* gate permutation."""
    torch.manual_seed(seed)
    layer = BP(n, n, n_modules=modules, permutation=permutation, dtype=dtype)
    if permutation == "learned":
        with torch.no_grad():
            layer.logits.copy_(HARD_LOGIT * torch.randn(layer.logits.shape).sign())
    return layer


# ------------------------------------------------------------------------------------------ ops
def test_rank_one_rows_is_the_best_rank_one_approximation():
    g = torch.Generator().manual_seed(0)
    for dtype in DTYPES:
        stacks = torch.randn(5, 4, 7, generator=g, dtype=dtype)
        u, v, discarded = rank_one_rows(stacks)
        s = torch.linalg.svdvals(stacks)
        assert torch.allclose(u.abs().square().sum(-1), torch.ones(5, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(discarded, s[:, 1:].square().sum(-1), rtol=1e-10)
        residual = stacks - u[..., None] * v[..., None, :]
        assert torch.allclose(residual.abs().square().sum((-1, -2)), discarded, rtol=1e-10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_butterfly_factorisation_exact_for_members_and_additive_otherwise(dtype):
    members = torch.stack([Butterfly(n, n, dtype=dtype).to_dense().detach() for n in [64] * 3])
    twiddle, squared_error = butterfly_factorisation(members)
    assert relative_error(butterfly_to_dense(twiddle[:, None]).reshape(3, 64, 64), members) <= 1e-12
    assert float(squared_error.max()) <= 1e-20
    W = torch.randn(2, 16, 16, dtype=dtype)
    twiddle, squared_error = butterfly_factorisation(W)
    residual = (butterfly_to_dense(twiddle[:, None]).reshape(2, 16, 16) - W).abs().square().sum((-1, -2))
    assert torch.allclose(residual, squared_error, rtol=1e-10)
    with pytest.raises(ValueError, match="E: expected a tensor of shape"):
        butterfly_factorisation(torch.randn(2, 6, 6))


# ----------------------------------------------------------------------------------- butterfly
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("increasing_stride", [True, False])
def test_project_butterfly_returns_members(dtype, increasing_stride):
    for n in [2, 16, 256]:
        W = Butterfly(n, n, increasing_stride=increasing_stride, dtype=dtype).to_dense().detach()
        result = sm.project(W, "butterfly", increasing_stride=increasing_stride)
        assert result.rel_error <= 1e-8 and result.method == "closed_form", (n, result)
    W = Butterfly(12, 40, increasing_stride=increasing_stride, dtype=dtype).to_dense().detach()  # stacked, rectangular
    assert sm.project(W, "butterfly", increasing_stride=increasing_stride).rel_error <= 1e-8


# ------------------------------------------------------------------------------------------- BP
@pytest.mark.parametrize("dtype", DTYPES)
def test_project_bp_recovers_random_members_with_random_hard_permutations(dtype):
    for n, seed in [(2, 0), (4, 1), (32, 2), (256, 3)]:
        member = _random_bp(n, dtype, seed)
        W = member.to_dense().detach()
        result = sm.project(W, "bp")
        assert result.method == "hierarchical" and result.rel_error <= 1e-8, (n, result.rel_error)
        mass, hard = permutation_mass(result.layer.matrix)
        assert mass >= 0.99
        # the hard permutation alone (gates rounded) reproduces the member
        rounded = BP(n, n, permutation="learned", dtype=dtype)
        with torch.no_grad():
            rounded.twiddle.copy_(result.layer.matrix.twiddle)
            rounded.logits.copy_(torch.where(result.layer.matrix.logits > 0, 1e3, -1e3))
        assert relative_error(rounded.to_dense(), W) <= 1e-8


def test_greedy_search_recovers_members():
    for seed in range(3):
        member = _random_bp(64, torch.complex128, 10 + seed)
        W = member.to_dense().detach()
        layer = bp_from_dense(W, beam=1)
        assert relative_error(layer.to_dense(), W) <= 1e-10


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("permutation", ["bit_reversal", "identity"])
def test_project_bp_fixed_permutations(dtype, permutation):
    for n in [8, 128]:
        W = _random_bp(n, dtype, n, permutation=permutation).to_dense().detach()
        result = sm.project(W, "bp", permutation=permutation)
        assert result.rel_error <= 1e-8 and result.method == "hierarchical"
        assert result.layer.matrix.permutation == permutation


def test_dft_and_hadamard_are_recovered_exactly():
    for n in [8, 256]:
        F = torch.fft.fft(torch.eye(n, dtype=torch.complex128), dim=0) / n**0.5
        H = torch.tensor(scipy.linalg.hadamard(n), dtype=torch.float64) / n**0.5
        for T in (F, H):
            result = sm.project(T, "bp")
            assert result.rel_error <= 1e-10 and result.method == "hierarchical"
        # with the fixed bit reversal the factorisation is the FFT
        assert sm.project(F, "bp", permutation="bit_reversal").rel_error <= 1e-10
    # an FFT member with P_br: the search finds a hard permutation that reproduces it
    layer = BP(64, 64, init="fft", permutation="bit_reversal", dtype=torch.complex128)
    found = bp_from_dense(layer.to_dense().detach())
    assert relative_error(found.to_dense(), layer.to_dense().detach()) <= 1e-10
    assert permutation_mass(found)[0] >= 0.99


def test_factor_bp_error_is_the_discarded_part():
    g = torch.Generator().manual_seed(4)
    W = torch.randn(32, 32, generator=g, dtype=torch.float64)
    for beam in (1, 4):
        result = factor_bp(W, beam=beam)
        layer = bp_from_dense(W, beam=beam)
        residual = float((layer.to_dense().detach() - W).square().sum())
        assert result.squared_error == pytest.approx(residual, rel=1e-9)
        assert residual < float(W.square().sum())  # a projection: better than zero
    assert factor_bp(W, beam=8).squared_error <= factor_bp(W, beam=1).squared_error * (1 + 1e-12)
    with pytest.raises(ValueError, match="beam"):
        factor_bp(W, beam=0)
    with pytest.raises(ValueError, match="E: expected a square"):
        factor_bp(W[:, :8])
    with pytest.raises(ValueError, match="E.shape"):
        factor_bp(torch.randn(12, 12))


def test_bpbp_and_rectangular_warm_starts():
    member = _random_bp(16, torch.complex128, 5)
    W = member.to_dense().detach()
    result = sm.project(W, "bp", n_modules=2, method="closed_form")  # outer module factored, inner identity
    assert result.rel_error <= 1e-8 and result.layer.matrix.n_modules == 2
    fixed = _random_bp(16, torch.float64, 6, permutation="bit_reversal")
    W = fixed.to_dense().detach()
    assert sm.project(W, "bp", n_modules=3, permutation="bit_reversal", method="closed_form").rel_error <= 1e-8
    W = torch.randn(12, 20, dtype=torch.float64)
    result = sm.project(W, "bp", method="closed_form")
    assert result.layer.to_dense().shape == (12, 20) and result.rel_error <= 1.0


# ---------------------------------------------------------------------------------- kaleidoscope
@pytest.mark.parametrize("dtype", DTYPES)
def test_kaleidoscope_warm_start_contains_butterflies(dtype):
    for increasing in (True, False):
        W = Butterfly(32, 32, increasing_stride=increasing, dtype=dtype).to_dense().detach()
        layer = kaleidoscope_from_dense(W, width=2)
        assert isinstance(layer, Kaleidoscope) and relative_error(layer.to_dense(), W) <= 1e-10
        result = sm.project(W, "kaleidoscope", width=1)
        assert result.method == "hierarchical" and result.rel_error <= 1e-8
    W = torch.randn(24, 24, dtype=dtype)
    result = sm.project(W, "kaleidoscope", steps=20, lbfgs_steps=5)
    assert result.method.startswith("hierarchical+fit") and result.rel_error < 1.0


def test_bench_hierarchical_rows():
    from structmat.experiments.bench_hierarchical import run

    rows = run(quick=True, sizes=(16,))
    assert [r["method"] for r in rows] == ["butterfly_factorisation (untied)", "factor_bp (DFT, beam=1)", "factor_bp (DFT, beam=4)"]
    assert all(r["ms"] > 0 and r["rel_error"] <= 1e-12 for r in rows)
