"""Family ``vandermonde``: ``V[i, j] = a_i^j`` with learnable nodes ``a`` (SPEC.md §4.8).

``V x`` evaluates the polynomial with coefficients ``x`` at the nodes; ``Vᵀ u`` forms the power
sums ``Σ_i u_i a_i^j``. Both run as tiled direct evaluation (:mod:`structmat.ops.kernel_matrix`):
``O(m n)`` time per row at matrix-multiply speed, ``O(tile · n)`` memory, backward stable in
float32 — the ``O(n log² n)`` subproduct-tree algorithms are not (module docstring there).
Real nodes beyond ``|a| = 1`` make ``V`` overflow quickly; the forward warns when
``max |a_i|^{n-1}`` exceeds the dtype's range. Unit-circle nodes are well-conditioned
(``a_i = ω^i`` gives the DFT); the default nodes are Chebyshev points (real) or roots of unity
(complex).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from ..core import StructuredMatrix, register
from ..core.dtypes import mult_add_flops, real_dtype
from ..core.errors import describe
from ..core.registry import Sample
from ..ops.kernel_matrix import tiled_kernel_multiply


def vandermonde_rows(nodes: torch.Tensor, columns: int) -> torch.Tensor:
    """``[a_i^0, …, a_i^{columns-1}]`` for each node, by doubling: ``[a^0 … a^{w-1}]`` and the same
    times ``a^w`` make ``[a^0 … a^{2w-1}]`` (``log2(columns)`` steps of products, as fast as a
    cumulative product and as accurate). Exact at ``a = 0``; derivatives of every order are products
    too -- ``cumprod``'s backward divides by the node, which made second derivatives at nodes near
    zero wrong (a Chebyshev node of an odd count is ``cos(π/2) ≈ 6e-17``: Hessians off by 2 %)."""
    a = nodes[:, None]
    rows, power = torch.cat([torch.ones_like(a), a], dim=1), a * a  # (a^1 too: one column stays a function of a)
    while rows.shape[1] < columns:
        rows = torch.cat([rows, rows * power], dim=1)
        power = power * power
    return rows[:, :columns]


def default_nodes(count: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    """Chebyshev points ``cos(π(i + ½)/count)`` (real dtypes) or roots of unity ``e^{2πi k/count}``
    (complex dtypes)."""
    k = torch.arange(count, dtype=torch.float64, device=device)
    if dtype.is_complex:
        return torch.polar(torch.ones_like(k), 2 * math.pi * k / count).to(dtype)
    return torch.cos(math.pi * (k + 0.5) / count).to(dtype)


def warn_if_overflows(nodes: torch.Tensor, columns: int, name: str = "nodes") -> None:
    """Warn when ``max |a_i|^{columns-1}`` exceeds the largest finite value of the dtype."""
    if columns < 2 or nodes.numel() == 0 or nodes.device.type == "meta":
        return
    largest = float(nodes.detach().abs().max())
    limit = torch.finfo(real_dtype(nodes.dtype)).max
    if largest > 1 and (columns - 1) * math.log(largest) > math.log(limit):
        warnings.warn(
            f"{name}: the Vandermonde matrix overflows {nodes.dtype}: max |a_i|^(n-1) = "
            f"{largest:.4g}^{columns - 1} exceeds {limit:.3g}; keep |a_i| <= "
            f"{math.exp(math.log(limit) / (columns - 1)):.6g} or use a wider dtype",
            RuntimeWarning,
            stacklevel=3,
        )


def _samples():
    return [Sample(7, 5), Sample(5, 12), Sample(16, 16), Sample(1, 1)]


@register(
    "vandermonde",
    samples=_samples,
    params_formula="m (nodes)",
    flops_formula="2·m·n (tiled direct evaluation)",
    size_ladder=lambda m, n: [{}],
)
class Vandermonde(StructuredMatrix):
    """Vandermonde matrix ``V[i, j] = a_i^j`` (``i < m = out_features``, ``j < n = in_features``).

    Shapes ``x (B, n) -> (B, m)``: ``y_i = Σ_j x_j a_i^j``; cost ``m n`` multiply-adds per row
    plus ``m n`` products per call to form the powers tile by tile; ``m`` parameters.

    Example::

        >>> layer = Vandermonde.from_nodes(torch.tensor([0.0, 1.0, 2.0]), in_features=3)
        >>> layer.to_dense()
        tensor([[1., 0., 0.],
                [1., 1., 1.],
                [1., 2., 4.]])
    """

    def __init__(self, in_features: int, out_features: int, *, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, device=device, dtype=dtype)
        self.nodes = nn.Parameter(torch.empty(out_features, device=device, dtype=self.dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            if self.nodes.device.type != "meta":
                self.nodes.copy_(default_nodes(self.out_features, self.dtype, self.nodes.device))

    @classmethod
    def from_nodes(cls, nodes: torch.Tensor, in_features: int) -> "Vandermonde":
        """The ``(len(nodes), in_features)`` Vandermonde matrix of the given nodes."""
        if not isinstance(nodes, torch.Tensor) or nodes.dim() != 1 or nodes.numel() == 0:
            raise ValueError(f"nodes: expected a non-empty 1-D tensor, got {describe(nodes)}")
        dtype = nodes.dtype if (nodes.is_floating_point() or nodes.is_complex()) else None
        layer = cls(in_features, nodes.shape[0], device=nodes.device, dtype=dtype)
        with torch.no_grad():
            layer.nodes.copy_(nodes)
        warn_if_overflows(layer.nodes, in_features)
        return layer

    def _tile(self, params, start: int, stop: int) -> torch.Tensor:
        return vandermonde_rows(params[0][start:stop], self.in_features)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            warn_if_overflows(self.nodes, self.in_features)
        return tiled_kernel_multiply(self._tile, [self.nodes], x, self.shape)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        return tiled_kernel_multiply(self._tile, [self.nodes], y, self.shape, transpose=True)

    def to_dense(self) -> torch.Tensor:
        return vandermonde_rows(self.nodes, self.in_features)

    def _matvec_flops(self) -> int:
        return mult_add_flops(self.in_features * self.out_features, self.dtype)
