"""Family ``kaleidoscope``: K-matrices ``(𝓑𝓑*)^w_e`` (SPEC.md §4.16, [KS20] Def. 2.4).

``M = S_{m,N} E S_{n,N}^T`` with ``E = M_w ⋯ M_1``, each unit ``M_i = B_i B_i'^*`` applied as a
decreasing-stride butterfly (``B_i'^*``) followed by an increasing-stride butterfly (``B_i``).

* **Size** ``N = next_power_of_two(expansion · max(m, n))`` (at least 2) unless ``padded_size`` is
  given; for ``n x n`` with ``e·n`` a power of two this is exactly ``N = e n``. For other ``n`` the
  expansion is rounded up to the next power of two of ``e·max(m, n)``, so the counts below hold
  with ``e n`` replaced by that ``N``.
* **Params** ``4 · w · N · log2 N`` (``= 4 w e n log(e n)``): ``2w`` butterflies of ``2 N log N``.
* **Mul** ``6 · w · N · log2 N`` real flops per row (complex ``28 w N log N``): embed, apply the
  ``2 w log N`` factors in one fused pass, read the corner. ``BB*`` is ``width=1, expansion=1``.
* Twiddles in the canonical layout ``(1, 2w, log N, N/2, 2, 2)`` of SPEC.md §1.4 with the first
  butterfly decreasing-stride; exact K-matrices (e.g. from the circuit compiler) are built with
  :meth:`Kaleidoscope.from_twiddle`::

      >>> tw = torch.eye(2).expand(1, 4, 3, 4, 2, 2)            # w = 2, N = 8: the identity
      >>> K = Kaleidoscope.from_twiddle(tw, 8, 8)
      >>> (K.width, K.expansion, torch.equal(K.to_dense(), torch.eye(8)))
      (2, 1, True)
"""

from __future__ import annotations

import torch
from torch import nn

from ..core import StructuredMatrix, register
from ..core.errors import check_int
from ..core.registry import OptionRange, Sample
from ..core.sizes import log2_exact, pad_last, truncate_last
from ..ops.butterfly import (
    butterfly_multiply,
    butterfly_multiply_transpose,
    butterfly_size,
    butterfly_to_dense,
    check_twiddle,
)
from ..ops.twiddle import check_init, init_twiddle
from .butterfly import butterfly_factor_flops, resolve_padded_size

KALEIDOSCOPE_INITS = ("randn", "ortho", "identity")


def _samples():
    return [
        Sample(16, 16),
        Sample(12, 7, {"width": 2}),
        Sample(5, 9, {"expansion": 2, "init": "ortho"}),
        Sample(1, 3),
        Sample(8, 8, {"width": 2, "expansion": 2, "init": "identity"}),
    ]


@register(
    "kaleidoscope",
    samples=_samples,
    params_formula="4·w·N·log2(N), N = next_pow2(e·max(m, n)) (= 4·w·e·n·log2(e·n) for n×n, e·n a power of 2)",
    flops_formula="6·w·N·log2(N) (real), 28·w·N·log2(N) (complex)",
    size_ladder=lambda m, n: OptionRange("width", range(1, 65)),
)
class Kaleidoscope(StructuredMatrix):
    """K-matrix ``(𝓑𝓑*)^w_e``: ``w`` products of a decreasing- then an increasing-stride butterfly.

    Args:
        width: ``w >= 1`` (number of ``𝓑𝓑*`` units).
        expansion: ``e >= 1``; the matrix is the upper-left corner of a K-matrix of size ``e·n``.
        init: ``"randn"`` (default, norm preserving per factor), ``"ortho"``, ``"identity"`` (SPEC.md §7.3).
        padded_size: ``N`` explicitly (a power of two ``>= e · max(m, n)``).

    Attributes ``width``, ``expansion``, ``size`` (``N``); :meth:`canonical_twiddle`.
    """

    #: ``to_dense`` is a slow reference construction; fits evaluate ``M I`` through the kernel
    #: (:func:`structmat.fit.fitting.dense_matrix`).
    dense_by_forward = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        width: int = 1,
        expansion: int = 1,
        init: str = "randn",
        padded_size: int | None = None,
        device=None,
        dtype=None,
    ) -> None:
        in_features = check_int("in_features", in_features, minimum=1)
        out_features = check_int("out_features", out_features, minimum=1)
        width = check_int("width", width, minimum=1)
        expansion = check_int("expansion", expansion, minimum=1)
        size = resolve_padded_size("padded_size", padded_size, expansion * max(in_features, out_features))
        super().__init__(
            in_features, out_features, device=device, dtype=dtype,
            width=width, expansion=expansion, init=init, padded_size=padded_size,
        )
        self.init = check_init(init, self.dtype, KALEIDOSCOPE_INITS)
        self.width, self.expansion, self.size = width, expansion, size
        self.levels = log2_exact(size, "padded_size")
        self.twiddle = nn.Parameter(torch.empty(1, 2 * width, self.levels, size // 2, 2, 2, device=device, dtype=self.dtype))
        self.reset_parameters()

    @classmethod
    def from_twiddle(cls, twiddle: torch.Tensor, in_features: int, out_features: int) -> "Kaleidoscope":
        """A K-matrix with the given twiddles (trainable).

        Args:
            twiddle: canonical ``(1, 2w, log N, N/2, 2, 2)`` (SPEC.md §1.4), butterfly 0
                decreasing-stride, directions alternating; its dtype is the layer's.
            in_features, out_features: the corner ``(m, n)``, both ``<= N``.

        ``expansion`` is reported as ``N // max(m, n)`` (exact when ``N = e · max(m, n)``).
        """
        twiddle = check_twiddle(twiddle)
        if twiddle.shape[0] != 1 or twiddle.shape[1] % 2:
            raise ValueError(
                f"twiddle: expected shape (1, 2w, log N, N/2, 2, 2) (one stack, an even number of butterflies), "
                f"got shape {tuple(twiddle.shape)}"
            )
        n = butterfly_size(twiddle)
        in_features = check_int("in_features", in_features, minimum=1, maximum=n)
        out_features = check_int("out_features", out_features, minimum=1, maximum=n)
        layer = cls(
            in_features, out_features, width=twiddle.shape[1] // 2, expansion=n // max(in_features, out_features),
            init="identity", padded_size=n, device=twiddle.device, dtype=twiddle.dtype,
        )
        with torch.no_grad():
            layer.twiddle.copy_(twiddle)
        return layer

    def canonical_twiddle(self) -> torch.Tensor:
        """Twiddles ``(1, 2w, log N, N/2, 2, 2)``, butterfly 0 decreasing-stride."""
        return self.twiddle

    def reset_parameters(self) -> None:
        if self.twiddle.device.type == "meta":
            return
        values = [
            init_twiddle(self.size, self.init, self.dtype, increasing_stride=bool(block % 2))
            for block in range(2 * self.width)
        ]
        with torch.no_grad():
            self.twiddle.copy_(torch.stack(values)[None].to(self.dtype))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        y = butterfly_multiply(self.twiddle, pad_last(x, self.size), increasing_stride=False)
        return truncate_last(y[:, 0], self.out_features)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        x = butterfly_multiply_transpose(self.twiddle, pad_last(y, self.size), increasing_stride=False)
        return truncate_last(x[:, 0], self.in_features)

    def to_dense(self) -> torch.Tensor:
        return butterfly_to_dense(self.twiddle, increasing_stride=False)[: self.out_features, : self.in_features]

    def _matvec_flops(self) -> int:
        return 2 * self.width * self.levels * butterfly_factor_flops(self.size, self.dtype)
