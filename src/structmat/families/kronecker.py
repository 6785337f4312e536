"""Families ``kronecker`` (``A ⊗ B``) and ``btt`` (block tensor-train of rank ``r``) (SPEC.md §4.18).

* ``kronecker``: ``M[(p, j), (q, i)] = A[p, q] · B[j, i]`` with ``A`` of shape ``P × Q`` and ``B``
  of shape ``J × I``; ``y = vec(A X Bᵀ)`` for ``X`` the ``Q × I`` reshape of ``x``. Params
  ``PQ + JI``, ``QIJ + PQJ`` multiply-adds. Projection: the Van Loan--Pitsianis nearest Kronecker
  product (best rank-1 SVD of the rearranged matrix).
* ``btt``: the two-core block tensor-train of Qiu et al. ("Compute Better Spent", ICML 2024) =
  SPEC.md §4.17's canonical form with rank ``r``,
  ``M[(p, j), (q, i)] = Σ_{a<r} L[j, p, q, a] R[q, j, a, i]``; params and multiply-adds
  ``r (QJI + JPQ)``. Projection: rank-``r`` truncated SVD of every ``P × I`` slice (exact and
  optimal; SPEC.md §5.6 general form of Algorithm 1).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core import StructuredMatrix, register
from ..core.dtypes import mult_add_flops
from ..core.errors import check_int, check_matrix, describe
from ..core.init import uniform_
from ..core.registry import OptionRange, Sample
from ..core.sizes import ceil_div, divisors, pad_last, truncate_last
from .monarch import CanonicalMonarch, canonical_shape, default_nblocks


# ---------------------------------------------------------------------------- BTT
def _btt_samples():
    return [
        Sample(16, 16, {"nblocks": 4, "rank": 2}),
        Sample(12, 20, {"nblocks": 3, "rank": 3}),
        Sample(37, 101, {"nblocks": 5, "rank": 2}),
        Sample(30, 30),
        Sample(1, 1),
    ]


def _btt_ladder(in_features: int, out_features: int) -> OptionRange:
    nblocks = default_nblocks(in_features, out_features)
    P, J, Q, I = canonical_shape(in_features, out_features, nblocks)
    return OptionRange("rank", range(1, min(P, I) + 1), nblocks=nblocks)


@register(
    "btt",
    samples=_btt_samples,
    params_formula="r·(QJI + JPQ) with P = Q = nblocks, J = ⌈m/nblocks⌉, I = ⌈n/nblocks⌉",
    flops_formula="2·r·(QJI + JPQ)",
    size_ladder=_btt_ladder,
)
class BlockTensorTrain(CanonicalMonarch):
    """Two-core block tensor-train of rank ``r`` (Qiu et al., ICML 2024; SPEC.md §4.17--4.18).

    ``M[(p, j), (q, i)] = Σ_{a<r} L[j, p, q, a] R[q, j, a, i]``: ``R`` is block-diagonal with
    ``Q`` blocks of shape ``(J r) × I``, ``L`` (after the reshape--transpose) block-diagonal with
    ``J`` blocks of shape ``P × (Q r)``. ``rank = 1`` is Monarch; ``rank = min(P, I)`` is dense.

    Args:
        nblocks: ``P = Q`` as for ``monarch`` (:func:`structmat.families.monarch.canonical_shape`).
        rank: ``r >= 1`` (default 2).

    Cost ``r (QJI + JPQ)`` multiply-adds per row and as many parameters.

    Example::

        >>> BlockTensorTrain(256, 256, nblocks=16, rank=2).num_parameters
        16384
    """

    def __init__(self, in_features: int, out_features: int, *, nblocks: int | None = None, rank: int = 2, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, nblocks=nblocks, rank=rank, device=device, dtype=dtype)
        self.options["rank"] = self.rank

    @classmethod
    def from_dense(cls, W: torch.Tensor, nblocks: int | None = None, rank: int = 2) -> "BlockTensorTrain":
        """The closest rank-``r`` BTT to ``W`` in Frobenius norm: truncated SVD of every ``P × I``
        slice ``Ã[:, j, q, :]`` (SPEC.md §4.18, §5.6). Error² = the discarded ``σ_t²``, ``t > r``."""
        return cls._project(W, nblocks=nblocks, rank=rank)


# ---------------------------------------------------------------------------- Kronecker
def default_factor(n: int) -> int:
    """``⌈√n⌉``: the outer factor's size along a dimension of length ``n``."""
    return math.isqrt(n - 1) + 1


