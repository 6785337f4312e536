"""Model surgery (structurize) and optimizer parameter groups."""

import warnings

import pytest
import torch
from torch import nn

import structmat as sm
from structmat.families.low_rank import LowRank, svd_truncate
from structmat.nn import StructuredLinear, SurgerySummary


def mlp(dtype=torch.float64):
    return nn.Sequential(nn.Linear(20, 48), nn.GELU(), nn.Linear(48, 33), nn.Tanh(), nn.Linear(33, 5)).to(dtype)


class SelfAttention(nn.Module):
    """A Hugging Face BERT-style attention block: .query/.key/.value and .output.dense."""

    def __init__(self, d, heads=2):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.output = nn.Module()
        self.output.dense = nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        split = lambda z: z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
        att = torch.softmax(split(self.query(x)) @ split(self.key(x)).transpose(-1, -2) / (d // self.heads) ** 0.5, -1)
        return self.output.dense((att @ split(self.value(x))).transpose(1, 2).reshape(b, t, d))


class BertLikeLayer(nn.Module):
    def __init__(self, d=16, ff=40):
        super().__init__()
        self.attention = SelfAttention(d)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(d, ff)
        self.output = nn.Module()
        self.output.dense = nn.Linear(ff, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        x = self.norm(x + self.attention(x))
        return self.norm(x + self.output.dense(torch.relu(self.intermediate.dense(x))))


class BertLike(nn.Module):
    def __init__(self, layers=2, d=16):
        super().__init__()
        self.embeddings = nn.Embedding(50, d)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([BertLikeLayer(d) for _ in range(layers)])

    def forward(self, ids):
        x = self.embeddings(ids)
        for layer in self.encoder.layer:
            x = layer(x)
        return x


def transformer(dtype=torch.float32):
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=24, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).to(dtype)


# ---------------------------------------------------------------------- structurize
def test_dense_surgery_leaves_outputs_unchanged():
    model = mlp()
    x = torch.randn(7, 20, dtype=torch.float64)
    before = model(x)
    _, summary = sm.structurize(model, "dense", return_summary=True)
    assert isinstance(summary, SurgerySummary) and summary.model is model
    assert summary.replaced == ["0", "2", "4"]
    assert all(isinstance(model[i], StructuredLinear) for i in (0, 2, 4))
    assert all(layer.rel_error == 0.0 for layer in summary.layers)
    assert summary.params_before == summary.params_after == sum(p.numel() for p in mlp().parameters())
    assert summary.flops_before == summary.flops_after
    torch.testing.assert_close(model(x), before, rtol=1e-13, atol=1e-13)


def test_low_rank_budget_projection_and_counts():
    model = mlp()
    weights = {name: m.weight.detach().clone() for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    _, summary = sm.structurize(model, "low_rank", params=0.25, return_summary=True)
    assert summary.params_after < summary.params_before
    assert summary.flops_after < summary.flops_before
    for report in summary.layers:
        layer = model.get_submodule(report.name)
        W = weights[report.name]
        assert report.params_after == layer.num_parameters <= 0.25 * W.numel()
        assert report.params_before == W.numel() and report.method == "closed_form"
        best = svd_truncate(W, report.options["rank"])
        expected = float(torch.linalg.norm(W - best) / torch.linalg.norm(W))
        assert report.rel_error == pytest.approx(expected, rel=1e-10)
        torch.testing.assert_close(layer.to_dense(), best, rtol=1e-10, atol=1e-12)
        assert report.flops_after == layer.flops(1)
    assert "low_rank" in str(summary) and summary.to_dict()["params_after"] == summary.params_after


def test_project_false_reinitialises_fresh_layers():
    model = mlp()
    _, summary = sm.structurize(model, "low_rank", project=False, rank=2, return_summary=True)
    assert [layer.method for layer in summary.layers] == ["reinitialised"] * 3
    assert all(layer.rel_error is None for layer in summary.layers) and summary.max_rel_error is None
    assert model[0].options == {"rank": 2} and model[0].dtype == torch.float64


def test_family_without_closed_form_is_fitted_and_fixed_family_is_built():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)).double()
    _, summary = sm.structurize(model, "kaleidoscope", include="0", projection={"steps": 200, "lbfgs_steps": 0}, return_summary=True)
    report = summary.layers[0]
    assert report.method in ("fit", "hierarchical+fit") and report.rel_error < 0.99  # K-matrices: hierarchical warm start, then the fit
    assert isinstance(model[0], StructuredLinear) and model[0].structure == "kaleidoscope"
    _, fixed = sm.structurize(model, "permutation", include="2", return_summary=True)
    assert fixed.layers[0].method == "reinitialised" and fixed.layers[0].params_after == 0
    with pytest.raises(TypeError, match="projection: expected a dict"):
        sm.structurize(model, "low_rank", projection=5)


def test_include_exclude_patterns_and_predicate():
    model = BertLike()
    _, summary = sm.structurize(model, "low_rank", include=["*.intermediate.dense", "*.output.dense"], exclude="encoder.layer.1.*", rank=3, return_summary=True)
    # glob "*" crosses dots, as in fnmatch: "*.output.dense" also matches the attention output
    assert summary.replaced == [
        "encoder.layer.0.attention.output.dense",
        "encoder.layer.0.intermediate.dense",
        "encoder.layer.0.output.dense",
    ]
    assert isinstance(model.encoder.layer[1].intermediate.dense, nn.Linear)
    _, summary = sm.structurize(model, "sparse", include=lambda name, m: name.endswith((".query", ".key")), density=0.5, return_summary=True)
    assert summary.replaced == [f"encoder.layer.{i}.attention.{p}" for i in (0, 1) for p in ("query", "key")]
    ids = torch.randint(0, 50, (3, 6))
    assert model(ids).shape == (3, 6, 16)


def test_huggingface_style_model_with_dense_is_unchanged():
    model = BertLike().double()
    ids = torch.randint(0, 50, (2, 5))
    before = model(ids)
    _, summary = sm.structurize(model, "dense", return_summary=True)
    assert len(summary.layers) == 12  # 6 Linear per layer
    torch.testing.assert_close(model(ids), before, rtol=1e-12, atol=1e-12)


def test_transformer_encoder_skips_out_proj_and_keeps_outputs():
    model = transformer().eval()
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        before = model(x)  # PyTorch's fused fast path
    _, summary = sm.structurize(model, "dense", return_summary=True)
    assert summary.replaced == [f"layers.{i}.linear{j}" for i in (0, 1) for j in (1, 2)]
    assert [name for name, _ in summary.skipped] == ["layers.0.self_attn.out_proj", "layers.1.self_attn.out_proj"]
    assert "multi_head_attention_forward" in summary.skipped[0][1]
    with torch.no_grad():
        after = model(x)  # the fast path reads linear1.weight: surgery must have switched it off
        mask = torch.zeros(3, 5, dtype=torch.bool)
        mask[:, -1] = True
        masked = model(x, src_key_padding_mask=mask)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert masked.shape == (3, 5, 16)
    model = transformer().eval()
    _, low = sm.structurize(model, "low_rank", include="layers.*.linear*", rank=4, return_summary=True)
    with torch.no_grad():  # low_rank has no .weight: the fused paths would raise AttributeError
        assert model(x).shape == (3, 5, 16)
        assert model(x, src_key_padding_mask=mask).shape == (3, 5, 16)
    assert len(low.layers) == 4


def test_explicitly_included_unsupported_layer_warns():
    model = transformer()
    with pytest.warns(UserWarning, match="out_proj"):
        _, summary = sm.structurize(model, "low_rank", include="*.out_proj", return_summary=True)
    assert summary.layers == [] and len(summary.skipped) == 2


def test_tied_weights_are_skipped():
    class TiedLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(30, 8)
            self.hidden = nn.Linear(8, 8)
            self.head = nn.Linear(8, 30, bias=False)
            self.head.weight = self.embed.weight

    model = TiedLM()
    _, summary = sm.structurize(model, "low_rank", rank=2, return_summary=True)
    assert summary.replaced == ["hidden"]
    assert summary.skipped[0][0] == "head" and "tied to embed" in summary.skipped[0][1]
    assert model.head.weight is model.embed.weight


def test_pattern_matching_nothing_warns_with_existing_names():
    model = mlp()
    with pytest.warns(UserWarning, match=r"'decoder\.\*' matches no nn\.Linear layer; the nn\.Linear layers are: 0, 2, 4"):
        _, summary = sm.structurize(model, "low_rank", include="decoder.*", return_summary=True)
    assert summary.layers == [] and isinstance(model[0], nn.Linear)


def test_budget_below_every_member_fails_before_any_change():
    model = mlp()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"params: budget 20 is below the minimum of structure 'low_rank'.*layer '0'"):
        sm.structurize(model, "low_rank", params=20)
    assert all(isinstance(model[i], nn.Linear) for i in (0, 2, 4))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_bad_arguments():
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        sm.structurize("net", "low_rank")
    with pytest.raises(TypeError, match="include: expected a glob pattern"):
        sm.structurize(mlp(), "low_rank", include=3)
    with pytest.raises(TypeError, match="rnak: unknown option .* did you mean 'rank'"):
        sm.structurize(mlp(), "low_rank", rnak=2)
    with pytest.raises(ValueError, match="structure: unknown family 'lowrank'"):
        sm.structurize(mlp(), "lowrank")


