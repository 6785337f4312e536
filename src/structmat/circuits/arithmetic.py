"""General arithmetic circuits with product gates, and Baur–Strassen gradients (SPEC.md §2.1,
§2.4–2.6).

An :class:`ArithmeticCircuit` is a straight-line program over ``+, −, ×`` and multiplication by
constants. :meth:`ArithmeticCircuit.gradient` builds, by reverse mode, a new circuit computing
``f`` and ``∇f`` with at most ``3·L(f)`` non-scalar multiplications (Baur–Strassen) and at most
``5·L_tot(f)`` operations in total (SPEC.md §2.5, reverse-mode accounting lemma).

Example::

    >>> c = ArithmeticCircuit(2)
    >>> p = c.mul(0, 1)                   # x0 * x1
    >>> c.set_outputs([c.add(p, c.scale(0, 3.0))])   # x0 x1 + 3 x0
    >>> g = c.gradient()                  # outputs f, df/dx0 = x1 + 3, df/dx1 = x0
    >>> g.evaluate(torch.tensor([2.0, 5.0]))
    tensor([20.,  8.,  2.])
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable

import torch

from ..core.dtypes import complex_dtype
from ..core.errors import check_int, describe
from ..ops.circuit import Level, evaluate_levels
from .plan import Plan, build_plan
from .validation import DEFAULT_MAX_SIZE, check_constant, check_gate, constant_to_json, load_json_object

#: gate kinds; ``input`` and ``const`` are sources.
KINDS = ("input", "const", "add", "sub", "mul", "scale")
_BINARY = ("add", "sub", "mul")


class ArithmeticCircuit:
    """A straight-line program with gates ``const(v)``, ``a + b``, ``a − b``, ``a × b``, ``λ·a``.

    Args:
        n_inputs: number of inputs ``n >= 1`` (gates ``0..n-1``).

    Every building method returns the new gate's index; :meth:`set_outputs` designates outputs.
    A gate is *constant* when it does not depend on any input; a product with a constant operand
    is a scalar multiplication (free in Baur–Strassen's non-scalar complexity ``L``).
    """

    def __init__(self, n_inputs: int) -> None:
        self._n_inputs = check_int("n_inputs", n_inputs, minimum=1)
        self._kind: list[str] = ["input"] * self._n_inputs
        self._left: list[int] = [-1] * self._n_inputs
        self._right: list[int] = [-1] * self._n_inputs
        self._value: list[float | complex] = [0.0] * self._n_inputs
        self._depth: list[int] = [0] * self._n_inputs
        self._constant: list[bool] = [False] * self._n_inputs
        self._outputs: list[int] = []
        self._is_complex = False
        self._cache: dict[Any, Any] = {}

    # ------------------------------------------------------------------ building
    def _append(self, kind: str, a: int, b: int, value: float | complex) -> int:
        if kind == "const":
            depth, constant = 0, True
        elif kind == "scale":
            depth, constant = 1 + self._depth[a], self._constant[a]
        else:
            depth, constant = 1 + max(self._depth[a], self._depth[b]), self._constant[a] and self._constant[b]
        self._kind.append(kind)
        self._left.append(a)
        self._right.append(b)
        self._value.append(value)
        self._depth.append(depth)
        self._constant.append(constant)
        self._is_complex = self._is_complex or isinstance(value, complex)
        self._cache.clear()
        return len(self._kind) - 1

    def const(self, v: Any) -> int:
        """A constant gate of value ``v`` (real or complex, finite)."""
        return self._append("const", -1, -1, check_constant("v", v))

    def add(self, i: int, j: int) -> int:
        """The gate ``g_i + g_j``."""
        return self._binary("add", i, j)

    def sub(self, i: int, j: int) -> int:
        """The gate ``g_i − g_j``."""
        return self._binary("sub", i, j)

    def mul(self, i: int, j: int) -> int:
        """The gate ``g_i × g_j``."""
        return self._binary("mul", i, j)

    def scale(self, i: int, a: Any) -> int:
        """The gate ``a · g_i`` (multiplication by a constant)."""
        i = check_gate("i", i, self.size)
        return self._append("scale", i, -1, check_constant("a", a))

    def _binary(self, kind: str, i: int, j: int) -> int:
        size = self.size
        return self._append(kind, check_gate("i", i, size), check_gate("j", j, size), 0.0)

    def set_outputs(self, outputs: Iterable[int]) -> "ArithmeticCircuit":
        """Designate the output gates (in order). Returns ``self``."""
        if isinstance(outputs, (str, bytes)) or not hasattr(outputs, "__iter__"):
            raise TypeError(f"outputs: expected a sequence of gate indices, got {describe(outputs)}")
        size = self.size
        self._outputs = [check_gate(f"outputs[{k}]", o, size) for k, o in enumerate(outputs)]
        self._cache.clear()
        return self

    @classmethod
    def trace(cls, fn: Callable[[list["Traced"]], Any], n_inputs: int) -> "ArithmeticCircuit":
        """Record ``fn`` as a circuit: ``fn`` receives ``n_inputs`` :class:`Traced` variables
        (supporting ``+ − ×`` with each other and with numbers) and returns one of them, a number,
        or a list of those, which become the outputs."""
        circuit = cls(n_inputs)
        result = fn([Traced(circuit, i) for i in range(circuit.n_inputs)])
        results = list(result) if isinstance(result, (list, tuple)) else [result]
        circuit.set_outputs([Traced.lift(circuit, r).gate for r in results])
        return circuit

    # ------------------------------------------------------------------ properties
    @property
    def n_inputs(self) -> int:
        return self._n_inputs

    @property
    def n_outputs(self) -> int:
        return len(self._outputs)

    @property
    def outputs(self) -> tuple[int, ...]:
        return tuple(self._outputs)

    @property
    def size(self) -> int:
        """Number of gates including inputs and constants."""
        return len(self._kind)

    @property
    def depth(self) -> int:
        return max(self._depth)

    @property
    def is_complex(self) -> bool:
        return self._is_complex

    def gate(self, g: int) -> tuple[str, int, int, float | complex]:
        """``(kind, a, b, value)`` of gate ``g`` (unused fields are ``-1`` / ``0``)."""
        g = check_gate("g", g, self.size)
        return self._kind[g], self._left[g], self._right[g], self._value[g]

    def is_constant(self, g: int) -> bool:
        """True when gate ``g`` does not depend on any input."""
        return self._constant[check_gate("g", g, self.size)]

    def __repr__(self) -> str:
        return (
            f"ArithmeticCircuit(n_inputs={self.n_inputs}, n_outputs={self.n_outputs}, "
            f"size={self.size}, depth={self.depth})"
        )

    # ------------------------------------------------------------------ counts
    def count(self) -> dict[str, int]:
        """Operation counts (SPEC.md §2.5): ``nonscalar_mul`` (products of two non-constant
        gates: Baur–Strassen's ``L``), ``scalar_mul`` (``scale`` gates and products with a
        constant operand), ``add`` (additions and subtractions) and ``total`` (``L_tot``, the
        three together; inputs and constants are free)."""
        nonscalar = scalar = add = 0
        for g, kind in enumerate(self._kind):
            if kind in ("add", "sub"):
                add += 1
            elif kind == "scale":
                scalar += 1
            elif kind == "mul":
                if self._constant[self._left[g]] or self._constant[self._right[g]]:
                    scalar += 1
                else:
                    nonscalar += 1
        return {"nonscalar_mul": nonscalar, "scalar_mul": scalar, "add": add, "total": nonscalar + scalar + add}

    # ------------------------------------------------------------------ evaluation
    def _require_outputs(self) -> None:
        if not self._outputs:
            raise ValueError("outputs: the circuit has no outputs; call set_outputs([...]) first")

    def plan(self) -> Plan:
        if "plan" not in self._cache:
            operands = [
                None if kind in ("input", "const") else (a, a if kind == "scale" else b)
                for kind, a, b in zip(self._kind, self._left, self._right)
            ]
            self._cache["plan"] = build_plan(operands, self._depth, self._outputs)
        return self._cache["plan"]

    def _evaluation_plan(self, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor, list[Level], torch.Tensor]:
        key = (dtype, str(device))
        if key not in self._cache:
            plan = self.plan()
            coef_dtype = torch.complex128 if self._is_complex else torch.float64
            const_gates = [g for g in range(self.size) if self._kind[g] == "const"]
            const_slot = {g: self._n_inputs + k for k, g in enumerate(const_gates)}
            sources = torch.tensor([const_slot.get(g, g) for g in plan.sources], dtype=torch.long, device=device)
            constants = torch.tensor([self._value[g] for g in const_gates], dtype=coef_dtype).to(device=device, dtype=dtype)
            levels = []
            for level in plan.levels:
                coefs = [_LEVEL_COEFFICIENTS[self._kind[g]](self._value[g]) for g in level.nodes]
                levels.append(
                    Level(
                        keep=torch.tensor(level.keep, dtype=torch.long),
                        left=torch.tensor(level.left, dtype=torch.long),
                        right=torch.tensor(level.right, dtype=torch.long),
                        left_coef=torch.tensor([c[0] for c in coefs], dtype=coef_dtype),
                        right_coef=torch.tensor([c[1] for c in coefs], dtype=coef_dtype),
                        product=torch.tensor([self._kind[g] == "mul" for g in level.nodes], dtype=torch.bool),
                    ).to(dtype, device)
                )
            outputs = torch.tensor(plan.outputs, dtype=torch.long, device=device)
            self._cache[key] = (sources, constants, levels, outputs)
        return self._cache[key]

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        """The outputs for every row: ``x`` of shape ``(*, n_inputs)`` -> ``(*, n_outputs)``,
        vectorised per depth level (:func:`structmat.ops.circuit.evaluate_levels`)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {describe(x)}")
        if x.dtype == torch.bool or not (x.is_floating_point() or x.is_complex()):
            raise TypeError(f"x: expected a floating-point or complex tensor, got {describe(x)}")
        if x.dim() == 0 or x.shape[-1] != self._n_inputs:
            raise ValueError(f"x: expected shape (*, {self._n_inputs}), got shape {tuple(x.shape)}")
        self._require_outputs()
        dtype = complex_dtype(x.dtype) if self._is_complex else x.dtype
        sources, constants, levels, outputs = self._evaluation_plan(dtype, x.device)
        lead = x.shape[:-1]
        rows = x.to(dtype).reshape(-1, self._n_inputs).transpose(0, 1)
        values = torch.cat([rows, constants[:, None].expand(-1, rows.shape[1])], dim=0)
        y = evaluate_levels(values.index_select(0, sources), levels, outputs)
        return y.transpose(0, 1).reshape(*lead, self.n_outputs)

    # ------------------------------------------------------------------ gradients
    def gradient(self) -> "ArithmeticCircuit":
        """Reverse mode (Baur–Strassen construction, SPEC.md §2.5) for a single-output circuit.

        Returns a new circuit on the same inputs whose outputs are ``f, ∂f/∂x_0, …,
        ∂f/∂x_{n−1}``: the forward gates are copied, then gates are visited in reverse order and
        each pushes its adjoint to its operands (``a ± b``: ``±adj``; ``λ·a``: ``λ·adj``;
        ``a × b``: ``adj·b`` and ``adj·a``, two multiplications, only for non-constant operands).
        Adjoints of constant gates are never formed; the adjoint of ``f`` is the literal 1, and products with it are free. A gate
        with ``t`` pushed terms gets ``t − 1`` additions/subtractions. Hence
        ``count()["nonscalar_mul"] <= 3·L(f)`` and ``count()["total"] <= 5·L_tot(f)``.
        """
        if self.n_outputs != 1:
            raise ValueError(f"outputs: gradient() needs a single-output circuit, got {self.n_outputs} outputs")
        result = ArithmeticCircuit(self._n_inputs)
        for g in range(self._n_inputs, self.size):
            result._append(self._kind[g], self._left[g], self._right[g], self._value[g])
        adjoint_terms: list[list[tuple[float | complex, int | None]]] = [[] for _ in range(self.size)]
        adjoint_terms[self._outputs[0]].append((1.0, None))  # None stands for the literal 1
        summer = _AdjointSum(result)
        input_adjoints: list[int | None] = [None] * self._n_inputs
        for g in range(self.size - 1, -1, -1):
            if self._constant[g] or not adjoint_terms[g]:
                continue
            adj = summer.total(adjoint_terms[g])
            adjoint_terms[g] = []
            kind, a, b = self._kind[g], self._left[g], self._right[g]
            if kind == "input":
                input_adjoints[g] = summer.materialise(adj)
            elif kind in ("add", "sub"):
                adjoint_terms[a].append((1.0, adj))
                adjoint_terms[b].append((1.0 if kind == "add" else -1.0, adj))
            elif kind == "scale":
                adjoint_terms[a].append((self._value[g], adj))
            elif kind == "mul":
                # a constant operand needs no adjoint: forming ``adj·g_other`` for it would add a
                # dead (and possibly non-scalar) product, breaking the 3·L(f) bound
                if not self._constant[a]:
                    adjoint_terms[a].append((1.0, summer.product(adj, b)))
                if not self._constant[b]:
                    adjoint_terms[b].append((1.0, summer.product(adj, a)))
        outputs = [self._outputs[0]]
        for adj in input_adjoints:
            outputs.append(adj if adj is not None else summer.constant(0.0))
        return result.set_outputs(outputs)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        """``{"type": "arithmetic", "n_inputs", "gates": [[kind, a, b, value], …], "outputs"}``
        for the non-input gates; unused fields are ``-1`` / ``0``, complex values ``[re, im]``."""
        gates = [
            [self._kind[g], self._left[g], self._right[g], constant_to_json(self._value[g])]
            for g in range(self._n_inputs, self.size)
        ]
        return {"type": "arithmetic", "n_inputs": self._n_inputs, "gates": gates, "outputs": list(self._outputs)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, data: str | bytes | dict, max_size: int = DEFAULT_MAX_SIZE) -> "ArithmeticCircuit":
        """Load and validate untrusted input (unknown kinds, out-of-range or forward references,
        non-finite constants, size above ``max_size`` -> ``ValueError``/``TypeError``)."""
        data = load_json_object(data, "arithmetic", max_size)
        circuit = cls(data["n_inputs"])
        for k, gate in enumerate(data["gates"]):
            if not isinstance(gate, list) or len(gate) != 4:
                raise ValueError(f"gates[{k}]: expected [kind, a, b, value], got {describe(gate)}")
            kind = gate[0]
            if kind not in KINDS[1:]:
                raise ValueError(f"gates[{k}][0]: expected one of {list(KINDS[1:])}, got {describe(kind)}")
            size = circuit.size
            if kind == "const":
                circuit._append("const", -1, -1, check_constant(f"gates[{k}][3]", gate[3]))
            elif kind == "scale":
                a = check_gate(f"gates[{k}][1]", gate[1], size)
                circuit._append("scale", a, -1, check_constant(f"gates[{k}][3]", gate[3]))
            else:
                a = check_gate(f"gates[{k}][1]", gate[1], size)
                b = check_gate(f"gates[{k}][2]", gate[2], size)
                circuit._append(kind, a, b, 0.0)
        circuit.set_outputs(data["outputs"])
        return circuit


_LEVEL_COEFFICIENTS = {
    "add": lambda v: (1.0, 1.0),
    "sub": lambda v: (1.0, -1.0),
    "scale": lambda v: (v, 0.0),
    "mul": lambda v: (0.0, 0.0),
}


class _AdjointSum:
    """Helpers of :meth:`ArithmeticCircuit.gradient` that emit adjoint gates into ``circuit``.

    An adjoint is a gate index, or ``None`` for the literal constant 1 (the seed ``adj(f) = 1``),
    which is only materialised (as a constant gate) when it must stand alone."""

    def __init__(self, circuit: ArithmeticCircuit) -> None:
        self.circuit = circuit
        self.constants: dict[complex, int] = {}

    def constant(self, value: float | complex) -> int:
        key = complex(value)
        if key not in self.constants:
            self.constants[key] = self.circuit.const(value)
        return self.constants[key]

    def materialise(self, adj: int | None) -> int:
        return self.constant(1.0) if adj is None else adj

    def product(self, adj: int | None, other: int) -> int:
        """``adj · g_other`` (free when ``adj`` is the literal 1)."""
        return other if adj is None else self.circuit.mul(adj, other)

    def total(self, terms: list[tuple[float | complex, int | None]]) -> int | None:
        """``Σ λ·adj`` over ``terms``: ``t − 1`` additions/subtractions plus one scaling per
        constant other than ±1 (terms with ``λ = 1`` come first so no leading negation is needed
        when avoidable)."""
        if len(terms) == 1 and terms[0] == (1.0, None):
            return None
        terms = sorted(terms, key=lambda t: t[0] != 1)
        acc = None
        for lam, adj in terms:
            if adj is None:
                gate, lam = self.constant(lam), 1.0
            else:
                gate = adj
            if acc is None:
                acc = gate if lam == 1 else self.circuit.scale(gate, lam)
            elif lam == 1:
                acc = self.circuit.add(acc, gate)
            elif lam == -1:
                acc = self.circuit.sub(acc, gate)
            else:
                acc = self.circuit.add(acc, self.circuit.scale(gate, lam))
        return acc


class Traced:
    """A value being recorded into an :class:`ArithmeticCircuit` (see
    :meth:`ArithmeticCircuit.trace`): ``+``, ``−``, ``×`` between traced values append gates;
    with a number they append ``add``/``sub`` with a constant gate, or a ``scale`` gate."""

    __slots__ = ("circuit", "gate")

    def __init__(self, circuit: ArithmeticCircuit, gate: int) -> None:
        self.circuit = circuit
        self.gate = gate

    @staticmethod
    def lift(circuit: ArithmeticCircuit, value: Any) -> "Traced":
        if isinstance(value, Traced):
            if value.circuit is not circuit:
                raise ValueError("value: a traced value from another circuit")
            return value
        return Traced(circuit, circuit.const(value))

    def __add__(self, other: Any) -> "Traced":
        other = Traced.lift(self.circuit, other)
        return Traced(self.circuit, self.circuit.add(self.gate, other.gate))

    __radd__ = __add__

    def __sub__(self, other: Any) -> "Traced":
        other = Traced.lift(self.circuit, other)
        return Traced(self.circuit, self.circuit.sub(self.gate, other.gate))

    def __rsub__(self, other: Any) -> "Traced":
        other = Traced.lift(self.circuit, other)
        return Traced(self.circuit, self.circuit.sub(other.gate, self.gate))

    def __mul__(self, other: Any) -> "Traced":
        if isinstance(other, Traced):
            return Traced(self.circuit, self.circuit.mul(self.gate, Traced.lift(self.circuit, other).gate))
        return Traced(self.circuit, self.circuit.scale(self.gate, other))

    __rmul__ = __mul__

    def __neg__(self) -> "Traced":
        return Traced(self.circuit, self.circuit.scale(self.gate, -1.0))


def single_layer_circuit(
    matvec: Callable[[list[Traced], list[Any]], list[Any]], n_params: int, x: Any, u: Any
) -> ArithmeticCircuit:
    """The circuit of ``f_{u,x}(θ) = uᵀ W(θ) x`` over the parameters ``θ`` (SPEC.md §2.6).

    ``matvec(theta, x)`` computes the entries of ``W(θ) x`` from the traced parameters ``theta``
    (``n_params`` of them) and the numbers ``x``; ``u`` and ``x`` are fixed vectors (tensors or
    sequences). ``gradient()`` of the result yields ``f`` and ``∂ℓ/∂θ`` of a layer whose upstream
    signal is ``u``, with ``O(size)`` operations (Baur–Strassen).
    """
    xs = [v for v in (x.tolist() if isinstance(x, torch.Tensor) else list(x))]
    us = [v for v in (u.tolist() if isinstance(u, torch.Tensor) else list(u))]

    def f(theta: list[Traced]) -> Traced:
        z = list(matvec(theta, xs))
        if len(z) != len(us):
            raise ValueError(f"u: expected {len(z)} entries (one per output of matvec), got {len(us)}")
        total = None
        for ui, zi in zip(us, z):
            term = ui * zi
            total = term if total is None else total + term
        return total

    return ArithmeticCircuit.trace(f, n_params)
