"""``sm.fit``: the SPEC.md §7.1 objective, determinism, restarts, early stop, complex and
real-part fitting, bad input."""

import math

import pytest
import torch

import structmat as sm
from structmat.fit import RealPart, rmse


pytestmark = pytest.mark.usefixtures("one_thread")


def _rank2(m, n, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, 2, generator=g, dtype=dtype)
    b = torch.randn(2, n, generator=g, dtype=dtype)
    return a @ b / math.sqrt(n)


def test_rmse_definition_real_and_complex():
    T = torch.randn(5, 4, dtype=torch.float64)
    M = torch.randn(5, 4, dtype=torch.float64)
    assert rmse(M, T) == pytest.approx(float(((M - T) ** 2).mean().sqrt()), rel=1e-14)
    Tc = torch.randn(5, 4, dtype=torch.complex128)
    Mc = torch.randn(5, 4, dtype=torch.complex128)
    # SPEC.md §7.1: the mean runs over real and imaginary parts
    expected = math.sqrt(float((Mc - Tc).abs().square().sum()) / (2 * 20))
    assert rmse(Mc, Tc) == pytest.approx(expected, rel=1e-14)


def test_fit_recovers_low_rank_target():
    T = _rank2(30, 20)
    result = sm.fit(T, "low_rank", steps=300, lr=3e-2, rank=2, tol=1e-9)
    assert result.rmse < 1e-8
    assert result.rmse == pytest.approx(rmse(result.layer.to_dense(), T), rel=1e-9, abs=1e-15)
    assert result.history and result.history[0] > result.rmse
    assert result.layer.structure == "low_rank" and result.layer.bias is None


def test_fit_complex_target():
    T = _rank2(12, 10, dtype=torch.complex128)
    result = sm.fit(T, "low_rank", steps=300, lr=3e-2, rank=2, tol=1e-9)
    assert result.layer.dtype == torch.complex128
    assert result.rmse < 1e-8


def test_fit_real_part_of_complex_model():
    g = torch.Generator().manual_seed(4)
    T = torch.randn(6, 6, generator=g, dtype=torch.float64)
    result = sm.fit(T, "dense", steps=200, lr=5e-2, real_part=True, tol=1e-10)
    assert isinstance(result.layer.matrix, RealPart) and result.layer.dtype == torch.float64
    assert result.rmse < 1e-8
    x = torch.randn(3, 6, dtype=torch.float64)
    assert torch.allclose(result.layer(x), x @ result.layer.to_dense().T, atol=1e-12)


def test_fit_deterministic_for_a_seed():
    T = torch.randn(16, 12, dtype=torch.float64)
    runs = [sm.fit(T, "low_rank", steps=40, lbfgs_steps=5, seed=7, rank=3) for _ in range(2)]
    assert runs[0].history == runs[1].history
    assert torch.equal(runs[0].layer.to_dense(), runs[1].layer.to_dense())
    other = sm.fit(T, "low_rank", steps=40, lbfgs_steps=5, seed=8, rank=3)
    assert other.history != runs[0].history
    # the global RNG is not consumed by fitting
    torch.manual_seed(0)
    a = torch.rand(1)
    torch.manual_seed(0)
    sm.fit(T, "low_rank", steps=2, lbfgs_steps=0, rank=3)
    assert torch.equal(torch.rand(1), a)


def test_restarts_keep_the_best_and_early_stop():
    T = torch.randn(12, 10, dtype=torch.float64)
    result = sm.fit(T, "low_rank", steps=30, lbfgs_steps=0, restarts=4, lr=(1e-3, 1e-1), rank=2)
    assert len(result.restart_rmse) == 4 and len(set(result.restart_lr)) == 4
    assert all(1e-3 <= lr <= 1e-1 for lr in result.restart_lr)
    assert result.rmse == pytest.approx(min(result.restart_rmse), rel=1e-12)
    assert result.restart_rmse[result.best_restart] == min(result.restart_rmse)
    # successive halving: the survivor (the best) ran every step
    assert len(result.history) == 30
    easy = sm.fit(T, "low_rank", steps=500, restarts=3, tol=10.0, rank=2)
    assert easy.converged and len(easy.history) == 1


def test_warm_start_and_budget():
    T = _rank2(20, 16)
    warm = sm.project(T, "low_rank", rank=2).layer
    result = sm.fit(T, "low_rank", steps=0, lbfgs_steps=0, warm_start=warm, rank=2)
    assert result.rmse < 1e-12
    budgeted = sm.fit(T, "low_rank", steps=5, lbfgs_steps=0, params=0.25)
    assert budgeted.layer.num_parameters <= 0.25 * 20 * 16