def test_root_linear_frozen_and_training_mode_are_kept():
    linear = nn.Linear(12, 9).double().eval().requires_grad_(False)
    _, summary = sm.structurize(linear, "low_rank", rank=9, return_summary=True)
    layer = summary.model
    assert isinstance(layer, StructuredLinear) and not layer.training
    assert all(not p.requires_grad for p in layer.parameters())
    assert summary.layers[0].rel_error < 1e-12
    x = torch.randn(4, 12, dtype=torch.float64)
    torch.testing.assert_close(layer(x), linear(x), rtol=1e-10, atol=1e-12)


def test_torch_compile_after_surgery():
    model = mlp(torch.float32)
    sm.structurize(model, "low_rank", params=0.3, include=["0", "2"])
    sm.structurize(model, "sparse", include="4", density=0.5)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(6, 20)
    torch.testing.assert_close(compiled(x), model(x))
    compiled(x).sum().backward()
    assert model[0].matrix.U.grad is not None


# ---------------------------------------------------------------------- param_groups
def groups_by_name(groups):
    return {name: group for group in groups for name in group["param_names"]}


def test_param_groups_decay_rules():
    model = BertLike()
    sm.structurize(model, "low_rank", include="*.intermediate.dense", rank=2)
    groups = sm.param_groups(model, lr=1e-3, weight_decay=0.1)
    by_name = groups_by_name(groups)
    assert len(by_name) == sum(1 for _ in model.parameters())
    assert by_name["encoder.layer.0.attention.query.weight"]["weight_decay"] == 0.1
    for no_decay in [
        "encoder.layer.0.attention.query.bias",
        "encoder.layer.0.norm.weight",
        "embeddings.weight",
        "encoder.layer.0.intermediate.dense.matrix.U",
        "encoder.layer.0.intermediate.dense.bias",
    ]:
        assert by_name[no_decay]["weight_decay"] == 0.0, no_decay
    assert all(group["lr"] == 1e-3 and group["lr_multiplier"] == 1.0 for group in groups)
    optimizer = torch.optim.AdamW(groups)
    model(torch.randint(0, 50, (2, 4))).sum().backward()
    optimizer.step()


