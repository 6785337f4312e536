"""Circuits (SPEC.md §2; acceptance checks A2–A6): builders, evaluation, transposition principle,
layered sparse form, Baur–Strassen gradients, single-layer reduction, JSON validation, CLI."""

import json
import math

import numpy as np
import pytest
import scipy.fft
import scipy.linalg
import torch
from hypothesis import given
from hypothesis import strategies as st

import structmat as sm
from structmat.circuits import ArithmeticCircuit, LinearCircuit

from helpers import rel_error


def dense_dft(n, inverse=False):
    return torch.tensor(np.fft.ifft(np.eye(n), axis=0) * n if inverse else np.fft.fft(np.eye(n), axis=0))


# ---------------------------------------------------------------------------------------- builders
@pytest.mark.parametrize("n", [1, 2, 4, 8, 32, 128])
def test_fft_is_the_dft(n):
    c = sm.circuits.fft(n)
    k = int(math.log2(n))
    assert c.size == n + n * k and c.depth == k
    assert rel_error(c.to_matrix(torch.complex128), dense_dft(n)) <= 1e-12
    assert rel_error(sm.circuits.fft(n, inverse=True).to_matrix(torch.complex128), dense_dft(n, inverse=True)) <= 1e-12


@pytest.mark.parametrize("n", [1, 2, 16, 64])
def test_hadamard_and_dct(n):
    h = sm.circuits.hadamard(n)
    assert torch.equal(h.to_matrix(), torch.tensor(scipy.linalg.hadamard(n), dtype=torch.float64))
    assert not h.is_complex and h.count()["mul"] == 0
    d = sm.circuits.dct(n).to_matrix(torch.complex128)
    ref = torch.tensor(scipy.fft.dct(np.eye(n), type=2, axis=0))
    assert rel_error(d.real, ref) <= 1e-12 and float(d.imag.abs().max()) <= 1e-12


@pytest.mark.parametrize("n,m", [(1, 1), (5, 3), (8, 8), (13, 20)])
def test_polymul_and_toeplitz(n, m):
    p = np.random.default_rng(n).standard_normal(m)
    c = sm.circuits.polymul(n, coefficients=p)
    assert (c.n_inputs, c.n_outputs) == (n, n + m - 1)
    ref = np.stack([np.convolve(p, e) for e in np.eye(n)], axis=1)
    assert rel_error(c.to_matrix(torch.complex128), torch.tensor(ref, dtype=torch.complex128)) <= 1e-12
    N = 1 << (n + m - 2).bit_length()
    assert c.size <= n + 2 * N * max(1, int(math.log2(N))) + N  # near-linear: two FFTs of size N
    col, row = np.random.default_rng(1).standard_normal(m) + 1j, np.random.default_rng(2).standard_normal(n)
    t = sm.circuits.toeplitz(col, row)
    assert rel_error(t.to_matrix(torch.complex128), torch.tensor(scipy.linalg.toeplitz(col, row))) <= 1e-12


def test_polymul_default_and_from_matrix():
    c = sm.circuits.polymul(6)
    assert (c.n_inputs, c.n_outputs) == (6, 11)
    W = torch.randn(5, 7, dtype=torch.float64)
    W[2] = 0
    W[3, 1:] = 0
    c = sm.circuits.from_matrix(W)
    assert torch.equal(c.to_matrix(), W)
    assert c.size == 7 + 3 * 6 + 1 + 1  # 3 full rows (6 adds each), a zero gate, one scale gate


