"""Family ``circuit``: a fixed linear arithmetic circuit as a layer (SPEC.md §2.1–2.3).

``M = S_{out} C S_{in}ᵀ`` where ``C`` is the matrix of a :class:`~structmat.circuits.LinearCircuit`
with at least ``in_features`` inputs and ``out_features`` outputs (corner embedding, SPEC.md
§1.6: the input is zero-padded, the first outputs kept). No trainable parameters. The forward
runs the circuit level by level (:func:`structmat.ops.circuit.evaluate_levels`), ``μ`` scalings
and ``A`` additions per row (SPEC.md §2.3's counts, never more than ``3(s − n)``); the transpose
mode is reverse mode of that evaluation, i.e. the reversed graph (transposition principle).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ..circuits import LinearCircuit, build
from ..core import StructuredMatrix, register
from ..core.dtypes import flop_scale
from ..core.errors import describe
from ..core.registry import Sample
from ..core.sizes import next_power_of_two, pad_last, truncate_last
from ..ops.circuit import Level, evaluate_levels


def default_arguments(builder: str, in_features: int, out_features: int) -> dict[str, Any]:
    """Builder arguments that give a circuit with ``>= in_features`` inputs and
    ``>= out_features`` outputs (``fft``/``hadamard``/``dct``: the next power of two;
    ``polymul``: ``n = in_features``; ``toeplitz``: standard normal ``c``, ``r`` drawn with seed 0;
    ``random``: ``n = max(in, out)``, ``4n`` gates, depth ``max(1, ⌈log2 n⌉)``, seed 0)."""
    n = max(in_features, out_features)
    if builder in ("fft", "hadamard", "dct"):
        return {"n": next_power_of_two(n)}
    if builder == "polymul":
        return {"n": in_features}
    if builder == "toeplitz":
        rng = np.random.default_rng(0)
        return {"c": rng.standard_normal(out_features).tolist(), "r": rng.standard_normal(in_features).tolist()}
    if builder == "random":
        return {"n": n, "size": 4 * n, "depth": max(1, math.ceil(math.log2(n))), "seed": 0}
    return {}


def _samples():
    return [
        Sample(7, 5),
        Sample(16, 16, {"builder": "hadamard"}),
        Sample(6, 11, {"builder": "random", "args": {"size": 60, "depth": 5, "seed": 3}}),
        Sample(1, 1),
    ]


@register(
    "circuit",
    samples=_samples,
    params_formula="0 (fixed)",
    flops_formula="μ mult + A add of the circuit (≤ 3(s − n))",
    size_ladder=lambda m, n: [{}],
    trainable=False,
    tags=("fixed",),
)
class Circuit(StructuredMatrix):
    """A fixed linear circuit (built by name, or given as JSON) applied as a layer.

    Args:
        builder: a name in :data:`structmat.circuits.BUILDERS` (``"random"`` by default).
        args: builder arguments (JSON-serialisable), merged over :func:`default_arguments`.
        circuit: a circuit JSON string or dict (``LinearCircuit.to_json()``); replaces
            ``builder``/``args``. ``LinearCircuit.as_layer()`` uses this.

    Complex circuits need a complex dtype. Example::

        >>> layer = StructuredLinear(64, 64, "circuit", builder="fft", dtype=torch.complex64)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        builder: str = "random",
        args: dict | None = None,
        circuit: str | dict | None = None,
        device=None,
        dtype=None,
    ) -> None:
        if args is not None and not isinstance(args, dict):
            raise TypeError(f"args: expected a dict of builder arguments, got {describe(args)}")
        super().__init__(in_features, out_features, device=device, dtype=dtype, builder=builder, args=args, circuit=circuit)
        if circuit is not None:
            if builder != "random" or args is not None:
                raise ValueError(f"circuit: give either a circuit or builder/args, got circuit and builder={builder!r}, args={args!r}")
            self.circuit = LinearCircuit.from_json(circuit)
        else:
            self.circuit = build(builder, **{**default_arguments(builder, in_features, out_features), **(args or {})})
        if self.circuit.n_inputs < in_features or self.circuit.n_outputs < out_features:
            raise ValueError(
                f"circuit: expected at least {in_features} inputs and {out_features} outputs, got a circuit "
                f"with {self.circuit.n_inputs} inputs and {self.circuit.n_outputs} outputs"
            )
        if self.circuit.is_complex and not self.dtype.is_complex:
            raise TypeError(f"dtype: the circuit has complex constants, expected a complex dtype, got {self.dtype}")
        sources, levels, outputs = self.circuit.evaluation_plan(self.dtype, "cpu")
        self.register_buffer("sources", sources.to(device), persistent=False)
        self.register_buffer("outputs", truncate_last(outputs, out_features).to(device), persistent=False)
        self.n_levels = len(levels)
        for k, level in enumerate(levels):
            for field in ("keep", "left", "right", "left_coef", "right_coef"):
                self.register_buffer(f"level{k}_{field}", getattr(level, field).to(device), persistent=False)

    def reset_parameters(self) -> None:
        """Nothing to reset: the circuit has no trainable parameters."""

    def _levels(self) -> list[Level]:
        return [
            Level(*(getattr(self, f"level{k}_{field}") for field in ("keep", "left", "right", "left_coef", "right_coef")))
            for k in range(self.n_levels)
        ]

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        state = pad_last(x, self.circuit.n_inputs).transpose(0, 1).index_select(0, self.sources)
        return evaluate_levels(state, self._levels(), self.outputs).transpose(0, 1)

    def to_dense(self) -> torch.Tensor:
        eye = torch.eye(self.in_features, dtype=self.dtype, device=self.device)
        return self._forward(eye).transpose(0, 1)

    def _matvec_flops(self) -> int:
        counts = self.circuit.count()
        mul, add = flop_scale(self.dtype)
        return counts["mul"] * mul + counts["add"] * add
