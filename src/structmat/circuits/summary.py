"""Summaries of circuits for the command line (``structmat circuit info`` / ``check``)."""

from __future__ import annotations

from pathlib import Path

import math

import numpy as np
import torch

from ..core.errors import check_int
from .arithmetic import ArithmeticCircuit
from .builders import build
from .linear import LinearCircuit
from .validation import DEFAULT_MAX_SIZE


#: builders that the command line can run from ``--n`` (and ``--size``/``--depth``/``--seed``).
EXAMPLE_BUILDERS = ("fft", "hadamard", "dct", "polymul", "toeplitz", "random")


def example_circuit(name: str, n: int = 64, size: int | None = None, depth: int | None = None, seed: int = 0) -> LinearCircuit:
    """A builder's circuit from command-line style arguments: ``fft``/``hadamard``/``dct`` of size
    ``n``; ``polymul`` by a random degree-``n−1`` polynomial; ``toeplitz`` ``n×n`` with random
    ``c``, ``r``; ``random`` with ``size`` (default ``4n``) and ``depth`` (default
    ``max(1, ⌈log2 n⌉)``); all random draws use ``seed``."""
    n = check_int("n", n, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    if name not in EXAMPLE_BUILDERS:
        raise ValueError(f"builder: expected one of {list(EXAMPLE_BUILDERS)}, got {name!r}")
    if name in ("fft", "hadamard", "dct"):
        return build(name, n=n)
    if name == "polymul":
        return build(name, n=n, seed=seed)
    if name == "toeplitz":
        rng = np.random.default_rng(seed)
        return build(name, c=rng.standard_normal(n), r=rng.standard_normal(n))
    depth = max(1, math.ceil(math.log2(n))) if depth is None else depth
    return build(name, n=n, size=4 * n if size is None else size, depth=depth, seed=seed)


def load_circuit(path: str | Path, max_size: int = DEFAULT_MAX_SIZE) -> LinearCircuit | ArithmeticCircuit:
    """Read and validate a circuit JSON file (``"type": "linear"`` or ``"arithmetic"``)."""
    import json

    text = Path(path).read_text()
    kind = None
    try:
        head = json.loads(text) if len(text) <= 200 * max_size + 10_000 else None
        kind = head.get("type") if isinstance(head, dict) else None
    except (json.JSONDecodeError, RecursionError):
        kind = None
    if kind == "arithmetic":
        return ArithmeticCircuit.from_json(text, max_size=max_size)
    return LinearCircuit.from_json(text, max_size=max_size)


def describe_circuit(circuit: LinearCircuit | ArithmeticCircuit, check: bool = True) -> list[tuple[str, str]]:
    """``(quantity, value)`` rows: inputs, outputs, size, depth, operation counts (and those of
    the transposed circuit for linear ones); with ``check``, the max error of batched evaluation
    against the dense matrix (linear) or of the gradient circuit's consistency (arithmetic)."""
    rows = [
        ("inputs", str(circuit.n_inputs)),
        ("outputs", str(circuit.n_outputs)),
        ("size (gates incl. inputs)", str(circuit.size)),
        ("depth", str(circuit.depth)),
    ]
    if isinstance(circuit, LinearCircuit):
        counts = circuit.count()
        rows += [("constants", "complex" if circuit.is_complex else "real")]
        rows += [(f"{key} (μ, A)" if key != "total" else "operations", str(v)) for key, v in counts.items()]
        if circuit.n_outputs:
            transposed = circuit.transpose()
            t_counts = transposed.count()
            rows += [
                ("transposed size", str(transposed.size)),
                ("transposed depth", str(transposed.depth)),
                ("transposed mul / add", f"{t_counts['mul']} / {t_counts['add']}"),
                ("A(Gᵀ) − A(G) (r − c when every gate is used)", str(t_counts["add"] - counts["add"])),
            ]
            if check:
                M = circuit.to_matrix()
                x = torch.randn(4, circuit.n_inputs, dtype=M.dtype)
                err = float((circuit.evaluate(x) - x @ M.T).abs().max())
                err_t = float((transposed.to_matrix() - M.T).abs().max())
                rows += [("max |evaluate − M x|", f"{err:.3e}"), ("max |Mᵀ(transposed) − Mᵀ|", f"{err_t:.3e}")]
    else:
        rows += [(key, str(v)) for key, v in circuit.count().items()]
    return rows
