"""Projection of a dense matrix onto any registered family (DESIGN.md §2, SPEC.md §7.5).

:func:`project` returns the closest member it can find under the Frobenius norm:

* **closed form** -- the family's ``from_dense`` classmethod (truncated SVD, top-``s`` sparsity,
  Monarch Algorithm 1, Kronecker rearranged SVD, diagonal averaging, ...);
* **closed form + fit** -- for families whose ``from_dense`` is a heuristic (SPEC.md §7.5:
  butterfly hierarchical factorisation, LDR displacement truncation, ...), a gradient fit
  warm-started at the closed-form member; the better of the two is kept (no fit when the closed form
  is already exact, relative error ``<= 1e-12``);
* **hierarchical (+ fit)** -- ``bp`` and ``kaleidoscope``: the closed-form hierarchical
  factorisation of :mod:`structmat.fit.hierarchical` (exact for BP members, with the gate
  permutation found by a beam search), then the fit as above;
* **fit** -- for the other families without a projection (LDR with learned operators, ...), a gradient fit
  (:func:`~structmat.fit.fitting.fit`) from an orthogonal initialisation where the family offers
  one (``init="ortho"``), with restarts.

``params=`` is a parameter budget (an int, or a float fraction of ``out·in``) that picks the
family's size options (rank, blocks, width, nonzeros) through
:func:`structmat.core.registry.options_for_budget`; the result never exceeds it. The result is
never worse than the zero matrix: if the best multiple ``αM`` of the member found is closer, it is
rescaled when one parameter tensor scales the matrix linearly; a member worse than zero is
replaced by the zero member (all parameters zero) -- except in families without a zero member
(e.g. Cauchy), which ``method`` then reports.

Example::

    >>> W = torch.randn(64, 48, dtype=torch.float64)
    >>> result = project(W, "low_rank", params=0.25)
    >>> result.method, result.layer.num_parameters <= 0.25 * 64 * 48
    ('closed_form', True)
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core import registry
from ..core.base import StructuredMatrix
from ..core.errors import check_finite, check_matrix, describe
from ..core.linear import StructuredLinear
from .fitting import dense_matrix, fit
from .hierarchical import HIERARCHICAL_PROJECTIONS, hierarchical_projection

#: Families whose ``from_dense`` is the exact Frobenius-optimal projection for the options given
#: (SPEC.md §7.5 "Exact/optimal"); other projections are polished by a gradient fit under
#: ``method="auto"``. A family class may also declare ``projection_is_optimal = True/False``.
OPTIMAL_PROJECTIONS = frozenset(
    {"dense", "diagonal", "low_rank", "sparse", "circulant", "toeplitz", "hankel", "monarch", "btt", "kronecker", "block_diagonal"}
)

METHODS = ("auto", "closed_form", "fit")


@dataclass
class ProjectionResult:
    """Outcome of :func:`project`.

    Attributes:
        layer: bias-free :class:`StructuredLinear` whose ``to_dense()`` approximates ``W``.
        rel_error: ``‖W − layer.to_dense()‖_F / ‖W‖_F`` (0 for ``W = 0``).
        method: ``"closed_form"``, ``"closed_form+fit"``, ``"hierarchical"``, ``"hierarchical+fit"``,
            ``"fit"``, with ``"+time_limit"`` (the fit was cut short by ``time_limit``), ``"+rescaled"`` or
            replaced by ``"zero"`` when the never-worse-than-zero guard acted;
            ``"+no_zero_member"`` when the result is worse than zero but the family can neither
            rescale nor reach the zero matrix (e.g. Cauchy), so the guard could not act.
        seconds: wall-clock time.
        options: the family options of ``layer``.
        budget: the absolute parameter budget (``None`` without ``params``).
    """

    layer: StructuredLinear
    rel_error: float
    method: str
    seconds: float
    options: dict = field(default_factory=dict)
    budget: int | None = None

    @property
    def num_parameters(self) -> int:
        return self.layer.num_parameters


def relative_error(approximation: torch.Tensor, W: torch.Tensor) -> float:
    """``‖W − A‖_F / ‖W‖_F``; ``‖A‖_F`` relative to 1 when ``W = 0``."""
    with torch.no_grad():
        norm = float(torch.linalg.norm(W))
        return float(torch.linalg.norm(approximation - W)) / (norm if norm > 0 else 1.0)


def _is_optimal(info: registry.FamilyInfo) -> bool:
    declared = getattr(info.cls, "projection_is_optimal", None)
    return bool(declared) if declared is not None else info.name in OPTIMAL_PROJECTIONS


def _split_options(info: registry.FamilyInfo, options: dict) -> tuple[dict, dict]:
    """Separate constructor options from extra ``from_dense`` (or hierarchical factorisation)
    arguments (e.g. ``method``, ``beam``)."""
    constructor = set(info.option_names)
    if info.has_projection:
        projection = set(inspect.signature(info.cls.from_dense).parameters) - {"W", "cls"}
    elif info.name in HIERARCHICAL_PROJECTIONS:
        projection = set(inspect.signature(HIERARCHICAL_PROJECTIONS[info.name]).parameters) - {"W"}
    else:
        projection = set()
    unknown = [k for k in options if k not in constructor and k not in projection]
    if unknown:
        info.validate_options({unknown[0]: options[unknown[0]]})
    return {k: v for k, v in options.items() if k in constructor}, {k: v for k, v in options.items() if k not in constructor}


def _ortho_init(info: registry.FamilyInfo, in_features: int, out_features: int, dtype, options: dict) -> dict:
    """``options`` with ``init="ortho"`` when the family accepts it (SPEC.md §7.3)."""
    if "init" in options or "init" not in info.option_names:
        return options
    try:
        info.create(in_features, out_features, device="meta", dtype=dtype, **options, init="ortho")
    except (ValueError, TypeError):
        return options
    return {**options, "init": "ortho"}


def _closed_form(info: registry.FamilyInfo, W: torch.Tensor, options: dict, extra: dict) -> StructuredMatrix:
    accepted = inspect.signature(info.cls.from_dense).parameters
    kwargs = {k: v for k, v in options.items() if k in accepted}
    member = info.cls.from_dense(W, **kwargs, **extra)
    if not isinstance(member, StructuredMatrix):
        raise TypeError(f"{info.name}.from_dense: expected a StructuredMatrix, got {describe(member)}")
    return member


def _rescale_or_zero(matrix: StructuredMatrix, W: torch.Tensor, error: float) -> tuple[float, str]:
    """Apply the never-worse-than-zero guard in place; returns ``(rel_error, suffix)``.

    The best multiple of ``M`` is ``α M`` with ``α = <M, W> / ‖M‖²`` (real part for real layers);
    it is realised by scaling one parameter tensor in which ``M`` is linear (checked numerically).
    When that fails and ``M`` is worse than zero, every parameter is zeroed (checked: ``M = 0``).
    """
    with torch.no_grad():
        M = dense_matrix(matrix)
        norm2 = float(torch.linalg.norm(M)) ** 2
        if norm2 > 0:
            alpha = complex((M.conj() * W).sum()) / norm2
            if not M.is_complex():
                alpha = alpha.real
            if abs(alpha - 1) > 1e-9 and relative_error(alpha * M, W) < error * (1 - 1e-9):
                for p in matrix.parameters():
                    if not p.requires_grad or (isinstance(alpha, complex) and not p.is_complex()):
                        continue
                    saved = p.detach().clone()
                    p.mul_(alpha)
                    candidate = dense_matrix(matrix)
                    if float(torch.linalg.norm(candidate - alpha * M)) <= 1e-9 * math.sqrt(norm2) * max(1.0, abs(alpha)):
                        return relative_error(candidate, W), "+rescaled"
                    p.copy_(saved)
        if error <= 1.0:
            return error, ""
        saved = {k: v.clone() for k, v in matrix.state_dict().items()}
        for p in matrix.parameters():
            p.zero_()
        zero = dense_matrix(matrix)
        zero_error = relative_error(zero, W)
        if not bool(torch.isfinite(zero).all()) or bool(zero.abs().sum() > 0):
            # the family has no zero member (e.g. Cauchy 1/(s_i - t_j)) and M is not linear in
            # any single parameter tensor: keep M and say so
            matrix.load_state_dict(saved)
            return error, "+no_zero_member"
        return zero_error, "zero"


def project(
    W: Any,
    structure: str,
    params: int | float | None = None,
    *,
    method: str = "auto",
    steps: int = 600,
    lr: float = 1e-2,
    restarts: int = 1,
    seed: int = 0,
    lbfgs_steps: int = 50,
    time_limit: float | None = None,
    progress: bool | None = None,
    **options: Any,
) -> ProjectionResult:
    """Project ``W`` onto the family ``structure`` (see the module docstring).

    Args:
        W: ``(out_features, in_features)`` real or complex matrix, finite entries.
        structure: registered family name.
        params: parameter budget -- int (count) or float in (0, 1] (fraction of ``out·in``);
            chooses the size options. Without it, ``options`` (or the family defaults) decide.
        method: ``"auto"`` (closed form where one exists, polished by a fit when the closed form
            is a heuristic and not already exact), ``"closed_form"`` (only the closed form, the
            hierarchical factorisation for ``bp``/``kaleidoscope``) or ``"fit"`` (only fitting).
        steps, lr, restarts, seed, lbfgs_steps, time_limit, progress: passed to
            :func:`~structmat.fit.fitting.fit` when fitting (``time_limit`` bounds the fit alone;
            ``method`` then ends in ``"+time_limit"`` when it cut the fit short).
        **options: family options, and extra arguments of the family's ``from_dense``.

    Returns:
        :class:`ProjectionResult` ``(layer, rel_error, method, seconds, options, budget)``.

    Raises:
        ValueError: non-2-D or non-finite ``W``; unknown family; budget below the family's
            smallest member; ``method="closed_form"`` for a family without one; a fixed family
            without a projection.
    """
    start = time.perf_counter()
    W = check_finite("W", check_matrix("W", W)).detach()
    if W.dtype not in (torch.float32, torch.float64, torch.complex64, torch.complex128):
        W = W.to(torch.float64)
    info = registry.get(structure)
    if method not in METHODS:
        raise ValueError(f"method: expected one of {list(METHODS)}, got {describe(method)}")
    out_features, in_features = W.shape
    if W.is_complex() and not info.supports_complex:
        raise ValueError(f"W: structure {info.name!r} is real-only, got a complex tensor of dtype {W.dtype}")
    fixed = "fixed" in info.tags or not info.trainable
    hierarchical = not info.has_projection and info.name in HIERARCHICAL_PROJECTIONS
    if method == "closed_form" and not info.has_projection and not hierarchical:
        raise ValueError(f"method: structure {info.name!r} has no closed-form projection; use method='fit' or 'auto'")
    if fixed and not info.has_projection:
        raise ValueError(f"structure: {info.name!r} is a fixed family (no trainable parameters) without a projection")
    constructor, extra = _split_options(info, options)
    budget = None
    if params is not None:
        budget = registry.resolve_budget(params, in_features, out_features)
        constructor = registry.options_for_budget(info.name, in_features, out_features, budget, dtype=W.dtype, **constructor)

    fit_args = dict(steps=steps, lr=lr, restarts=restarts, seed=seed, lbfgs_steps=lbfgs_steps, time_limit=time_limit, progress=progress, tol=0.0)
    candidates: list[tuple[float, str, StructuredMatrix]] = []
    if info.has_projection and method != "fit":
        member = _closed_form(info, W, constructor, extra)
        if budget is None or member.num_parameters <= budget:
            candidates.append((relative_error(dense_matrix(member), W), "closed_form", member))
    elif hierarchical and method != "fit":
        member = hierarchical_projection(info.name, W, **constructor, **extra)
        if budget is None or member.num_parameters <= budget:
            candidates.append((relative_error(dense_matrix(member), W), "hierarchical", member))
    closed_exact = candidates and candidates[0][0] <= 1e-12
    want_fit = not fixed and (
        method == "fit" or not candidates or (method == "auto" and not closed_exact and not _is_optimal(info))
    )
    if want_fit:
        if candidates:
            warm = candidates[0][2]
            fitted = fit(W, info.name, warm_start=warm, dtype=W.dtype, family_options=dict(warm.options), **fit_args)
            label = candidates[0][1] + "+fit"
        else:
            fit_options = _ortho_init(info, in_features, out_features, W.dtype, constructor)
            fitted = fit(W, info.name, dtype=W.dtype, family_options=fit_options, **fit_args)
            label = "fit"
        if fitted.timed_out:
            label += "+time_limit"
        candidates.append((relative_error(dense_matrix(fitted.layer.matrix), W), label, fitted.layer.matrix))
    error, label, member = min(candidates, key=lambda c: c[0])
    error = relative_error(dense_matrix(member), W)
    if not fixed:
        error, suffix = _rescale_or_zero(member, W, error)
        label = "zero" if suffix == "zero" else label + suffix
    layer = StructuredLinear.from_matrix(member)
    return ProjectionResult(
        layer=layer,
        rel_error=error,
        method=label,
        seconds=time.perf_counter() - start,
        options=dict(member.options),
        budget=budget,
    )
