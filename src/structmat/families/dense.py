"""Family ``dense``: an unstructured weight (SPEC.md §4.1) -- the reference every benchmark
compares against.

Params ``m n``; matvec ``m n`` multiply-adds (``2 m n`` real flops); projection: identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core import StructuredMatrix, register
from ..core.dtypes import mult_add_flops
from ..core.errors import check_matrix
from ..core.init import linear_bound, uniform_
from ..core.registry import Sample


def _samples():
    return [Sample(37, 101), Sample(16, 16), Sample(5, 3), Sample(1, 1)]


@register(
    "dense",
    samples=_samples,
    params_formula="m·n",
    flops_formula="2·m·n",
    size_ladder=lambda m, n: [{}],
    tags=("baseline",),
)
class Dense(StructuredMatrix):
    """Dense weight ``W`` of shape ``(out_features, in_features)``, initialised like ``nn.Linear``.

    Example::

        >>> Dense(4, 3)(torch.randn(2, 4)).shape
        torch.Size([2, 3])
    """

    #: like ``nn.Linear``, a dense weight gets weight decay in ``structmat.param_groups``
    weight_decay_patterns = ("weight",)

    def __init__(self, in_features: int, out_features: int, *, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=self.dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        uniform_(self.weight, linear_bound(self.in_features))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        return y @ self.weight

    def to_dense(self) -> torch.Tensor:
        return self.weight

    def _matvec_flops(self) -> int:
        return mult_add_flops(self.in_features * self.out_features, self.dtype)

    @classmethod
    def from_dense(cls, W: torch.Tensor) -> "Dense":
        """The exact copy of ``W`` (the identity projection)."""
        W = check_matrix("W", W)
        layer = cls(W.shape[1], W.shape[0], device=W.device, dtype=W.dtype)
        with torch.no_grad():
            layer.weight.copy_(W)
        return layer
