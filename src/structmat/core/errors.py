"""Error conventions shared by every layer.

Every public entry point reports bad input as a ``ValueError`` (wrong value) or ``TypeError``
(wrong kind of object) whose message names the argument, what was expected and what arrived,
in the style of einops: ``in_features: expected an integer >= 1, got 0``.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch


def describe(value: Any) -> str:
    """Short description of a received value for error messages."""
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """Validate an integer argument (``bool`` is rejected) and return it as ``int``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {describe(value)}")
    value = int(value)
    if minimum is not None and value < minimum:
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name}: expected an integer {bound}, got {value}")
    if maximum is not None and value > maximum:
        bound = f"<= {maximum}" if minimum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name}: expected an integer {bound}, got {value}")
    return value


def check_choice(name: str, value: Any, choices) -> Any:
    """Validate that ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {describe(value)}")
    return value


def check_matrix(name: str, value: Any) -> torch.Tensor:
    """Validate a 2-D floating/complex matrix (tensor or array-like) and return a tensor."""
    if not isinstance(value, torch.Tensor):
        try:
            import numpy as np

            arr = np.asarray(value)
        except Exception as exc:  # pragma: no cover - defensive
            raise TypeError(f"{name}: expected a 2-D tensor, got {describe(value)}") from exc
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)):
            raise TypeError(f"{name}: expected a 2-D numeric tensor, got {describe(value)}")
        value = torch.as_tensor(arr)
    if value.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D tensor (out_features, in_features), got {describe(value)}")
    if value.dtype == torch.bool:
        raise TypeError(f"{name}: expected a floating or complex tensor, got {describe(value)}")
    if not (value.is_floating_point() or value.is_complex()):
        value = value.to(torch.get_default_dtype())
    return value


def check_finite(name: str, value: torch.Tensor) -> torch.Tensor:
    """Reject NaN/Inf entries (used by projections and fitting, not by forward passes)."""
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name}: expected finite entries, got a tensor containing NaN or Inf")
    return value