def _check_outer_shape(outer_shape, in_features: int, out_features: int) -> tuple[int, int]:
    if outer_shape is None:
        return default_factor(out_features), default_factor(in_features)
    if not isinstance(outer_shape, (tuple, list)) or len(outer_shape) != 2:
        raise TypeError(f"outer_shape: expected a pair (P, Q) of integers, got {describe(outer_shape)}")
    P = check_int("outer_shape[0]", outer_shape[0], minimum=1, maximum=out_features)
    Q = check_int("outer_shape[1]", outer_shape[1], minimum=1, maximum=in_features)
    return P, Q


def _kronecker_samples():
    return [
        Sample(12, 15, {"outer_shape": [3, 4]}),
        Sample(16, 16),
        Sample(37, 101, {"outer_shape": [7, 5]}),
        Sample(1, 1),
    ]


def _kronecker_ladder(in_features: int, out_features: int) -> list[dict]:
    candidates = {(default_factor(out_features), default_factor(in_features))}
    candidates |= {(P, Q) for P in divisors(out_features) for Q in divisors(in_features)}
    counts = sorted(
        (P * Q + ceil_div(out_features, P) * ceil_div(in_features, Q), P, Q) for P, Q in candidates
    )
    return [{"outer_shape": [P, Q]} for _, P, Q in counts]


