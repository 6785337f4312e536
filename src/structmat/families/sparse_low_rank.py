"""Family ``sparse_low_rank``: ``M = S + U V^T`` (SPEC.md §4.4).

Params ``s + r (m + n)``; matvec ``s + r (m + n)`` multiply-adds, composed from the ``sparse``
and ``low_rank`` families. Projection (no closed form): robust PCA by principal component
pursuit (Candès, Li, Ma, Wright 2011; inexact augmented Lagrangian) followed by alternating
projections onto the rank and nonzero budgets, compared with plain alternating projections
from ``S = 0``; the better one is kept and reported in ``layer.projection_report``.
"""

from __future__ import annotations

import math

import torch

from ..core import StructuredMatrix, register
from ..core.errors import check_finite, check_int, check_matrix
from ..core.registry import Sample
from .low_rank import LowRank, default_rank, svd_truncate, truncated_svd_factors
from .sparse import Sparse, resolve_nnz


def _samples():
    return [Sample(37, 101, {"rank": 3, "nnz": 300}), Sample(16, 16, {"rank": 2, "density": 0.1}), Sample(6, 4), Sample(1, 1)]


def _ladder(m: int, n: int):
    # ordered by size: rank 1 with a growing sparse part, then an equal split of the budget
    # between the sparse and the low-rank parts
    small = [{"rank": 1, "nnz": k} for k in range(1, min(m * n, m + n) + 1)]
    return small + [{"rank": r, "nnz": min(m * n, r * (m + n))} for r in range(2, min(m, n) + 1)]


