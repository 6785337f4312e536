"""safetensors checkpoints of structured models: bit-exact round trips, rebuilt layers, errors."""

import json

import pytest
import torch
from safetensors.torch import save_file, safe_open
from torch import nn

import structmat as sm
from structmat.core.compose import Product
from structmat.families.dense import Dense
from structmat.families.low_rank import LowRank
from structmat.nn import StructuredLinear


def mlp(dtype=torch.float32):
    return nn.Sequential(nn.Linear(20, 48), nn.GELU(), nn.Linear(48, 33), nn.Tanh(), nn.Linear(33, 5), nn.LayerNorm(5)).to(dtype)


def mixed(dtype=torch.float32):
    model = mlp(dtype)
    sm.structurize(model, "low_rank", include="0", params=0.3)
    sm.structurize(model, "sparse", include="2", density=0.2)
    sm.structurize(model, "sparse_low_rank", include="4", params=0.6)
    return model


def assert_same_state(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trip_into_unstructured_model_is_bit_exact(tmp_path, dtype):
    model = mixed(dtype)
    path = tmp_path / "model.safetensors"
    sm.save(model, path)
    fresh = mlp(dtype)
    assert sm.load(path, fresh) is fresh
    assert [type(m).__name__ for m in fresh] == [type(m).__name__ for m in model]
    assert_same_state(model, fresh)
    x = torch.randn(4, 20, dtype=dtype)
    assert torch.equal(model(x), fresh(x))


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_round_trip(tmp_path, dtype):
    def net():
        return nn.Sequential(StructuredLinear(6, 8, "low_rank", rank=2, dtype=dtype), StructuredLinear(8, 3, "dense", dtype=dtype))

    model = net()
    sm.save(model, tmp_path / "c.safetensors")
    target = net()
    sm.load(tmp_path / "c.safetensors", target)
    assert_same_state(model, target)
    x = torch.randn(2, 6, dtype=dtype)
    assert torch.equal(model(x), target(x))


def test_metadata_records_structured_configs(tmp_path):
    model = mixed()
    path = tmp_path / "m.safetensors"
    sm.save(model, path)
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    configs = json.loads(meta["structured"])
    assert meta["format"] == "structmat" and meta["structmat_version"] == sm.__version__
    assert configs["0"]["structure"] == "low_rank" and configs["2"]["options"]["nnz"] == model[2].options["nnz"]
    assert configs["4"]["bias"] is True


def test_load_into_same_structure_keeps_parameter_objects(tmp_path):
    model = mixed()
    path = tmp_path / "m.safetensors"
    sm.save(model, path)
    target = mixed()
    with torch.no_grad():
        for p in target.parameters():
            p.add_(1.0)
    params = list(target.parameters())
    sm.load(path, target)
    assert all(a is b for a, b in zip(params, target.parameters()))  # optimizers stay valid
    assert_same_state(model, target)


def test_load_rebuilds_differently_structured_layers_and_back_to_linear(tmp_path):
    model = mixed()
    path = tmp_path / "m.safetensors"
    sm.save(model, path)
    target = mlp()
    sm.structurize(target, "dense")
    sm.load(path, target)
    assert [target[i].structure for i in (0, 2, 4)] == ["low_rank", "sparse", "sparse_low_rank"]
    assert_same_state(model, target)

    dense = mlp()
    dense_path = tmp_path / "dense.safetensors"
    sm.save(dense, dense_path)
    sm.load(dense_path, target)
    assert all(type(target[i]) is nn.Linear for i in (0, 2, 4))
    assert_same_state(dense, target)


def test_composite_bare_matrix_tied_and_wrapped_models(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(11, 6)
            self.mix = LowRank(6, 6, rank=2)
            self.proj = StructuredLinear.from_matrix(Product(Dense(4, 6), LowRank(6, 4, rank=1)), bias=True)
            self.head = nn.Linear(6, 11, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, ids):
            return self.head(self.proj(self.mix(self.embed(ids))))

    model = Net()
    path = tmp_path / "net.safetensors"
    sm.save(torch.compile(model, backend="aot_eager"), path)
    with safe_open(str(path), framework="pt") as handle:
        assert "head.weight" not in handle.keys() and json.loads(handle.metadata()["aliases"]) == {"head.weight": "embed.weight"}
    target = Net()
    target.proj = nn.Linear(6, 6)  # an unstructured layer at the same path is rebuilt
    sm.load(path, target)
    assert isinstance(target.proj.matrix, Product) and target.head.weight is target.embed.weight
    assert_same_state(model, target)
    ids = torch.randint(0, 11, (2, 3))
    assert torch.equal(model(ids), target(ids))


def assert_untouched(model, types, state):
    assert [type(m) for m in model] == types
    current = model.state_dict()
    assert list(current) == list(state) and all(torch.equal(current[k], state[k]) for k in state)


def snapshot(model):
    return [type(m) for m in model], {k: v.clone() for k, v in model.state_dict().items()}


def test_mismatched_architecture_fails_and_leaves_model_untouched(tmp_path):
    path = tmp_path / "m.safetensors"
    sm.save(mixed(), path)
    other = nn.Sequential(nn.Linear(20, 48), nn.GELU(), nn.Linear(48, 30), nn.Tanh(), nn.Linear(30, 5), nn.LayerNorm(5))
    before = snapshot(other)
    with pytest.raises(ValueError, match=r"module '2' maps 48 -> 30 features in the model, but 48 -> 33 in the checkpoint"):
        sm.load(path, other)
    assert_untouched(other, *before)

    shorter = nn.Sequential(nn.Linear(20, 48), nn.GELU(), nn.Linear(48, 33))
    before = snapshot(shorter)
    with pytest.raises(ValueError, match=r"the model has no module '4'"):
        sm.load(path, shorter)
    assert_untouched(shorter, *before)

    no_norm = mlp()[:5]
    before = snapshot(no_norm)
    with pytest.raises(ValueError, match=r"does not match the model's architecture \(not in the model: 5.bias, 5.weight\)"):
        sm.load(path, no_norm)
    assert_untouched(no_norm, *before)


def test_malformed_files(tmp_path):
    model = mlp()
    before = snapshot(model)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        sm.load(garbage, model)
    foreign = tmp_path / "foreign.safetensors"
    save_file({k: v.contiguous() for k, v in mlp().state_dict().items()}, str(foreign))
    with pytest.raises(ValueError, match="expected metadata format='structmat'"):
        sm.load(foreign, model)
    broken = tmp_path / "broken.safetensors"
    save_file({"x": torch.zeros(1)}, str(broken), metadata={"format": "structmat", "format_version": "1", "structured": "{oops"})
    with pytest.raises(ValueError, match="malformed structmat metadata"):
        sm.load(broken, model)
    wrong_shape = tmp_path / "shape.safetensors"
    state = {k: v.clone() for k, v in mlp().state_dict().items()}
    state["5.weight"] = torch.ones(6)
    save_file(state, str(wrong_shape), metadata={"format": "structmat", "format_version": "1", "structured": "{}", "aliases": "{}"})
    with pytest.raises(ValueError, match=r"tensor '5.weight': expected shape \(5,\), got \(6,\)"):
        sm.load(wrong_shape, model)
    bad_config = tmp_path / "config.safetensors"
    cfg = json.dumps({"0": {"structure": "low_rank", "in_features": 20, "out_features": 48, "options": {"rank": 0}, "bias": True}})
    save_file(state, str(bad_config), metadata={"format": "structmat", "format_version": "1", "structured": cfg, "aliases": "{}"})
    with pytest.raises(ValueError, match="cannot rebuild structured module '0'.*rank: expected an integer"):
        sm.load(bad_config, model)
    assert_untouched(model, *before)
    with pytest.raises(FileNotFoundError, match="path: no checkpoint file"):
        sm.load(tmp_path / "absent.safetensors", model)
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        sm.save({"a": 1}, tmp_path / "x.safetensors")
