"""Family ``bp``: the BP and BPBP modules of [BF19] (SPEC.md §4.15, §7.2).

``T = B_k P_k ⋯ B_1 P_1`` (``k = n_modules``; ``k = 1`` is BP, ``k = 2`` BPBP): each ``B_j`` an
increasing-stride butterfly with **tied** twiddles (within the factor of stride ``h`` the twiddle
depends only on the in-block offset ``p mod h``, as in the FFT, SPEC.md §1.4) and each ``P_j`` a
permutation applied first -- learnable and relaxed (three sigmoid gates per recursion level,
SPEC.md §7.2) or fixed (bit reversal, identity).

* **Size** ``N = max(2, next_power_of_two(max(m, n)))``, corner-embedded (SPEC.md §1.6).
* **Params** per module ``4 (N - 1)`` twiddle entries (``≈ 4N``) + ``3 (log N - 1)`` logits when learned.
* **Mul** per module and row ``3 N log N`` real flops (butterfly, complex ``14 N log N``) + ``9 N (log N - 1)``
  (relaxed permutation; 0 for a fixed one).
* ``init="fft"`` with ``permutation="bit_reversal"`` gives ``F_N`` exactly (SPEC.md §6.1);
  :meth:`BP.hard_permutations` rounds the learned gates (SPEC.md §7.2).

Example::

    >>> bp = BP(16, 16, init="fft", permutation="bit_reversal", dtype=torch.complex128)
    >>> torch.allclose(bp.to_dense(), torch.fft.fft(torch.eye(16, dtype=torch.complex128), dim=0))
    True
"""

from __future__ import annotations

import torch
from torch import nn

from ..core import StructuredMatrix, register
from ..core.dtypes import flop_scale
from ..core.errors import check_choice, check_int
from ..core.registry import Sample
from ..core.sizes import log2_exact, next_power_of_two, pad_last, truncate_last
from ..ops.butterfly import butterfly_multiply, butterfly_multiply_transpose
from ..ops.permutation import (
    bit_reversal_permutation,
    permute,
    relaxed_permutation_hard,
    relaxed_permutation_levels,
    relaxed_permutation_multiply,
)
from ..ops.twiddle import check_init, init_twiddle
from .butterfly import butterfly_factor_flops

BP_PERMUTATIONS = ("learned", "bit_reversal", "identity")


