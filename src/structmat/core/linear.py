"""``StructuredLinear``: the one ``nn.Linear`` drop-in for every family (DESIGN.md §2).

It lives in ``core`` (not ``nn``) because the exact constructions (``families.transforms``) and
the compiler (``compile``), which sit below ``nn``, return it; ``structmat.nn`` re-exports it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import registry
from .base import StructuredMatrix
from .errors import check_int, describe
from .init import linear_bound, uniform_


class StructuredLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` a structured matrix of the family ``structure``.

    Args:
        in_features, out_features: sizes, as in ``nn.Linear`` (any positive integers).
        structure: a registered family name (``structmat.families()``).
        bias: learn an additive bias of shape ``(out_features,)``.
        device, dtype: as in ``nn.Linear``; complex dtypes give complex layers.
        params: optional parameter budget for the structured weight -- an int (count) or a float
            in (0, 1] (fraction of ``in_features * out_features``); picks the family's size
            options (rank, blocks, nonzeros, ...) with the most parameters within the budget.
        **options: family options (see ``structmat families``).

    Shapes: ``x`` is ``(*, in_features)``, the output ``(*, out_features)``.
    Cost: the family's fast multiply plus ``out_features`` additions per row for the bias.

    Example::

        >>> layer = StructuredLinear(1024, 1024, "monarch", nblocks=32)
        >>> layer(torch.randn(8, 1024)).shape
        torch.Size([8, 1024])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        structure: str = "dense",
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        params: int | float | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        in_features = check_int("in_features", in_features, minimum=1)
        out_features = check_int("out_features", out_features, minimum=1)
        info = registry.get(structure)
        info.validate_options(options)
        if params is not None:
            options = registry.options_for_budget(info.name, in_features, out_features, params, dtype=dtype, **options)
        matrix = info.create(in_features, out_features, device=device, dtype=dtype, **options)
        self._setup(matrix, bias)

    def _setup(self, matrix: StructuredMatrix, bias: bool | torch.Tensor) -> None:
        self.matrix = matrix
        if isinstance(bias, torch.Tensor):
            if bias.shape != (matrix.out_features,):
                raise ValueError(f"bias: expected shape ({matrix.out_features},), got {tuple(bias.shape)}")
            self.bias = nn.Parameter(bias.detach().to(device=matrix.device, dtype=matrix.dtype).clone())
        elif isinstance(bias, bool):
            if bias:
                self.bias = nn.Parameter(torch.empty(matrix.out_features, device=matrix.device, dtype=matrix.dtype))
                self._reset_bias()
            else:
                self.register_parameter("bias", None)
        else:
            raise TypeError(f"bias: expected a bool or a tensor, got {describe(bias)}")

    @classmethod
    def from_matrix(cls, matrix: StructuredMatrix, bias: bool | torch.Tensor = False) -> "StructuredLinear":
        """Wrap an existing :class:`StructuredMatrix` (no copy) as a layer, optionally with bias."""
        if not isinstance(matrix, StructuredMatrix):
            raise TypeError(f"matrix: expected a StructuredMatrix, got {describe(matrix)}")
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer._setup(matrix, bias)
        return layer

    # ------------------------------------------------------------------ nn.Linear-like API
    @property
    def in_features(self) -> int:
        return self.matrix.in_features

    @property
    def out_features(self) -> int:
        return self.matrix.out_features

    @property
    def structure(self) -> str:
        return self.matrix.family

    @property
    def options(self) -> dict:
        return self.matrix.options

    @property
    def dtype(self) -> torch.dtype:
        return self.matrix.dtype

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    @property
    def num_parameters(self) -> int:
        """Trainable parameters of the structured weight (bias excluded)."""
        return self.matrix.num_parameters

    def flops(self, batch: int = 1) -> int:
        """Real additions + multiplications of one forward on ``batch`` rows, bias included."""
        batch = check_int("batch", batch, minimum=0)
        bias_flops = 0 if self.bias is None else batch * self.out_features * (2 if self.dtype.is_complex else 1)
        return self.matrix.flops(batch) + bias_flops

    def to_dense(self) -> torch.Tensor:
        """The weight ``W`` of shape ``(out_features, in_features)``, differentiable."""
        return self.matrix.to_dense()

    def transpose(self) -> StructuredMatrix:
        """Structured ``W^T`` (bias dropped), sharing parameters."""
        return self.matrix.transpose()

    def adjoint(self) -> StructuredMatrix:
        """Structured ``W^*`` (bias dropped), sharing parameters."""
        return self.matrix.adjoint()

    def config(self) -> dict:
        cfg = self.matrix.config()
        cfg["bias"] = self.bias is not None
        return cfg

    def _reset_bias(self) -> None:
        # nn.Linear's U(-1/sqrt(fan_in), 1/sqrt(fan_in)); complex biases keep that variance
        uniform_(self.bias, linear_bound(self.in_features))

    def reset_parameters(self) -> None:
        self.matrix.reset_parameters()
        if self.bias is not None:
            self._reset_bias()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.matrix(x)
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return f"structure={self.structure!r}, bias={self.bias is not None}"

    def __getattr__(self, name: str) -> Any:
        # Parameters/buffers/submodules first (nn.Module), then family attributes such as
        # ``.width``/``.expansion`` of a kaleidoscope layer.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name == "matrix":
                raise
            matrix = self._modules.get("matrix")
            if matrix is None:
                raise
            return getattr(matrix, name)
