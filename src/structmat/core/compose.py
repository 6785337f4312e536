"""Operator algebra: products and sums of structured matrices (CoLA-style composition).

Families and exact constructions compose existing operators instead of special-casing them:

* :class:`Product` ``(F_L, ..., F_1)`` is ``M = F_L ⋯ F_1`` (matrix-multiplication order, so the
  rightmost factor is applied first, SPEC.md §1.2); cost = sum of the factors' costs;
* :class:`Sum` ``(A, B, ...)`` is ``M = A + B + ...``; cost = sum of costs plus the additions;
* :class:`RealPart` ``(M)`` is the real layer ``x -> Re(M x)`` of a complex operator ``M`` (real
  input, real output): real transforms built from complex factors (DCT/DST/Hartley via the FFT,
  SPEC.md §6.4--6.5; BPBP "with a final real part", §4.15);
* :class:`KroneckerProduct` ``(A, B)`` is ``A ⊗ B`` applied as ``vec(A X Bᵀ)`` with each factor's
  fast algorithm (SPEC.md §4.18, §6.8); cost ``Q·cost(B) + J·cost(A)``;
* :class:`DirectSum` ``(A_1, ..., A_k)`` is the block-diagonal ``A_1 ⊕ ⋯ ⊕ A_k``; cost = sum of costs;
* :class:`LowRankSchurProduct` ``(A, U, V)`` is the entrywise product ``A ∘ (U Vᵀ) = Σ_r diag(u_r) A
  diag(v_r)`` (a Toeplitz-Hankel-type operator when ``A`` is Toeplitz); cost ``r·cost(A) + O(r(m + n))``.

Both are :class:`StructuredMatrix` objects (transpose, adjoint, to_dense, counts, ``config()``),
so they can be wrapped by ``StructuredLinear.from_matrix``. :func:`build_from_config` rebuilds any
module -- registered family or composite -- from its ``config()``.

Example::

    >>> P = Product(Dense(8, 4), LowRank(16, 8, rank=2))   # (4 x 8) @ (8 x 16)
    >>> P(torch.randn(3, 16)).shape
    torch.Size([3, 4])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import StructuredMatrix
from .dtypes import complex_dtype, flop_scale, real_dtype
from .errors import describe


def _check_members(name: str, members) -> list[StructuredMatrix]:
    members = list(members)
    if not members:
        raise ValueError(f"{name}: expected at least one StructuredMatrix, got none")
    for m in members:
        if not isinstance(m, StructuredMatrix):
            raise TypeError(f"{name}: expected StructuredMatrix objects, got {describe(m)}")
    dtypes = {m.dtype for m in members}
    if len(dtypes) > 1:
        raise TypeError(f"{name}: expected factors of one dtype, got {sorted(str(d) for d in dtypes)}")
    return members


class Product(StructuredMatrix):
    """``M = F_L ⋯ F_2 F_1`` given as ``Product(F_L, ..., F_1)`` (``F_1`` applied first).

    Shapes must chain: ``F_{k+1}.in_features == F_k.out_features``. Parameters are shared with
    the factors (no copy).
    """

    family = "product"

    def __init__(self, *factors: StructuredMatrix) -> None:
        factors = _check_members("factors", factors)
        for left, right in zip(factors[:-1], factors[1:]):
            if left.in_features != right.out_features:
                raise ValueError(
                    f"factors: shapes do not chain: a factor of shape {left.shape} cannot follow one of shape {right.shape}"
                )
        super().__init__(factors[-1].in_features, factors[0].out_features, device=factors[0].device, dtype=factors[0].dtype)
        self.factors = nn.ModuleList(factors)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        for factor in reversed(self.factors):
            x = factor._forward(x)
        return x

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        for factor in self.factors:
            y = factor._forward_transpose(y)
        return y

    def to_dense(self) -> torch.Tensor:
        dense = self.factors[-1].to_dense()
        for factor in reversed(self.factors[:-1]):
            dense = factor.to_dense() @ dense
        return dense

    def _matvec_flops(self) -> int:
        return sum(f._matvec_flops() for f in self.factors)

    def reset_parameters(self) -> None:
        """Resets every factor."""
        for f in self.factors:
            f.reset_parameters()

    def config(self) -> dict[str, Any]:
        return {"structure": "product", "factors": [f.config() for f in self.factors]}

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, factors={len(self.factors)}"


class Sum(StructuredMatrix):
    """``M = A_1 + ... + A_k`` of operators with equal shapes."""

    family = "sum"

    def __init__(self, *terms: StructuredMatrix) -> None:
        terms = _check_members("terms", terms)
        shapes = {t.shape for t in terms}
        if len(shapes) > 1:
            raise ValueError(f"terms: expected equal shapes, got {sorted(shapes)}")
        super().__init__(terms[0].in_features, terms[0].out_features, device=terms[0].device, dtype=terms[0].dtype)
        self.terms = nn.ModuleList(terms)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.terms[0]._forward(x)
        for term in self.terms[1:]:
            out = out + term._forward(x)
        return out

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        out = self.terms[0]._forward_transpose(y)
        for term in self.terms[1:]:
            out = out + term._forward_transpose(y)
        return out

    def to_dense(self) -> torch.Tensor:
        dense = self.terms[0].to_dense()
        for term in self.terms[1:]:
            dense = dense + term.to_dense()
        return dense

    def _matvec_flops(self) -> int:
        additions = (len(self.terms) - 1) * self.out_features * flop_scale(self.dtype)[1]
        return sum(t._matvec_flops() for t in self.terms) + additions

    def reset_parameters(self) -> None:
        """Resets every term."""
        for t in self.terms:
            t.reset_parameters()

    def config(self) -> dict[str, Any]:
        return {"structure": "sum", "terms": [t.config() for t in self.terms]}

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, terms={len(self.terms)}"


class RealPart(StructuredMatrix):
    """``x -> Re(M x)`` for real ``x``: the real matrix ``Re(M)`` of a complex operator ``M``.

    The layer is real (dtype = the real counterpart of ``M``'s); its input is promoted to ``M``'s
    complex dtype, ``M`` is applied with its fast algorithm and the imaginary part is dropped
    (SPEC.md §4.15, §6.4). For real ``x``, ``Re(M x) = Re(M) x``, so the layer is linear over the
    reals with matrix ``Re(M)``; its transpose is ``Re(M)^T = Re(M^T)``, computed as
    ``Re(M^T y)`` with ``M``'s own transpose mode (SPEC.md §2.3).

    Shapes: ``(B, M.in_features) -> (B, M.out_features)``. Cost: that of ``M`` on a complex row
    (the real part is free). Parameters: ``M``'s (complex ones count once, SPEC.md §1.7), shared.

    Example (the real part of the 4-point DFT is the cosine matrix ``cos(2π jk / 4)``)::

        >>> F = structmat.transforms.dft(4, dtype=torch.complex128).matrix
        >>> RealPart(F).to_dense().round()     # zeros up to rounding
        tensor([[ 1.,  1.,  1.,  1.],
                [ 1.,  0., -1.,  0.],
                [ 1., -1.,  1., -1.],
                [ 1.,  0., -1.,  0.]], dtype=torch.float64)
    """

    family = "real_part"

    def __init__(self, inner: StructuredMatrix) -> None:
        if not isinstance(inner, StructuredMatrix):
            raise TypeError(f"inner: expected a StructuredMatrix, got {describe(inner)}")
        if not inner.is_complex:
            raise TypeError(f"inner: expected a complex StructuredMatrix, got one of dtype {inner.dtype}")
        super().__init__(inner.in_features, inner.out_features, device=inner.device, dtype=real_dtype(inner.dtype))
        self.inner = inner

    def _apply(self, fn, recurse=True):
        # ``layer.to(torch.float64)`` / ``.double()`` on the real layer must move the complex
        # operator to the matching *complex* dtype; nn.Module's default would cast the complex
        # parameters to a real dtype and silently drop their imaginary parts.
        probe = fn(self._anchor)
        if not isinstance(probe, torch.Tensor) or probe.dtype == self._anchor.dtype or probe.dtype.is_complex:
            return super()._apply(fn, recurse)
        real, device = probe.dtype, probe.device
        complex_ = complex_dtype(real)

        def convert(t: torch.Tensor) -> torch.Tensor:
            if t.is_complex():
                return t.to(device=device, dtype=complex_)
            if t.is_floating_point():
                return t.to(device=device, dtype=real)
            return t.to(device=device)

        return super()._apply(convert, recurse)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner._forward(x.to(complex_dtype(x.dtype))).real

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        return self.inner._forward_transpose(y.to(complex_dtype(y.dtype))).real

    def to_dense(self) -> torch.Tensor:
        return self.inner.to_dense().real

    def _matvec_flops(self) -> int:
        return self.inner._matvec_flops()

    def reset_parameters(self) -> None:
        """Resets the complex operator."""
        self.inner.reset_parameters()

    def config(self) -> dict[str, Any]:
        return {"real_part_of": self.inner.config()}

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, real part of {self.inner.family}"


class KroneckerProduct(StructuredMatrix):
    """``M = A ⊗ B`` of two structured operators: ``M[(p, j), (q, i)] = A[p, q] · B[j, i]``
    (SPEC.md §4.18), shape ``(P·J, Q·I)`` for ``A`` of shape ``(P, Q)`` and ``B`` of ``(J, I)``.

    ``y = vec(A X Bᵀ)`` with ``X`` the row-major ``Q × I`` reshape of ``x``: ``B`` runs on the ``Q``
    rows of ``X`` and ``A`` on the ``J`` columns of ``X Bᵀ``, each with its own fast algorithm (never
    the dense ``M``); the transpose runs ``Aᵀ`` and ``Bᵀ`` the same way. Cost
    ``Q·cost(B) + J·cost(A)``; parameters those of ``A`` and ``B`` (shared, no copy).

    Example (the 2-D DFT ``F_3 ⊗ F_5`` on row-major ``vec(X)``, SPEC.md §6.8)::

        >>> F = KroneckerProduct(structmat.transforms.dft(3).matrix, structmat.transforms.dft(5).matrix)
        >>> F.shape
        (15, 15)
    """

    family = "kronecker_product"

    def __init__(self, outer: StructuredMatrix, inner: StructuredMatrix) -> None:
        outer, inner = _check_members("factors", (outer, inner))
        super().__init__(
            outer.in_features * inner.in_features, outer.out_features * inner.out_features, device=outer.device, dtype=outer.dtype
        )
        self.outer, self.inner = outer, inner

    @staticmethod
    def _apply_both(x: torch.Tensor, outer, inner, outer_in: int, inner_in: int) -> torch.Tensor:
        """``vec(outer(X) inner(.)ᵀ)``: ``inner`` on the rows of the ``outer_in × inner_in`` reshape, then ``outer`` on its columns."""
        batch = x.shape[0]
        rows = inner(x.reshape(batch * outer_in, inner_in))  # (batch·Q, J)
        inner_out = rows.shape[-1]
        columns = rows.reshape(batch, outer_in, inner_out).transpose(1, 2).reshape(batch * inner_out, outer_in)
        out = outer(columns)  # (batch·J, P)
        return out.reshape(batch, inner_out, -1).transpose(1, 2).reshape(batch, -1)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply_both(x, self.outer._forward, self.inner._forward, self.outer.in_features, self.inner.in_features)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        return self._apply_both(
            y, self.outer._forward_transpose, self.inner._forward_transpose, self.outer.out_features, self.inner.out_features
        )

    def to_dense(self) -> torch.Tensor:
        return torch.kron(self.outer.to_dense().contiguous(), self.inner.to_dense().contiguous())

    def _matvec_flops(self) -> int:
        return self.outer.in_features * self.inner._matvec_flops() + self.inner.out_features * self.outer._matvec_flops()

    def reset_parameters(self) -> None:
        """Resets both factors."""
        self.outer.reset_parameters()
        self.inner.reset_parameters()

    def config(self) -> dict[str, Any]:
        return {"structure": "kronecker_product", "kronecker_factors": [self.outer.config(), self.inner.config()]}

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class DirectSum(StructuredMatrix):
    """Block-diagonal ``M = A_1 ⊕ ⋯ ⊕ A_k``: block ``A_t`` maps its slice of the input to its slice of
    the output (slices in order). Shape ``(Σ m_t, Σ n_t)``; cost and parameters the sum of the
    blocks' (an identity block, ``Permutation`` of kind ``"identity"``, is free).
    """

    family = "direct_sum"

    def __init__(self, *blocks: StructuredMatrix) -> None:
        blocks = _check_members("blocks", blocks)
        super().__init__(
            sum(b.in_features for b in blocks), sum(b.out_features for b in blocks), device=blocks[0].device, dtype=blocks[0].dtype
        )
        self.blocks = nn.ModuleList(blocks)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        pieces = x.split([b.in_features for b in self.blocks], dim=-1)
        return torch.cat([b._forward(piece) for b, piece in zip(self.blocks, pieces)], dim=-1)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        pieces = y.split([b.out_features for b in self.blocks], dim=-1)
        return torch.cat([b._forward_transpose(piece) for b, piece in zip(self.blocks, pieces)], dim=-1)

    def to_dense(self) -> torch.Tensor:
        return torch.block_diag(*[b.to_dense() for b in self.blocks])

    def _matvec_flops(self) -> int:
        return sum(b._matvec_flops() for b in self.blocks)

    def reset_parameters(self) -> None:
        """Resets every block."""
        for b in self.blocks:
            b.reset_parameters()

    def config(self) -> dict[str, Any]:
        return {"structure": "direct_sum", "blocks": [b.config() for b in self.blocks]}

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, blocks={len(self.blocks)}"


class LowRankSchurProduct(StructuredMatrix):
    """``M = A ∘ (U Vᵀ) = Σ_{r<R} diag(u_r) A diag(v_r)``: the entrywise (Schur) product of a structured
    operator ``A`` (shape ``(m, n)``) with the rank-``R`` matrix ``U Vᵀ``, ``U = left`` of shape
    ``(m, R)`` and ``V = right`` of shape ``(n, R)`` (trainable, ``A``'s dtype).

    Forward: the ``R`` scaled copies ``v_r ⊙ x`` go through ``A``'s fast algorithm as one batch,
    then ``y = Σ_r u_r ⊙ A(v_r ⊙ x)``; the transpose is ``Σ_r v_r ⊙ Aᵀ(u_r ⊙ y)``. Cost
    ``R·cost(A) + R(m + n)`` multiplications and ``(R − 1) m`` additions per row; parameters
    ``A``'s plus ``R(m + n)``. With ``A`` Toeplitz and ``U Vᵀ`` the low-rank approximation of a
    Hankel matrix this is the Toeplitz-Hankel form of polynomial connection matrices
    (Townsend, Webb and Olver, Math. Comp. 2018), used by ``structmat.transforms.legendre``.
    """

    family = "low_rank_schur_product"

    def __init__(self, base: StructuredMatrix, left: torch.Tensor, right: torch.Tensor) -> None:
        (base,) = _check_members("base", (base,))
        for name, factor, rows in (("left", left, base.out_features), ("right", right, base.in_features)):
            if not isinstance(factor, torch.Tensor) or factor.dim() != 2 or factor.shape[0] != rows or factor.shape[1] < 1:
                raise ValueError(f"{name}: expected a tensor of shape ({rows}, rank >= 1), got {describe(factor)}")
        if left.shape[1] != right.shape[1]:
            raise ValueError(f"left/right: expected the same rank, got {left.shape[1]} and {right.shape[1]}")
        super().__init__(base.in_features, base.out_features, device=base.device, dtype=base.dtype)
        self.base = base
        self.rank = left.shape[1]
        self.left = nn.Parameter(left.detach().to(device=base.device, dtype=base.dtype).clone())
        self.right = nn.Parameter(right.detach().to(device=base.device, dtype=base.dtype).clone())

    @staticmethod
    def _modulated(x: torch.Tensor, apply, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        copies = (x[:, None, :] * before.T).reshape(batch * before.shape[1], -1)
        out = apply(copies).reshape(batch, before.shape[1], -1)
        return (out * after.T).sum(dim=1)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._modulated(x, self.base._forward, self.right, self.left)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        return self._modulated(y, self.base._forward_transpose, self.left, self.right)

    def to_dense(self) -> torch.Tensor:
        return self.base.to_dense() * (self.left @ self.right.T)

    def _matvec_flops(self) -> int:
        mul, add = flop_scale(self.dtype)
        scalings = self.rank * (self.in_features + self.out_features) * mul
        return self.rank * self.base._matvec_flops() + scalings + (self.rank - 1) * self.out_features * add

    def reset_parameters(self) -> None:
        """Resets ``A``; ``U`` and ``V`` keep their values (they define the operator, like a permutation)."""
        self.base.reset_parameters()

    def config(self) -> dict[str, Any]:
        return {"structure": "low_rank_schur_product", "schur_of": self.base.config(), "rank": self.rank}

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def build_from_config(config: dict[str, Any], device=None, dtype: torch.dtype | None = None) -> StructuredMatrix:
    """Rebuild a module (registered family, :class:`Product`, :class:`Sum`, :class:`RealPart`,
    :class:`KroneckerProduct`, :class:`DirectSum`, :class:`LowRankSchurProduct`,
    transpose/adjoint views) with the shapes described by ``config`` (its ``config()``); load the state afterwards.
    """
    from . import registry

    if not isinstance(config, dict):
        raise TypeError(f"config: expected a dict from StructuredMatrix.config(), got {describe(config)}")
    if "factors" in config:
        return Product(*[build_from_config(c, device, dtype) for c in config["factors"]])
    if "terms" in config:
        return Sum(*[build_from_config(c, device, dtype) for c in config["terms"]])
    if "kronecker_factors" in config:
        return KroneckerProduct(*[build_from_config(c, device, dtype) for c in config["kronecker_factors"]])
    if "schur_of" in config:
        base = build_from_config(config["schur_of"], device, dtype)
        zeros = lambda rows: torch.zeros(rows, int(config["rank"]), dtype=base.dtype, device=base.device)  # noqa: E731
        return LowRankSchurProduct(base, zeros(base.out_features), zeros(base.in_features))
    if "blocks" in config:
        return DirectSum(*[build_from_config(c, device, dtype) for c in config["blocks"]])
    if "real_part_of" in config:
        inner_dtype = None if dtype is None else complex_dtype(dtype)
        return RealPart(build_from_config(config["real_part_of"], device, inner_dtype))
    if "transpose_of" in config:
        base = build_from_config(config["transpose_of"], device, dtype)
        return base.adjoint() if config.get("conjugate") else base.transpose()
    if "conjugate_of" in config:
        return build_from_config(config["conjugate_of"], device, dtype).transpose().adjoint()
    try:
        structure, n_in, n_out = config["structure"], config["in_features"], config["out_features"]
    except KeyError as exc:
        raise ValueError(f"config: missing key {exc.args[0]!r} in {describe(config)}") from exc
    if dtype is None and "dtype" in config:
        dtype = getattr(torch, str(config["dtype"]), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"config: unknown dtype {config['dtype']!r}")
    return registry.get(structure).create(n_in, n_out, device=device, dtype=dtype, **config.get("options", {}))
