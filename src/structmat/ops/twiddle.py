"""Twiddle constructions: initialisations, exact transforms and angle parametrisations.

All functions return (or read) tensors in the canonical per-butterfly layout ``(log N, N/2, 2, 2)``
of SPEC.md §1.4 (one butterfly; stack and block dimensions are added by the caller).

* :func:`init_twiddle` -- SPEC.md §7.3: ``randn`` (entries ``N(0, 1/2)``, complex parts
  ``N(0, 1/4)``: ``E[t^* t] = I``, norm preserving in expectation), ``ortho`` (random rotation
  composed with a reflection with probability 1/2; complex: Haar-random ``U(2)``), ``identity``,
  ``hadamard``, ``fft``, ``ifft`` (the exact twiddles of SPEC.md §6.1--6.3);
* :func:`rotation_twiddle` / :func:`rotation_angles`: real rotations ``[[cos θ, -sin θ], [sin θ, cos θ]]``;
* :func:`unitary_twiddle` / :func:`unitary_angles`: the 4-angle unitary form of SPEC.md §4.14,
  ``U(φ, α, ψ, χ) = e^{iα} [[e^{iψ} cos φ, e^{iχ} sin φ], [-e^{-iχ} sin φ, e^{-iψ} cos φ]]``.

Example (the DFT, SPEC.md §6.1: ``F_N = B_F P_br``)::

    >>> tw = fft_twiddle(8)                                  # (3, 4, 2, 2) complex128
    >>> B = butterfly_to_dense(tw[None, None])               # structmat.ops.butterfly
    >>> torch.allclose(B[:, bit_reversal_permutation(8)], torch.fft.fft(torch.eye(8), dim=0))
    True
"""

from __future__ import annotations

import math

import torch

from ..core.dtypes import complex_dtype, real_dtype
from ..core.errors import describe
from ..core.sizes import log2_exact

#: initialisations of :func:`init_twiddle`; those needing a complex dtype are marked.
TWIDDLE_INITS = ("randn", "ortho", "identity", "hadamard", "fft", "ifft")
COMPLEX_INITS = ("fft", "ifft")


def check_init(init, dtype: torch.dtype, choices=TWIDDLE_INITS) -> str:
    """Validate an ``init`` name for a layer of ``dtype`` (complex inits need a complex layer)."""
    if init not in choices:
        raise ValueError(f"init: expected one of {list(choices)}, got {describe(init)}")
    if init in COMPLEX_INITS and not dtype.is_complex:
        raise ValueError(f"init: {init!r} has complex twiddles and needs a complex dtype, got dtype {dtype}")
    return init


