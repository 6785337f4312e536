"""Exact transforms (SPEC.md §6; checks B1, B2, C1--C6) against NumPy / SciPy references (E64)."""

import math

import numpy as np
import pytest
import scipy.fft
import scipy.linalg
import scipy.signal
import torch

import structmat as sm
from structmat.core.compose import RealPart, build_from_config

from helpers import rel_error

T = sm.transforms
SIZES = [1, 2, 3, 5, 8, 16, 100, 128, 1000, 1024]
E64 = 1e-10


def matrix_of(layer) -> torch.Tensor:
    """The layer's matrix through its fast forward: ``forward(I) = Mᵀ``."""
    eye = torch.eye(layer.in_features, dtype=layer.dtype)
    with torch.no_grad():
        return layer(eye).T


PROBES = 12  # random probe vectors for n > 128 (a full identity would cost O(n²) rows of work)


def check(layer, reference, tol=E64):
    """``reference`` maps an ``(n, k)`` array of column vectors to the transform's ``(m, k)`` outputs.

    Small ``n``: the whole matrix (identity probes); large ``n``: ``PROBES`` random columns.
    """
    n = layer.in_features
    rng = np.random.default_rng(n)
    probes = np.eye(n) if n <= 128 else rng.standard_normal((n, PROBES))
    if layer.dtype.is_complex and n > 128:
        probes = probes + 1j * rng.standard_normal((n, PROBES))
    expected = torch.as_tensor(np.asarray(reference(probes)))
    with torch.no_grad():
        fast = layer(torch.as_tensor(probes.T).to(layer.dtype)).T
    assert tuple(fast.shape) == tuple(expected.shape)
    assert rel_error(fast, expected) <= tol


def matrix(A):
    """Reference given as a matrix."""
    return lambda probes: np.asarray(A) @ probes


def columns(x, fn):
    """``fn`` applied to every column of ``x``."""
    return np.stack([fn(v) for v in x.T], axis=1)


# ----------------------------------------------------------------------------- Fourier family
@pytest.mark.parametrize("n", SIZES)
def test_dft_any_size(n):
    check(T.dft(n, dtype=torch.complex128), lambda x: np.fft.fft(x, axis=0))
    check(T.dft(n, inverse=True, dtype=torch.complex128), lambda x: np.fft.ifft(x, axis=0))
    check(T.dft(n, normalized=True, dtype=torch.complex128), lambda x: np.fft.fft(x, axis=0) / math.sqrt(n))
    check(T.dft(n, inverse=True, normalized=True, dtype=torch.complex128), lambda x: np.fft.ifft(x, axis=0, norm="ortho"))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", ["dct", "dst"])
def test_dct_dst_match_scipy(n, kind):
    reference = scipy.fft.dct if kind == "dct" else scipy.fft.dst
    for type in (2, 3, 4):
        for norm in (None, "ortho"):
            layer = getattr(T, kind)(n, type=type, norm=norm, dtype=torch.float64)
            check(layer, lambda x: reference(x, type=type, norm=norm, axis=0))


@pytest.mark.parametrize("n", SIZES)
def test_hartley_and_chebyshev(n):
    check(T.hartley(n, dtype=torch.float64), lambda x: np.real((1 + 1j) * np.fft.fft(x, axis=0)))  # cas = cos + sin
    nodes = np.cos(np.pi * (np.arange(n) + 0.5) / n)
    check(T.chebyshev(n, dtype=torch.float64), lambda c: np.polynomial.chebyshev.chebval(nodes, c).T)


EXTENDED = np.finfo(np.longdouble).eps < 1e-18  # x87 80-bit long double (Linux x86-64)


