"""Hierarchical factorisation onto butterfly, BP and K-matrices (SPEC.md §4.14(ii), §4.15, §7.5;
``structmat.ops.hierarchical``, ``structmat.fit.hierarchical``): members come back exactly through
``sm.project`` (no fit), whatever their permutation; the error of a non-member is the sum of the
discarded singular values."""

import pytest
import scipy.fft
import scipy.linalg
import torch

import structmat as sm
from structmat.experiments.recovery import permutation_mass
from structmat.families.bp import BP
from structmat.families.butterfly import Butterfly
from structmat.families.kaleidoscope import Kaleidoscope
from structmat.fit import RealPart
from structmat.fit.hierarchical import HARD_LOGIT, bp_from_dense, complete_real_bp, factor_bp, kaleidoscope_from_dense
from structmat.fit.projection import relative_error
from structmat.ops.butterfly import butterfly_to_dense
from structmat.ops.hierarchical import butterfly_factorisation, rank_one_rows, two_sided_factorisation

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


def _bpp_member(n, dtype, seed, modules):
    """``B P`` (``modules = 1``) or ``B P₂ P₁`` (``modules = 2``, identity inner butterfly, ``P₁`` set
    at its full-size level only): the models of SPEC.md §7.4 for the Hartley and the DCT/DST."""
    layer = _random_bp(n, dtype, seed, modules=modules)
    if modules == 2:
        with torch.no_grad():
            layer.twiddle[0].copy_(torch.eye(2, dtype=dtype))
            layer.logits[0].fill_(-HARD_LOGIT)
            if n >= 4:  # the full-size level of P₁: gates (a, b, c) from the bits of the seed
                layer.logits[0, 0].copy_(torch.tensor([HARD_LOGIT if seed >> s & 1 else -HARD_LOGIT for s in range(3)]))
    return layer


def test_bpp_members_are_recovered_with_the_inner_permutation():
    for n, seed in [(4, 0), (16, 1), (64, 2)]:
        W = _bpp_member(n, torch.complex128, seed, 2).to_dense().detach()
        result = sm.project(W, "bp", n_modules=2, method="closed_form")
        assert result.rel_error <= 1e-10, (n, result.rel_error)
        assert permutation_mass(result.layer.matrix)[0] >= 0.99


@pytest.mark.parametrize("modules", [1, 2])
def test_real_parts_of_members_are_recovered(modules):
    for n, seed in [(2, 0), (4, 1), (8, 2), (16, 3), (64, 4)]:
        T = _bpp_member(n, torch.complex128, seed, modules).to_dense().detach().real.contiguous()
        layer = bp_from_dense(T, n_modules=modules, real_part=True)
        assert layer.dtype == torch.complex128 and permutation_mass(layer)[0] >= 0.99
        assert relative_error(layer.to_dense().real, T) <= 1e-10, (n, modules)
        assert relative_error(RealPart(layer).to_dense(), T) <= 1e-10


