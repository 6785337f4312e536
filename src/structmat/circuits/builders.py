"""Circuit builders: fast transforms as linear circuits, random circuits, the naive circuit
(SPEC.md §2.1, §6.1, §6.3, §6.4, §6.7).

All builders return a :class:`~structmat.circuits.LinearCircuit`. Sizes and depths
(``n = 2^k``): ``fft`` and ``hadamard`` have size ``n + n log n`` and depth ``log n``; ``dct``
``n + n log n + n`` and depth ``log n + 1``; ``polymul`` and ``toeplitz`` go through two FFTs of
size ``N = 2^{⌈log(n + m − 1)⌉}`` (``O(N log N)`` gates, depth ``≤ 2 log N + 1``);
``from_matrix`` has one gate per nonzero (depth ``⌈log(row nnz)⌉``).
"""

from __future__ import annotations

import cmath
import math
from typing import Any, Callable

import numpy as np
import torch

from ..core.errors import check_int, check_matrix, describe
from ..core.sizes import log2_exact, next_power_of_two
from ..ops.permutation import bit_reversal_permutation
from .linear import LinearCircuit, _set_outputs_with_zero, _sum_terms


def _root_of_unity(k: int, n: int, inverse: bool) -> complex:
    """``ω_n^k`` with ``ω_n = e^{∓2πi/n}``, exact at multiples of a quarter turn."""
    k %= n
    if (4 * k) % n == 0:
        value = (1, -1j, -1, 1j)[(4 * k) // n]
    else:
        value = cmath.exp(-2j * math.pi * k / n)
    value = complex(value)
    return value.conjugate() if inverse else value


def _fft_stages(circuit: LinearCircuit, values: list[int | None], inverse: bool, scale: list[complex] | None = None) -> list[int | None]:
    """Radix-2 decimation-in-time butterflies on ``values`` given in bit-reversed order; returns
    the transform in natural order (SPEC.md §6.1). ``None`` entries are known zeros (gates are
    skipped or aliased); ``scale[i]`` multiplies input ``i`` and is folded into the first stage."""
    n = len(values)
    values = list(values)
    factors = list(scale) if scale is not None else [1.0] * n
    half = 1
    while half < n:
        for start in range(0, n, 2 * half):
            for k in range(half):
                i, j = start + k, start + k + half
                t = _root_of_unity(k, 2 * half, inverse)
                u, v = values[i], values[j]
                fu, fv = factors[i], factors[j]
                if u is None and v is None:
                    top = bottom = None
                elif v is None:
                    top = bottom = u if fu == 1 else circuit.scale(u, fu)
                elif u is None:
                    top = circuit.scale(v, fv * t)
                    bottom = circuit.scale(v, -fv * t)
                else:
                    top = circuit.add(u, v, fu, fv * t)
                    bottom = circuit.add(u, v, fu, -fv * t)
                values[i], values[j] = top, bottom
        factors = [1.0] * n
        half *= 2
    if n == 1 and values[0] is not None and factors[0] != 1:
        values[0] = circuit.scale(values[0], factors[0])
    return values


def fft(n: int, inverse: bool = False) -> LinearCircuit:
    """The DFT ``F_n[j, k] = ω^{jk}``, ``ω = e^{−2πi/n}`` (``e^{+2πi/n}`` and unnormalised when
    ``inverse``), by radix-2 Cooley–Tukey: size ``n + n log n``, depth ``log n``, ``n = 2^k``."""
    log2_exact(check_int("n", n, minimum=1), "n")
    circuit = LinearCircuit(n)
    order = bit_reversal_permutation(n).tolist()
    return circuit.set_outputs(_fft_stages(circuit, [order[i] for i in range(n)], inverse))


def hadamard(n: int) -> LinearCircuit:
    """The Sylvester–Walsh–Hadamard matrix ``H[i, j] = (−1)^{popcount(i & j)}`` (as
    ``scipy.linalg.hadamard``): size ``n + n log n``, depth ``log n``, constants ``±1`` only."""
    log2_exact(check_int("n", n, minimum=1), "n")
    circuit = LinearCircuit(n)
    values = list(range(n))
    half = 1
    while half < n:
        for start in range(0, n, 2 * half):
            for i in range(start, start + half):
                u, v = values[i], values[i + half]
                values[i], values[i + half] = circuit.add(u, v, 1.0, 1.0), circuit.add(u, v, 1.0, -1.0)
        half *= 2
    return circuit.set_outputs(values)


def dct(n: int) -> LinearCircuit:
    """DCT-II as ``scipy.fft.dct(x, type=2)`` (unnormalised): ``y_k = 2 Σ_j x_j cos(πk(2j+1)/2n)``,
    through one FFT circuit (Makhoul, SPEC.md §6.4): reorder ``v = (x_0, x_2, …, x_3, x_1)``,
    ``V = F_n v``, ``y_k = ω_k V_k + ω̄_k V_{n−k}`` with ``ω_k = e^{−iπk/2n}`` (``y_0 = 2 V_0``).
    The constants are complex, the matrix is real (for real input the imaginary parts cancel);
    size ``n + n log n + n``, depth ``log n + 1``, ``n = 2^k``."""
    log2_exact(check_int("n", n, minimum=1), "n")
    circuit = LinearCircuit(n)
    reordered = [0] * n
    for k in range((n + 1) // 2):
        reordered[k] = 2 * k
    for k in range(n // 2):
        reordered[n - 1 - k] = 2 * k + 1
    order = bit_reversal_permutation(n).tolist()
    spectrum = _fft_stages(circuit, [reordered[order[i]] for i in range(n)], inverse=False)
    outputs = [circuit.scale(spectrum[0], 2.0)]
    for k in range(1, n):
        w = cmath.exp(-1j * math.pi * k / (2 * n))
        outputs.append(circuit.add(spectrum[k], spectrum[n - k], w, w.conjugate()))
    return circuit.set_outputs(outputs)


def _convolution(n_inputs: int, kernel: list[complex], first_output: int, n_outputs: int) -> LinearCircuit:
    """Coefficients ``first_output .. first_output + n_outputs − 1`` of the product of the
    polynomial ``kernel`` with the input polynomial, through FFT circuits of size
    ``N = 2^{⌈log(n_inputs + len(kernel) − 1)⌉}``: ``IFFT(FFT(k)/N ⊙ FFT(x))`` with the
    pointwise factors folded into the first inverse stage. Zero padding costs no gates."""
    size = next_power_of_two(n_inputs + len(kernel) - 1)
    circuit = LinearCircuit(n_inputs)
    spectrum_kernel = np.fft.fft(np.asarray(kernel, dtype=np.complex128), size) / size
    order = bit_reversal_permutation(size).tolist()
    padded = [i if i < n_inputs else None for i in range(size)]
    spectrum = _fft_stages(circuit, [padded[order[i]] for i in range(size)], inverse=False)
    factors = [complex(spectrum_kernel[order[i]]) for i in range(size)]
    product = _fft_stages(circuit, [spectrum[order[i]] for i in range(size)], inverse=True, scale=factors)
    return _set_outputs_with_zero(circuit, product[first_output : first_output + n_outputs])


def _vector(name: str, values: Any) -> list[complex]:
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if array.ndim != 1 or array.size == 0 or not (np.issubdtype(array.dtype, np.number)):
        raise ValueError(f"{name}: expected a non-empty 1-D sequence of numbers, got {describe(values)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: expected finite entries, got {describe(values)}")
    return [complex(v) for v in array.astype(np.complex128)]


def polymul(n: int, coefficients: Any = None, seed: int = 0) -> LinearCircuit:
    """Multiplication by a fixed polynomial ``p`` (``coefficients``, low degree first; default
    ``n`` i.i.d. standard normal coefficients drawn with ``seed``): input the ``n`` coefficients
    of ``x``, output the ``n + m − 1`` coefficients of ``p·x`` (``m = len(p)``), through FFT
    circuits (near-linear size ``O(N log N)``, ``N = 2^{⌈log(n + m − 1)⌉}``; complex constants)."""
    n = check_int("n", n, minimum=1)
    if coefficients is None:
        coefficients = np.random.default_rng(check_int("seed", seed)).standard_normal(n)
    kernel = _vector("coefficients", coefficients)
    return _convolution(n, kernel, 0, n + len(kernel) - 1)


def toeplitz(c: Any, r: Any = None) -> LinearCircuit:
    """The Toeplitz matrix ``T[i, j] = t_{i−j}`` with first column ``c`` and first row ``r``
    (``scipy.linalg.toeplitz(c, r)``: ``r[0]`` is ignored; ``r = conj(c)`` by default), of shape
    ``(len(c), len(r))``, via the polynomial product with ``t_{−(n−1)}, …, t_{m−1}`` (SPEC.md
    §6.7): near-linear size, complex constants."""
    column = _vector("c", c)
    row = [v.conjugate() for v in column] if r is None else _vector("r", r)
    m, n = len(column), len(row)
    kernel = [row[n - 1 - k] for k in range(n - 1)] + column
    return _convolution(n, kernel, n - 1, m)


def random(
    n: int, size: int, depth: int, seed: int = 0, *, n_outputs: int | None = None, complex_constants: bool = False
) -> LinearCircuit:
    """A random linear circuit on ``n`` inputs with exactly ``size`` gates (inputs included) and
    depth exactly ``depth``.

    The ``size − n`` gates are spread over the levels (at least one per level); a gate of level
    ``k`` reads one operand from level ``k − 1`` and one from any earlier level, with
    ``N(0, 1/2)`` constants (complex Gaussian when ``complex_constants``). The outputs are the
    ``n_outputs`` (default ``n``) gates of highest index, which include the deepest level.
    """
    n = check_int("n", n, minimum=1)
    size = check_int("size", size, minimum=n)
    depth = check_int("depth", depth, minimum=0)
    seed = check_int("seed", seed)
    gates = size - n
    if (depth == 0) != (gates == 0) or gates < depth:
        raise ValueError(
            f"size/depth: a circuit of depth {depth} on {n} inputs needs size >= n + depth "
            f"(and size == n for depth 0), got size={size}"
        )
    n_outputs = n if n_outputs is None else n_outputs
    n_outputs = check_int("n_outputs", n_outputs, minimum=1, maximum=size)
    rng = np.random.default_rng(seed)
    widths = np.ones(depth, dtype=np.int64)
    if depth:
        widths += rng.multinomial(gates - depth, np.full(depth, 1.0 / depth))
    circuit = LinearCircuit(n)
    previous = list(range(n))
    below = n  # gates 0..below-1 have depth < current level

    def constant() -> float | complex:
        if complex_constants:
            re, im = rng.standard_normal(2) / 2
            return complex(float(re), float(im))
        return float(rng.standard_normal() / math.sqrt(2))

    for width in widths:
        level = []
        for _ in range(int(width)):
            a = previous[int(rng.integers(len(previous)))]
            b = int(rng.integers(below))
            level.append(circuit.add(a, b, constant(), constant()))
        below += len(level)
        previous = level
    return circuit.set_outputs(list(range(size - n_outputs, size)))


def from_matrix(W: Any) -> LinearCircuit:
    """The naive circuit of ``W`` (shape ``(m, n)``): each output sums its row's nonzero terms
    ``W[i, j] x_j`` in a balanced tree (one gate per nonzero, ``n²`` for a dense matrix; an
    all-zero row gets one zero gate)."""
    W = check_matrix("W", W).detach().cpu()
    if not bool(torch.isfinite(W).all()):
        raise ValueError("W: expected finite entries, got a matrix containing NaN or Inf")
    m, n = W.shape
    circuit = LinearCircuit(n)
    rows = W.tolist()
    outputs = []
    for i in range(m):
        gate = _sum_terms(circuit, [(j, value) for j, value in enumerate(rows[i]) if value != 0])
        outputs.append(circuit.add(0, 0, 0.0, 0.0) if gate is None else gate)
    return circuit.set_outputs(outputs)


#: builder name -> function, for the ``circuit`` family and the command line.
BUILDERS: dict[str, Callable[..., LinearCircuit]] = {
    "fft": fft,
    "hadamard": hadamard,
    "dct": dct,
    "polymul": polymul,
    "toeplitz": toeplitz,
    "random": random,
    "from_matrix": from_matrix,
}


def build(name: str, **arguments: Any) -> LinearCircuit:
    """``BUILDERS[name](**arguments)`` with a clear error for unknown names."""
    if not isinstance(name, str) or name not in BUILDERS:
        raise ValueError(f"builder: expected one of {sorted(BUILDERS)}, got {describe(name)}")
    return BUILDERS[name](**arguments)
