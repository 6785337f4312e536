"""The protocol every structured family implements (DESIGN.md §3, SPEC.md §1.2).

A :class:`StructuredMatrix` is an ``nn.Module`` that represents a matrix ``M`` of shape
``(out_features, in_features)`` -- the orientation of ``nn.Linear.weight`` -- and multiplies by it
with the family's fast algorithm:

* ``forward(x)``: ``x`` of shape ``(*, in_features)`` -> ``x @ M.T`` of shape ``(*, out_features)``
  (no conjugation for complex layers), never forming ``M``;
* ``to_dense()``: the exact ``M``, differentiable;
* ``transpose()`` / ``adjoint()``: structured operators for ``M^T`` / ``M^*`` that share this
  module's parameters and run the adjoint of the forward algorithm (transposition principle,
  SPEC.md §2.3);
* ``num_parameters`` and ``flops(batch)``: the counts of SPEC.md §1.7.

Subclasses implement ``_forward`` (2-D input ``(B, in)``), ``to_dense``, ``_matvec_flops`` and
``reset_parameters``; they may override ``_forward_transpose`` (2-D ``(B, out) -> (B, in)``,
computing ``y @ M``) with a direct kernel -- the default runs reverse-mode differentiation of
``_forward``, which is exactly the transposed algorithm. Families with a projection define a
classmethod ``from_dense(W, **options)``.

Constructor convention: ``__init__(self, in_features, out_features, *, <options>, device=None,
dtype=None)`` calling ``super().__init__(in_features, out_features, device=device, dtype=dtype,
**options)`` with the JSON-serialisable options needed to rebuild an instance whose parameters
and buffers have the same shapes (checkpoints rebuild layers from them, then load the state).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .dtypes import resolve_dtype
from .errors import check_int, describe


class StructuredMatrix(nn.Module):
    """Base class of all structured matrix families (see the module docstring)."""

    #: registry name of the family; set by :func:`structmat.core.registry.register`.
    family: str = ""
    #: optimiser hints read by ``structmat.param_groups``: glob patterns (on parameter names
    #: inside the family module) of parameters that get weight decay -- none by default, since
    #: decaying each factor of a product shrinks the matrix geometrically -- and per-parameter
    #: learning-rate multipliers (e.g. relaxed-permutation logits learn faster).
    weight_decay_patterns: tuple[str, ...] = ()
    lr_multipliers: dict[str, float] = {}

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features, minimum=1)
        self.out_features = check_int("out_features", out_features, minimum=1)
        dtype = resolve_dtype(dtype)
        # A zero-size buffer that follows .to()/.double()/device moves, so that dtype and device
        # are known even for families without floating-point parameters.
        self.register_buffer("_anchor", torch.empty(0, dtype=dtype, device=device), persistent=False)
        self.options: dict[str, Any] = dict(options)

    # ------------------------------------------------------------------ properties
    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def is_complex(self) -> bool:
        return self.dtype.is_complex

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def num_parameters(self) -> int:
        """Trainable scalars in the field (a complex parameter counts once per entry)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def flops(self, batch: int = 1) -> int:
        """Real additions + multiplications of one forward on ``batch`` rows (SPEC.md §1.7)."""
        batch = check_int("batch", batch, minimum=0)
        return batch * int(self._matvec_flops())

    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild this module's shapes: family, sizes, dtype, options."""
        return {
            "structure": self.family,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "dtype": str(self.dtype).replace("torch.", ""),
            "options": dict(self.options),
        }

    # ------------------------------------------------------------------ to implement
    def _forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} does not define _forward")

    def to_dense(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} does not define to_dense")

    def _matvec_flops(self) -> int:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} does not define _matvec_flops")

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        """``y @ M`` for ``y`` of shape ``(B, out)``: reverse mode of the forward algorithm.

        For the linear map ``f(x) = x M^T`` the vector-Jacobian product with cotangent ``g`` is
        ``g @ conj(M)`` (PyTorch's convention), so transpose mode is ``conj(vjp(conj(y)))``.
        Cost: one forward and one backward pass of the fast algorithm (SPEC.md §2.3).
        """
        x0 = torch.zeros(y.shape[0], self.in_features, dtype=self.dtype, device=y.device)
        _, vjp = torch.func.vjp(self._forward, x0)
        if self.is_complex:
            return vjp(y.conj())[0].conj()
        return vjp(y)[0]

    # ------------------------------------------------------------------ forward
    def _prepare_input(self, x: Any, features: int) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {describe(x)}")
        if x.dtype == torch.bool or not (x.is_floating_point() or x.is_complex()):
            raise TypeError(f"x: expected a floating-point or complex tensor, got {describe(x)}")
        if x.dim() == 0 or x.shape[-1] != features:
            raise ValueError(
                f"x: expected shape (*, {features}) (last dimension = {features}), "
                f"got shape {tuple(x.shape)}"
            )
        if x.dtype != self.dtype:
            if self.is_complex and not x.is_complex() and x.dtype == self.dtype.to_real():
                x = x.to(self.dtype)
            else:
                raise TypeError(
                    f"x: expected dtype {self.dtype} to match the layer (or its real counterpart "
                    f"for a complex layer), got {x.dtype}; convert the input or the layer"
                )
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._prepare_input(x, self.in_features)
        lead = x.shape[:-1]
        y = self._forward(x.reshape(-1, self.in_features))
        return y.reshape(*lead, self.out_features)

    def apply_transpose(self, y: torch.Tensor) -> torch.Tensor:
        """Transpose mode: ``y @ M`` for ``y`` of shape ``(*, out_features)``."""
        y = self._prepare_input(y, self.out_features)
        lead = y.shape[:-1]
        return self._forward_transpose(y.reshape(-1, self.out_features)).reshape(*lead, self.in_features)

    def apply_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Adjoint mode: ``y @ conj(M)`` for ``y`` of shape ``(*, out_features)``."""
        if not self.is_complex:
            return self.apply_transpose(y)
        y = self._prepare_input(y, self.out_features)
        return self.apply_transpose(y.conj()).conj()

    # ------------------------------------------------------------------ algebra
    def transpose(self) -> "StructuredMatrix":
        """A structured operator for ``M^T`` sharing this module's parameters."""
        return TransposedMatrix(self, conjugate=False)

    def adjoint(self) -> "StructuredMatrix":
        """A structured operator for ``M^*`` (``M^T`` for real layers) sharing parameters."""
        return TransposedMatrix(self, conjugate=self.is_complex)

    @property
    def T(self) -> "StructuredMatrix":
        return self.transpose()

    @property
    def H(self) -> "StructuredMatrix":
        return self.adjoint()

    def extra_repr(self) -> str:
        parts = [f"in_features={self.in_features}", f"out_features={self.out_features}"]
        parts += [f"{k}={v!r}" for k, v in self.options.items()]
        if self.dtype != torch.get_default_dtype():
            parts.append(f"dtype={self.dtype}")
        return ", ".join(parts)