@given(
    n=st.integers(1, 12),
    extra=st.integers(0, 60),
    depth=st.integers(0, 8),
    seed=st.integers(0, 10_000),
    complex_constants=st.booleans(),
)
def test_random_circuit_exact_size_depth_and_evaluation(n, extra, depth, seed, complex_constants):
    """Check A2: batched evaluation equals to_matrix()·x (E64), exact size and depth."""
    size = n + (0 if depth == 0 else depth + extra)
    c = sm.circuits.random(n, size, depth, seed, complex_constants=complex_constants)
    assert c.size == size and c.depth == depth
    assert sum(len(layer) for layer in c.layers()) == size and len(c.layers()) == depth + 1
    assert all(c.gate_depth(g) == k for k, layer in enumerate(c.layers()) for g in layer)
    M = c.to_matrix()
    x = torch.randn(3, 2, n, dtype=torch.float64)
    assert rel_error(c.evaluate(x), x.to(M.dtype) @ M.T) <= 1e-12
    assert c.evaluate(x).shape == (3, 2, c.n_outputs)
    T = c.transpose()
    assert rel_error(T.to_matrix(), M.T) <= 1e-12
    assert rel_error(T.transpose().to_matrix(), M) <= 1e-12


def test_random_circuit_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        sm.circuits.random(4, 6, 3)
    with pytest.raises(ValueError, match="size"):
        sm.circuits.random(4, 5, 0)
    with pytest.raises(ValueError, match="n"):
        sm.circuits.fft(6)


def test_evaluate_is_differentiable_and_batched():
    c = sm.circuits.random(6, 40, 5, seed=2)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(c.evaluate, (x,))
    assert c.evaluate(torch.randn(0, 6, dtype=torch.float64)).shape == (0, 6)
    y = sm.circuits.fft(8).evaluate(torch.randn(4, 8))
    assert y.dtype == torch.complex64


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64, torch.complex128])
def test_fused_levels_match_reference(dtype):
    """The fused CPU op ``structmat::circuit_levels`` equals the pure-PyTorch reference (E64),
    forward and backward; repeated outputs and unused inputs included."""
    c = sm.circuits.random(7, 60, 6, seed=11, complex_constants=dtype.is_complex)
    c.set_outputs([c.size - 1, 3, c.size - 1, c.size - 5])
    x = torch.randn(5, 7, dtype=dtype, requires_grad=True)
    tolerance = 1e-5 if dtype in (torch.float32, torch.complex64) else 1e-12
    y = c.evaluate(x)
    (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))
    with sm.ops.use_reference():
        y_ref = c.evaluate(x)
        (grad_ref,) = torch.autograd.grad(y_ref, x, torch.ones_like(y_ref))
    assert rel_error(y, y_ref) <= tolerance and rel_error(grad, grad_ref) <= tolerance


def test_fused_levels_gradients_and_compile():
    """Custom-op checks of the fused backend: gradcheck and gradgradcheck (the backward is the
    transposed evaluation, whose own backward is the forward), opcheck, torch.compile."""
    from structmat.ops.circuit import _circuit_levels_op, _flatten

    c = sm.circuits.random(5, 30, 4, seed=4, complex_constants=True)
    x = torch.randn(3, 5, dtype=torch.complex128, requires_grad=True)
    assert torch.autograd.gradcheck(c.evaluate, (x,)) and torch.autograd.gradgradcheck(c.evaluate, (x,))
    sources, levels, outputs = c.evaluation_plan(torch.complex128)
    state = torch.randn(len(sources), 4, dtype=torch.complex128)
    torch.library.opcheck(_circuit_levels_op, (state, *_flatten(levels), outputs))
    torch._dynamo.reset()
    layer = sm.circuits.fft(8).as_layer(dtype=torch.complex128)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    z = torch.randn(4, 8, dtype=torch.complex128)
    assert rel_error(compiled(z), layer(z)) <= 1e-12


# ------------------------------------------------------------------------ transposition principle
def clean(circuit):
    """Outputs := every sink (gates nobody reads), so each gate lies on an input→output path."""
    used = set()
    for g in range(circuit.n_inputs, circuit.size):
        used.update(src for src, _ in circuit.edges(g))
    return circuit.set_outputs([g for g in range(circuit.size) if g not in used])