@pytest.mark.parametrize("n", SIZES)
def test_legendre(n):
    # Reference at the exact nodes cos(π(j+½)/n), in long double where available: legvander at
    # float64-rounded nodes is itself off by ~1e-12 relative at n = 1000 (P_i' ~ i² near ±1).
    layer = T.legendre(n, dtype=torch.float64)
    nodes = np.cos(np.pi * (np.arange(n, dtype=np.longdouble) + np.longdouble(0.5)) / n)
    vander = np.polynomial.legendre.legvander(nodes, n - 1)
    check(layer, lambda x: (vander @ x.astype(np.longdouble)).astype(np.float64))
    if EXTENDED:  # the measured accuracy, with margin: 2.3e-14 at n = 1000
        check(layer, lambda x: (vander @ x.astype(np.longdouble)).astype(np.float64), tol=1e-13)
    check(layer, matrix(np.polynomial.legendre.legvander(nodes.astype(np.float64), n - 1)))  # the float64 reference


def test_legendre_cost_is_n_log_squared_n():
    layers = {n: T.legendre(n, device="meta") for n in (15, 16, 24, 100, 1000, 2**12, 2**14 - 1, 2**14)}
    ratios = {n: layer.flops() / (n * math.log2(n) ** 2) for n, layer in layers.items()}
    assert max(ratios.values()) <= 400
    assert max(ratios[n] for n in (2**12, 2**14 - 1, 2**14)) <= min(ratios[n] for n in (15, 16, 24))
    ranks = [layers[n].matrix.factors[1].rank for n in (100, 1000, 2**14)]
    assert ranks == sorted(ranks) and ranks[-1] <= 40  # R = O(log n) columns of the Hankel factor


@pytest.mark.parametrize("n", [n for n in SIZES if n & (n - 1) == 0] + [4, 64])
def test_hadamard_is_one_exact_butterfly(n):
    layer = T.hadamard(n, dtype=torch.float64)
    assert layer.structure == "butterfly"
    assert torch.equal(matrix_of(layer), torch.as_tensor(scipy.linalg.hadamard(n), dtype=torch.float64))
    assert torch.equal(layer.to_dense(), torch.as_tensor(scipy.linalg.hadamard(n), dtype=torch.float64))


