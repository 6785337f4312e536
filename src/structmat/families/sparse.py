"""Family ``sparse``: ``M`` supported on a fixed index set ``Ω`` with ``|Ω| = s`` (SPEC.md §4.3).

Params ``s`` values (+ the fixed indices, stored as buffers); matvec ``s`` multiply-adds by
gather -> multiply -> scatter-add (:mod:`structmat.ops.sparse`), never densifying; gradients
exist only for the stored entries. Projection: keep ``W`` on ``Ω`` (given mask) or the ``s``
largest-magnitude entries (optimal for a free support of size ``s``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..core import StructuredMatrix, register
from ..core.dtypes import mult_add_flops
from ..core.errors import check_int, check_matrix, describe
from ..core.init import uniform_
from ..core.registry import OptionRange, Sample
from ..ops.sparse import sparse_multiply, sparse_multiply_transpose, sparse_to_dense

DEFAULT_DENSITY = 0.1


def resolve_nnz(in_features: int, out_features: int, nnz: int | None, density: float | None) -> int:
    total = in_features * out_features
    if nnz is not None and density is not None:
        raise ValueError(f"nnz/density: give at most one of them, got nnz={nnz} and density={density}")
    if nnz is None:
        if density is None:
            density = DEFAULT_DENSITY
        if isinstance(density, bool) or not isinstance(density, (int, float)) or not (0.0 < float(density) <= 1.0):
            raise ValueError(f"density: expected a float in (0, 1], got {describe(density)}")
        nnz = max(1, round(float(density) * total))
    return check_int("nnz", nnz, minimum=1, maximum=total)


def _samples():
    return [Sample(37, 101, {"nnz": 400}), Sample(16, 16, {"density": 0.25}), Sample(5, 3), Sample(1, 1)]


@register(
    "sparse",
    samples=_samples,
    params_formula="s (nonzeros)",
    flops_formula="2·s",
    size_ladder=lambda m, n: OptionRange("nnz", range(1, m * n + 1)),
    tags=("baseline",),
)
class Sparse(StructuredMatrix):
    """Sparse matrix with a fixed support.

    Args:
        nnz: number of stored entries ``s`` (default ``10 %`` of ``m n``), or
        density: ``s / (m n)``, or
        mask: a boolean ``(out, in)`` tensor giving the support explicitly;
        seed: seed of the random support when no mask is given.

    The support is stored as buffers ``rows``/``cols`` (sorted row-major); ``values`` is the
    parameter. Example::

        >>> Sparse(100, 50, nnz=200).num_parameters
        200
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        nnz: int | None = None,
        density: float | None = None,
        mask: torch.Tensor | None = None,
        seed: int = 0,
        device=None,
        dtype=None,
    ) -> None:
        in_features = check_int("in_features", in_features, minimum=1)
        out_features = check_int("out_features", out_features, minimum=1)
        seed = check_int("seed", seed)
        if mask is not None:
            if not isinstance(mask, torch.Tensor):
                raise TypeError(f"mask: expected a boolean tensor of shape ({out_features}, {in_features}), got {describe(mask)}")
            if mask.shape != (out_features, in_features):
                raise ValueError(f"mask: expected a boolean tensor of shape ({out_features}, {in_features}), got {describe(mask)}")
            flat = mask.detach().reshape(-1).to("cpu").bool().nonzero().reshape(-1)
            if flat.numel() == 0:
                raise ValueError("mask: expected at least one True entry, got an all-False mask")
            nnz = flat.numel()
        else:
            nnz = resolve_nnz(in_features, out_features, nnz, density)
            if device is not None and torch.device(device).type == "meta":
                # shapes only (parameter budgets probe many sizes): skip the O(m n) permutation
                flat = torch.empty(nnz, dtype=torch.long, device="meta")
            else:
                generator = torch.Generator().manual_seed(seed)
                flat = torch.randperm(in_features * out_features, generator=generator)[:nnz].sort().values
        super().__init__(in_features, out_features, device=device, dtype=dtype, nnz=nnz, seed=seed)
        self.nnz = nnz
        self.register_buffer("rows", (flat // in_features).to(device))
        self.register_buffer("cols", (flat % in_features).to(device))
        self.values = nn.Parameter(torch.empty(nnz, device=device, dtype=self.dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # each output row sums about nnz / out entries: keep nn.Linear's output variance
        uniform_(self.values, 1.0 / max(1.0, self.nnz / self.out_features) ** 0.5)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return sparse_multiply(self.values, self.rows, self.cols, x, self.out_features)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        return sparse_multiply_transpose(self.values, self.rows, self.cols, y, self.in_features)

    def to_dense(self) -> torch.Tensor:
        return sparse_to_dense(self.values, self.rows, self.cols, (self.out_features, self.in_features))

    def _matvec_flops(self) -> int:
        return mult_add_flops(self.nnz, self.dtype)

    @classmethod
    def from_entries(cls, rows, cols, values, in_features: int, out_features: int) -> "Sparse":
        """The matrix with ``M[rows[t], cols[t]] = values[t]`` (distinct positions) and zeros
        elsewhere, built without an ``(out, in)`` mask: ``O(s log s)`` for ``s`` entries, so exact
        sparse factors of large sizes (e.g. the Haar levels of ``structmat.transforms``) are cheap.
        Device and dtype follow ``values``."""
        in_features = check_int("in_features", in_features, minimum=1)
        out_features = check_int("out_features", out_features, minimum=1)
        values = torch.as_tensor(values)
        rows = torch.as_tensor(rows, dtype=torch.long, device=values.device).reshape(-1)
        cols = torch.as_tensor(cols, dtype=torch.long, device=values.device).reshape(-1)
        if values.dim() != 1 or not (rows.numel() == cols.numel() == values.numel() >= 1):
            raise ValueError(
                f"rows/cols/values: expected three 1-D sequences of one length >= 1, got lengths {rows.numel()}, {cols.numel()}, {values.numel()}"
            )
        if bool((rows < 0).any() | (rows >= out_features).any() | (cols < 0).any() | (cols >= in_features).any()):
            raise ValueError(f"rows/cols: expected positions inside a ({out_features}, {in_features}) matrix, got rows {describe(rows)}, cols {describe(cols)}")
        flat, order = (rows * in_features + cols).sort()
        if bool((flat[1:] == flat[:-1]).any()):
            raise ValueError("rows/cols: expected distinct positions, got a repeated (row, col) pair")
        layer = cls(in_features, out_features, nnz=flat.numel(), device="meta", dtype=values.dtype).to_empty(device=values.device)
        layer.rows.copy_(rows[order])
        layer.cols.copy_(cols[order])
        with torch.no_grad():
            layer.values.copy_(values[order])
        return layer

    @classmethod
    def from_dense(cls, W: torch.Tensor, nnz: int | None = None, density: float | None = None, mask: torch.Tensor | None = None) -> "Sparse":
        """Keep ``W`` on ``mask``, or its ``nnz`` largest-magnitude entries (optimal, SPEC.md §4.3)."""
        W = check_matrix("W", W)
        m, n = W.shape
        if mask is None:
            k = resolve_nnz(n, m, nnz, density)
            flat = torch.topk(W.detach().abs().reshape(-1), k).indices.sort().values
            mask = torch.zeros(m * n, dtype=torch.bool, device=W.device)
            mask[flat] = True
            mask = mask.reshape(m, n)
        layer = cls(n, m, mask=mask, device=W.device, dtype=W.dtype)
        with torch.no_grad():
            layer.values.copy_(W[layer.rows, layer.cols])
        return layer