def _pair_offsets(n: int, increasing_stride: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(τ, h)`` of shape ``(log N, N/2)``: in-block offset ``p mod h`` and stride of each pair."""
    levels = log2_exact(n, "n")
    level = torch.arange(levels)[:, None]
    stride = 2**level if increasing_stride else n // 2 ** (level + 1)
    pair = torch.arange(n // 2)[None, :]
    return pair % stride, stride.expand(levels, n // 2)


def fft_twiddle(n: int, increasing_stride: bool = True, inverse: bool = False, dtype=torch.complex128) -> torch.Tensor:
    """Exact DFT twiddles (SPEC.md §6.1--6.2), shape ``(log n, n/2, 2, 2)``.

    Increasing stride: ``[[1, ω^τ], [1, -ω^τ]]``, ``ω = e^{-2πi/2h}``, so that the butterfly is
    ``B_F`` with ``F_n = B_F P_br``. Decreasing stride: the transposed blocks ``[[1, 1], [ω^τ, -ω^τ]]``
    (levels reversed), i.e. ``B_F^T`` with ``F_n = P_br B_F^T`` (decimation in frequency).
    ``inverse``: conjugate twiddles times ``1/2`` (``F_n^{-1} = B_I P_br``).
    """
    offset, stride = _pair_offsets(n, increasing_stride)
    sign = 1.0 if inverse else -1.0
    omega = torch.polar(torch.ones(offset.shape, dtype=torch.float64), sign * math.pi * offset.double() / stride)
    one = torch.ones_like(omega)
    t = torch.stack([torch.stack([one, omega], -1), torch.stack([one, -omega], -1)], -2)
    if not increasing_stride:
        t = t.transpose(-1, -2)
    if inverse:
        t = t / 2
    return t.to(complex_dtype(dtype))


def hadamard_twiddle(n: int, dtype=torch.float64) -> torch.Tensor:
    """All blocks ``[[1, 1], [1, -1]]`` (SPEC.md §6.3; either stride order), ``(log n, n/2, 2, 2)``."""
    block = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=dtype)
    return block.expand(log2_exact(n, "n"), n // 2, 2, 2).clone()


def rotation_twiddle(theta: torch.Tensor) -> torch.Tensor:
    """Rotation blocks ``[[cos θ, -sin θ], [sin θ, cos θ]]``, shape ``(*theta.shape, 2, 2)``."""
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def rotation_angles(twiddle: torch.Tensor) -> torch.Tensor:
    """``θ`` of rotation blocks (inverse of :func:`rotation_twiddle`); ``ValueError`` for blocks that
    are not rotations (orthogonal with determinant 1)."""
    check_orthogonal_blocks(twiddle, "twiddle", unitary=False)
    return torch.atan2(twiddle[..., 1, 0], twiddle[..., 0, 0])


def unitary_twiddle(angles: torch.Tensor) -> torch.Tensor:
    """``U(φ, α, ψ, χ)`` of SPEC.md §4.14 from ``angles[..., (φ, α, ψ, χ)]``: complex ``(..., 2, 2)``."""
    phi, alpha, psi, chi = angles.unbind(-1)
    one = torch.ones_like(phi)
    cos, sin = torch.cos(phi), torch.sin(phi)
    e = lambda angle, radius: torch.polar(radius * one, angle)  # noqa: E731 - radius·e^{i angle}
    row0 = torch.stack([e(alpha + psi, cos), e(alpha + chi, sin)], -1)
    row1 = torch.stack([-e(alpha - chi, sin), e(alpha - psi, cos)], -1)
    return torch.stack([row0, row1], -2)


def unitary_angles(twiddle: torch.Tensor) -> torch.Tensor:
    """``(φ, α, ψ, χ)`` with ``U(φ, α, ψ, χ) = t`` for unitary 2x2 blocks ``t`` (inverse of
    :func:`unitary_twiddle`): ``α = arg(det t)/2`` and ``e^{-iα} t = [[u, v], [-v̄, ū]] ∈ SU(2)``."""
    check_orthogonal_blocks(twiddle, "twiddle", unitary=True)
    t = twiddle.to(complex_dtype(twiddle.dtype))
    det = t[..., 0, 0] * t[..., 1, 1] - t[..., 0, 1] * t[..., 1, 0]
    alpha = torch.angle(det) / 2
    v = t * torch.polar(torch.ones_like(alpha), -alpha)[..., None, None]
    phi = torch.atan2(v[..., 0, 1].abs(), v[..., 0, 0].abs())
    return torch.stack([phi, alpha, torch.angle(v[..., 0, 0]), torch.angle(v[..., 0, 1])], -1)


def check_orthogonal_blocks(twiddle: torch.Tensor, name: str, unitary: bool) -> None:
    """``ValueError`` unless every 2x2 block is unitary (``unitary``) or a rotation (real case)."""
    gram = twiddle.conj().transpose(-1, -2) @ twiddle
    eye = torch.eye(2, dtype=gram.dtype)
    ok = bool(torch.allclose(gram, eye.expand_as(gram), atol=1e-6))
    if ok and not unitary:
        det = twiddle[..., 0, 0] * twiddle[..., 1, 1] - twiddle[..., 0, 1] * twiddle[..., 1, 0]
        ok = not twiddle.is_complex() and bool((det > 0).all())
    if not ok:
        kind = "unitary" if unitary else "rotation (real orthogonal, determinant 1)"
        raise ValueError(f"{name}: expected {kind} 2x2 blocks, got blocks that are not")


def haar_unitary_angles(shape: tuple[int, ...], generator: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
    """Angles of Haar-random ``U(2)`` elements: ``cos² φ ~ U(0, 1)``, ``α, ψ, χ ~ U(0, 2π)``."""
    u = torch.rand(*shape, 4, generator=generator, dtype=dtype)
    return torch.stack([torch.arccos(u[..., 0].sqrt()), 2 * math.pi * u[..., 1], 2 * math.pi * u[..., 2], 2 * math.pi * u[..., 3]], -1)


def init_twiddle(n: int, init: str, dtype: torch.dtype, increasing_stride: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """One butterfly's twiddles ``(log n, n/2, 2, 2)`` for an initialisation of SPEC.md §7.3."""
    check_init(init, dtype)
    shape = (log2_exact(n, "n"), n // 2)
    real = real_dtype(dtype)
    if init == "randn":
        if dtype.is_complex:
            return torch.complex(*torch.randn(2, *shape, 2, 2, generator=generator, dtype=real) / 2)
        return torch.randn(*shape, 2, 2, generator=generator, dtype=real) / math.sqrt(2)
    if init == "ortho":
        if dtype.is_complex:
            return unitary_twiddle(haar_unitary_angles(shape, generator, real)).to(dtype)
        theta = 2 * math.pi * torch.rand(*shape, generator=generator, dtype=real)
        flip = torch.rand(*shape, generator=generator, dtype=real) < 0.5
        t = rotation_twiddle(theta)
        t[..., :, 1] = torch.where(flip[..., None], -t[..., :, 1], t[..., :, 1])
        return t
    if init == "identity":
        return torch.eye(2, dtype=dtype).expand(*shape, 2, 2).clone()
    if init == "hadamard":
        return hadamard_twiddle(n, dtype)
    return fft_twiddle(n, increasing_stride, inverse=init == "ifft", dtype=dtype)


def init_angles(n: int, init: str, dtype: torch.dtype, increasing_stride: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Angles of an exactly orthogonal/unitary butterfly for an initialisation of SPEC.md §7.3.

    Real layers (rotations, ``(log n, n/2)``): ``randn``/``ortho`` uniform angles, ``identity``.
    Complex layers (4-angle form, ``(log n, n/2, 4)``): ``randn``/``ortho`` Haar-random, ``identity``,
    and the unitary (``1/√2``-scaled) ``hadamard``, ``fft``, ``ifft`` twiddles.
    """
    real = real_dtype(dtype)
    shape = (log2_exact(n, "n"), n // 2)
    if not dtype.is_complex:
        check_init(init, dtype, ("randn", "ortho", "identity"))
        if init == "identity":
            return torch.zeros(shape, dtype=real)
        return 2 * math.pi * torch.rand(*shape, generator=generator, dtype=real)
    check_init(init, dtype)
    if init in ("randn", "ortho"):
        return haar_unitary_angles(shape, generator, real)
    t = init_twiddle(n, init, torch.complex128, increasing_stride)
    if init != "identity":
        t = t / t[..., :1, :].abs().pow(2).sum(-1, keepdim=True).sqrt()  # rows of norm 1
    return unitary_angles(t).to(real)