def test_dct_dst_hartley_are_real_parts_of_bp():
    """SPEC.md §7.4: DCT-II and DST-II are real parts of a BP with an extra permutation, the Hartley
    transform the real part of a BP; the factorisation finds them without knowing which they are."""
    n = 32
    eye = torch.eye(n, dtype=torch.float64).numpy()
    angle = 2 * torch.pi * torch.outer(torch.arange(n), torch.arange(n)).double() / n
    targets = {
        "dct": (torch.from_numpy(scipy.fft.dct(eye, type=2, axis=0)), 2),
        "dst": (torch.from_numpy(scipy.fft.dst(eye, type=2, axis=0)), 2),
        "hartley": (torch.cos(angle) + torch.sin(angle), 1),
    }
    for name, (T, modules) in targets.items():
        layer = bp_from_dense(T, n_modules=modules, real_part=True)
        assert relative_error(layer.to_dense().real, T) <= 1e-10, name
    # a near-member (noise 1e-8 on the DCT) stays near: ties within a factor of the best are kept
    T = targets["dct"][0]
    noisy = T + 1e-8 * torch.randn(T.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * T.norm() / n
    assert relative_error(bp_from_dense(noisy, n_modules=2, real_part=True).to_dense().real, noisy) <= 1e-7
    # a matrix that is not such a real part: a finite approximation, not an exact one
    W = torch.randn(16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    approx = bp_from_dense(W, real_part=True).to_dense().real
    assert torch.isfinite(approx).all() and 1e-3 < relative_error(approx, W) < 1.5


def test_real_parts_in_float32():
    """float32 targets: ties at float32 rounding, arithmetic in float64 (with float64 ties and float32
    eigenvector choices the DCT came out with 1e-4 (n = 8) to 0.66 (n = 16) relative error)."""
    for n, name, modules in [(8, "dct", 2), (16, "dct", 2), (16, "hartley", 1)]:
        if name == "dct":
            T = torch.from_numpy(scipy.fft.dct(torch.eye(n, dtype=torch.float64).numpy(), type=2, axis=0))
        else:
            angle = 2 * torch.pi * torch.outer(torch.arange(n), torch.arange(n)).double() / n
            T = torch.cos(angle) + torch.sin(angle)
        layer = bp_from_dense(T.float(), n_modules=modules, real_part=True)
        assert layer.dtype == torch.complex64
        assert relative_error(layer.to_dense().real.double(), T) <= 1e-5, (n, name)


def test_real_part_bad_input():
    with pytest.raises(ValueError, match="real_part=True"):
        bp_from_dense(torch.randn(8, 8, dtype=torch.complex128), real_part=True)
    with pytest.raises(TypeError, match="real_part"):
        bp_from_dense(torch.randn(8, 8), real_part="yes")
    with pytest.raises(ValueError, match="T: expected a real tensor"):
        complete_real_bp(torch.randn(8, 8))
    with pytest.raises(ValueError, match="T: expected a real tensor"):
        complete_real_bp(torch.zeros(0, 8, 8))
    with pytest.raises(ValueError, match="T: expected a real tensor"):
        complete_real_bp(torch.zeros(1, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="beam"):
        complete_real_bp(torch.randn(1, 8, 8), beam=0)


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


def test_two_sided_factorisation_recovers_bbstar_and_circulants():
    """``BB*`` members (well conditioned: unitary twiddles) and circulant matrices ([KS20]: they are
    ``BB*``) come back exactly through the two-sided factorisation and ``sm.project``."""
    g = torch.Generator().manual_seed(0)
    for n in [2, 4, 16, 128]:
        torch.manual_seed(n)
        B = Butterfly(n, n, init="ortho", dtype=torch.complex128).to_dense().detach()
        C = Butterfly(n, n, init="ortho", increasing_stride=False, dtype=torch.complex128).to_dense().detach()
        circulant = torch.from_numpy(scipy.linalg.circulant(torch.randn(n, generator=g, dtype=torch.float64).numpy()))
        E = torch.stack([B @ C, circulant.to(torch.complex128)])
        increasing, transposed, squared_error = two_sided_factorisation(E)
        product = butterfly_to_dense(increasing[:, None]).reshape(2, n, n) @ butterfly_to_dense(transposed[:, None]).reshape(2, n, n).mT
        assert relative_error(product, E) <= 1e-12, n
        assert torch.allclose(squared_error, (product - E).abs().square().sum((-1, -2)), atol=1e-20, rtol=1e-6)
        result = sm.project(circulant.to(torch.complex128), "kaleidoscope", width=2, method="closed_form")
        assert result.method == "hierarchical" and result.rel_error <= 1e-12, n
    # a real layer takes it only where the factors are real; otherwise the one-sided forms remain
    W = circulant  # n = 128: complex factors
    layer = kaleidoscope_from_dense(W)
    assert layer.dtype == torch.float64 and relative_error(layer.to_dense(), W) < 1.0
    with pytest.raises(ValueError, match="E: expected a tensor of shape"):
        two_sided_factorisation(torch.randn(6, 6))


def test_real_bbstar_members_stay_real_and_exact():
    """A real ``BB*`` member (real twiddles) gets real two-sided factors: a real layer takes them."""
    for n in [4, 32]:
        torch.manual_seed(n)
        B = Butterfly(n, n, init="ortho", dtype=torch.float64).to_dense().detach()
        C = Butterfly(n, n, init="ortho", increasing_stride=False, dtype=torch.float64).to_dense().detach()
        assert float(butterfly_factorisation((B @ C)[None])[1][0]) > 1e-6 * n  # no one-sided form is exact
        layer = kaleidoscope_from_dense(B @ C)
        assert layer.dtype == torch.float64 and relative_error(layer.to_dense(), B @ C) <= 1e-12, n


def test_bench_hierarchical_rows():
    from structmat.experiments.bench_hierarchical import run

    rows = run(quick=True, sizes=(16,))
    assert [r["method"] for r in rows] == ["butterfly_factorisation (untied)", "factor_bp (DFT, beam=1)", "factor_bp (DFT, beam=4)"]
    assert all(r["ms"] > 0 and r["rel_error"] <= 1e-12 for r in rows)
