"""The compiler (SPEC.md §5.2–5.4; checks B4, B6–B9, B13): permutations -> BB*, sparse matrices ->
(BB*)^{4⌈s/n⌉}_4, circuits -> (BB*)^{≤8d+1}_{4s'/n}, exact in float64."""

import math

import numpy as np
import pytest
import scipy.sparse
import torch
from hypothesis import given
from hypothesis import strategies as st

import structmat as sm
from structmat.circuits import LinearCircuit
from structmat.compile import compile_report, max_error, permutation_to_bbstar, sparse_to_kmatrix, to_kmatrix
from structmat.compile.benes import IDENTITY, SWAP, benes_unit, benes_unit_bstar_b
from structmat.compile.sparse import sparse_piece_units
from structmat.core import registry
from structmat.families.kaleidoscope import Kaleidoscope

from helpers import rel_error


def twiddle_of(layer):
    return layer.matrix.twiddle.detach()


def is_switch(blocks):
    flat = blocks.reshape(-1, 2, 2)
    identity, swap = torch.tensor(IDENTITY), torch.tensor(SWAP)
    return bool(((flat == identity).all((1, 2)) | (flat == swap).all((1, 2))).all())


# ------------------------------------------------------------------------------ permutations (B4)
@pytest.mark.parametrize("n", [2, 4, 8, 64, 1024, 4096])
def test_permutation_routing_is_exact(n):
    generator = torch.Generator().manual_seed(n)
    for _ in range(3 if n <= 64 else 1):
        perm = torch.randperm(n, generator=generator)
        k = permutation_to_bbstar(perm)
        assert (k.width, k.expansion) == (1, 1)
        tw = twiddle_of(k)
        assert tw.shape == (1, 2, int(math.log2(n)), n // 2, 2, 2) and is_switch(tw)
        x = torch.arange(n, dtype=torch.float64)
        assert torch.equal(k(x), x[perm])  # Z tier: exact
        if n <= 64:
            assert torch.equal(k.to_dense(), torch.eye(n, dtype=torch.float64)[perm])


@pytest.mark.parametrize("n", [1, 3, 12, 100])
def test_permutation_padding_and_bstar_b(n):
    perm = torch.randperm(n)
    for variant in ["bb*", "b*b"]:
        k = permutation_to_bbstar(perm, variant=variant)
        assert torch.equal(k.to_dense(), torch.eye(n, dtype=torch.float64)[perm])
    matrix = torch.eye(n)[perm]
    assert torch.equal(permutation_to_bbstar(matrix).to_dense(), matrix.double())


def test_bstar_b_halves():
    """The 𝓑*𝓑 variant: increasing-stride half applied first, then the decreasing one (SPEC §5.2)."""
    n = 16
    perm = np.random.default_rng(0).permutation(n)
    halves = torch.tensor(benes_unit_bstar_b(perm))
    assert is_switch(halves)
    x = torch.arange(n, dtype=torch.float64)[None]
    inc_then_dec = sm.ops.butterfly.butterfly_multiply(halves[None], x, increasing_stride=True)[:, 0]
    assert torch.equal(inc_then_dec[0], x[0, perm])
    dec_then_inc = sm.ops.butterfly.butterfly_multiply(torch.tensor(benes_unit(perm))[None], x, increasing_stride=False)[:, 0]
    assert torch.equal(dec_then_inc[0], x[0, perm])


def test_permutation_bad_input():
    with pytest.raises(ValueError, match="perm"):
        permutation_to_bbstar([0, 0, 1])
    with pytest.raises(ValueError, match="perm"):
        permutation_to_bbstar(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="perm"):
        permutation_to_bbstar(torch.ones(3, 3))
    with pytest.raises(ValueError, match="variant"):
        permutation_to_bbstar([1, 0], variant="bbb")


# ------------------------------------------------------------------------------ sparse (B7, B8)
def random_sparse(m, n, density, seed, complex_values=False):
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((m, n)) + (1j * rng.standard_normal((m, n)) if complex_values else 0)
    return torch.tensor(values * (rng.random((m, n)) < density))


def test_construction_a_piece():
    """Check B7: a piece with <= n nonzeros, including a full row and a full column, is 4 units at
    size 2n with 0/1 permutation units, and its corner is S."""
    n = 8
    S = torch.zeros(n, n, dtype=torch.float64)
    S[3] = torch.randn(n, dtype=torch.float64)  # a full row: n nonzeros
    rows, cols = S.nonzero().T.numpy()
    units = sparse_piece_units(rows, cols, S[rows, cols].numpy(), n)
    assert units.shape == (4, 2, 4, n, 2, 2)
    assert is_switch(torch.tensor(units[0])) and is_switch(torch.tensor(units[3]))
    assert is_switch(torch.tensor(units[1, 1])) and is_switch(torch.tensor(units[2, 0]))
    k = Kaleidoscope.from_twiddle(torch.tensor(units).reshape(1, 8, 4, n, 2, 2), n, n)
    assert rel_error(k.to_dense(), S) <= 1e-12
    S = torch.zeros(n, n, dtype=torch.float64)
    S[:, 5] = torch.randn(n, dtype=torch.float64)  # a full column
    rows, cols = S.nonzero().T.numpy()
    units = sparse_piece_units(rows, cols, S[rows, cols].numpy(), n)
    k = Kaleidoscope.from_twiddle(torch.tensor(units).reshape(1, 8, 4, n, 2, 2), n, n)
    assert rel_error(k.to_dense(), S) <= 1e-12


@pytest.mark.parametrize("n", [4, 8, 16, 32])
@pytest.mark.parametrize("density", [0.05, 0.3, 0.75])
def test_sparse_to_kmatrix_theorem_3(n, density):
    S = random_sparse(n, n, density, seed=n)
    s = int((S != 0).sum())
    k = sparse_to_kmatrix(S)
    assert k.width == 4 * max(1, math.ceil(s / n)) and k.expansion == 4
    assert rel_error(k.to_dense(), S) <= 1e-10


def test_sparse_inputs_complex_rectangular_and_formats():
    S = random_sparse(8, 8, 0.4, seed=1, complex_values=True)
    k = sparse_to_kmatrix(S)
    assert k.dtype == torch.complex128 and rel_error(k.to_dense(), S) <= 1e-10
    R = random_sparse(5, 11, 0.3, seed=2)
    k = sparse_to_kmatrix(R)
    assert k.to_dense().shape == (5, 11) and rel_error(k.to_dense(), R) <= 1e-10
    assert rel_error(sparse_to_kmatrix(scipy.sparse.csr_matrix(R.numpy())).to_dense(), R) <= 1e-10
    assert rel_error(sparse_to_kmatrix(R.to_sparse()).to_dense(), R) <= 1e-10
    zero = sparse_to_kmatrix(torch.zeros(4, 4))
    assert zero.width == 4 and float(zero.to_dense().detach().abs().max()) == 0


def test_sparse_bad_input():
    with pytest.raises(ValueError, match="S"):
        sparse_to_kmatrix(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="S"):
        sparse_to_kmatrix(np.ones(5))
    with pytest.raises(ValueError, match="S"):
        sparse_to_kmatrix(torch.tensor([[1.0, float("nan")]]))


def test_low_rank_in_k():
    """Check B13 (via Theorem 3): a rank-r matrix compiles exactly (here as a sparse matrix)."""
    u, v = torch.randn(8, 2, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    k = sparse_to_kmatrix(u @ v)
    assert rel_error(k.to_dense(), u @ v) <= 1e-10


# ------------------------------------------------------------------------------ circuits (B9)
def check_compiled(circuit, dense=True):
    k = to_kmatrix(circuit)
    s, d = circuit.size, circuit.depth
    s_prime = max(2, 1 << (max(s, circuit.n_outputs) - 1).bit_length())
    assert k.width <= 8 * d + 1
    assert k.matrix.size == 4 * s_prime and k.expansion == 4 * s_prime // max(circuit.n_inputs, circuit.n_outputs)
    assert k.expansion <= 8 * s / circuit.n_inputs  # C2 = 8 (docstring of structmat.compile.kmatrix)
    N = k.matrix.size
    assert k.num_parameters == 4 * k.width * N * int(math.log2(N))
    assert k.num_parameters == sm.StructuredLinear(k.in_features, k.out_features, "kaleidoscope", width=k.width, padded_size=N, device="meta").num_parameters
    # exact corner: the fast multiply on the identity (all n columns) vs to_matrix(); E64 tier
    assert max_error(circuit, k, batch=None if dense else 3) <= 1e-9
    return k


@pytest.mark.parametrize(
    "circuit",
    [
        sm.circuits.fft(4),
        sm.circuits.hadamard(8),
        sm.circuits.dct(4),
        sm.circuits.polymul(3, coefficients=[1.0, -2.0]),
        sm.circuits.toeplitz([1.0, 2.0, 3.0], [1.0, 4.0, 5.0, 6.0]),
        sm.circuits.random(5, 24, 3, seed=4),
        sm.circuits.from_matrix(torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]])),
    ],
    ids=["fft", "hadamard", "dct", "polymul", "toeplitz", "random", "from_matrix"],
)
def test_builders_compile_exactly(circuit):
    k = check_compiled(circuit)
    assert k.dtype == (torch.complex128 if circuit.is_complex else torch.float64)