@register(
    "kronecker",
    samples=_kronecker_samples,
    params_formula="PQ + JI with A: P×Q, B: J×I, J = ⌈m/P⌉, I = ⌈n/Q⌉",
    flops_formula="2·(QIJ + PQJ)",
    size_ladder=_kronecker_ladder,
)
class Kronecker(StructuredMatrix):
    """Kronecker product ``M = A ⊗ B`` (SPEC.md §1.1, §4.18): ``M[(p,j),(q,i)] = A[p,q] B[j,i]``.

    Args:
        outer_shape: ``(P, Q)``, the shape of ``A`` (``P <= out_features``, ``Q <= in_features``);
            ``B`` has shape ``(⌈out/P⌉, ⌈in/Q⌉)``. Default ``(⌈√out⌉, ⌈√in⌉)``. Sizes that ``P``,
            ``Q`` do not divide are zero-padded (SPEC.md §1.6).

    Multiply: ``y = vec(A X Bᵀ)`` with ``X`` the ``Q × I`` reshape of ``x``: ``QIJ + PQJ``
    multiply-adds per row; parameters ``PQ + JI``. Initialisation: ``A`` and ``B`` uniform with
    ``nn.Linear``'s bound for fan-ins ``Q`` and ``I`` times ``√3`` each, so entries of ``M`` have
    ``nn.Linear``'s variance ``1/(3n)`` (``n = in_features``).

    Example::

        >>> Kronecker(64, 64, outer_shape=(8, 8)).num_parameters
        128
    """

    def __init__(self, in_features: int, out_features: int, *, outer_shape=None, device=None, dtype=None) -> None:
        in_features = check_int("in_features", in_features, minimum=1)
        out_features = check_int("out_features", out_features, minimum=1)
        P, Q = _check_outer_shape(outer_shape, in_features, out_features)
        super().__init__(in_features, out_features, device=device, dtype=dtype, outer_shape=[P, Q])
        J, I = ceil_div(out_features, P), ceil_div(in_features, Q)
        self.outer = nn.Parameter(torch.empty(P, Q, device=device, dtype=self.dtype))
        self.inner = nn.Parameter(torch.empty(J, I, device=device, dtype=self.dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Var(A) Var(B) = 1 / (3 n): split as Var(A) = 1/Q and Var(B) = Q / (3 n)
        Q = self.outer.shape[1]
        uniform_(self.outer, math.sqrt(3.0 / Q))
        uniform_(self.inner, math.sqrt(Q / self.in_features))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        (P, Q), (J, I) = self.outer.shape, self.inner.shape
        X = pad_last(x, Q * I).reshape(-1, Q, I)
        Y = torch.matmul(self.outer, X @ self.inner.transpose(0, 1))  # (B, P, J)
        return truncate_last(Y.reshape(-1, P * J), self.out_features)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        (P, Q), (J, I) = self.outer.shape, self.inner.shape
        Y = pad_last(y, P * J).reshape(-1, P, J)
        X = torch.matmul(self.outer.transpose(0, 1), Y @ self.inner)  # (B, Q, I)
        return truncate_last(X.reshape(-1, Q * I), self.in_features)

    def to_dense(self) -> torch.Tensor:
        return torch.kron(self.outer, self.inner)[: self.out_features, : self.in_features]

    def _matvec_flops(self) -> int:
        (P, Q), (J, I) = self.outer.shape, self.inner.shape
        return mult_add_flops(Q * I * J + P * Q * J, self.dtype)

    @classmethod
    def from_dense(cls, W: torch.Tensor, outer_shape=None, iterations: int = 100) -> "Kronecker":
        """Nearest Kronecker product ``A ⊗ B`` to ``W`` (Van Loan--Pitsianis, SPEC.md §4.18).

        Rearrange ``𝓡(W)[(p, q), (j, i)] = W[(p, j), (q, i)]``, so that ``𝓡(A ⊗ B) = vec(A) vec(B)ᵀ``;
        the best rank-1 SVD term ``σ₁ u₁ v₁*`` gives ``vec(A) = σ₁ u₁``, ``vec(B) = v₁*``. When
        ``P`` and ``Q`` divide the sizes this is the exact optimum, with error²
        ``= Σ_{t ≥ 2} σ_t(𝓡(W))²``. Otherwise the padded entries are unobserved: the SVD of the
        zero-filled rearrangement starts ``iterations`` sweeps of alternating least squares on the
        observed entries only (each sweep does not increase the error; exact for members).
        """
        W = check_matrix("W", W).detach()
        m, n = W.shape
        layer = cls(n, m, outer_shape=outer_shape, device=W.device, dtype=W.dtype)
        (P, Q), (J, I) = layer.outer.shape, layer.inner.shape
        padded = torch.nn.functional.pad(W, (0, Q * I - n, 0, P * J - m))
        rearranged = padded.reshape(P, J, Q, I).permute(0, 2, 1, 3).reshape(P * Q, J * I)
        u, s, vh = torch.linalg.svd(rearranged, full_matrices=False)
        a, b = u[:, 0] * s[0].to(W.dtype), vh[0]
        if P * J != m or Q * I != n:
            observed = torch.zeros(P * J, Q * I, dtype=W.real.dtype, device=W.device)
            observed[:m, :n] = 1
            mask = observed.reshape(P, J, Q, I).permute(0, 2, 1, 3).reshape(P * Q, J * I)
            a, b = _masked_rank_one(rearranged, mask, a, b, check_int("iterations", iterations, minimum=0))
        with torch.no_grad():
            layer.outer.copy_(a.reshape(P, Q))
            layer.inner.copy_(b.reshape(J, I))
        return layer


def _masked_rank_one(target: torch.Tensor, mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor, iterations: int):
    """Alternating least squares for ``min Σ mask · |target − a bᵀ|²`` from ``(a, b)``.

    Each half-step is the exact minimiser over ``a`` (resp. ``b``) with the other fixed, so the
    masked error never increases. Cost ``O(iterations · size(target))``.
    """
    weighted = mask * target
    for _ in range(iterations):
        denominator = mask @ (b.abs() ** 2)
        a = torch.where(denominator > 0, (weighted @ b.conj()) / denominator.clamp_min(1e-300), torch.zeros_like(a))
        denominator = mask.transpose(0, 1) @ (a.abs() ** 2)
        b = torch.where(
            denominator > 0,
            (weighted.transpose(0, 1) @ a.conj()) / denominator.clamp_min(1e-300),
            torch.zeros_like(b),
        )
    return a, b