def assert_transposition_counts(c):
    M = c.to_matrix()
    T = c.transpose()
    assert rel_error(T.to_matrix(), M.T) <= 1e-12
    counts, t_counts = c.count(), T.count()
    assert t_counts["mul"] == counts["mul"]
    assert t_counts["add"] == counts["add"] + c.n_outputs - c.n_inputs


@pytest.mark.parametrize("builder", ["fft", "hadamard", "dct"])
def test_transposition_counts_of_transforms(builder):
    """Check A4: μ(Gᵀ) = μ(G), A(Gᵀ) = A(G) + r − c exactly."""
    assert_transposition_counts(sm.circuits.build(builder, n=32))


@given(n=st.integers(1, 10), extra=st.integers(0, 50), depth=st.integers(1, 7), seed=st.integers(0, 10_000))
def test_transposition_counts_random(n, extra, depth, seed):
    assert_transposition_counts(clean(sm.circuits.random(n, n + depth + extra, depth, seed)))


def test_transposition_counts_rectangular():
    c = clean(sm.circuits.random(9, 40, 4, seed=5))
    assert c.n_outputs != c.n_inputs
    assert_transposition_counts(c)


# ------------------------------------------------------------------------------ layered form (A3)
@pytest.mark.parametrize("seed", range(4))
def test_layered_sparse_form(seed):
    c = sm.circuits.random(8, 70, 6, seed, complex_constants=seed % 2 == 1)
    s, d = c.size, c.depth
    form = c.to_layered_sparse(padded_size=128)
    assert rel_error(form.to_dense(), c.to_matrix()) <= 1e-12
    assert form.starts[0] == c.n_inputs and len(form.layers) == d
    total = 0
    for layer, z, w in zip(form.layers, form.starts, form.widths):
        assert layer.shape == (128, 128) and layer.is_sparse
        assert layer._nnz() <= z + 2 * w
        total += layer._nnz()
    assert total <= d * s + 2 * s
    assert form.embed.shape == (128, 8) and form.select.shape == (c.n_outputs, 128)


# ------------------------------------------------------------------------------ JSON validation
def test_json_round_trip():
    for c in [sm.circuits.fft(8), sm.circuits.random(5, 30, 4, seed=1)]:
        back = LinearCircuit.from_json(c.to_json())
        assert back.size == c.size and back.outputs == c.outputs
        assert torch.equal(back.to_matrix(), c.to_matrix())


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda d: d["gates"].__setitem__(0, [0, 7, 1.0, 1.0]), "gates\\[0\\]\\[1\\].*forward"),
        (lambda d: d["gates"].__setitem__(1, [-1, 0, 1.0, 1.0]), "gates\\[1\\]\\[0\\]"),
        (lambda d: d["gates"].__setitem__(0, [0, 1, float("nan"), 1.0]), "finite"),
        (lambda d: d["gates"].__setitem__(0, [0, 1, [1.0, float("inf")], 1.0]), "finite"),
        (lambda d: d["gates"].__setitem__(0, [0, 1, 1.0]), "gates\\[0\\]"),
        (lambda d: d.__setitem__("outputs", [0, 99]), "outputs\\[1\\]"),
        (lambda d: d.__setitem__("n_inputs", 0), "n_inputs"),
        (lambda d: d.__setitem__("type", "arithmetic"), "type"),
    ],
)
def test_json_rejects_bad_input(mutate, match):
    data = sm.circuits.fft(4).to_dict()
    mutate(data)
    with pytest.raises((ValueError, TypeError), match=match):
        LinearCircuit.from_json(json.dumps(data))