@register(
    "sparse_low_rank",
    samples=_samples,
    params_formula="s + r·(m+n)",
    flops_formula="2·s + 2·r·(m+n)",
    size_ladder=_ladder,
    tags=("baseline",),
)
class SparseLowRank(StructuredMatrix):
    """``M = S + U V^T`` with a fixed-support sparse ``S`` and rank-``r`` ``U V^T``.

    Args:
        rank: rank of the low-rank part (default ``min(m, n) // 4``).
        nnz / density / seed: size and random support of the sparse part (see ``sparse``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rank: int | None = None,
        nnz: int | None = None,
        density: float | None = None,
        seed: int = 0,
        device=None,
        dtype=None,
    ) -> None:
        in_features = check_int("in_features", in_features, minimum=1)
        out_features = check_int("out_features", out_features, minimum=1)
        if rank is None:
            rank = default_rank(in_features, out_features)
        nnz = resolve_nnz(in_features, out_features, nnz, density)
        super().__init__(in_features, out_features, device=device, dtype=dtype, rank=rank, nnz=nnz, seed=seed)
        self.low_rank = LowRank(in_features, out_features, rank=rank, device=device, dtype=self.dtype)
        self.sparse = Sparse(in_features, out_features, nnz=nnz, seed=seed, device=device, dtype=self.dtype)
        self.rank, self.nnz = self.low_rank.rank, nnz
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # split nn.Linear's output variance equally between the two parts
        self.low_rank.reset_parameters()
        self.sparse.reset_parameters()
        with torch.no_grad():
            self.low_rank.U.mul_(2 ** -0.25)
            self.low_rank.V.mul_(2 ** -0.25)
            self.sparse.values.mul_(2 ** -0.5)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sparse._forward(x) + self.low_rank._forward(x)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        return self.sparse._forward_transpose(y) + self.low_rank._forward_transpose(y)

    def to_dense(self) -> torch.Tensor:
        return self.sparse.to_dense() + self.low_rank.to_dense()

    def _matvec_flops(self) -> int:
        return self.sparse._matvec_flops() + self.low_rank._matvec_flops()

    @classmethod
    def from_dense(
        cls,
        W: torch.Tensor,
        rank: int | None = None,
        nnz: int | None = None,
        density: float | None = None,
        method: str = "auto",
        iterations: int = 25,
    ) -> "SparseLowRank":
        """Approximate ``W`` by ``S + U V^T`` within the rank and nonzero budgets.

        ``method``: ``"rpca"`` (principal component pursuit, then alternating projections),
        ``"alternating"`` (alternating projections from ``S = 0``) or ``"auto"`` (both, keep the
        better). The chosen method and errors are in ``layer.projection_report``.
        """
        W = check_finite("W", check_matrix("W", W))
        m, n = W.shape
        if rank is None:
            rank = default_rank(n, m)
        rank = check_int("rank", rank, minimum=1, maximum=min(m, n))
        nnz = resolve_nnz(n, m, nnz, density)
        iterations = check_int("iterations", iterations, minimum=1)
        if method not in ("auto", "rpca", "alternating"):
            raise ValueError(f"method: expected 'auto', 'rpca' or 'alternating', got {method!r}")
        target = W.detach()
        candidates = {}
        if method in ("auto", "alternating"):
            candidates["alternating"] = alternating_projection(target, rank, nnz, torch.zeros_like(target), iterations)
        if method in ("auto", "rpca"):
            _, sparse0 = robust_pca(target, max_iter=30)
            candidates["rpca"] = alternating_projection(target, rank, nnz, sparse0, iterations)
        name = min(candidates, key=lambda k: candidates[k][2])
        sparse_part, low_part, error = candidates[name]
        mask = torch.zeros(m, n, dtype=torch.bool, device=W.device)
        mask.reshape(-1)[sparse_part.abs().reshape(-1).topk(nnz).indices] = True
        layer = cls(n, m, rank=rank, nnz=nnz, device=W.device, dtype=W.dtype)
        layer.sparse = Sparse.from_dense(sparse_part, mask=mask)

        U, V = truncated_svd_factors(low_part, rank)
        with torch.no_grad():
            layer.low_rank.U.copy_(U)
            layer.low_rank.V.copy_(V)
        norm = float(torch.linalg.norm(target)) or 1.0
        layer.projection_report = {
            "method": name,
            "rel_error": {k: v[2] / norm for k, v in candidates.items()},
        }
        return layer


def _top_k(A: torch.Tensor, k: int) -> torch.Tensor:
    out = torch.zeros_like(A)
    idx = A.abs().reshape(-1).topk(k).indices
    out.reshape(-1)[idx] = A.reshape(-1)[idx]
    return out


def alternating_projection(W: torch.Tensor, rank: int, nnz: int, sparse_init: torch.Tensor, iterations: int):
    """Alternate ``L <- SVD_r(W - S)``, ``S <- top_s(W - L)``; returns ``(S, L, best error)``."""
    S = _top_k(sparse_init, nnz)
    best = None
    for _ in range(max(1, iterations)):
        L = svd_truncate(W - S, rank)
        S = _top_k(W - L, nnz)
        error = float(torch.linalg.norm(W - L - S))
        if best is None or error < best[2] - 1e-15:
            best = (S, L, error)
        elif error >= best[2]:
            break
    return best


def robust_pca(W: torch.Tensor, lam: float | None = None, tol: float = 1e-7, max_iter: int = 500):
    """Principal component pursuit by the inexact augmented Lagrangian method.

    Solves ``min ||L||_* + λ ||S||_1`` s.t. ``L + S = W`` (Candès et al. 2011; Lin, Chen, Ma
    2010). Returns ``(L, S)``. Cost: one SVD of ``W``'s size per iteration.
    """
    m, n = W.shape
    if lam is None:
        lam = 1.0 / math.sqrt(max(m, n))
    norm_fro = float(torch.linalg.norm(W)) or 1.0
    norm_two = float(torch.linalg.matrix_norm(W, ord=2)) or 1.0
    dual = W / max(norm_two, float(W.abs().max()) / lam)
    mu, mu_max, rho = 1.25 / norm_two, 1.25 / norm_two * 1e7, 1.5
    S = torch.zeros_like(W)
    L = torch.zeros_like(W)
    for _ in range(max_iter):
        u, s, vh = torch.linalg.svd(W - S + dual / mu, full_matrices=False)
        s = torch.clamp(s - 1.0 / mu, min=0.0)
        L = (u * s.to(W.dtype)) @ vh
        R = W - L + dual / mu
        mag = R.abs()
        S = R * torch.clamp(1.0 - (lam / mu) / mag.clamp_min(1e-300), min=0.0)
        Z = W - L - S
        dual = dual + mu * Z
        mu = min(mu * rho, mu_max)
        if float(torch.linalg.norm(Z)) / norm_fro < tol:
            break
    return L, S
