"""``RealPart``: the real part ``Re(M)`` of a complex structured matrix, as a real operator.

The Butterfly paper fits real transforms (DCT, DST, Hartley, convolution) with complex BP/BPBP
models followed by a final real part (SPEC.md §4.15, §7.4): for a real input ``x``,
``Re(M x) = Re(M) x``. This view applies the complex fast algorithm of ``base`` and keeps the real
part, so the learned layer stays structured; its cost is that of ``base``'s forward.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.base import StructuredMatrix
from ..core.dtypes import real_dtype
from ..core.errors import describe


class RealPart(StructuredMatrix):
    """``Re(M)`` of a complex structured matrix ``M`` (shares ``base``'s parameters).

    Shapes: ``(*, in_features)`` real -> ``(*, out_features)`` real. Cost: one complex forward
    of ``base`` (transpose mode: one complex transpose of ``base``).

    Example::

        >>> op = RealPart(StructuredLinear(8, 8, "dense", dtype=torch.complex128, bias=False).matrix)
        >>> op(torch.randn(2, 8, dtype=torch.float64)).dtype
        torch.float64
    """

    family = "real_part"

    def __init__(self, base: StructuredMatrix) -> None:
        if not isinstance(base, StructuredMatrix) or not base.is_complex:
            raise TypeError(f"base: expected a complex StructuredMatrix, got {describe(base)}")
        super().__init__(base.in_features, base.out_features, device=base.device, dtype=real_dtype(base.dtype))
        self.base = base

    @property
    def num_parameters(self) -> int:
        return self.base.num_parameters

    def _matvec_flops(self) -> int:
        return self.base._matvec_flops()

    def reset_parameters(self) -> None:
        """Resets the parameters of the complex operator."""
        self.base.reset_parameters()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base._forward(x.to(self.base.dtype)).real

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        return self.base._forward_transpose(y.to(self.base.dtype)).real

    def to_dense(self) -> torch.Tensor:
        return self.base.to_dense().real

    def config(self) -> dict[str, Any]:
        return {"real_part_of": self.base.config()}

    def extra_repr(self) -> str:
        return f"real part of {self.base.family}"
