"""Sparse matrix products without densifying (SPEC.md §4.3).

``M`` is given in coordinate form: ``M[rows[t], cols[t]] = values[t]`` (duplicates add).
Both products are gather -> multiply -> scatter-add, ``nnz`` multiply-adds per row, and
differentiable in ``values`` and ``x`` (gradients only on the stored entries). These pure-PyTorch
kernels are their own reference.
"""

from __future__ import annotations

import torch


def sparse_multiply(values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, x: torch.Tensor, out_features: int) -> torch.Tensor:
    """``x @ M.T`` for ``x`` of shape ``(B, in)`` -> ``(B, out_features)``. Cost ``B * nnz`` mult-adds."""
    contributions = x[:, cols] * values
    out = torch.zeros(x.shape[0], out_features, dtype=contributions.dtype, device=x.device)
    return out.index_add(1, rows, contributions)


def sparse_multiply_transpose(values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, y: torch.Tensor, in_features: int) -> torch.Tensor:
    """``y @ M`` for ``y`` of shape ``(B, out)`` -> ``(B, in_features)`` (the transposed product)."""
    return sparse_multiply(values, cols, rows, y, in_features)


def sparse_to_dense(values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The dense ``(out, in)`` matrix, differentiable in ``values``."""
    dense = torch.zeros(shape, dtype=values.dtype, device=values.device)
    return dense.index_put((rows, cols), values, accumulate=True)
