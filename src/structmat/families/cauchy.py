"""Family ``cauchy``: ``C[i, j] = 1/(s_i - t_j)`` with learnable nodes (SPEC.md §4.9).

Multiplication by tiled direct evaluation (:mod:`structmat.ops.kernel_matrix`): ``O(m n)`` per
row at matrix-multiply speed, ``O(tile · n)`` memory, each entry computed to full precision (the
exact fast algorithms of SPEC.md §4.9 are unstable in float32). A Cauchy matrix has displacement
rank 1: ``D_s C - C D_t = 𝟏𝟏ᵀ`` (§4.10). Nodes with ``s_i = t_j`` are rejected; the default nodes
``s_i = i + ½``, ``t_j = -(j + ½)`` give the Hilbert matrix ``1/(i + j + 1)``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core import StructuredMatrix, register
from ..core.dtypes import mult_add_flops
from ..core.errors import describe
from ..core.registry import Sample
from ..ops.kernel_matrix import tiled_kernel_multiply


def hilbert_nodes(out_features: int, in_features: int, dtype: torch.dtype, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``s_i = i + ½``, ``t_j = -(j + ½)``: the Cauchy matrix is the Hilbert matrix."""
    s = torch.arange(out_features, dtype=torch.float64, device=device) + 0.5
    t = -(torch.arange(in_features, dtype=torch.float64, device=device) + 0.5)
    return s.to(dtype), t.to(dtype)


def check_cauchy_nodes(s: torch.Tensor, t: torch.Tensor) -> None:
    """``ValueError`` when some ``s_i == t_j`` (the entry ``1/(s_i - t_j)`` is undefined)."""
    for name, value in (("s", s), ("t", t)):
        if not isinstance(value, torch.Tensor) or value.dim() != 1 or value.numel() == 0:
            raise ValueError(f"{name}: expected a non-empty 1-D tensor of nodes, got {describe(value)}")
    if s.device.type == "meta":
        return
    clash = (s.detach()[:, None] == t.detach()[None, :]).nonzero()
    if clash.numel():
        i, j = (int(v) for v in clash[0])
        raise ValueError(
            f"s, t: Cauchy nodes must satisfy s_i != t_j for all i, j, got s[{i}] = t[{j}] = {s[i].item()} "
            f"({clash.shape[0]} repeated pair(s))"
        )


def cauchy_rows(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The Cauchy block ``1/(s_i - t_j)`` for the given rows ``s``."""
    return 1.0 / (s[:, None] - t[None, :])


def _samples():
    return [Sample(7, 5), Sample(4, 9), Sample(16, 16), Sample(1, 1)]


@register(
    "cauchy",
    samples=_samples,
    params_formula="m + n (nodes)",
    flops_formula="2·m·n (tiled direct evaluation)",
    size_ladder=lambda m, n: [{}],
)
class Cauchy(StructuredMatrix):
    """Cauchy matrix ``C[i, j] = 1/(s_i - t_j)``, ``s`` of length ``m``, ``t`` of length ``n``.

    Shapes ``x (B, n) -> (B, m)``; cost ``m n`` multiply-adds per row (plus ``m n`` divisions per
    call, tile by tile); ``m + n`` parameters; transpose ``Cᵀ = -C(t, s)``.

    Example::

        >>> Cauchy.from_nodes(torch.tensor([1.0, 2.0]), torch.tensor([0.0])).to_dense()
        tensor([[1.0000],
                [0.5000]])
    """

    def __init__(self, in_features: int, out_features: int, *, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, device=device, dtype=dtype)
        self.s = nn.Parameter(torch.empty(out_features, device=device, dtype=self.dtype))
        self.t = nn.Parameter(torch.empty(in_features, device=device, dtype=self.dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.s.device.type == "meta":
            return
        s, t = hilbert_nodes(self.out_features, self.in_features, self.dtype, self.s.device)
        with torch.no_grad():
            self.s.copy_(s)
            self.t.copy_(t)

    @classmethod
    def from_nodes(cls, s: torch.Tensor, t: torch.Tensor) -> "Cauchy":
        """The Cauchy matrix of the given nodes; ``ValueError`` if some ``s_i == t_j``."""
        check_cauchy_nodes(s, t)
        dtype = torch.promote_types(s.dtype, t.dtype)
        dtype = dtype if (dtype.is_floating_point or dtype.is_complex) else None
        layer = cls(t.shape[0], s.shape[0], device=s.device, dtype=dtype)
        with torch.no_grad():
            layer.s.copy_(s)
            layer.t.copy_(t)
        return layer

    @staticmethod
    def _tile(params, start: int, stop: int) -> torch.Tensor:
        return cauchy_rows(params[0][start:stop], params[1])

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return tiled_kernel_multiply(self._tile, [self.s, self.t], x, self.shape)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        return tiled_kernel_multiply(self._tile, [self.s, self.t], y, self.shape, transpose=True)

    def to_dense(self) -> torch.Tensor:
        return cauchy_rows(self.s, self.t)

    def _matvec_flops(self) -> int:
        return mult_add_flops(self.in_features * self.out_features, self.dtype)