def test_progress_bar_renders(capsys):
    from rich.console import Console

    console = Console(force_terminal=True, width=100)
    result = sm.fit(torch.randn(6, 5, dtype=torch.float64), "low_rank", steps=20, lbfgs_steps=0, progress=True, console=console, rank=1)
    assert len(result.history) == 20


@pytest.mark.parametrize(
    "target,kwargs,error,match",
    [
        (torch.tensor([[float("nan"), 1.0]]), {}, ValueError, "target: expected finite"),
        (torch.randn(2, 2, 2), {}, ValueError, "target: expected a 2-D"),
        (torch.randn(4, 4), {"steps": -1}, ValueError, "steps"),
        (torch.randn(4, 4), {"lr": 0.0}, ValueError, "lr"),
        (torch.randn(4, 4), {"lr": (1e-2, 1e-3)}, ValueError, "lr"),
        (torch.randn(4, 4), {"restarts": 0}, ValueError, "restarts"),
        (torch.randn(4, 4), {"tol": -1.0}, ValueError, "tol"),
        (torch.randn(4, 4), {"time_limit": 0.0}, ValueError, "time_limit"),
        (torch.randn(4, 4), {"time_limit": True}, ValueError, "time_limit"),
        (torch.randn(4, 4, dtype=torch.complex128), {"dtype": torch.float64}, ValueError, "dtype"),
        (torch.randn(4, 4, dtype=torch.complex128), {"real_part": True}, ValueError, "real_part"),
        (torch.randn(4, 4), {"warm_start": "zeros"}, TypeError, "warm_start"),
        (torch.randn(4, 4), {"structure": "nope"}, ValueError, "structure"),
    ],
)
def test_bad_input(target, kwargs, error, match):
    kwargs = {"structure": "low_rank", **kwargs}
    with pytest.raises(error, match=match):
        sm.fit(target, **kwargs)


def test_init_of_another_family_rejected():
    T = torch.randn(6, 6, dtype=torch.float64)
    other = sm.StructuredLinear(6, 6, "dense", bias=False, dtype=torch.float64)
    with pytest.raises(ValueError, match="warm_start"):
        sm.fit(T, "low_rank", warm_start=other)


def test_real_part_fit_round_trips_through_checkpoints(tmp_path):
    import scipy.fft

    import numpy as np

    target = torch.as_tensor(scipy.fft.dct(np.eye(8), type=2, norm="ortho", axis=0))
    result = sm.fit(target, "butterfly", steps=30, seed=0, real_part=True)
    model = torch.nn.Sequential(result.layer)
    sm.save(model, tmp_path / "fit.safetensors")
    fresh = torch.nn.Sequential(torch.nn.Linear(8, 8))
    sm.load(tmp_path / "fit.safetensors", fresh)
    assert torch.equal(fresh[0].to_dense(), result.layer.to_dense())


@pytest.mark.parametrize("structure", ["butterfly", "kaleidoscope", "fastfood", "acdc", "toeplitz_like", "hankel_like", "ldr_sd"])
@pytest.mark.parametrize("shape", [(12, 5), (5, 12)])
def test_dense_matrix_through_the_kernel_equals_to_dense(structure, shape):
    """Families with ``dense_by_forward`` are evaluated as ``M I`` in fits; same matrix, same gradient."""
    from structmat.fit.fitting import dense_matrix

    out_features, in_features = shape
    torch.manual_seed(0)
    for dtype in (torch.float64, torch.complex128):
        layer = sm.StructuredLinear(in_features, out_features, structure, bias=False, dtype=dtype)
        matrix = layer.matrix
        assert type(matrix).dense_by_forward
        fast, reference = dense_matrix(matrix), matrix.to_dense()
        assert fast.shape == reference.shape == shape
        assert torch.allclose(fast, reference, rtol=1e-12, atol=1e-12)
        weights = torch.randn(shape, dtype=dtype)
        grads = [torch.autograd.grad((m * weights).real.sum(), list(matrix.parameters())) for m in (dense_matrix(matrix), matrix.to_dense())]
        for a, b in zip(*grads):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_time_limit_cuts_the_fit_short():
    T = torch.randn(24, 20, dtype=torch.float64)
    free = sm.fit(T, "butterfly", steps=40, lbfgs_steps=5, seed=0)
    assert not free.timed_out and len(free.history) > 40
    limited = sm.fit(T, "butterfly", steps=100000, lbfgs_steps=5, seed=0, time_limit=0.3)
    assert limited.timed_out and 0 < len(limited.history) < 100000
    assert limited.seconds < 5
    # the best state seen is kept: never worse than the initialisation
    assert limited.rmse <= limited.history[0] + 1e-12
    projected = sm.project(T, "butterfly", params=0.5, steps=100000, time_limit=0.3)
    assert projected.method.endswith("+time_limit") and projected.seconds < 10
