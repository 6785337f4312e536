"""Initialisation helpers that work for real and complex parameters alike."""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def uniform_(tensor: torch.Tensor, bound: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill with U(-bound, bound); for complex tensors the entry has the same variance
    (bound^2 / 3), split equally between real and imaginary parts."""
    if tensor.is_complex():
        parts = torch.view_as_real(tensor)
        parts.uniform_(-bound / math.sqrt(2), bound / math.sqrt(2), generator=generator)
    else:
        tensor.uniform_(-bound, bound, generator=generator)
    return tensor


@torch.no_grad()
def normal_(tensor: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill with N(0, std^2); complex entries get real and imaginary parts N(0, std^2 / 2)."""
    if tensor.is_complex():
        torch.view_as_real(tensor).normal_(0.0, std / math.sqrt(2), generator=generator)
    else:
        tensor.normal_(0.0, std, generator=generator)
    return tensor


def linear_bound(fan_in: int) -> float:
    """The bound of ``nn.Linear``'s default weight initialisation, ``1/sqrt(fan_in)``
    (Kaiming-uniform with ``a = sqrt(5)``): output variance ~ input variance / 3."""
    return 1.0 / math.sqrt(max(1, fan_in))
