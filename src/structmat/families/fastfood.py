"""Families ``fastfood`` and ``acdc``: products of diagonals and fixed fast transforms
(SPEC.md §4.13, §6.9).

* ``fastfood`` [Fastfood]: ``V = S H G Π H B`` with learnable diagonals ``S, G, B``, a fixed random
  permutation ``Π`` and the unnormalised Walsh–Hadamard matrix ``H`` (SPEC.md §6.3). Sizes: the
  input is zero-padded to ``N = next_power_of_two(in_features)``; for ``out_features > N``,
  ``K = ceil(out / N)`` independent blocks are applied to the same padded input and their
  outputs concatenated, then truncated (stacking, SPEC.md §1.6).
* ``acdc`` [ACDC]: ``diag(a) C diag(d) C⁻¹`` with ``C`` the orthonormal DCT-II and ``C⁻¹ = Cᵀ`` the
  orthonormal DCT-III (order ``"idct_first"``), or the variant ``diag(a) C⁻¹ diag(d) C``
  (order ``"dct_first"``); optionally a cascade of ``layers`` such factors with fixed random
  permutations between them, as in the ACDC paper. The DCT works for any length, so the size is
  ``N = max(in_features, out_features)`` (corner embedding, SPEC.md §1.6).

Both multiply through fast kernels (:mod:`structmat.ops.fastfood`: the whole Fastfood chain in one
fused CPU kernel; :mod:`structmat.ops.dct`) and never form the matrix; their transposes run the factors in reverse
order (each factor is symmetric or orthogonal, SPEC.md §2.3).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core import StructuredMatrix, register
from ..core.dtypes import flop_scale
from ..core.errors import check_choice, check_int
from ..core.init import normal_
from ..core.registry import OptionRange, Sample
from ..core.sizes import ceil_div, next_power_of_two, pad_last, truncate_last
from ..ops.dct import dct2, dct3, dct_flops
from ..ops.fastfood import fastfood_multiply, fastfood_multiply_transpose
from ..ops.hadamard import hadamard_flops


def _random_permutations(count: int, n: int, seed: int, device) -> torch.Tensor:
    """``count`` independent permutations of ``[n]`` (rows), reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    perms = [torch.randperm(n, generator=generator) for _ in range(count)]
    stacked = torch.stack(perms) if perms else torch.empty(0, n, dtype=torch.long)
    return stacked.to(device)


def _sylvester_hadamard(n: int, dtype, device) -> torch.Tensor:
    """The dense ``n x n`` Walsh–Hadamard matrix ``H_2^{⊗k}`` (for ``to_dense`` only)."""
    H = torch.ones(1, 1, dtype=dtype, device=device)
    block = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=dtype, device=device)
    while H.shape[0] < n:
        H = torch.kron(block, H)
    return H


def _fastfood_samples():
    return [Sample(12, 20, {"seed": 3}), Sample(16, 16), Sample(5, 3), Sample(1, 1), Sample(3, 17)]