def tied_twiddle_index(n: int) -> torch.Tensor:
    """``(log n, n/2)`` row of the tied twiddle used by each pair: ``2^ℓ - 1 + (p mod 2^ℓ)``."""
    levels = log2_exact(n, "n")
    stride = 2 ** torch.arange(levels)[:, None]
    return stride - 1 + torch.arange(n // 2)[None, :] % stride


def _samples():
    return [
        Sample(16, 16),
        Sample(10, 6, {"n_modules": 2}),
        Sample(5, 12, {"permutation": "bit_reversal", "init": "ortho"}),
        Sample(8, 8, {"permutation": "identity", "n_modules": 2}),
        Sample(1, 2),
    ]


@register(
    "bp",
    samples=_samples,
    params_formula="k·(4(N−1) + 3(log2 N − 1)), N = next_pow2(max(m, n)), k = n_modules (fixed permutation: k·4(N−1))",
    flops_formula="k·(3·N·log2 N + 9·N·(log2 N − 1)) (real)",
    size_ladder=lambda m, n: [{"n_modules": 1}, {"n_modules": 2}, {"n_modules": 3}, {"n_modules": 4}],
)
class BP(StructuredMatrix):
    """BP / BPBP: tied-twiddle butterflies after (relaxed) permutations, ``T = B_k P_k ⋯ B_1 P_1``.

    Args:
        n_modules: ``k >= 1`` (1 = BP, 2 = BPBP).
        permutation: ``"learned"`` (default; relaxed, SPEC.md §7.2, logits start at 0, i.e. every
            gate at 1/2), ``"bit_reversal"`` (``P_br``) or ``"identity"``.
        init: twiddle initialisation (SPEC.md §7.3): ``randn`` (default), ``ortho``, ``identity``,
            ``hadamard``, ``fft``/``ifft`` (complex layers).

    Attributes ``size`` (``N``), ``twiddle`` (``(k, N - 1, 2, 2)``: level ``ℓ`` in rows
    ``2^ℓ - 1 .. 2^{ℓ+1} - 2``), ``logits`` (``(k, log N - 1, 3)``, learned permutations only).
    """

    #: the gate logits must travel to ``|λ| ≈ 5`` to settle on a permutation (SPEC.md §7.2), far
    #: beyond what a learning rate tuned for the twiddles moves them (``structmat.param_groups``)
    lr_multipliers = {"logits": 10.0}

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        n_modules: int = 1,
        permutation: str = "learned",
        init: str = "randn",
        device=None,
        dtype=None,
    ) -> None:
        in_features = check_int("in_features", in_features, minimum=1)
        out_features = check_int("out_features", out_features, minimum=1)
        n_modules = check_int("n_modules", n_modules, minimum=1)
        permutation = check_choice("permutation", permutation, BP_PERMUTATIONS)
        super().__init__(in_features, out_features, device=device, dtype=dtype, n_modules=n_modules, permutation=permutation, init=init)
        self.init = check_init(init, self.dtype)
        self.n_modules, self.permutation = n_modules, permutation
        self.size = max(2, next_power_of_two(max(in_features, out_features)))
        self.levels = log2_exact(self.size, "size")
        self.twiddle = nn.Parameter(torch.empty(n_modules, self.size - 1, 2, 2, device=device, dtype=self.dtype))
        self.register_buffer("tied_index", tied_twiddle_index(self.size).to(device), persistent=False)
        if permutation == "learned":
            levels = relaxed_permutation_levels(self.size)
            self.logits = nn.Parameter(torch.empty(n_modules, levels, 3, device=device, dtype=self.dtype.to_real()))
        elif permutation == "bit_reversal":
            self.register_buffer("fixed_perm", bit_reversal_permutation(self.size).to(device), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.twiddle.device.type == "meta":
            return
        rows = []
        for _ in range(self.n_modules):
            full = init_twiddle(self.size, self.init, self.dtype)
            # tied: level ℓ keeps the twiddles of its first 2^ℓ pairs (the in-block offsets)
            rows.append(torch.cat([full[level, : 2**level] for level in range(self.levels)]))
        with torch.no_grad():
            self.twiddle.copy_(torch.stack(rows).to(self.dtype))
            if self.permutation == "learned":
                self.logits.zero_()

    def canonical_twiddle(self, module: int) -> torch.Tensor:
        """Untied twiddles ``(1, 1, log N, N/2, 2, 2)`` of butterfly ``module`` (SPEC.md §1.4)."""
        return self.twiddle[module][self.tied_index][None, None]

    def permutation_probabilities(self, module: int) -> torch.Tensor:
        """Gate probabilities ``sigmoid(logits)`` ``(log N - 1, 3)`` of module ``module``."""
        return torch.sigmoid(self.logits[module])

    def hard_permutations(self) -> list[torch.Tensor]:
        """Permutation vectors ``σ_j`` (``P_j = P_{σ_j}``) of every module, gates rounded to {0, 1}."""
        if self.permutation == "learned":
            return [relaxed_permutation_hard(self.permutation_probabilities(k), self.size) for k in range(self.n_modules)]
        perm = self.fixed_perm if self.permutation == "bit_reversal" else torch.arange(self.size, device=self.device)
        return [perm.clone() for _ in range(self.n_modules)]

    def _permute(self, module: int, x: torch.Tensor, transpose: bool) -> torch.Tensor:
        if self.permutation == "learned":
            return relaxed_permutation_multiply(self.permutation_probabilities(module), x, transpose)
        if self.permutation == "bit_reversal":
            return permute(x, self.fixed_perm)  # P_br is a symmetric involution
        return x

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_last(x, self.size)
        for k in range(self.n_modules):
            x = butterfly_multiply(self.canonical_twiddle(k), self._permute(k, x, False))[:, 0]
        return truncate_last(x, self.out_features)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        y = pad_last(y, self.size)
        for k in reversed(range(self.n_modules)):
            y = self._permute(k, butterfly_multiply_transpose(self.canonical_twiddle(k), y)[:, 0], True)
        return truncate_last(y, self.in_features)

    def to_dense(self) -> torch.Tensor:
        eye = torch.eye(self.in_features, dtype=self.dtype, device=self.twiddle.device)
        return self._forward(eye).transpose(0, 1)

    def _matvec_flops(self) -> int:
        mul, add = flop_scale(self.dtype)
        butterfly = self.levels * butterfly_factor_flops(self.size, self.dtype)
        relaxed = 3 * relaxed_permutation_levels(self.size) * self.size * (2 * mul + add) if self.permutation == "learned" else 0
        return self.n_modules * (butterfly + relaxed)