class TransposedMatrix(StructuredMatrix):
    """``M^T`` (or ``M^*`` with ``conjugate=True``) of a structured matrix, as a view.

    Shares the parameters of ``base``; the forward runs ``base``'s transpose mode, so its cost is
    that of ``base``'s forward (transposition principle, SPEC.md §2.3).
    """

    def __init__(self, base: StructuredMatrix, conjugate: bool = False) -> None:
        super().__init__(base.out_features, base.in_features, device=base.device, dtype=base.dtype)
        self.base = base
        self.conjugate = bool(conjugate)
        self.family = f"{base.family}.{'H' if self.conjugate else 'T'}"

    @property
    def num_parameters(self) -> int:
        return self.base.num_parameters

    def _matvec_flops(self) -> int:
        return self.base._matvec_flops()

    def reset_parameters(self) -> None:
        """Resets the shared parameters of the underlying matrix."""
        self.base.reset_parameters()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conjugate:
            return self.base._forward_transpose(x.conj()).conj()
        return self.base._forward_transpose(x)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        if self.conjugate:
            return self.base._forward(y.conj()).conj()
        return self.base._forward(y)

    def to_dense(self) -> torch.Tensor:
        dense = self.base.to_dense().transpose(0, 1)
        return dense.conj() if self.conjugate else dense

    def transpose(self) -> StructuredMatrix:
        # (M^*)^T = conj(M)
        return _Conjugate(self.base) if self.conjugate else self.base

    def adjoint(self) -> StructuredMatrix:
        if self.conjugate or not self.is_complex:
            return self.base
        return _Conjugate(self.base)

    def config(self) -> dict[str, Any]:
        return {"transpose_of": self.base.config(), "conjugate": self.conjugate}

    def extra_repr(self) -> str:
        return f"{'adjoint' if self.conjugate else 'transpose'} of {self.base.family}"


class _Conjugate(StructuredMatrix):
    """Entrywise conjugate ``conj(M)`` of a complex structured matrix, as a view."""

    def __init__(self, base: StructuredMatrix) -> None:
        super().__init__(base.in_features, base.out_features, device=base.device, dtype=base.dtype)
        self.base = base
        self.family = f"{base.family}.conj"

    @property
    def num_parameters(self) -> int:
        return self.base.num_parameters

    def _matvec_flops(self) -> int:
        return self.base._matvec_flops()

    def reset_parameters(self) -> None:
        """Resets the shared parameters of the underlying matrix."""
        self.base.reset_parameters()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base._forward(x.conj()).conj()

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        return self.base._forward_transpose(y.conj()).conj()

    def to_dense(self) -> torch.Tensor:
        return self.base.to_dense().conj()

    def transpose(self) -> StructuredMatrix:
        return TransposedMatrix(self.base, conjugate=True)

    def adjoint(self) -> StructuredMatrix:
        return self.base.transpose()

    def config(self) -> dict[str, Any]:
        return {"conjugate_of": self.base.config()}