def haar_reference(n):
    """SPEC.md §6.10's recursion (powers of two)."""
    if n == 1:
        return np.ones((1, 1))
    W = haar_reference(n // 2)
    return np.vstack([np.kron(W, [1, 1]), np.kron(np.eye(n // 2), [1, -1])]) / math.sqrt(2)


def haar_analysis(x):
    """The pyramid on one vector, by slicing: pair neighbours, carry an odd leftover, collect details."""
    approximation, details = np.asarray(x, dtype=np.float64), []
    while approximation.size > 1:
        even, odd = approximation[0::2], approximation[1::2]
        pairs = odd.size
        details.insert(0, (even[:pairs] - odd) / math.sqrt(2))
        approximation = np.concatenate([(even[:pairs] + odd) / math.sqrt(2), even[pairs:]])
    return np.concatenate([approximation, *details])


@pytest.mark.parametrize("n", SIZES + [6, 7, 12, 33])
def test_haar_any_size(n):
    layer = T.haar(n, dtype=torch.float64)
    check(layer, lambda x: columns(x, haar_analysis))
    W = matrix_of(layer)
    assert rel_error(W @ W.T, torch.eye(n, dtype=torch.float64)) <= 1e-12
    assert rel_error(layer.to_dense(), W) <= E64
    if n & (n - 1) == 0:
        assert rel_error(W, torch.as_tensor(haar_reference(n))) <= E64


def test_haar_is_linear_cost():
    for n in (5, 100, 1000, 2**14 - 1, 2**14):
        layer = T.haar(n)
        assert layer.flops() <= 8 * n and layer.num_parameters <= 4 * n
    assert T.haar(3, dtype=torch.float64).to_dense()[0].tolist() == pytest.approx([0.5, 0.5, math.sqrt(0.5)], abs=1e-15)


DFT2_SHAPES = [(1, 1), (1, 8), (4, 1), (2, 16), (32, 32), (8, 128), (3, 5), (1, 7), (7, 1), (100, 8), (6, 10)]


@pytest.mark.parametrize("n1, n2", DFT2_SHAPES)
def test_dft2_any_size(n1, n2):
    layer = T.dft2(n1, n2, dtype=torch.complex128)
    check(layer, lambda x: np.fft.fft2(x.T.reshape(-1, n1, n2)).reshape(x.shape[1], n1 * n2).T)
    powers_of_two = n1 & (n1 - 1) == 0 and n2 & (n2 - 1) == 0
    if powers_of_two:  # SPEC.md §6.8: a single butterfly of size n1·n2 and one permutation
        assert layer.structure == "product(butterfly, permutation)"
    else:
        assert layer.structure.startswith("kronecker_product(")
    if n1 * n2 <= 128:
        F = np.kron(np.fft.fft(np.eye(n1), axis=0), np.fft.fft(np.eye(n2), axis=0))
        assert rel_error(layer.to_dense(), torch.as_tensor(F)) <= E64
        y = torch.randn(3, n1 * n2, dtype=torch.complex128)
        assert rel_error(layer.transpose()(y), y @ torch.as_tensor(F)) <= E64


# ----------------------------------------------------------------------------- circulant, Toeplitz, convolution
@pytest.mark.parametrize("n", SIZES)
def test_circulant_and_toeplitz(n):
    rng = np.random.default_rng(n)
    c = rng.standard_normal(n)
    check(T.circulant(c, dtype=torch.float64), matrix(scipy.linalg.circulant(c)))
    cz = c + 1j * rng.standard_normal(n)
    check(T.circulant(cz, dtype=torch.complex128), matrix(scipy.linalg.circulant(cz)))
    r = rng.standard_normal(n // 2 + 3)  # rectangular: (n//2 + 3) x n and n x (n//2 + 3)
    check(T.toeplitz(r, c, dtype=torch.float64), matrix(scipy.linalg.toeplitz(r, c)))
    check(T.toeplitz(c, r, dtype=torch.float64), matrix(scipy.linalg.toeplitz(c, r)))
    check(T.toeplitz(cz, dtype=torch.complex128), matrix(scipy.linalg.toeplitz(cz)))


def test_power_of_two_circulant_is_one_bbstar_unit():
    layer = T.circulant(torch.randn(16, dtype=torch.complex128))
    assert layer.structure == "kaleidoscope"
    assert (layer.width, layer.expansion) == (1, 1)
    assert layer.num_parameters == 4 * 16 * 4


@pytest.mark.parametrize("n, k", [(n, k) for n in SIZES for k in (1, 3, 4)])
def test_convolution_modes(n, k):
    kernel = np.random.default_rng(k).standard_normal(k)
    for mode in ("full", "same"):
        if k > n and mode == "same":
            continue
        layer = T.convolution(kernel, n, mode, dtype=torch.float64)
        check(layer, lambda x: columns(x, lambda v: np.convolve(v, kernel, mode)))
        check(layer, lambda x: columns(x, lambda v: scipy.signal.convolve(v, kernel, mode, method="direct")))
    if k <= n:
        padded = np.concatenate([kernel, np.zeros(n - k)])
        check(T.convolution(kernel, n, "circular", dtype=torch.float64), matrix(scipy.linalg.circulant(padded)))


def test_circular_convolution_matches_conv1d():
    kernel, n = torch.randn(3, dtype=torch.float64), 12
    layer = T.convolution(kernel, n, "circular", dtype=torch.float64)
    x = torch.randn(4, n, dtype=torch.float64)
    # y_i = Σ_j k_j x_{i-j}: conv1d computes correlation, so flip the kernel and pad circularly on the left
    padded = torch.cat([x[:, n - 2 :], x], dim=1)[:, None]
    expected = torch.nn.functional.conv1d(padded, kernel.flip(0)[None, None])[:, 0]
    assert rel_error(layer(x), expected) <= E64


# ----------------------------------------------------------------------------- Fastfood, ACDC, permutation
@pytest.mark.parametrize("n", SIZES)
def test_fastfood_and_acdc(n):
    p = {k: v.numpy() for k, v in T.fastfood_parameters(n, seed=4).items()}
    H = scipy.linalg.hadamard(p["S"].size)
    V = np.diag(p["S"]) @ H @ np.diag(p["G"]) @ np.eye(p["S"].size)[p["perm"]] @ H @ np.diag(p["B"])
    check(T.fastfood(n, seed=4, dtype=torch.float64), matrix(V[:n, :n]))
    q = {k: v.numpy() for k, v in T.acdc_parameters(n, seed=2).items()}
    C = scipy.fft.dct(np.eye(n), type=2, norm="ortho", axis=0)
    check(T.acdc(n, seed=2, dtype=torch.float64), matrix(np.diag(q["A"]) @ C @ np.diag(q["D"]) @ C.T))


def test_permutation():
    perm = [3, 0, 2, 1]
    layer = T.permutation(perm, dtype=torch.float64)
    assert torch.equal(layer.to_dense(), torch.eye(4, dtype=torch.float64)[perm])
    assert layer.num_parameters == 0 and layer.flops() == 0


# ----------------------------------------------------------------------------- structure
@pytest.mark.parametrize(
    "make",
    [
        lambda: T.dft(6, dtype=torch.complex128),
        lambda: T.dft(8, dtype=torch.complex128),
        lambda: T.dct(12, type=4, norm="ortho", dtype=torch.float64),
        lambda: T.dst(8, type=3, dtype=torch.float64),
        lambda: T.toeplitz(torch.randn(5, dtype=torch.float64), torch.randn(7, dtype=torch.float64), dtype=torch.float64),
        lambda: T.fastfood(6, dtype=torch.float64),
        lambda: T.acdc(5, dtype=torch.float64),
        lambda: T.haar(8, dtype=torch.float64),
        lambda: T.haar(13, dtype=torch.float64),
        lambda: T.dft2(3, 5, dtype=torch.complex128),
        lambda: T.legendre(7, dtype=torch.float64),
    ],
)
def test_layers_are_structured_trainable_and_transposable(make):
    layer = make()
    dense = layer.to_dense()
    assert rel_error(matrix_of(layer), dense) <= E64
    y = torch.randn(3, layer.out_features, dtype=layer.dtype)
    assert rel_error(layer.transpose()(y), y @ dense) <= E64
    assert layer.num_parameters > 0 and layer.flops() > 0
    assert "dense" not in layer.structure
    x = torch.randn(2, layer.in_features, dtype=layer.dtype)
    layer(x).abs().pow(2).sum().backward()
    grads = [p.grad for p in layer.parameters()]
    assert grads and all(g is not None for g in grads) and any(bool(g.abs().sum() > 0) for g in grads)
    rebuilt = build_from_config(layer.matrix.config())
    rebuilt.load_state_dict(layer.matrix.state_dict())
    assert rel_error(rebuilt.to_dense(), dense) <= E64


def test_default_dtypes_and_float32_accuracy():
    assert T.dft(8).dtype == torch.complex64 and T.dct(8).dtype == torch.float32
    assert T.circulant([1.0, 2.0, 3.0]).dtype == torch.float32
    assert T.circulant([1.0, 2j]).dtype == torch.complex64
    layer = T.dct(100, type=2, norm="ortho")
    assert rel_error(matrix_of(layer).double(), torch.as_tensor(scipy.fft.dct(np.eye(100), norm="ortho", axis=0))) <= 1e-4


def test_real_part_adapter():
    inner = T.dft(6, dtype=torch.complex128).matrix
    real = RealPart(inner)
    assert real.dtype == torch.float64 and real.num_parameters == inner.num_parameters
    F = np.fft.fft(np.eye(6), axis=0)
    assert rel_error(real.to_dense(), torch.as_tensor(F.real)) <= E64
    y = torch.randn(2, 6, dtype=torch.float64)
    assert rel_error(real.transpose()(y), y @ torch.as_tensor(F.real)) <= E64
    with pytest.raises(TypeError, match="inner: expected a complex"):
        RealPart(T.dct(4, dtype=torch.float64).matrix)


# ----------------------------------------------------------------------------- costs
def balanced_split(n):
    """``(n1, n2)``, ``n1 n2 = n``, ``n1`` the largest divisor of ``n`` not above ``√n``."""
    n1 = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return n1, n // n1


CONSTRUCTIONS = {  # counts only: built on the meta device
    "dft": lambda n: T.dft(n, device="meta"),
    "idft (unitary)": lambda n: T.dft(n, inverse=True, normalized=True, device="meta"),
    "dft2": lambda n: T.dft2(*balanced_split(n), device="meta"),
    "dct": lambda n: T.dct(n, type=4, device="meta"),
    "dst": lambda n: T.dst(n, type=2, device="meta"),
    "hartley": lambda n: T.hartley(n, device="meta"),
    "chebyshev": lambda n: T.chebyshev(n, device="meta"),
    "circulant": lambda n: T.circulant(torch.ones(n), device="meta"),
    "toeplitz": lambda n: T.toeplitz(torch.ones(n), torch.ones(n // 2 + 1), device="meta"),
    "convolution (same)": lambda n: T.convolution(torch.ones(5), n, "same", device="meta"),
    "convolution (full)": lambda n: T.convolution(torch.ones(5), n, "full", device="meta"),
    "convolution (circular)": lambda n: T.convolution(torch.ones(5), n, "circular", device="meta"),
    "acdc": lambda n: T.acdc(n, device="meta"),
    "fastfood": lambda n: T.fastfood(n, device="meta"),
    "haar": lambda n: T.haar(n, device="meta"),
    "hadamard": lambda n: T.hadamard(n, device="meta"),
}
FLOP_SIZES = [2**k for k in (4, 6, 8, 10, 12, 14)] + [2**k - 1 for k in (4, 6, 8, 10, 12, 14)] + [3 * 2**k for k in (3, 7, 12)]


@pytest.mark.parametrize("name", sorted(CONSTRUCTIONS))
def test_flops_are_n_log_n(name):
    sizes = [n for n in FLOP_SIZES if name != "hadamard" or n & (n - 1) == 0]  # Sylvester: powers of two only
    ratios = {n: CONSTRUCTIONS[name](n).flops() / (n * math.log2(n)) for n in sizes}
    assert max(ratios.values()) <= 300
    small = max(r for n, r in ratios.items() if n <= 64)
    assert max(r for n, r in ratios.items() if n >= 2**12) <= small


def test_power_of_two_counts():
    n = 1024
    assert T.dft(n).flops() == 14 * n * 10 and T.dft(n).num_parameters == 2 * n * 10
    assert T.hadamard(n).flops() == 3 * n * 10
    assert T.haar(n).to_dense().shape == (n, n)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: T.dft(0), ValueError, "n: expected an integer >= 1, got 0"),
        (lambda: T.dct(-3), ValueError, "n: expected an integer >= 1"),
        (lambda: T.dct(8, type=1), ValueError, "type: expected 2, 3 or 4"),
        (lambda: T.dst(8, type="II"), ValueError, "type: expected 2, 3 or 4"),
        (lambda: T.dct(8, norm="forward"), ValueError, "norm: expected one of"),
        (lambda: T.dct(8, dtype=torch.complex64), TypeError, "dtype: expected a real dtype"),
        (lambda: T.dft(8, dtype=torch.float32), TypeError, "dtype: expected a complex dtype"),
        (lambda: T.hadamard(12), ValueError, r"n: expected a power of two, got 12: Sylvester.*exist only for n = 2\^k.*hadamard\(16\)"),
        (lambda: T.hadamard(0), ValueError, "n: expected an integer >= 1"),
        (lambda: T.haar(0), ValueError, "n: expected an integer >= 1"),
        (lambda: T.dft2(0, 4), ValueError, "n1: expected an integer >= 1"),
        (lambda: T.dft2(3, -1), ValueError, "n2: expected an integer >= 1"),
        (lambda: T.dft2(3, 4, dtype=torch.float64), TypeError, "dtype: expected a complex dtype"),
        (lambda: T.dst(8, type=5), ValueError, "type: expected 2, 3 or 4"),
        (lambda: T.dct(8, type=2.5), ValueError, "type: expected 2, 3 or 4"),
        (lambda: T.legendre(0), ValueError, "n: expected an integer >= 1"),
        (lambda: T.chebyshev(0), ValueError, "n: expected an integer >= 1"),
        (lambda: T.fastfood(0), ValueError, "n: expected an integer >= 1"),
        (lambda: T.acdc(0), ValueError, "n: expected an integer >= 1"),
        (lambda: T.hartley(0), ValueError, "n: expected an integer >= 1"),
        (lambda: T.convolution([1.0, 2.0], 0), ValueError, "n: expected an integer >= 1"),
        (lambda: T.permutation([1, 2, 3]), ValueError, "perm: expected"),
        (lambda: T.convolution([1.0, 2.0, 3.0], 2, "same"), ValueError, "kernel: expected length <= n = 2"),
        (lambda: T.convolution([1.0, 2.0, 3.0], 2, "circular"), ValueError, "kernel: expected length <= n = 2"),
        (lambda: T.convolution([1.0], 4, "valid"), ValueError, "mode: expected one of"),
        (lambda: T.convolution([], 4), ValueError, "kernel: expected a 1-D vector of length >= 1"),
        (lambda: T.permutation([0, 0, 1]), ValueError, "perm: expected each of 0..2 exactly once"),
        (lambda: T.permutation([0, 3, 1]), ValueError, "perm: expected entries in"),
        (lambda: T.circulant([1j, 2.0], dtype=torch.float64), TypeError, "dtype: c is complex"),
        (lambda: T.toeplitz([[1.0]]), ValueError, "c: expected a 1-D vector"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_transforms_table_covers_every_transform():
    import io

    from rich.console import Console

    from structmat.experiments.transforms_table import transforms_table

    out = io.StringIO()
    rows = transforms_table((6, 8), console=Console(file=out, width=200))
    names = {(row["transform"].split(" ")[0], row["n"]) for row in rows}
    for name in ("dft", "dct-2", "dst-4", "hartley", "circulant", "toeplitz", "convolution", "chebyshev", "legendre", "acdc", "fastfood", "haar", "dft2"):
        assert (name, 6) in names and (name, 8) in names
    assert ("hadamard", 8) in names and ("hadamard", 6) not in names  # Sylvester: powers of two only
    assert max(row["max_error"] for row in rows) <= 1e-12
    assert "dft2 (2x3)" in out.getvalue()


DEVICE_BUILDERS = {
    "dft2 (3x4)": lambda device: T.dft2(3, 4, device=device),
    "dft2 (4x8)": lambda device: T.dft2(4, 8, device=device),
    "haar": lambda device: T.haar(12, device=device),
    "legendre": lambda device: T.legendre(12, device=device),
    "dct": lambda device: T.dct(12, type=4, device=device),
    "toeplitz": lambda device: T.toeplitz(torch.ones(5), torch.ones(7), device=device),
    "fastfood": lambda device: T.fastfood(12, device=device),
}


@pytest.mark.parametrize("name", sorted(DEVICE_BUILDERS))
def test_meta_device_gives_the_same_counts(name):
    cpu, meta = DEVICE_BUILDERS[name]("cpu"), DEVICE_BUILDERS[name]("meta")
    assert meta.device.type == "meta" and cpu.device.type == "cpu"
    assert (meta.num_parameters, meta.flops(), meta.structure) == (cpu.num_parameters, cpu.flops(), cpu.structure)
