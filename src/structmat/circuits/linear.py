"""Linear arithmetic circuits (SPEC.md §2.1–2.3).

A :class:`LinearCircuit` on ``n`` inputs is a list of fan-in-2 gates
``g_i = α_i g_{a_i} + β_i g_{b_i}`` (``a_i, b_i < i``; gates ``0..n-1`` are the inputs) and an
output list; it computes ``x ↦ M x`` with ``M`` of shape ``(n_outputs, n_inputs)``.

Example::

    >>> c = LinearCircuit(2)
    >>> s = c.add(0, 1)            # x0 + x1
    >>> d = c.add(0, 1, 1.0, -1.0) # x0 - x1
    >>> c.set_outputs([s, d])
    >>> c.to_matrix()
    tensor([[ 1.,  1.],
            [ 1., -1.]], dtype=torch.float64)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch

from ..core.dtypes import complex_dtype, resolve_dtype
from ..core.errors import check_int, describe
from ..ops.circuit import Level, evaluate_levels
from .plan import Plan, build_plan
from .validation import DEFAULT_MAX_SIZE, check_constant, check_gate, constant_to_json, load_json_object


@dataclass
class LayeredSparse:
    """SPEC.md §2.2's layered form ``M = Sel · M_d ⋯ M_1 · Emb`` as sparse COO tensors.

    Attributes:
        embed: ``Emb = [I_n; 0]`` of shape ``(s', n)``.
        layers: ``[M_1, …, M_d]``, each ``(s', s')``: identity rows below ``z_k``, the gates of
            layer ``k`` in rows ``[z_k, z_k + w_k)``, zero rows above.
        select: ``Sel`` of shape ``(m, s')`` with ``Sel[r, position[o_r]] = 1``.
        position: ``position[g]`` = row of gate ``g`` after renumbering by (depth, index).
        starts: ``z_k`` for ``k = 1..d`` (``z_1 = n``), widths ``w_k`` in ``widths``.
    """

    embed: torch.Tensor
    layers: list[torch.Tensor]
    select: torch.Tensor
    position: list[int]
    starts: list[int]
    widths: list[int]

    def to_dense(self) -> torch.Tensor:
        """The product ``Sel · M_d ⋯ M_1 · Emb`` (dense ``(m, n)``), by sparse-dense products."""
        state = self.embed.to_dense()
        for layer in self.layers:
            state = torch.sparse.mm(layer, state)
        return torch.sparse.mm(self.select, state)


class LinearCircuit:
    """A linear arithmetic circuit (SPEC.md §2.1) with batched, level-vectorised evaluation.

    Args:
        n_inputs: number of inputs ``n >= 1``; gates ``0..n-1`` are the inputs ``x_0..x_{n-1}``.

    Build with :meth:`add` (returns the new gate's index) and :meth:`set_outputs`. Constants may
    be real or complex. ``size`` counts the inputs (the convention of [KS20]).
    """

    def __init__(self, n_inputs: int) -> None:
        self._n_inputs = check_int("n_inputs", n_inputs, minimum=1)
        self._left: list[int] = []
        self._right: list[int] = []
        self._left_coef: list[float | complex] = []
        self._right_coef: list[float | complex] = []
        self._depth: list[int] = [0] * self._n_inputs
        self._outputs: list[int] = []
        self._is_complex = False
        self._cache: dict[Any, Any] = {}

    # ------------------------------------------------------------------ building
    def add(self, i: int, j: int, a: Any = 1.0, b: Any = 1.0) -> int:
        """Append the gate ``a·g_i + b·g_j`` and return its index (``b = 0`` is allowed)."""
        size = self.size
        i = check_gate("i", i, size)
        j = check_gate("j", j, size)
        a = check_constant("a", a)
        b = check_constant("b", b)
        self._append(i, j, a, b)
        return size

    def scale(self, i: int, a: Any) -> int:
        """Append the gate ``a·g_i`` (stored as ``a·g_i + 0·g_i``) and return its index."""
        return self.add(i, i, a, 0.0)

    def _append(self, i: int, j: int, a: float | complex, b: float | complex) -> None:
        self._left.append(i)
        self._right.append(j)
        self._left_coef.append(a)
        self._right_coef.append(b)
        self._depth.append(1 + max(self._depth[i], self._depth[j]))
        self._is_complex = self._is_complex or isinstance(a, complex) or isinstance(b, complex)
        self._cache.clear()

    def set_outputs(self, outputs: Iterable[int]) -> "LinearCircuit":
        """Designate the output gates (in order; repeats allowed). Returns ``self``."""
        if isinstance(outputs, (str, bytes)) or not hasattr(outputs, "__iter__"):
            raise TypeError(f"outputs: expected a sequence of gate indices, got {describe(outputs)}")
        size = self.size
        self._outputs = [check_gate(f"outputs[{k}]", o, size) for k, o in enumerate(outputs)]
        self._cache.clear()
        return self

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
        """Number of gates including the ``n_inputs`` input gates (SPEC.md §2.1)."""
        return self._n_inputs + len(self._left)

    @property
    def depth(self) -> int:
        """Maximum gate depth (inputs have depth 0)."""
        return max(self._depth)

    @property
    def is_complex(self) -> bool:
        """True when some constant has a nonzero imaginary part."""
        return self._is_complex

    def gate(self, g: int) -> tuple[int, int, float | complex, float | complex]:
        """``(a, b, α, β)`` of the non-input gate ``g = α·g_a + β·g_b``."""
        g = check_gate("g", g, self.size)
        if g < self._n_inputs:
            raise ValueError(f"g: expected a non-input gate index in [{self._n_inputs}, {self.size}), got {g}")
        k = g - self._n_inputs
        return self._left[k], self._right[k], self._left_coef[k], self._right_coef[k]

    def gate_depth(self, g: int) -> int:
        """Depth of gate ``g``: 0 for an input, else 1 + the larger depth of its two operands (SPEC.md §2.1)."""
        return self._depth[check_gate("g", g, self.size)]

    def layers(self) -> list[list[int]]:
        """Gates grouped by depth: ``layers()[k]`` lists the gates of depth ``k`` (``k = 0``: inputs)."""
        groups: list[list[int]] = [[] for _ in range(self.depth + 1)]
        for g, d in enumerate(self._depth):
            groups[d].append(g)
        return groups

    def edges(self, g: int) -> list[tuple[int, float | complex]]:
        """Incoming edges ``(source, constant)`` of gate ``g`` in the DAG model of SPEC.md §2.3:
        equal operands merge (``α + β``), zero constants are dropped. Inputs have none."""
        if g < self._n_inputs:
            return []
        a, b, alpha, beta = self.gate(g)
        if a == b:
            pairs = [(a, alpha + beta)]
        else:
            pairs = [(a, alpha), (b, beta)]
        return [(src, lam) for src, lam in pairs if lam != 0]

    def __repr__(self) -> str:
        return (
            f"LinearCircuit(n_inputs={self.n_inputs}, n_outputs={self.n_outputs}, size={self.size}, "
            f"depth={self.depth}{', complex' if self.is_complex else ''})"
        )

    # ------------------------------------------------------------------ evaluation
    def _require_outputs(self) -> None:
        if not self._outputs:
            raise ValueError("outputs: the circuit has no outputs; call set_outputs([...]) first")

    def plan(self) -> Plan:
        """The level-by-level evaluation plan (cached; see :mod:`structmat.circuits.plan`)."""
        if "plan" not in self._cache:
            operands: list[tuple[int, int] | None] = [None] * self._n_inputs
            operands += list(zip(self._left, self._right))
            self._cache["plan"] = build_plan(operands, self._depth, self._outputs)
        return self._cache["plan"]

    def evaluation_plan(self, dtype: torch.dtype, device: torch.device | str | None = None):
        """``(sources, levels, outputs)``: index tensors and :class:`~structmat.ops.circuit.Level`
        objects with coefficients in ``dtype`` on ``device``, for
        :func:`~structmat.ops.circuit.evaluate_levels` (cached per dtype and device)."""
        self._require_outputs()
        if self._is_complex and not dtype.is_complex:
            raise TypeError(f"dtype: the circuit has complex constants, expected a complex dtype, got {dtype}")
        key = ("levels", dtype, str(device))
        if key not in self._cache:
            plan = self.plan()
            n = self._n_inputs
            coef_dtype = torch.complex128 if self._is_complex else torch.float64
            levels = []
            for level in plan.levels:
                gates = [g - n for g in level.nodes]
                levels.append(
                    Level(
                        keep=torch.tensor(level.keep, dtype=torch.long),
                        left=torch.tensor(level.left, dtype=torch.long),
                        right=torch.tensor(level.right, dtype=torch.long),
                        left_coef=torch.tensor([self._left_coef[k] for k in gates], dtype=coef_dtype),
                        right_coef=torch.tensor([self._right_coef[k] for k in gates], dtype=coef_dtype),
                    ).to(dtype, device)
                )
            sources = torch.tensor(plan.sources, dtype=torch.long, device=device)
            outputs = torch.tensor(plan.outputs, dtype=torch.long, device=device)
            self._cache[key] = (sources, levels, outputs)
        return self._cache[key]

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        """``M x`` for every row: ``x`` of shape ``(*, n_inputs)`` -> ``(*, n_outputs)``.

        Vectorised per depth level (gather, scale, add; :mod:`structmat.ops.circuit`), cost
        ``≤ 3(s − n)`` operations per row. Real input to a complex circuit gives complex output.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {describe(x)}")
        if x.dtype == torch.bool or not (x.is_floating_point() or x.is_complex()):
            raise TypeError(f"x: expected a floating-point or complex tensor, got {describe(x)}")
        if x.dim() == 0 or x.shape[-1] != self._n_inputs:
            raise ValueError(f"x: expected shape (*, {self._n_inputs}), got shape {tuple(x.shape)}")
        dtype = complex_dtype(x.dtype) if self._is_complex else x.dtype
        sources, levels, outputs = self.evaluation_plan(dtype, x.device)
        lead = x.shape[:-1]
        state = x.to(dtype).reshape(-1, self._n_inputs).transpose(0, 1).index_select(0, sources)
        y = evaluate_levels(state, levels, outputs)
        return y.transpose(0, 1).reshape(*lead, self.n_outputs)

    def to_matrix(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense ``(n_outputs, n_inputs)`` matrix ``M`` (float64, or complex128 for complex
        circuits, by default), computed exactly by evaluating the identity."""
        if dtype is None:
            dtype = torch.complex128 if self._is_complex else torch.float64
        dtype = resolve_dtype(dtype)
        return self.evaluate(torch.eye(self._n_inputs, dtype=dtype)).transpose(0, 1)

    # ------------------------------------------------------------------ transposition principle
    def count(self) -> dict[str, int]:
        """Operation counts of SPEC.md §2.3 on the DAG model of the circuit (:meth:`edges`):
        ``mul`` = μ, the number of edges with a constant other than ±1; ``add`` = A, the sum over
        non-input gates of ``indegree − 1`` (a gate with no nonzero edge counts 0); ``total``."""
        mul = add = 0
        for g in range(self._n_inputs, self.size):
            edges = self.edges(g)
            add += max(len(edges) - 1, 0)
            mul += sum(1 for _, lam in edges if lam != 1 and lam != -1)
        return {"mul": mul, "add": add, "total": mul + add}

    def transpose(self) -> "LinearCircuit":
        """The circuit of ``Mᵀ`` obtained by reversing every edge (SPEC.md §2.3).

        Node ``v`` of the reversed graph sums, over the consumers ``u`` of ``v`` (edge constant
        ``λ``), ``λ·value(u)`` plus the new input ``y_r`` for every ``r`` with ``o_r = v``; a node
        with ``t`` terms becomes ``t − 1`` fan-in-2 gates in a balanced tree (one gate if ``t = 1``
        and ``λ ≠ 1``, none if ``λ = 1``), each constant used once. Hence, when every gate lies on
        an input→output path, the outputs are distinct sinks and every input is used,
        ``count()`` of the result has the same ``mul`` and ``add + n_outputs − n_inputs``.
        """
        self._require_outputs()
        result = LinearCircuit(self.n_outputs)
        terms: list[list[tuple[int, float | complex]]] = [[] for _ in range(self.size)]
        for r, o in enumerate(self._outputs):
            terms[o].append((r, 1.0))
        value: list[int | None] = [None] * self.size
        for v in range(self.size - 1, -1, -1):
            value[v] = _sum_terms(result, terms[v])
            if value[v] is not None:
                for src, lam in self.edges(v):
                    terms[src].append((value[v], lam))
        return _set_outputs_with_zero(result, value[: self._n_inputs])

    # ------------------------------------------------------------------ layered form
    def to_layered_sparse(self, padded_size: int | None = None, dtype: torch.dtype | None = None) -> LayeredSparse:
        """``M = Sel · M_d ⋯ M_1 · Emb`` (SPEC.md §2.2) as sparse COO tensors of size ``s'``.

        Gates are renumbered by (depth, index); ``padded_size`` = ``s' >= size`` (default
        ``size``). ``nnz(M_k) <= z_k + 2 w_k``; total ``<= d·s + 2s`` (check A3).
        """
        self._require_outputs()
        size = self.size
        padded = size if padded_size is None else check_int("padded_size", padded_size, minimum=size)
        if dtype is None:
            dtype = torch.complex128 if self._is_complex else torch.float64
        order = sorted(range(size), key=lambda g: (self._depth[g], g))
        position = [0] * size
        for new, g in enumerate(order):
            position[g] = new
        layers_by_depth = self.layers()
        starts, widths, layers = [], [], []
        start = self._n_inputs
        for k in range(1, self.depth + 1):
            width = len(layers_by_depth[k])
            rows = list(range(start))
            cols = list(range(start))
            vals: list[float | complex] = [1.0] * start
            for g in layers_by_depth[k]:
                a, b, alpha, beta = self.gate(g)
                rows += [position[g], position[g]]
                cols += [position[a], position[b]]
                vals += [alpha, beta]
            matrix = torch.sparse_coo_tensor(
                torch.tensor([rows, cols], dtype=torch.long), torch.tensor(vals, dtype=dtype), (padded, padded), check_invariants=True
            ).coalesce()
            starts.append(start)
            widths.append(width)
            layers.append(matrix)
            start += width
        n = self._n_inputs
        embed = torch.sparse_coo_tensor(
            torch.arange(n).repeat(2, 1), torch.ones(n, dtype=dtype), (padded, n), check_invariants=True
        ).coalesce()
        m = self.n_outputs
        select = torch.sparse_coo_tensor(
            torch.tensor([list(range(m)), [position[o] for o in self._outputs]], dtype=torch.long),
            torch.ones(m, dtype=dtype),
            (m, padded),
            check_invariants=True,
        ).coalesce()
        return LayeredSparse(embed, layers, select, position, starts, widths)

    # ------------------------------------------------------------------ layers and JSON
    def as_layer(self, dtype: torch.dtype | None = None, device=None, bias: bool = False):
        """A fixed ``StructuredLinear`` of the registered family ``circuit`` that runs this circuit
        (``in_features = n_inputs``, ``out_features = n_outputs``). Complex circuits default to
        the complex counterpart of the default dtype."""
        from ..core.linear import StructuredLinear

        self._require_outputs()
        if dtype is None:
            dtype = torch.get_default_dtype()
            if self._is_complex:
                dtype = complex_dtype(dtype)
        return StructuredLinear(
            self.n_inputs, self.n_outputs, "circuit", bias=bias, dtype=dtype, device=device, circuit=self.to_json()
        )

    def to_dict(self) -> dict:
        """JSON-ready description: ``{"type": "linear", "n_inputs", "gates": [[a, b, α, β], …],
        "outputs"}``; complex constants are ``[re, im]`` pairs."""
        gates = [
            [a, b, constant_to_json(alpha), constant_to_json(beta)]
            for a, b, alpha, beta in zip(self._left, self._right, self._left_coef, self._right_coef)
        ]
        return {"type": "linear", "n_inputs": self._n_inputs, "gates": gates, "outputs": list(self._outputs)}

    def to_json(self) -> str:
        import json

        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, data: str | bytes | dict, max_size: int = DEFAULT_MAX_SIZE) -> "LinearCircuit":
        """Load (and validate) a circuit written by :meth:`to_json` from untrusted input.

        Raises ``ValueError``/``TypeError`` for malformed JSON, gate references out of range or
        forward (cycles), non-finite constants, or a size above ``max_size`` (raise it for
        larger circuits). Cost ``O(size)``.
        """
        data = load_json_object(data, "linear", max_size)
        circuit = cls(data["n_inputs"])
        for k, gate in enumerate(data["gates"]):
            if not isinstance(gate, list) or len(gate) != 4:
                raise ValueError(f"gates[{k}]: expected [a, b, alpha, beta], got {describe(gate)}")
            size = circuit.size
            a = check_gate(f"gates[{k}][0]", gate[0], size)
            b = check_gate(f"gates[{k}][1]", gate[1], size)
            circuit._append(a, b, check_constant(f"gates[{k}][2]", gate[2]), check_constant(f"gates[{k}][3]", gate[3]))
        circuit.set_outputs(data["outputs"])
        return circuit


def _set_outputs_with_zero(circuit: LinearCircuit, gates: list[int | None]) -> LinearCircuit:
    """``circuit.set_outputs(gates)``, where every ``None`` (an identically zero output) becomes
    one shared zero gate ``0·g_0 + 0·g_0``, added only if some output needs it."""
    zero = None
    outputs = []
    for gate in gates:
        if gate is None:
            if zero is None:
                zero = circuit.add(0, 0, 0.0, 0.0)
            gate = zero
        outputs.append(gate)
    return circuit.set_outputs(outputs)


def _sum_terms(circuit: LinearCircuit, terms: list[tuple[int, float | complex]]) -> int | None:
    """Gate computing ``Σ λ·g`` over ``terms`` (``None`` for an empty sum): a balanced tree of
    ``len(terms) − 1`` fan-in-2 gates, each constant used exactly once."""
    if not terms:
        return None
    current = list(terms)
    while len(current) > 1:
        paired = []
        for k in range(0, len(current) - 1, 2):
            (g, lam), (h, mu) = current[k], current[k + 1]
            paired.append((circuit.add(g, h, lam, mu), 1.0))
        if len(current) % 2:
            paired.append(current[-1])
        current = paired
    g, lam = current[0]
    return g if lam == 1 else circuit.add(g, g, lam, 0.0)
