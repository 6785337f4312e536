"""Evaluation plans: a circuit's gates grouped by depth, with dead gates removed and the set of
live values tracked level by level (SPEC.md §2.1, §2.2).

The plan is plain Python data (lists of ints); :class:`~structmat.circuits.LinearCircuit` and
:class:`~structmat.circuits.ArithmeticCircuit` turn it into index tensors for
:func:`structmat.ops.circuit.evaluate_levels`. Building a plan costs ``O(s + Σ_k live_k)``
Python steps for ``s`` gates, where ``live_k`` is the number of values alive at level ``k``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PlanLevel:
    """Level ``k`` of a plan: the gates computed there and where they read their operands.

    ``keep`` are positions in the previous state that survive, ``nodes`` the gate indices
    computed at this level, ``left``/``right`` the positions of their operands in the previous
    state. The next state is ``[previous[p] for p in keep] + nodes``.
    """

    keep: list[int]
    nodes: list[int]
    left: list[int]
    right: list[int]


@dataclass
class Plan:
    """A level-by-level evaluation order. ``sources`` are the depth-0 gates (in the order of the
    initial state), ``outputs`` the positions of the output gates in the final state."""

    sources: list[int]
    levels: list[PlanLevel] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)


def build_plan(operands: list[tuple[int, int] | None], depth: list[int], outputs: list[int]) -> Plan:
    """Plan the evaluation of a DAG given in topological order.

    Args:
        operands: per gate, ``(a, b)`` with ``a, b`` < the gate's index, or ``None`` for a source
            (an input or a constant).
        depth: per gate, its depth (0 for sources).
        outputs: the output gates (repeats allowed).
    Gates that no output depends on are never computed; a value stays in the state from its
    level until the last level that reads it (outputs until the end).
    """
    size = len(operands)
    needed = [False] * size
    for o in outputs:
        needed[o] = True
    for gate in range(size - 1, -1, -1):
        if needed[gate] and operands[gate] is not None:
            a, b = operands[gate]
            needed[a] = needed[b] = True
    final = max(depth, default=0) + 1
    last_use = [-1] * size
    by_depth: dict[int, list[int]] = {}
    for gate in range(size):
        if needed[gate] and operands[gate] is not None:
            a, b = operands[gate]
            d = depth[gate]
            last_use[a] = max(last_use[a], d)
            last_use[b] = max(last_use[b], d)
            by_depth.setdefault(d, []).append(gate)
    for o in outputs:
        last_use[o] = final
    state = [g for g in range(size) if needed[g] and operands[g] is None]
    plan = Plan(sources=list(state))
    position = {g: i for i, g in enumerate(state)}
    for level in sorted(by_depth):
        nodes = by_depth[level]
        left = [position[operands[g][0]] for g in nodes]
        right = [position[operands[g][1]] for g in nodes]
        keep_nodes = [g for g in state if last_use[g] > level]
        keep = [position[g] for g in keep_nodes]
        plan.levels.append(PlanLevel(keep=keep, nodes=nodes, left=left, right=right))
        state = keep_nodes + nodes
        position = {g: i for i, g in enumerate(state)}
    plan.outputs = [position[o] for o in outputs]
    return plan
