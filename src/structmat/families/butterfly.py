"""Family ``butterfly``: butterfly matrices with untied twiddles (SPEC.md §1.4, §4.14).

A butterfly of size ``N = 2^k`` is a product of ``log N`` butterfly factors
``B = B_N^{(N)} ⋯ B_2^{(N)}`` (increasing stride: stride 1 applied first) or the reverse order
(decreasing stride). Each factor mixes the pairs ``(i, i + h)`` with its own 2x2 twiddle.

* **Params** ``2 N log N`` per butterfly (``N/2`` blocks of 4 entries per level; SPEC.md §4.14);
  with ``orthogonal=True``: one angle per block (real rotations, ``N/2 · log N``) or four (the
  unitary form ``U(φ, α, ψ, χ)``, ``2 N log N`` real angles) -- the layer stays exactly
  orthogonal/unitary during training because every block is.
* **Mul** ``3 N log N`` real flops per row and butterfly (complex: ``14 N log N``), via
  :func:`structmat.ops.butterfly.butterfly_multiply`; transpose at the same cost.
* **Sizes** (SPEC.md §1.6): ``N = max(2, next_power_of_two(in_features))`` unless ``padded_size``
  is given; the input is zero-padded to ``N``; ``n_stacks = ⌈out_features / N⌉`` independent
  butterflies act on it (stacking) and their concatenated outputs are truncated to ``out_features``.
* **Projection**: :meth:`Butterfly.from_dense` by hierarchical factorisation (SPEC.md §4.14(ii),
  :mod:`structmat.ops.hierarchical`).

Exact twiddles (e.g. for the constructions of SPEC.md §6) go through :meth:`Butterfly.from_twiddle`::

    >>> from structmat.ops.twiddle import hadamard_twiddle
    >>> H = Butterfly.from_twiddle(hadamard_twiddle(8)[None, None])     # (1, 1, 3, 4, 2, 2)
    >>> torch.equal(H.to_dense(), torch.tensor(scipy.linalg.hadamard(8), dtype=torch.float64))
    True
"""

from __future__ import annotations

import torch
from torch import nn

from ..core import StructuredMatrix, register
from ..core.dtypes import flop_scale
from ..core.errors import check_int, check_matrix, describe
from ..core.registry import Sample
from ..core.sizes import ceil_div, is_power_of_two, log2_exact, next_power_of_two, pad_last, truncate_last
from ..ops.butterfly import (
    butterfly_multiply,
    butterfly_multiply_transpose,
    butterfly_size,
    butterfly_to_dense,
    check_twiddle,
)
from ..ops.hierarchical import butterfly_factorisation
from ..ops.twiddle import check_init, init_angles, init_twiddle, rotation_twiddle, unitary_twiddle


def resolve_padded_size(name: str, padded_size, minimum: int) -> int:
    """``padded_size`` (a power of two ``>= max(2, minimum)``) or the default ``max(2, next_pow2(minimum))``."""
    if padded_size is None:
        return max(2, next_power_of_two(minimum))
    padded_size = check_int(name, padded_size, minimum=max(2, minimum))
    if not is_power_of_two(padded_size):
        raise ValueError(f"{name}: expected a power of two >= {max(2, minimum)}, got {padded_size}")
    return padded_size


