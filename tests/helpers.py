"""Shared test helpers."""

import torch


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b||_F / max(||b||_F, 1)  (SPEC.md §8 tolerance tiers)."""
    # compare in the common dtype: casting a complex b to a real a would drop its imaginary part
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.detach().to(dtype), b.detach().to(dtype)
    return float(torch.linalg.norm(a - b) / max(float(torch.linalg.norm(b)), 1.0))