@register(
    "fastfood",
    samples=_fastfood_samples,
    params_formula="3·K·N, N = 2^⌈log2 n⌉, K = ⌈m/N⌉",
    flops_formula="K·(2·N·log2 N + 3·N)",
    size_ladder=lambda m, n: [{}],
)
class Fastfood(StructuredMatrix):
    """Fastfood ``V = S H G Π H B`` (``H B`` applied first) with learnable diagonals.

    Args:
        seed: seed of the fixed random permutations ``Π`` (one per stacked block).

    Shapes: ``S, G, B`` are ``(K, N)``, ``Π`` a ``(K, N)`` index buffer. Cost per row:
    ``K (2 N log2 N + 3 N)`` flops (two Walsh–Hadamard transforms, three diagonals), memory
    ``O(K N)``; ``3 K N`` parameters. Initialisation: ``B`` random signs, ``G`` standard normal,
    ``S = 1/sqrt(3 N n)``, so entries of ``V`` have the variance of ``nn.Linear``'s weights.

    Example::

        >>> Fastfood(16, 16).num_parameters
        48
    """

    #: ``to_dense`` is a slow reference construction; fits evaluate ``M I`` through the kernel
    #: (:func:`structmat.fit.fitting.dense_matrix`).
    dense_by_forward = True

    def __init__(self, in_features: int, out_features: int, *, seed: int = 0, device=None, dtype=None) -> None:
        seed = check_int("seed", seed, minimum=0)
        super().__init__(in_features, out_features, device=device, dtype=dtype, seed=seed)
        self.size = next_power_of_two(in_features)
        self.blocks = ceil_div(out_features, self.size)
        shape = (self.blocks, self.size)
        self.S = nn.Parameter(torch.empty(shape, device=device, dtype=self.dtype))
        self.G = nn.Parameter(torch.empty(shape, device=device, dtype=self.dtype))
        self.B = nn.Parameter(torch.empty(shape, device=device, dtype=self.dtype))
        self.register_buffer("permutation", _random_permutations(self.blocks, self.size, seed, device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.B.copy_(torch.randint(0, 2, self.B.shape, device="cpu").mul(2).sub(1).to(self.B))
            normal_(self.G, 1.0)
            self.S.fill_(1.0 / math.sqrt(3.0 * self.size * self.in_features))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return fastfood_multiply(x, self.S, self.G, self.B, self.permutation, self.out_features)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        # Vᵀ = B H Πᵀ G H S per block (H and the diagonals are symmetric)
        return fastfood_multiply_transpose(y, self.S, self.G, self.B, self.permutation, self.in_features)

    def to_dense(self) -> torch.Tensor:
        H = _sylvester_hadamard(self.size, self.dtype, self.device)
        blocks = []
        for k in range(self.blocks):
            Pi = torch.eye(self.size, dtype=self.dtype, device=self.device)[self.permutation[k]]
            V = torch.diag(self.S[k]) @ H @ torch.diag(self.G[k]) @ Pi @ H @ torch.diag(self.B[k])
            blocks.append(V)
        return torch.cat(blocks, dim=0)[: self.out_features, : self.in_features]

    def _matvec_flops(self) -> int:
        multiplications = 3 * self.size * flop_scale(self.dtype)[0]
        return self.blocks * (2 * hadamard_flops(self.size, self.dtype) + multiplications)


_ACDC_ORDERS = ("idct_first", "dct_first")


def _acdc_samples():
    return [
        Sample(12, 7),
        Sample(5, 9, {"order": "dct_first"}),
        Sample(16, 16, {"layers": 3, "seed": 2}),
        Sample(1, 1),
        Sample(10, 10, {"layers": 2, "order": "dct_first"}),
    ]


@register(
    "acdc",
    samples=_acdc_samples,
    params_formula="2·L·N, N = max(m, n)",
    flops_formula="L·(2·DCT(N) + 2·N)",
    size_ladder=lambda m, n: OptionRange("layers", range(1, 33)),
)
class ACDC(StructuredMatrix):
    """ACDC ``diag(a) C diag(d) C⁻¹`` (orthonormal DCTs), optionally a cascade of ``layers``.

    Args:
        layers: number ``L`` of ACDC factors; between consecutive factors a fixed random
            permutation (from ``seed``) mixes the coordinates, as in the ACDC paper.
        order: ``"idct_first"`` (``A C D C⁻¹``, the paper's form; the DCT-III is applied first)
            or ``"dct_first"`` (``A C⁻¹ D C``), SPEC.md §4.13.
        seed: seed of the inter-factor permutations.

    Shapes: ``a, d`` are ``(L, N)`` with ``N = max(in, out)``. Cost per row:
    ``L (2 DCT(N) + 2 N)`` flops, ``O(N log N)`` per factor; ``2 L N`` parameters.
    Initialisation (as in the paper): ``a, d ~ N(1, 0.1²)`` entrywise, so the cascade starts
    close to the identity.

    Example::

        >>> ACDC(64, 64, layers=2).num_parameters
        256
    """

    #: ``to_dense`` is a slow reference construction; fits evaluate ``M I`` through the kernel
    #: (:func:`structmat.fit.fitting.dense_matrix`).
    dense_by_forward = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        layers: int = 1,
        order: str = "idct_first",
        seed: int = 0,
        device=None,
        dtype=None,
    ) -> None:
        layers = check_int("layers", layers, minimum=1)
        order = check_choice("order", order, _ACDC_ORDERS)
        seed = check_int("seed", seed, minimum=0)
        super().__init__(in_features, out_features, device=device, dtype=dtype, layers=layers, order=order, seed=seed)
        self.size = max(in_features, out_features)
        self.layers = layers
        self.A = nn.Parameter(torch.empty(layers, self.size, device=device, dtype=self.dtype))
        self.D = nn.Parameter(torch.empty(layers, self.size, device=device, dtype=self.dtype))
        self.register_buffer("permutation", _random_permutations(layers - 1, self.size, seed, device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for diagonal in (self.A, self.D):
                normal_(diagonal, 0.1)
                diagonal.add_(1.0)

    def _transforms(self):
        """(first, second) transform of a factor, in application order."""
        return (dct3, dct2) if self.options["order"] == "idct_first" else (dct2, dct3)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = self._transforms()
        u = pad_last(x, self.size)
        for layer in range(self.layers):
            if layer > 0:
                u = u[:, self.permutation[layer - 1]]
            u = second(first(u) * self.D[layer]) * self.A[layer]
        return truncate_last(u, self.out_features)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        # (A C D C⁻¹)ᵀ = C D C⁻¹ A: the transposed factors in reverse order (C⁻¹ = Cᵀ)
        first, second = self._transforms()
        u = pad_last(y, self.size)
        for layer in reversed(range(self.layers)):
            u = second(first(u * self.A[layer]) * self.D[layer])
            if layer > 0:
                u = torch.zeros_like(u).index_copy(1, self.permutation[layer - 1], u)
        return truncate_last(u, self.in_features)

    def to_dense(self) -> torch.Tensor:
        eye = torch.eye(self.size, dtype=self.dtype, device=self.device)
        C = dct2(eye).transpose(0, 1)  # orthonormal DCT-II matrix: column j is C e_j
        first, second = (C.transpose(0, 1), C) if self.options["order"] == "idct_first" else (C, C.transpose(0, 1))
        M = eye
        for layer in range(self.layers):
            if layer > 0:
                M = eye[self.permutation[layer - 1]] @ M
            M = torch.diag(self.A[layer]) @ second @ torch.diag(self.D[layer]) @ first @ M
        return M[: self.out_features, : self.in_features]

    def _matvec_flops(self) -> int:
        multiplications = 2 * self.size * flop_scale(self.dtype)[0]
        return self.layers * (2 * dct_flops(self.size, self.dtype) + multiplications)
