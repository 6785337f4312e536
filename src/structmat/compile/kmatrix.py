"""The compiler to K-matrices (SPEC.md §5.2–5.4): permutations, sparse matrices and linear
circuits as exact members of the kaleidoscope hierarchy ``(𝓑𝓑*)^w_e``.

Every function returns a ``StructuredLinear`` of the family ``kaleidoscope`` (no bias) whose
``to_dense()`` reproduces its input exactly up to rounding; ``.width`` and ``.expansion`` are
``w`` and ``e``. Bounds (checked by the tests):

* :func:`permutation_to_bbstar`: ``w = 1``, 0/1 twiddles, ``e = 2^{⌈log n⌉}/n`` (padding).
* :func:`sparse_to_kmatrix`: ``w = 4⌈s/N⌉`` (``N = 2^{⌈log max(m, n)⌉}``; ``w = 4`` for
  ``s = 0``), ``e = 4N/max(m, n)`` — Theorem 3's ``(𝓑𝓑*)^{4⌈s/n⌉}_4``.
* :func:`to_kmatrix`: ``w <= 8d + 1`` (``C₁ = 9`` for ``d >= 1``; ``8d + 4`` if an output gate is
  repeated) and ``e = 4s'/max(m, n)`` with ``s' = 2^{⌈log max(s, m)⌉} < 2 max(s, m)``, so
  ``e <= 8 s/n`` (``C₂ = 8``) — Theorem 1's ``(𝓑𝓑*)^{O(d)}_{O(s/n)}``. Parameters
  ``4·w·(4s')·log(4s') = O(d s log s)``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch

from ..circuits import LinearCircuit
from ..core.errors import describe
from ..core.linear import StructuredLinear
from ..core.sizes import ceil_div, log2_exact, next_power_of_two
from ..families.kaleidoscope import Kaleidoscope
from ..ops.permutation import check_permutation
from .benes import IDENTITY, benes_unit, benes_unit_bstar_b, complete_permutation
from .sparse import sparse_piece_units, sum_of_pieces


def _kaleidoscope(units: np.ndarray, in_features: int, out_features: int, dtype: torch.dtype | None) -> StructuredLinear:
    """Wrap units ``(w, 2, log N, N/2, 2, 2)`` as a kaleidoscope layer of corner ``(out, in)``."""
    if dtype is None:
        dtype = torch.complex128 if np.iscomplexobj(units) else torch.float64
    twiddle = torch.from_numpy(np.ascontiguousarray(units)).reshape(1, -1, *units.shape[2:]).to(dtype)
    return StructuredLinear.from_matrix(Kaleidoscope.from_twiddle(twiddle, in_features, out_features))


def _permutation_vector(perm: Any) -> np.ndarray:
    """``σ`` from a permutation vector, or from a square 0/1 permutation matrix ``P_σ = I[σ, :]``."""
    if isinstance(perm, (torch.Tensor, np.ndarray)) and perm.ndim == 2:
        matrix = torch.as_tensor(perm)
        rows, cols = matrix.shape
        if rows != cols:
            raise ValueError(f"perm: expected a square permutation matrix, got shape {(rows, cols)}")
        ones = matrix == 1
        if not bool(((matrix == 0) | ones).all()) or not bool((ones.sum(0) == 1).all()) or not bool((ones.sum(1) == 1).all()):
            raise ValueError("perm: expected a 0/1 matrix with exactly one 1 in every row and column")
        perm = ones.long().argmax(dim=1)
    return check_permutation("perm", perm).cpu().numpy()


def permutation_to_bbstar(perm: Any, variant: str = "bb*", dtype: torch.dtype | None = None) -> StructuredLinear:
    """``P_σ`` (``(P_σ x)_i = x_{σ(i)}``) as a width-1 K-matrix with 0/1 twiddles (SPEC.md §5.2).

    ``perm``: a permutation vector or a square permutation matrix. ``variant="bb*"``: butterfly 0 decreasing-stride (the Beneš stages of strides ``n/2, …, 1``),
    butterfly 1 increasing-stride; ``variant="b*b"``: the ``𝓑*𝓑`` form, returned as a
    ``kaleidoscope`` layer preceded by an identity decreasing half (width 2 — the kaleidoscope
    family starts every unit with a decreasing half) whose middle two butterflies are the
    increasing half then the decreasing half. ``n`` not a power of two: ``σ`` is extended by the
    identity to ``N = 2^{⌈log n⌉}`` (at least 2) and the ``n × n`` corner is kept. Cost
    ``O(N log N)``.
    """
    perm = _permutation_vector(perm)
    if variant not in ("bb*", "b*b"):
        raise ValueError(f"variant: expected 'bb*' or 'b*b', got {describe(variant)}")
    n = perm.shape[0]
    size = max(2, next_power_of_two(n))
    padded = np.concatenate([perm, np.arange(n, size)])
    if variant == "bb*":
        units = benes_unit(padded)[None]
    else:
        halves = benes_unit_bstar_b(padded)
        units = np.empty((2, *halves.shape))
        units[:] = IDENTITY
        units[0, 1], units[1, 0] = halves[0], halves[1]
    return _kaleidoscope(units, n, n, dtype if dtype is not None else torch.float64)


def _coordinates(S: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """``(rows, cols, values, shape)`` of the nonzeros of a 2-D tensor (dense or sparse), array or
    SciPy sparse matrix."""
    try:
        import scipy.sparse as scipy_sparse
    except ImportError:  # pragma: no cover - scipy is a dependency
        scipy_sparse = None
    if scipy_sparse is not None and scipy_sparse.issparse(S):
        coo = scipy_sparse.coo_matrix(S)
        coo.sum_duplicates()
        keep = coo.data != 0
        return coo.row[keep].astype(np.int64), coo.col[keep].astype(np.int64), coo.data[keep], coo.shape
    if isinstance(S, torch.Tensor):
        if S.dim() != 2:
            raise ValueError(f"S: expected a 2-D matrix, got {describe(S)}")
        if S.is_sparse:
            S = S.coalesce()
            rows, cols = S.indices().cpu().numpy()
            values = S.values().detach().cpu().numpy()
            keep = values != 0
            return rows[keep], cols[keep], values[keep], tuple(S.shape)
        if S.layout != torch.strided:
            S = S.to_dense()
        array = S.detach().cpu().numpy()
    else:
        array = np.asarray(S)
    if array.ndim != 2:
        raise ValueError(f"S: expected a 2-D matrix, got an array of shape {array.shape}")
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"S: expected a numeric matrix, got dtype {array.dtype}")
    rows, cols = np.nonzero(array)
    return rows.astype(np.int64), cols.astype(np.int64), array[rows, cols], array.shape


def _sparse_units(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n: int, out: np.ndarray | None = None) -> np.ndarray:
    """Constructions A + B for an ``n × n`` matrix (``n`` a power of two >= 2): ``⌈s/n⌉`` pieces of
    at most ``n`` entries (row-major order), width ``4⌈s/n⌉`` (4 for ``s = 0``), size ``4n``."""
    order = np.lexsort((cols, rows))
    rows, cols, values = rows[order], cols[order], values[order]
    count = max(1, ceil_div(len(values), n))
    pieces = [sparse_piece_units(rows[k * n : (k + 1) * n], cols[k * n : (k + 1) * n], values[k * n : (k + 1) * n], n) for k in range(count)]
    return sum_of_pieces(pieces, n, out=out)


def sparse_to_kmatrix(S: Any, dtype: torch.dtype | None = None) -> StructuredLinear:
    """An ``m × n`` matrix with ``s`` nonzeros as a K-matrix in ``(𝓑𝓑*)^{4⌈s/N⌉}_4`` (SPEC.md §5.3,
    Constructions A + B; ``N = 2^{⌈log max(m, n)⌉}``, at least 2; rectangular inputs are the corner
    of the padded square). ``S``: a 2-D tensor (dense or sparse), array or SciPy sparse matrix.
    Cost ``O(s log N)`` time and ``16 w N log(4N)`` parameters."""
    rows, cols, values, (m, n) = _coordinates(S)
    if m < 1 or n < 1:
        raise ValueError(f"S: expected a non-empty matrix, got shape {(m, n)}")
    if not np.all(np.isfinite(values)):
        raise ValueError("S: expected finite entries, got NaN or Inf")
    size = max(2, next_power_of_two(max(m, n)))
    values = values.astype(np.complex128 if np.iscomplexobj(values) else np.float64)
    return _kaleidoscope(_sparse_units(rows, cols, values, size), n, m, dtype)


def _clear_beyond(unit_first_factor: np.ndarray, keep: int) -> None:
    """Merge ``Π = diag(1_keep, 0)`` into a stride-``N/2`` factor ``(N/2, 2, 2)`` applied first
    (SPEC.md §5.1(3)): zero the columns of the positions ``>= keep``."""
    half = unit_first_factor.shape[0]
    low_kept = np.arange(half) < keep
    unit_first_factor[:, :, 1] = 0.0  # high positions N/2 + p >= keep (keep <= N/2)
    unit_first_factor[~low_kept, :, 0] = 0.0


def to_kmatrix(
    circuit: LinearCircuit, dtype: torch.dtype | None = None, progress: Callable[[int, int], None] | None = None
) -> StructuredLinear:
    """Construction C (SPEC.md §5.4): a linear circuit as an exact K-matrix.

    Layers the circuit at size ``s' = 2^{⌈log max(s, m)⌉}`` (``M = Sel · M_d ⋯ M_1 · Emb``), turns
    every ``M_k`` into ``(𝓑𝓑*)^{4⌈nnz(M_k)/s'⌉}_4 ⊆ (𝓑𝓑*)^8_4`` by Constructions A + B at size
    ``4s'`` (``diag(1_{s'}, 0)`` merged into each layer's first factor), appends the output
    permutation (one Beneš unit on the first ``s'`` positions; Constructions A + B if an output
    gate repeats) and reads the ``(m, n)`` corner. ``progress(done, total)`` is called after each
    layer. Real circuits give float64 twiddles, complex ones complex128 (``dtype`` overrides).
    """
    if not isinstance(circuit, LinearCircuit):
        raise TypeError(f"circuit: expected a LinearCircuit, got {describe(circuit)}")
    if circuit.n_outputs == 0:
        raise ValueError("circuit: expected a circuit with outputs (call set_outputs), got one with no outputs")
    m, n = circuit.n_outputs, circuit.n_inputs
    state = max(2, next_power_of_two(max(circuit.size, m)))
    form = circuit.to_layered_sparse(padded_size=state)
    outputs = [form.position[o] for o in circuit.outputs]
    distinct = len(set(outputs)) == len(outputs)
    layer_entries = []
    for layer in form.layers:
        rows, cols = layer.indices().numpy()
        values = layer.values().numpy()
        nonzero = values != 0
        layer_entries.append((rows[nonzero], cols[nonzero], values[nonzero]))
    widths = [4 * max(1, ceil_div(len(values), state)) for _, _, values in layer_entries]
    total = sum(widths) + (1 if distinct else 4)
    complex_circuit = circuit.is_complex
    levels = log2_exact(4 * state, "4s'")
    units = np.empty((total, 2, levels, 2 * state, 2, 2), dtype=np.complex128 if complex_circuit else np.float64)
    start = 0
    steps = len(layer_entries) + 1
    for index, ((rows, cols, values), width) in enumerate(zip(layer_entries, widths)):
        block = units[start : start + width]
        _sparse_units(rows, cols, values, state, out=block)
        if index > 0:
            _clear_beyond(block[0, 0, 0], state)
        start += width
        if progress is not None:
            progress(index + 1, steps)
    select = units[start:]
    if distinct:
        permutation = complete_permutation(state, np.arange(m), np.array(outputs, dtype=np.int64))
        select[:] = IDENTITY
        embedded = benes_unit(permutation)  # size s', block-diagonal on positions [0, s')
        select[0, 0, 2:, : state // 2] = embedded[0]
        select[0, 1, :-2, : state // 2] = embedded[1]
    else:
        _sparse_units(np.arange(m), np.array(outputs, dtype=np.int64), np.ones(m), state, out=select)
    if form.layers:
        _clear_beyond(select[0, 0, 0], state)
    if progress is not None:
        progress(steps, steps)
    return _kaleidoscope(units, n, m, dtype)


def compile_report(circuit: LinearCircuit, kmatrix: StructuredLinear | None = None) -> dict[str, float | int]:
    """``s, d, n, m, w, e, params`` and the ratios ``w/d`` and ``e/(s/n)`` of the compiled circuit
    (compiles it unless ``kmatrix`` is given), plus the stated constants ``C1 = 9`` (``w <= C1·d``)
    and ``C2 = 8`` (``e <= C2·s/n``)."""
    if kmatrix is None:
        kmatrix = to_kmatrix(circuit)
    s, d, n = circuit.size, circuit.depth, circuit.n_inputs
    width, expansion = kmatrix.width, kmatrix.expansion
    return {
        "n": n,
        "m": circuit.n_outputs,
        "s": s,
        "d": d,
        "w": width,
        "e": expansion,
        "N": kmatrix.matrix.size,
        "params": kmatrix.num_parameters,
        "w/d": width / d if d else math.inf,
        "e/(s/n)": expansion / (s / n),
        "C1": 9,
        "C2": 8,
    }


def max_error(circuit: LinearCircuit, kmatrix: StructuredLinear, batch: int | None = None) -> float:
    """``max |K[:m, :n] − M| / max(max |M|, 1)`` against ``circuit.to_matrix()``, computed with the
    K-matrix's fast multiply on the identity (or, with ``batch``, on that many random vectors:
    ``max |K x − M x|`` relative to ``max |M x|``)."""
    M = circuit.to_matrix().to(kmatrix.dtype)
    if batch is None:
        x = torch.eye(circuit.n_inputs, dtype=kmatrix.dtype)
    else:
        x = torch.randn(batch, circuit.n_inputs, dtype=torch.float64).to(kmatrix.dtype)
    with torch.no_grad():
        reference = x @ M.T
        difference = (kmatrix(x) - reference).abs().max()
    return float(difference / max(float(reference.abs().max()), 1.0))
