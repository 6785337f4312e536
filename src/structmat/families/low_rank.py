"""Family ``low_rank``: ``M = U V^T`` of rank ``r`` (SPEC.md §4.2).

Params ``r (m + n)``; matvec ``x -> U (V^T x)``, ``r (m + n)`` multiply-adds; projection: the
truncated SVD, optimal in Frobenius norm (Eckart--Young--Mirsky), error² ``= Σ_{t >= r} σ_t²``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core import StructuredMatrix, register
from ..core.dtypes import mult_add_flops
from ..core.errors import check_finite, check_int, check_matrix
from ..core.init import normal_
from ..core.registry import OptionRange, Sample


def default_rank(in_features: int, out_features: int) -> int:
    return max(1, min(in_features, out_features) // 4)


def _samples():
    return [Sample(37, 101, {"rank": 5}), Sample(16, 16, {"rank": 2}), Sample(8, 3), Sample(1, 1)]


@register(
    "low_rank",
    samples=_samples,
    params_formula="r·(m+n)",
    flops_formula="2·r·(m+n)",
    size_ladder=lambda m, n: OptionRange("rank", range(1, min(m, n) + 1)),
    tags=("baseline",),
)
class LowRank(StructuredMatrix):
    """``M = U V^T`` with ``U`` of shape ``(out, r)`` and ``V`` of shape ``(in, r)``.

    Args:
        rank: ``r`` in ``[1, min(in_features, out_features)]``; default ``min(m, n) // 4``.

    Initialisation gives entries of ``M`` the variance of ``nn.Linear``'s weights.

    Example::

        >>> LowRank(64, 32, rank=4).num_parameters
        384
    """

    def __init__(self, in_features: int, out_features: int, *, rank: int | None = None, device=None, dtype=None) -> None:
        in_features = check_int("in_features", in_features, minimum=1)
        out_features = check_int("out_features", out_features, minimum=1)
        if rank is None:
            rank = default_rank(in_features, out_features)
        rank = check_int("rank", rank, minimum=1, maximum=min(in_features, out_features))
        super().__init__(in_features, out_features, device=device, dtype=dtype, rank=rank)
        self.rank = rank
        self.U = nn.Parameter(torch.empty(out_features, rank, device=device, dtype=self.dtype))
        self.V = nn.Parameter(torch.empty(in_features, rank, device=device, dtype=self.dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Var(M_ij) = r s^4 = 1 / (3 n), the variance of nn.Linear's U(-1/sqrt(n), 1/sqrt(n)).
        std = (1.0 / (3.0 * self.in_features * self.rank)) ** 0.25
        normal_(self.U, std)
        normal_(self.V, std)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.V) @ self.U.transpose(0, 1)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        return (y @ self.U) @ self.V.transpose(0, 1)

    def to_dense(self) -> torch.Tensor:
        return self.U @ self.V.transpose(0, 1)

    def _matvec_flops(self) -> int:
        return mult_add_flops(self.rank * (self.in_features + self.out_features), self.dtype)

    @classmethod
    def from_dense(cls, W: torch.Tensor, rank: int | None = None) -> "LowRank":
        """Best rank-``r`` approximation of ``W`` (truncated SVD, SPEC.md §4.2)."""
        W = check_finite("W", check_matrix("W", W))
        m, n = W.shape
        layer = cls(n, m, rank=rank, device=W.device, dtype=W.dtype)
        U, V = truncated_svd_factors(W, layer.rank)
        with torch.no_grad():
            layer.U.copy_(U)
            layer.V.copy_(V)
        return layer


def truncated_svd_factors(W: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, V)`` with ``U V^T`` the best rank-``rank`` approximation of ``W``:
    ``U = [σ_t^{1/2} u_t]``, ``V = [σ_t^{1/2} conj(v_t)]`` for ``t < rank``."""
    u, s, vh = torch.linalg.svd(W, full_matrices=False)
    root = s[:rank].sqrt().to(W.dtype)
    return u[:, :rank] * root, vh[:rank].transpose(0, 1) * root


def svd_truncate(W: torch.Tensor, rank: int) -> torch.Tensor:
    """The best rank-``rank`` approximation of ``W`` as a dense matrix."""
    U, V = truncated_svd_factors(W, rank)
    return U @ V.transpose(0, 1)
