"""Optimizer parameter groups for models with structured layers.

Weight decay pulls every decayed parameter towards zero by a factor ``(1 - lr * wd)`` per step.
For a dense weight that is a mild L2 prior on the matrix; for a structured factor it is not:
a butterfly, Kaleidoscope or Monarch matrix is a *product* of ``L`` factors, so decaying every
factor shrinks the matrix by ``(1 - lr * wd)^L`` per step, and decaying low-rank factors ``U, V``
penalises ``||U||^2 + ||V||^2`` (a nuclear-norm prior), not ``||U V^T||^2``. Biases and
normalisation parameters are conventionally not decayed either. :func:`param_groups` therefore
decays only

* weights (two or more dimensions) of ordinary modules such as ``nn.Linear`` and convolutions,
  excluding embeddings and normalisation layers;
* parameters of a structured family that opts in through the class attribute
  ``weight_decay_patterns`` (glob patterns on the parameter's name within the family module;
  default: none).

Per-family learning-rate multipliers come from the class attribute ``lr_multipliers`` of the
family (``{glob pattern on the parameter name: multiplier}``, first match wins; default: none,
i.e. ``1.0``). The recommended settings, for family authors:

* relaxed-permutation logits (SPEC.md §7.2, ``p = sigmoid(λ)``): ``10.0`` -- the logits must
  travel to ``|λ| ≈ 5`` (``p ≥ 0.99``) to settle on a permutation, far beyond what a learning rate
  tuned for the weights moves them in a training run;
* butterfly/Kaleidoscope twiddles: ``1.0`` (their ``randn``/``ortho`` initialisations of SPEC.md
  §7.3 are norm-preserving, so the gradient scale matches that of a dense layer) -- no entry
  needed.

Example::

    >>> optimizer = torch.optim.AdamW(param_groups(model, lr=1e-3, weight_decay=0.01))
"""

from __future__ import annotations

import fnmatch
import math
import numbers
from typing import Any

from torch import nn

from ..core import StructuredMatrix
from ..core.errors import describe

_NORM_LAYERS = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    getattr(nn, "RMSNorm", nn.LayerNorm),
)
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


def family_lr_multiplier(module: StructuredMatrix, param_name: str) -> float:
    """Learning-rate multiplier of parameter ``param_name`` of a family module (default 1)."""
    for pattern, multiplier in getattr(type(module), "lr_multipliers", {}).items():
        if fnmatch.fnmatchcase(param_name, pattern):
            return float(multiplier)
    return 1.0


def takes_weight_decay(module: nn.Module, param_name: str, ndim: int) -> bool:
    """Whether the parameter ``param_name`` owned directly by ``module`` should be decayed
    (see the module docstring for the rule)."""
    if isinstance(module, StructuredMatrix):
        patterns = getattr(type(module), "weight_decay_patterns", ())
        return any(fnmatch.fnmatchcase(param_name, pattern) for pattern in patterns)
    if isinstance(module, _NORM_LAYERS + _EMBEDDINGS):
        return False
    return ndim >= 2


def _check_rate(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a finite number >= 0, got {describe(value)}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {describe(value)}")
    return float(value)


def param_groups(model: nn.Module, lr: float, weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """Optimizer parameter groups: weight decay only where it belongs, family learning rates.

    Args:
        model: any ``nn.Module`` (also a ``DistributedDataParallel`` or compiled wrapper).
        lr: base learning rate; a group's rate is ``lr * multiplier``.
        weight_decay: decay of the decayed group(s); the others get ``0``.

    Returns:
        a list of dicts for any ``torch.optim`` optimizer, one per (decay, multiplier) pair that
        occurs, each with ``params``, ``lr``, ``weight_decay``, ``lr_multiplier`` and
        ``param_names`` (qualified names, PyTorch's key for named parameter groups). Frozen
        parameters (``requires_grad=False``) are left out; shared parameters appear once.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {describe(model)}")
    lr = _check_rate("lr", lr)
    weight_decay = _check_rate("weight_decay", weight_decay)
    groups: dict[tuple[bool, float], dict[str, Any]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            decay = takes_weight_decay(module, param_name, param.dim())
            multiplier = family_lr_multiplier(module, param_name) if isinstance(module, StructuredMatrix) else 1.0
            group = groups.setdefault(
                (decay, multiplier),
                {
                    "params": [],
                    "lr": lr * multiplier,
                    "weight_decay": weight_decay if decay else 0.0,
                    "lr_multiplier": multiplier,
                    "param_names": [],
                },
            )
            group["params"].append(param)
            group["param_names"].append(f"{module_name}.{param_name}" if module_name else param_name)
    return list(groups.values())