class TunedLowRank(LowRank):
    """A low-rank family with an opt-in decayed factor and a learning-rate multiplier."""

    lr_multipliers = {"U": 10.0}
    weight_decay_patterns = ("V",)


def test_param_groups_family_multipliers_shared_and_frozen():
    model = nn.Sequential(StructuredLinear.from_matrix(TunedLowRank(8, 6, rank=2), bias=True), nn.Linear(6, 6))
    model.append(model[1])  # shared module: its parameters appear once
    model[1].bias.requires_grad_(False)
    by_name = groups_by_name(sm.param_groups(model, lr=0.01, weight_decay=0.5))
    assert set(by_name) == {"0.bias", "0.matrix.U", "0.matrix.V", "1.weight"}
    assert by_name["0.matrix.U"]["lr"] == pytest.approx(0.1) and by_name["0.matrix.U"]["weight_decay"] == 0.0
    assert by_name["0.matrix.V"]["lr"] == 0.01 and by_name["0.matrix.V"]["weight_decay"] == 0.5
    assert by_name["1.weight"]["weight_decay"] == 0.5


def test_param_groups_bad_input():
    with pytest.raises(ValueError, match="lr: expected a finite number >= 0, got -1"):
        sm.param_groups(mlp(), lr=-1)
    with pytest.raises(TypeError, match="weight_decay: expected a finite number >= 0, got '0.1' \\(str\\)"):
        sm.param_groups(mlp(), lr=0.1, weight_decay="0.1")
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        sm.param_groups([1, 2], lr=0.1)


def test_structurize_keeps_frozen_parts_frozen():
    import torch.nn as nn

    import structmat as sm

    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    model[0].bias.requires_grad_(False)
    model[2].weight.requires_grad_(False)
    sm.structurize(model, "low_rank", rank=2)
    assert not model[0].bias.requires_grad and all(p.requires_grad for p in model[0].matrix.parameters())
    assert model[2].bias.requires_grad and not any(p.requires_grad for p in model[2].matrix.parameters())


def test_structurize_returns_the_model_as_in_design():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    out = sm.structurize(model, "low_rank", rank=2)
    assert out is model and isinstance(model[0], StructuredLinear)
    assert model.structurize_summary.replaced == ["0", "2"]
    x = torch.randn(3, 8)
    assert out(x).shape == (3, 4)