def test_json_limits_and_garbage():
    text = sm.circuits.fft(16).to_json()
    with pytest.raises(ValueError, match="max_size"):
        LinearCircuit.from_json(text, max_size=50)
    assert LinearCircuit.from_json(text, max_size=80).size == 80
    with pytest.raises(ValueError, match="JSON"):
        LinearCircuit.from_json("{not json")
    with pytest.raises(ValueError, match="JSON"):
        LinearCircuit.from_json("[" * 100_000 + "]" * 100_000)
    with pytest.raises(TypeError, match="data"):
        LinearCircuit.from_json("[1, 2]")
    huge = json.dumps({"type": "linear", "n_inputs": 1, "gates": [[0, 0, 1.0, 1.0]] * 2000, "outputs": [0]})
    with pytest.raises(ValueError, match="max_size"):
        LinearCircuit.from_json(huge, max_size=100)


def test_building_rejects_bad_gates():
    c = LinearCircuit(3)
    with pytest.raises(ValueError, match="i"):
        c.add(3, 0)
    with pytest.raises(ValueError, match="finite"):
        c.add(0, 1, float("nan"))
    with pytest.raises(TypeError, match="a"):
        c.add(0, 1, "x")
    with pytest.raises(ValueError, match="outputs"):
        c.evaluate(torch.randn(2, 3))
    c.set_outputs([c.add(0, 1)])
    with pytest.raises(ValueError, match="x"):
        c.evaluate(torch.randn(2, 4))
    with pytest.raises(TypeError, match="x"):
        c.evaluate(torch.ones(2, 3, dtype=torch.long))


# ------------------------------------------------------------------------------ layers
def test_as_layer_runs_the_circuit():
    c = sm.circuits.fft(16)
    layer = c.as_layer(dtype=torch.complex128)
    assert layer.structure == "circuit" and layer.num_parameters == 0
    x = torch.randn(5, 16, dtype=torch.float64)
    assert rel_error(layer(x), c.evaluate(x)) <= 1e-12
    assert rel_error(layer.to_dense(), c.to_matrix()) <= 1e-12
    cfg = json.loads(json.dumps(layer.config()))
    rebuilt = sm.StructuredLinear(cfg["in_features"], cfg["out_features"], cfg["structure"], bias=False, dtype=torch.complex128, **cfg["options"])
    assert torch.equal(rebuilt.to_dense(), layer.to_dense())
    with pytest.raises(TypeError, match="dtype"):
        c.as_layer(dtype=torch.float64)


def test_circuit_family_by_builder_and_corner():
    layer = sm.StructuredLinear(10, 12, "circuit", builder="dct", bias=False, dtype=torch.complex128)
    full = sm.circuits.dct(16).to_matrix()
    assert rel_error(layer.to_dense(), full[:12, :10]) <= 1e-12
    with pytest.raises(ValueError, match="circuit"):
        sm.StructuredLinear(10, 12, "circuit", builder="fft", args={"n": 8}, dtype=torch.complex64)


# ------------------------------------------------------------------------------ arithmetic circuits
def random_program(n, gates, seed, complex_constants=False):
    """A random straight-line program over {+, −, ×, scalar·, constants}; output = last gate."""
    rng = np.random.default_rng(seed)
    c = ArithmeticCircuit(n)
    for _ in range(gates):
        kind = rng.choice(["add", "sub", "mul", "mul", "scale", "const"], p=[0.2, 0.15, 0.3, 0.1, 0.15, 0.1])
        i, j = (int(v) for v in rng.integers(c.size, size=2))
        if kind == "const":
            c.const(float(rng.standard_normal()))
        elif kind == "scale":
            c.scale(i, complex(*rng.standard_normal(2)) if complex_constants else float(rng.standard_normal()))
        else:
            getattr(c, kind)(i, j)
    last = c.size - 1
    if c.is_constant(last):
        last = c.mul(last, int(rng.integers(n)))
    return c.set_outputs([last])


def reference_value(c, x):
    values = []
    for g in range(c.size):
        kind, a, b, v = c.gate(g)
        values.append(
            {"input": lambda: x[g], "const": lambda: v, "add": lambda: values[a] + values[b], "sub": lambda: values[a] - values[b],
             "mul": lambda: values[a] * values[b], "scale": lambda: v * values[a]}[kind]()
        )
    return [values[o] for o in c.outputs]


