"""Family ``permutation``: a fixed permutation as a layer (SPEC.md §1.3).

``(P_σ x)_i = x_{σ(i)}``: the forward is the gather ``x[..., σ]`` -- no matrix, no arithmetic;
the transpose is the inverse permutation ``P_σ^T = P_{σ^{-1}}``. No trainable parameters (the
permutation is a buffer, saved in the ``state_dict``).

* **Params** 0. **Mul** 0 flops (``n`` memory moves per row).
* **Sizes**: a permutation of ``N = size`` (default ``max(m, n)``, the next power of two for
  ``kind="bit_reversal"``) corner-embedded as ``S_{m,N} P_σ S_{n,N}^T`` (SPEC.md §1.6).

Explicit permutations::

    >>> P = Permutation.from_perm([2, 0, 1])
    >>> P(torch.tensor([10.0, 11.0, 12.0]))
    tensor([12., 10., 11.])
    >>> Permutation.from_perm([0, 0, 1])
    Traceback (most recent call last):
    ValueError: perm: expected each of 0..2 exactly once, got repeated [0] and missing [2]
"""

from __future__ import annotations

import torch

from ..core import StructuredMatrix, register
from ..core.errors import check_choice, check_int
from ..core.registry import Sample
from ..core.sizes import next_power_of_two, pad_last, truncate_last
from ..ops.permutation import bit_reversal_permutation, check_permutation, invert_permutation, permute

PERMUTATION_KINDS = ("random", "bit_reversal", "reverse", "identity", "explicit")


def _samples():
    return [
        Sample(10, 10),
        Sample(8, 8, {"kind": "bit_reversal"}),
        Sample(7, 12, {"kind": "reverse"}),
        Sample(13, 6, {"seed": 3}),
        Sample(1, 1),
    ]


@register(
    "permutation",
    samples=_samples,
    params_formula="0 (fixed)",
    flops_formula="0 (a gather of m entries)",
    size_ladder=lambda m, n: [{}],
    trainable=False,
    tags=("fixed",),
)
class Permutation(StructuredMatrix):
    """A fixed permutation ``P_σ`` (``(P_σ x)_i = x_{σ(i)}``), corner-embedded for any shape.

    Args:
        kind: ``"random"`` (default; from ``seed``), ``"bit_reversal"`` (``P_br``, SPEC.md §1.3),
            ``"reverse"``, ``"identity"``, or ``"explicit"`` (set by :meth:`from_perm` or a loaded
            ``state_dict``; initialised to the identity).
        seed: seed of the random permutation.
        size: ``N >= max(m, n)``, the length of ``σ``.

    Attributes: ``perm`` (buffer, ``LongTensor`` of length ``N``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        kind: str = "random",
        seed: int = 0,
        size: int | None = None,
        device=None,
        dtype=None,
    ) -> None:
        in_features = check_int("in_features", in_features, minimum=1)
        out_features = check_int("out_features", out_features, minimum=1)
        kind = check_choice("kind", kind, PERMUTATION_KINDS)
        seed = check_int("seed", seed)
        needed = max(in_features, out_features)
        if size is None:
            size = next_power_of_two(needed) if kind == "bit_reversal" else needed
        size = check_int("size", size, minimum=needed)
        super().__init__(in_features, out_features, device=device, dtype=dtype, kind=kind, seed=seed, size=size)
        self.kind, self.seed, self.size = kind, seed, size
        self.register_buffer("perm", self._initial_permutation().to(device))

    def _initial_permutation(self) -> torch.Tensor:
        if self.kind == "random":
            return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed))
        if self.kind == "bit_reversal":
            return bit_reversal_permutation(self.size)
        if self.kind == "reverse":
            return torch.arange(self.size).flip(0)
        return torch.arange(self.size)

    @classmethod
    def from_perm(cls, perm, in_features: int | None = None, out_features: int | None = None, device=None, dtype=None) -> "Permutation":
        """The permutation ``σ`` (``(P_σ x)_i = x_{σ(i)}``) as a layer.

        ``perm`` is validated (``ValueError`` naming ``perm`` for repeated, missing or
        out-of-range entries); ``in_features``/``out_features`` default to ``len(perm)`` and may
        be smaller (corner of ``P_σ``).
        """
        perm = check_permutation("perm", perm)
        n = perm.numel()
        in_features = n if in_features is None else check_int("in_features", in_features, minimum=1, maximum=n)
        out_features = n if out_features is None else check_int("out_features", out_features, minimum=1, maximum=n)
        layer = cls(in_features, out_features, kind="explicit", size=n, device=device if device is not None else perm.device, dtype=dtype)
        layer.perm.copy_(perm)
        return layer

    def reset_parameters(self) -> None:
        """No parameters: restores the permutation given by ``kind`` and ``seed`` (``explicit``
        permutations are kept)."""
        if self.kind != "explicit":
            self.perm.copy_(self._initial_permutation())

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return truncate_last(permute(pad_last(x, self.size), self.perm), self.out_features)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        return truncate_last(permute(pad_last(y, self.size), invert_permutation(self.perm)), self.in_features)

    def to_dense(self) -> torch.Tensor:
        eye = torch.eye(self.size, dtype=self.dtype, device=self.perm.device)
        return eye[self.perm][: self.out_features, : self.in_features]

    def _matvec_flops(self) -> int:
        return 0
