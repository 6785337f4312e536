"""Family ``diagonal``: ``M[i, i] = d_i`` for ``i < min(m, n)``, zero elsewhere.

Params ``min(m, n)``; matvec ``min(m, n)`` multiplications; projection: keep the diagonal
(optimal in Frobenius norm). Diagonals are the glue of structured products (SPEC.md §5.1(4):
"diagonals are always merged") and the scaling factors of Fastfood/ACDC (SPEC.md §4.13).
"""

from __future__ import annotations

import torch
from torch import nn

from ..core import StructuredMatrix, register
from ..core.dtypes import flop_scale
from ..core.errors import check_matrix, describe
from ..core.init import uniform_
from ..core.registry import Sample
from ..core.sizes import pad_last, truncate_last


def _samples():
    return [Sample(7, 5), Sample(4, 9), Sample(16, 16), Sample(1, 1)]


@register(
    "diagonal",
    samples=_samples,
    params_formula="min(m, n)",
    flops_formula="min(m, n)",
    size_ladder=lambda m, n: [{}],
)
class Diagonal(StructuredMatrix):
    """Diagonal (rectangular: corner-embedded) matrix with learnable diagonal ``d``.

    Args:
        init: ``"ones"`` (identity, the default) or ``"uniform"`` (U(-1, 1)).
    """

    def __init__(self, in_features: int, out_features: int, *, init: str = "ones", device=None, dtype=None) -> None:
        if init not in ("ones", "uniform"):
            raise ValueError(f"init: expected 'ones' or 'uniform', got {init!r}")
        super().__init__(in_features, out_features, device=device, dtype=dtype, init=init)
        self.diagonal = nn.Parameter(torch.empty(min(in_features, out_features), device=device, dtype=self.dtype))
        self.reset_parameters()

    @classmethod
    def from_vector(cls, d: torch.Tensor, in_features: int | None = None, out_features: int | None = None) -> "Diagonal":
        """A diagonal matrix with the given diagonal ``d`` (square ``len(d)`` by default)."""
        if not isinstance(d, torch.Tensor):
            raise TypeError(f"d: expected a 1-D tensor, got {describe(d)}")
        if d.dim() != 1:
            raise ValueError(f"d: expected a 1-D tensor, got {describe(d)}")
        n = d.shape[0]
        in_features = n if in_features is None else in_features
        out_features = n if out_features is None else out_features
        if min(in_features, out_features) != n:
            raise ValueError(f"d: expected length min(in_features, out_features) = {min(in_features, out_features)}, got {n}")
        layer = cls(in_features, out_features, device=d.device, dtype=d.dtype if (d.is_floating_point() or d.is_complex()) else None)
        with torch.no_grad():
            layer.diagonal.copy_(d)
        return layer

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.options["init"] == "ones":
                self.diagonal.fill_(1.0)
            else:
                uniform_(self.diagonal, 1.0)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.diagonal.shape[0]
        return pad_last(truncate_last(x, k) * self.diagonal, self.out_features)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        k = self.diagonal.shape[0]
        return pad_last(truncate_last(y, k) * self.diagonal, self.in_features)

    def to_dense(self) -> torch.Tensor:
        k = self.diagonal.shape[0]
        dense = torch.zeros(self.out_features, self.in_features, dtype=self.dtype, device=self.device)
        index = torch.arange(k, device=self.device)
        return dense.index_put((index, index), self.diagonal)

    def _matvec_flops(self) -> int:
        return self.diagonal.shape[0] * flop_scale(self.dtype)[0]

    @classmethod
    def from_dense(cls, W: torch.Tensor) -> "Diagonal":
        """The diagonal part of ``W`` (the Frobenius-nearest diagonal matrix)."""
        W = check_matrix("W", W)
        return cls.from_vector(torch.diagonal(W).clone(), W.shape[1], W.shape[0])