@given(n=st.integers(1, 6), extra=st.integers(0, 16), depth=st.integers(1, 4), seed=st.integers(0, 10_000), complex_constants=st.booleans())
def test_random_circuits_compile_exactly(n, extra, depth, seed, complex_constants):
    check_compiled(sm.circuits.random(n, n + depth + extra, depth, seed, complex_constants=complex_constants), dense=False)


def test_repeated_outputs_and_depth_zero():
    c = LinearCircuit(3)
    g = c.add(0, 1, 2.0, -1.0)
    c.set_outputs([g, 2, g])
    k = to_kmatrix(c)
    assert k.width <= 8 * c.depth + 4 and rel_error(k.to_dense(), c.to_matrix()) <= 1e-12
    identity = LinearCircuit(4).set_outputs([3, 1])
    assert rel_error(to_kmatrix(identity).to_dense(), identity.to_matrix()) == 0


def test_compile_report_and_bad_input():
    c = sm.circuits.random(4, 20, 3, seed=1)
    report = compile_report(c)
    assert report["s"] == 20 and report["d"] == 3 and report["w"] <= 8 * 3 + 1
    assert report["w/d"] <= report["C1"] and report["e/(s/n)"] <= report["C2"]
    assert report["params"] == 4 * report["w"] * report["N"] * int(math.log2(report["N"]))
    with pytest.raises(ValueError, match="outputs"):
        to_kmatrix(LinearCircuit(3))
    with pytest.raises(TypeError, match="circuit"):
        to_kmatrix(torch.eye(3))
    with pytest.raises(ValueError, match="gates\\[0\\]"):
        to_kmatrix(LinearCircuit.from_json({"type": "linear", "n_inputs": 2, "gates": [[0, 9, 1.0, 1.0]], "outputs": [2]}))


def test_cli_compile(tmp_path):
    from typer.testing import CliRunner

    from structmat.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["compile", "hadamard", "--n", "4"])
    assert result.exit_code == 0, result.output
    assert "max error" in result.output and "w/d" in result.output
    path = tmp_path / "c.json"
    path.write_text(sm.circuits.random(3, 10, 2, seed=0).to_json())
    result = runner.invoke(app, ["compile", str(path)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["compile", "nonsense"])
    assert result.exit_code != 0