@given(n=st.integers(1, 6), gates=st.integers(1, 40), seed=st.integers(0, 10_000))
def test_gradient_circuit_matches_autograd_and_bounds(n, gates, seed):
    """Check A5: ∇f from the reverse-mode circuit equals autograd and finite differences; the
    Baur–Strassen bound L(f, ∇f) <= 3 L(f) and the total constant <= 5 hold."""
    c = random_program(n, gates, seed)
    x = torch.randn(n, dtype=torch.float64) * 0.5
    assert rel_error(c.evaluate(x), torch.tensor(reference_value(c, x.tolist()), dtype=torch.float64)) <= 1e-12
    g = c.gradient()
    out = g.evaluate(x)
    xr = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(c.evaluate(xr).sum(), xr, allow_unused=True)
    auto = torch.zeros_like(x) if auto is None else auto
    assert rel_error(out[0], c.evaluate(x)[0]) <= 1e-12
    assert rel_error(out[1:], auto) <= 1e-10
    eps = 1e-6
    fd = torch.stack([(c.evaluate(x + eps * e) - c.evaluate(x - eps * e))[0] / (2 * eps) for e in torch.eye(n, dtype=torch.float64)])
    assert float((fd - out[1:]).abs().max()) <= 1e-5 * max(1.0, float(out[1:].abs().max()))
    f_counts, g_counts = c.count(), g.count()
    assert g_counts["nonscalar_mul"] <= 3 * f_counts["nonscalar_mul"]
    assert g_counts["total"] <= 5 * max(f_counts["total"], 1)


def test_gradient_forms_no_adjoint_for_constant_factors():
    """Products with a constant gate are scalar multiplications: their constant operand gets no
    adjoint, so a chain of them keeps Baur–Strassen's bound (regression: the dead non-scalar
    products ``adj·g`` made L(f, ∇f) = 7 > 3 = 3·L(f) here)."""
    c = ArithmeticCircuit(2)
    two = c.const(2.0)
    h = 0
    for _ in range(6):
        h = c.mul(two, h)
    c.set_outputs([c.mul(1, h)])  # f = 64 x0 x1
    g = c.gradient()
    assert c.count()["nonscalar_mul"] == 1 and g.count()["nonscalar_mul"] <= 3
    assert torch.equal(g.evaluate(torch.tensor([3.0, 5.0], dtype=torch.float64)), torch.tensor([960.0, 320.0, 192.0], dtype=torch.float64))


def test_total_operation_constant_on_random_programs():
    """Measure the cheap-gradient constant L_tot(f, ∇f) / L_tot(f) (SPEC.md §2.5: expect <= 5)."""
    ratios = []
    for seed in range(30):
        c = random_program(5, 60, seed)
        ratios.append(c.gradient().count()["total"] / c.count()["total"])
    assert max(ratios) <= 5
    assert min(ratios) >= 1


def test_gradient_complex_and_json():
    c = random_program(3, 25, 7, complex_constants=True)
    assert c.is_complex
    x = torch.randn(3, dtype=torch.float64)
    g = c.gradient().evaluate(x)
    xr = x.to(torch.complex128).requires_grad_(True)
    # holomorphic f: autograd returns conj(df/dx) for the real part's gradient of sum(f * v)
    (auto,) = torch.autograd.grad(c.evaluate(xr)[0], xr, grad_outputs=torch.ones((), dtype=torch.complex128), allow_unused=True)
    assert rel_error(g[1:], auto.conj()) <= 1e-10
    back = ArithmeticCircuit.from_json(c.to_json())
    assert torch.equal(back.evaluate(x), c.evaluate(x))
    with pytest.raises(ValueError, match="kind|gates\\[0\\]\\[0\\]"):
        ArithmeticCircuit.from_json({"type": "arithmetic", "n_inputs": 1, "gates": [["div", 0, 0, 0]], "outputs": [1]})
    with pytest.raises(ValueError, match="forward"):
        ArithmeticCircuit.from_json({"type": "arithmetic", "n_inputs": 1, "gates": [["mul", 0, 1, 0]], "outputs": [1]})
    with pytest.raises(ValueError, match="finite"):
        ArithmeticCircuit.from_json({"type": "arithmetic", "n_inputs": 1, "gates": [["const", -1, -1, float("inf")]], "outputs": [1]})
    with pytest.raises(ValueError, match="single-output"):
        ArithmeticCircuit(2).set_outputs([0, 1]).gradient()


