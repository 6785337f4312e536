"""Validation shared by the circuit classes: gate references, constants, untrusted JSON.

Every check raises ``ValueError``/``TypeError`` naming the argument, the expected and the
received value (core/errors.py conventions); loading JSON never recurses without bound, never
allocates more than the caller's size limit and never loops forever.
"""

from __future__ import annotations

import json
import math
import numbers
from typing import Any

import torch

from ..core.errors import describe

#: default limit on the number of gates (including inputs) accepted from JSON; callers raise it
#: with ``max_size=``.
DEFAULT_MAX_SIZE = 1_000_000


def check_gate(name: str, value: Any, size: int) -> int:
    """A reference to an existing gate: an integer in ``[0, size)`` (earlier gates only)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected a gate index (int), got {describe(value)}")
    value = int(value)
    if value < 0:
        raise ValueError(f"{name}: expected a gate index in [0, {size}), got {value}")
    if value >= size:
        raise ValueError(
            f"{name}: expected a gate index in [0, {size}) (an existing, earlier gate: references "
            f"forward would make a cycle), got {value}"
        )
    return value


def check_constant(name: str, value: Any) -> float | complex:
    """A finite real or complex constant, returned as ``float`` (real) or ``complex``."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"{name}: expected a scalar constant, got {describe(value)}")
        value = value.item()
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value
    ):
        value = complex(float(value[0]), float(value[1]))
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        raise TypeError(f"{name}: expected a real or complex number, got {describe(value)}")
    value = complex(value)
    if not (math.isfinite(value.real) and math.isfinite(value.imag)):
        raise ValueError(f"{name}: expected a finite constant, got {value}")
    return value.real if value.imag == 0 else value


def constant_to_json(value: float | complex) -> float | list[float]:
    """JSON form of a constant: a number, or ``[re, im]`` for a complex one."""
    if isinstance(value, complex):
        return [value.real, value.imag]
    return value


def load_json_object(data: Any, kind: str, max_size: int) -> dict:
    """Parse ``data`` (a JSON string/bytes or an already parsed dict) describing a ``kind`` circuit
    and check its envelope: ``type``, ``n_inputs`` and the gate count against ``max_size``."""
    if isinstance(max_size, bool) or not isinstance(max_size, numbers.Integral) or max_size < 1:
        raise ValueError(f"max_size: expected an integer >= 1, got {describe(max_size)}")
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode("utf-8", errors="replace")
    if isinstance(data, str):
        # a gate needs at least ~8 characters; longer texts cannot describe <= max_size gates
        if len(data) > 200 * max_size + 10_000:
            raise ValueError(f"data: JSON text of {len(data)} characters exceeds the size limit max_size={max_size}")
        try:
            data = json.loads(data)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ValueError(f"data: expected a JSON circuit description, got invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise TypeError(f"data: expected a JSON object (dict), got {describe(data)}")
    if data.get("type") != kind:
        raise ValueError(f"data['type']: expected {kind!r}, got {describe(data.get('type'))}")
    n_inputs = data.get("n_inputs")
    if isinstance(n_inputs, bool) or not isinstance(n_inputs, int) or n_inputs < 1:
        raise ValueError(f"data['n_inputs']: expected an integer >= 1, got {describe(n_inputs)}")
    gates = data.get("gates")
    if not isinstance(gates, list):
        raise ValueError(f"data['gates']: expected a list, got {describe(gates)}")
    if n_inputs + len(gates) > max_size:
        raise ValueError(
            f"data: circuit of size {n_inputs + len(gates)} exceeds the limit max_size={max_size} "
            f"(pass a larger max_size to load it)"
        )
    outputs = data.get("outputs", [])
    if not isinstance(outputs, list):
        raise ValueError(f"data['outputs']: expected a list of gate indices, got {describe(outputs)}")
    if len(outputs) > max_size:
        raise ValueError(f"data['outputs']: {len(outputs)} outputs exceed the limit max_size={max_size}")
    return data
