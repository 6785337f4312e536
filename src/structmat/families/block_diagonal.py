"""Family ``block_diagonal``: ``k`` dense blocks on the diagonal, optionally followed by a fixed
channel shuffle (SPEC.md §4.17: the factors ``𝓑𝓓^{(b,n)}`` of Monarch matrices).

``M = S_{out} T B S_{in}ᵀ`` with ``B = blockdiag(B_0, …, B_{k-1})`` (blocks ``⌈out/k⌉ × ⌈in/k⌉``),
zero padding/truncation ``S`` (SPEC.md §1.6) and, with ``shuffle=True``, the reshape--transpose
``T = T_{k, ⌈out/k⌉}`` (ShuffleNet's channel shuffle: output ``c`` of group ``g`` goes to position
``c·k + g``), which lets a following block-diagonal layer mix the groups. Params and multiply-adds
``k ⌈out/k⌉ ⌈in/k⌉``. Projection: keep the entries of ``W`` on the block support (optimal).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core import StructuredMatrix, register
from ..core.dtypes import mult_add_flops
from ..core.errors import check_int, check_matrix, describe
from ..core.init import uniform_
from ..core.registry import Sample
from ..core.sizes import ceil_div, pad_last, truncate_last
from ..ops.blockdiag import block_diagonal_multiply, block_diagonal_multiply_transpose, block_diagonal_to_dense

DEFAULT_NBLOCKS = 4


def _samples():
    return [
        Sample(12, 20, {"nblocks": 4, "shuffle": True}),
        Sample(16, 16, {"nblocks": 4}),
        Sample(37, 101, {"nblocks": 5}),
        Sample(9, 7, {"nblocks": 3, "shuffle": True}),
        Sample(1, 1),
    ]


def _ladder(in_features: int, out_features: int) -> list[dict]:
    counts = sorted(
        (k * ceil_div(out_features, k) * ceil_div(in_features, k), -k) for k in range(1, max(in_features, out_features) + 1)
    )
    return [{"nblocks": -k} for _, k in counts]


@register(
    "block_diagonal",
    samples=_samples,
    params_formula="k·⌈m/k⌉·⌈n/k⌉ (k = nblocks)",
    flops_formula="2·k·⌈m/k⌉·⌈n/k⌉",
    size_ladder=_ladder,
)
class BlockDiagonal(StructuredMatrix):
    """Block-diagonal matrix with ``nblocks`` dense blocks, optionally channel-shuffled.

    Args:
        nblocks: ``k`` in ``[1, max(in_features, out_features)]``; default
            ``min(4, in_features, out_features)``.
        shuffle: apply the fixed channel shuffle ``T_{k, ⌈out/k⌉}`` to the output (default off).

    Shapes ``(*, in) -> (*, out)``; one batched matmul. Initialisation: ``nn.Linear``'s
    ``U(±1/√fan_in)`` per block (fan-in ``⌈in/k⌉``), so activations keep ``nn.Linear``'s variance.

    Example::

        >>> BlockDiagonal(64, 64, nblocks=4).num_parameters
        1024
    """

    def __init__(self, in_features: int, out_features: int, *, nblocks: int | None = None, shuffle: bool = False, device=None, dtype=None) -> None:
        in_features = check_int("in_features", in_features, minimum=1)
        out_features = check_int("out_features", out_features, minimum=1)
        if nblocks is None:
            nblocks = min(DEFAULT_NBLOCKS, in_features, out_features)
        nblocks = check_int("nblocks", nblocks, minimum=1, maximum=max(in_features, out_features))
        if not isinstance(shuffle, bool):
            raise TypeError(f"shuffle: expected a bool, got {describe(shuffle)}")
        super().__init__(in_features, out_features, device=device, dtype=dtype, nblocks=nblocks, shuffle=shuffle)
        self.nblocks, self.shuffle = nblocks, shuffle
        self.blocks = nn.Parameter(
            torch.empty(nblocks, ceil_div(out_features, nblocks), ceil_div(in_features, nblocks), device=device, dtype=self.dtype)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        uniform_(self.blocks, 1.0 / math.sqrt(self.blocks.shape[2]))

    def _shuffle(self, y: torch.Tensor) -> torch.Tensor:
        """``(B, k·o) -> (B, o·k)``: entry ``(g, c)`` moves to ``(c, g)``."""
        k, o = self.blocks.shape[:2]
        return y.reshape(-1, k, o).transpose(1, 2).reshape(-1, k * o)

    def _unshuffle(self, y: torch.Tensor) -> torch.Tensor:
        k, o = self.blocks.shape[:2]
        return y.reshape(-1, o, k).transpose(1, 2).reshape(-1, k * o)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        k, o, i = self.blocks.shape
        y = block_diagonal_multiply(pad_last(x, k * i), self.blocks)
        if self.shuffle:
            y = self._shuffle(y)
        return truncate_last(y, self.out_features)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        k, o, i = self.blocks.shape
        y = pad_last(y, k * o)
        if self.shuffle:
            y = self._unshuffle(y)
        return truncate_last(block_diagonal_multiply_transpose(y, self.blocks), self.in_features)

    def _padded_dense(self) -> torch.Tensor:
        dense = block_diagonal_to_dense(self.blocks)
        return self._shuffle(dense.transpose(0, 1)).transpose(0, 1) if self.shuffle else dense

    def to_dense(self) -> torch.Tensor:
        return self._padded_dense()[: self.out_features, : self.in_features]

    def _matvec_flops(self) -> int:
        return mult_add_flops(self.blocks.numel(), self.dtype)

    @classmethod
    def from_dense(cls, W: torch.Tensor, nblocks: int | None = None, shuffle: bool = False) -> "BlockDiagonal":
        """The entries of ``W`` on the (shuffled) block support: the Frobenius-nearest member."""
        W = check_matrix("W", W).detach()
        m, n = W.shape
        layer = cls(n, m, nblocks=nblocks, shuffle=shuffle, device=W.device, dtype=W.dtype)
        k, o, i = layer.blocks.shape
        padded = torch.nn.functional.pad(W, (0, k * i - n, 0, k * o - m))
        if shuffle:
            padded = layer._unshuffle(padded.transpose(0, 1)).transpose(0, 1)
        blocks = torch.diagonal(padded.reshape(k, o, k, i), dim1=0, dim2=2).permute(2, 0, 1)
        with torch.no_grad():
            layer.blocks.copy_(blocks)
        return layer
