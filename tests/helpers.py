"""Shared test helpers."""

import torch


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b||_F / max(||b||_F, 1)  (SPEC.md §8 tolerance tiers)."""
    a = a.detach()
    b = b.detach().to(a.dtype) if not a.is_complex() or b.is_complex() else b.detach().to(a.dtype)
    return float(torch.linalg.norm(a - b) / max(float(torch.linalg.norm(b)), 1.0))