def butterfly_factor_flops(n: int, dtype: torch.dtype) -> int:
    """Real flops of one butterfly factor of size ``n`` on one row: ``n/2`` blocks of 4 mult + 2 add."""
    mul, add = flop_scale(dtype)
    return (n // 2) * (4 * mul + 2 * add)


def _samples():
    return [
        Sample(16, 16),
        Sample(37, 101),
        Sample(12, 5, {"increasing_stride": False, "init": "ortho"}),
        Sample(8, 8, {"orthogonal": True}),
        Sample(6, 20, {"orthogonal": True, "increasing_stride": False}),
        Sample(1, 1),
        Sample(5, 5, {"padded_size": 16, "init": "identity"}),
    ]


def _ladder(m: int, n: int):
    return [{"orthogonal": True}, {}]


@register(
    "butterfly",
    samples=_samples,
    params_formula="2·N·log2(N)·⌈m/N⌉, N = next_pow2(n) (orthogonal: N/2·log2 N real angles per butterfly, complex 4×)",
    flops_formula="3·N·log2(N)·⌈m/N⌉ (real), 14·N·log2(N)·⌈m/N⌉ (complex)",
    size_ladder=_ladder,
)
class Butterfly(StructuredMatrix):
    """Butterfly matrix with untied twiddles, stacked and corner-embedded for any shape.

    Args:
        increasing_stride: stride 1 applied first (``B = B_N ⋯ B_2``, SPEC.md §1.4); ``False``
            gives the decreasing-stride orientation (the class ``𝓑*``).
        init: ``"randn"`` (default, norm preserving), ``"ortho"``, ``"identity"``, ``"hadamard"``,
            ``"fft"``/``"ifft"`` (complex layers only: ``F_N P_br`` resp. ``F_N^{-1} P_br`` for
            increasing stride, their transposes for decreasing stride), SPEC.md §7.3.
        orthogonal: parametrise every 2x2 block by angles (real rotations; complex: the unitary
            4-angle form) so the butterfly stays exactly orthogonal/unitary during training
            (``fft``/``ifft``/``hadamard`` then give the unitary, ``1/√2``-scaled twiddles).
        padded_size: ``N`` (a power of two ``>= in_features``); default ``max(2, next_pow2(in))``.

    Attributes: ``size`` (``N``), ``n_stacks``; :meth:`canonical_twiddle` returns the twiddles in
    the layout ``(n_stacks, 1, log N, N/2, 2, 2)`` of SPEC.md §1.4.

    Example::

        >>> Butterfly(1024, 1024).num_parameters        # 2 N log N
        20480
    """

    #: ``to_dense`` is a slow reference construction; fits evaluate ``M I`` through the kernel
    #: (:func:`structmat.fit.fitting.dense_matrix`).
    dense_by_forward = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        increasing_stride: bool = True,
        init: str = "randn",
        orthogonal: bool = False,
        padded_size: int | None = None,
        device=None,
        dtype=None,
    ) -> None:
        in_features = check_int("in_features", in_features, minimum=1)
        out_features = check_int("out_features", out_features, minimum=1)
        if not isinstance(increasing_stride, bool):
            raise TypeError(f"increasing_stride: expected a bool, got {describe(increasing_stride)}")
        if not isinstance(orthogonal, bool):
            raise TypeError(f"orthogonal: expected a bool, got {describe(orthogonal)}")
        size = resolve_padded_size("padded_size", padded_size, in_features)
        super().__init__(
            in_features, out_features, device=device, dtype=dtype,
            increasing_stride=increasing_stride, init=init, orthogonal=orthogonal, padded_size=padded_size,
        )
        if orthogonal:
            init_angles(2, init, self.dtype)  # validates init for the parametrisation
        else:
            check_init(init, self.dtype)
        self.size, self.levels = size, log2_exact(size, "padded_size")
        self.n_stacks = ceil_div(out_features, size)
        self.increasing_stride, self.init, self.orthogonal = increasing_stride, init, orthogonal
        shape = (self.n_stacks, 1, self.levels, size // 2)
        if orthogonal:
            angle_shape = shape + ((4,) if self.is_complex else ())
            self.angles = nn.Parameter(torch.empty(angle_shape, device=device, dtype=self.dtype.to_real()))
        else:
            self.twiddle = nn.Parameter(torch.empty(shape + (2, 2), device=device, dtype=self.dtype))
        self.reset_parameters()

    @classmethod
    def from_twiddle(
        cls,
        twiddle: torch.Tensor,
        in_features: int | None = None,
        out_features: int | None = None,
        increasing_stride: bool = True,
    ) -> "Butterfly":
        """A butterfly with the given (untied) twiddles, trainable.

        Args:
            twiddle: canonical ``(n_stacks, 1, log N, N/2, 2, 2)`` (SPEC.md §1.4) or one
                butterfly's ``(log N, N/2, 2, 2)``; its dtype is the layer's.
            in_features: ``<= N`` (default ``N``); the input is zero-padded to ``N``.
            out_features: with ``⌈out_features / N⌉ == n_stacks`` (default ``n_stacks · N``).
            increasing_stride: orientation of the twiddles.

        The result's ``to_dense()`` is ``[E_0; E_1; …][:out_features, :in_features]``.
        """
        if isinstance(twiddle, torch.Tensor) and twiddle.dim() == 4:
            twiddle = twiddle[None, None]
        twiddle = check_twiddle(twiddle, n_blocks=1)
        n, stacks = butterfly_size(twiddle), twiddle.shape[0]
        in_features = n if in_features is None else check_int("in_features", in_features, minimum=1, maximum=n)
        if out_features is None:
            out_features = stacks * n
        out_features = check_int("out_features", out_features, minimum=1)
        if ceil_div(out_features, n) != stacks:
            raise ValueError(
                f"out_features: expected a value in [{(stacks - 1) * n + 1}, {stacks * n}] for {stacks} stack(s) "
                f"of size {n}, got {out_features}"
            )
        layer = cls(
            in_features, out_features, increasing_stride=increasing_stride, init="identity",
            padded_size=n, device=twiddle.device, dtype=twiddle.dtype,
        )
        with torch.no_grad():
            layer.twiddle.copy_(twiddle)
        return layer

    def canonical_twiddle(self) -> torch.Tensor:
        """Twiddles ``(n_stacks, 1, log N, N/2, 2, 2)`` (computed from the angles when orthogonal)."""
        if not self.orthogonal:
            return self.twiddle
        if self.is_complex:
            return unitary_twiddle(self.angles).to(self.dtype)
        return rotation_twiddle(self.angles).to(self.dtype)

    def reset_parameters(self) -> None:
        shape = (self.n_stacks, 1, self.levels, self.size // 2)
        make = init_angles if self.orthogonal else init_twiddle
        param = self.angles if self.orthogonal else self.twiddle
        if param.device.type == "meta":
            return
        values = torch.stack([make(self.size, self.init, self.dtype, self.increasing_stride) for _ in range(shape[0])])
        with torch.no_grad():
            param.copy_(values[:, None].to(param.dtype))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_last(x, self.size)
        y = butterfly_multiply(self.canonical_twiddle(), x, self.increasing_stride)
        return truncate_last(y.reshape(x.shape[0], self.n_stacks * self.size), self.out_features)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        y = pad_last(y, self.n_stacks * self.size).reshape(y.shape[0], self.n_stacks, self.size)
        x = butterfly_multiply_transpose(self.canonical_twiddle(), y, self.increasing_stride).sum(1)
        return truncate_last(x, self.in_features)

    def to_dense(self) -> torch.Tensor:
        dense = butterfly_to_dense(self.canonical_twiddle(), self.increasing_stride)
        return dense[: self.out_features, : self.in_features]

    def _matvec_flops(self) -> int:
        return self.n_stacks * self.levels * butterfly_factor_flops(self.size, self.dtype)

    @classmethod
    def from_dense(cls, W: torch.Tensor, increasing_stride: bool = True) -> "Butterfly":
        """Hierarchical factorisation (SPEC.md §4.14(ii)): exact for butterfly matrices.

        ``W`` of shape ``(m, n)`` is corner-embedded in stacks of ``N x N`` blocks
        (``N = max(2, next_pow2(n))``); every block is factored level by level by
        :func:`structmat.ops.hierarchical.butterfly_factorisation` (rank-1 approximations of the
        ``2 x N/2`` slices, then the two half-size blocks, all blocks of a level batched).
        Decreasing stride uses ``W^T``'s increasing-stride factorisation (SPEC.md §1.4). Cost
        ``O(N² log N)`` per stack; the squared error is the sum of the discarded singular values.
        """
        W = check_matrix("W", W)
        m, n = W.shape
        size = max(2, next_power_of_two(n))
        stacks = ceil_div(m, size)
        padded = torch.zeros(stacks * size, size, dtype=W.dtype, device=W.device)
        padded[:m, :n] = W
        blocks = padded.reshape(stacks, size, size)
        if not increasing_stride:
            blocks = blocks.transpose(1, 2)
        twiddle = butterfly_factorisation(blocks)[0][:, None]
        if not increasing_stride:
            twiddle = twiddle.flip(2).transpose(-1, -2)
        return cls.from_twiddle(twiddle, n, m, increasing_stride)