def test_trace_and_bilinear_example():
    c = ArithmeticCircuit.trace(lambda v: [v[0] * v[1] + 3 * v[0] - 1, v[1] - v[0]], 2)
    assert torch.equal(c.evaluate(torch.tensor([2.0, 5.0], dtype=torch.float64)), torch.tensor([15.0, 3.0], dtype=torch.float64))
    assert c.count()["nonscalar_mul"] == 1


# ------------------------------------------------------------------------ single-layer reduction (A6)
def dense_matvec(m, n):
    def matvec(theta, x):
        return [sum((theta[i * n + j] * x[j] for j in range(1, n)), theta[i * n] * x[0]) for i in range(m)]

    return matvec


def low_rank_matvec(m, n, r):
    # parameters: U (m, r) row-major, then V (n, r) row-major; W = U Vᵀ
    def matvec(theta, x):
        U = [theta[i * r:(i + 1) * r] for i in range(m)]
        V = [theta[m * r + j * r: m * r + (j + 1) * r] for j in range(n)]
        t = [sum((V[j][k] * x[j] for j in range(1, n)), V[0][k] * x[0]) for k in range(r)]
        return [sum((U[i][k] * t[k] for k in range(1, r)), U[i][0] * t[0]) for i in range(m)]

    return matvec


@pytest.mark.parametrize("structure,options", [("dense", {}), ("low_rank", {"rank": 2})])
def test_single_layer_reduction(structure, options):
    """SPEC.md §2.6: the gradient circuit of f(θ) = uᵀW(θ)x equals torch.autograd on the layer."""
    m, n = 4, 5
    layer = sm.StructuredLinear(n, m, structure, bias=False, dtype=torch.float64, **options)
    x, u = torch.randn(n, dtype=torch.float64), torch.randn(m, dtype=torch.float64)
    params = list(layer.parameters())
    theta = torch.cat([p.detach().reshape(-1) for p in params])
    matvec = dense_matvec(m, n) if structure == "dense" else low_rank_matvec(m, n, options["rank"])
    circuit = sm.circuits.single_layer_circuit(matvec, theta.numel(), x, u)
    out = circuit.gradient().evaluate(theta)
    f = (u * layer(x)).sum()
    grads = torch.autograd.grad(f, params)
    assert rel_error(out[0], f) <= 1e-12
    assert rel_error(out[1:], torch.cat([g.reshape(-1) for g in grads])) <= 1e-12
    assert circuit.gradient().count()["nonscalar_mul"] <= 3 * circuit.count()["nonscalar_mul"]


# ------------------------------------------------------------------------------ command line
def test_cli_info_and_check(tmp_path):
    from typer.testing import CliRunner

    from structmat.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["circuit", "info", "fft", "--n", "16"])
    assert result.exit_code == 0, result.output
    assert "depth" in result.output and "80" in result.output
    path = tmp_path / "c.json"
    path.write_text(sm.circuits.random(4, 20, 3, seed=1).to_json())
    result = runner.invoke(app, ["circuit", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output
    path.write_text('{"type": "linear", "n_inputs": 2, "gates": [[0, 5, 1, 1]], "outputs": [2]}')
    result = runner.invoke(app, ["circuit", "check", str(path)])
    assert result.exit_code != 0 and "gates[0][1]" in result.output
