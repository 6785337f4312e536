"""Family ``orthogonal_polynomial``: transforms defined by a three-term recurrence
(SPEC.md §4.12, §6.11, checks C6, E).

Polynomials ``p_0 = 1``, ``p_{-1} = 0``, ``p_{i+1}(X) = (a_i X + b_i) p_i(X) + γ_i p_{i-1}(X)``;
with nodes ``z_0, …, z_{m-1}`` the transform is ``T[j, i] = p_i(z_j)`` (``m = out_features``
nodes, ``n = in_features`` degrees), and ``y = T c`` evaluates ``Σ_i c_i p_i`` at the nodes.
The recurrence coefficients ``a, b, γ`` are learnable; presets give the classical families in
``numpy.polynomial``'s conventions (``chebvander``, ``legvander``, ``hermvander``, ``lagvander``)
and Jacobi ``P^{(α, β)}`` in ``scipy.special.eval_jacobi``'s.

Two multiplication algorithms, both of which never form ``T``:

* **fast** (nodes ``"chebyshev"``), ``O(n log² n)`` per row: the divide and conquer of De Sa et
  al. (SODA 2018) over the 2×2 transfer matrices ``T_i(X) = [[a_i X + b_i, γ_i], [1, 0]]``,
  ``[p_{i+1}, p_i]ᵀ = T_i [p_i, p_{i-1}]ᵀ``. For a range ``[l, r)`` of degrees let
  ``T_{[l,r)} = T_{r-1} ⋯ T_l`` and ``S_{[l,r)} = Σ_{i∈[l,r)} c_i e_1ᵀ T_{[l,i)}`` (a row of two
  polynomials); then ``S_{[l,r)} = S_{[l,m)} + S_{[m,r)} T_{[l,m)}`` and
  ``Σ_i c_i p_i = S_{[0,n)} e_1``. All polynomials live in the Chebyshev basis of the interval
  ``[lo, hi]`` -- a polynomial of degree ``< s`` is held as its values at the ``s`` Chebyshev
  points ``cos(π(j+½)/s)`` (mapped to the interval), products are pointwise and the change of
  grid is an orthonormal DCT-II / zero-pad / DCT-III (:mod:`structmat.ops.dct`). This is well
  conditioned where the monomial basis is not. The output nodes are the ``m`` Chebyshev points of
  the interval, read off one more DCT (SPEC.md §4.12: Chebyshev at Chebyshev nodes is a DCT-III).
  The transfer-matrix tree depends only on the parameters (``O(n log² n)`` once per call); the
  transposed multiply runs the same tree downwards (transposition principle, SPEC.md §2.3).
* **clenshaw**, ``O(n m)`` time and ``O(m)`` working memory per row, at any nodes: Clenshaw's
  backward recurrence for ``T c``, the forward three-term recurrence for ``Tᵀ u``. When gradients
  are needed the loop is checkpointed in segments of ``√n`` steps, so training stores
  ``O(√n)`` states instead of ``n``.

``algorithm="auto"`` uses the fast path where it was measured to be accurate
(:data:`FAST_PATH_MAX_DEGREE`, see ``docs/families/polynomial.md``) and Clenshaw elsewhere.
"""

from __future__ import annotations

import contextlib

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..core import StructuredMatrix, register
from ..core.dtypes import flop_scale, real_dtype
from ..core.errors import check_choice, describe
from ..core.registry import Sample
from ..core.sizes import next_power_of_two, pad_last, truncate_last
from ..ops.backend import functorch_transforms
from ..ops.dct import dct2, dct3, dct_flops

PRESETS = ("chebyshev", "legendre", "hermite", "laguerre", "jacobi", "custom")
ALGORITHMS = ("auto", "fast", "clenshaw")

#: Largest number of degrees ``n`` for which ``algorithm="auto"`` takes the fast path, per preset
#: and real dtype: the measured relative error against float64 Clenshaw stays below 1e-10
#: (float64) / 1e-4 (float32) up to these sizes (table in docs/families/polynomial.md).
FAST_PATH_MAX_DEGREE: dict[str, dict[torch.dtype, int]] = {
    "chebyshev": {torch.float64: 1024, torch.float32: 64},
    "legendre": {torch.float64: 1024, torch.float32: 64},
    "jacobi": {torch.float64: 1024, torch.float32: 64},
    "custom": {torch.float64: 1024, torch.float32: 64},
    "hermite": {torch.float64: 96, torch.float32: 32},
    "laguerre": {torch.float64: 128, torch.float32: 32},
}


# ----------------------------------------------------------------------------- recurrences
def recurrence_coefficients(preset: str, n: int, alpha: float = 0.0, beta: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(a, b, γ)`` of a preset for degrees ``0..n-1``: ``a, b`` of length ``n-1`` (steps
    ``0..n-2``) and ``γ`` of length ``n-1`` with ``γ_0`` unused (it multiplies ``p_{-1} = 0``).

    Conventions: Chebyshev ``T_i``; Legendre ``P_i``; physicists' Hermite ``H_i``
    (``H_{i+1} = 2X H_i − 2i H_{i−1}``); Laguerre ``L_i``
    (``(i+1) L_{i+1} = (2i+1−X) L_i − i L_{i−1}``); Jacobi ``P_i^{(α,β)}`` (DLMF 18.9.2).
    """
    preset = check_choice("preset", preset, [p for p in PRESETS if p != "custom"])
    steps = max(n - 1, 0)
    i = np.arange(steps, dtype=np.float64)
    if preset == "chebyshev":
        a, b, g = np.where(i == 0, 1.0, 2.0), np.zeros(steps), -np.ones(steps)
    elif preset == "legendre":
        a, b, g = (2 * i + 1) / (i + 1), np.zeros(steps), -i / (i + 1)
    elif preset == "hermite":
        a, b, g = np.full(steps, 2.0), np.zeros(steps), -2 * i
    elif preset == "laguerre":
        a, b, g = -1 / (i + 1), (2 * i + 1) / (i + 1), -i / (i + 1)
    else:
        a, b, g = _jacobi_coefficients(i, float(alpha), float(beta))
    return a, b, g


def _jacobi_coefficients(i: np.ndarray, alpha: float, beta: float):
    if not (alpha > -1 and beta > -1):
        raise ValueError(f"alpha, beta: expected both > -1 for Jacobi polynomials, got alpha={alpha}, beta={beta}")
    s = alpha + beta
    a, b, g = np.empty_like(i), np.empty_like(i), np.zeros_like(i)
    for k, n in enumerate(i):
        if n == 0:  # P_1 = (α+1) + (α+β+2)(X−1)/2
            a[k], b[k] = (s + 2) / 2, (alpha - beta) / 2
            continue
        c = 2 * (n + 1) * (n + s + 1) * (2 * n + s)
        a[k] = (2 * n + s + 1) * (2 * n + s + 2) * (2 * n + s) / c
        b[k] = (2 * n + s + 1) * (alpha**2 - beta**2) / c
        g[k] = -2 * (n + alpha) * (n + beta) * (2 * n + s + 2) / c
    return a, b, g


def default_interval(preset: str, n: int) -> tuple[float, float]:
    """The interval whose Chebyshev points are the default nodes: ``[-1, 1]`` for the Jacobi
    family (Chebyshev, Legendre, Jacobi) and custom recurrences, ``[-√(2n+1), √(2n+1)]`` for
    Hermite and ``[0, 4n+2]`` for Laguerre (the oscillatory regions, which hold their zeros)."""
    if preset == "hermite":
        half = math.sqrt(2 * n + 1)
        return (-half, half)
    if preset == "laguerre":
        return (0.0, 4.0 * n + 2.0)
    return (-1.0, 1.0)


def chebyshev_points(m: int, interval: tuple[float, float] = (-1.0, 1.0), dtype=torch.float64, device=None) -> torch.Tensor:
    """``lo + (hi−lo)(1 + cos(π(j+½)/m))/2`` for ``j < m`` (decreasing, SPEC.md §4.12)."""
    lo, hi = interval
    theta = math.pi * (torch.arange(m, dtype=torch.float64) + 0.5) / m
    points = (hi + lo) / 2 + (hi - lo) / 2 * torch.cos(theta)
    return points.to(dtype=dtype, device=device)


def gauss_points(preset: str, m: int, alpha: float = 0.0, beta: float = 0.0) -> np.ndarray:
    """Gauss quadrature nodes (increasing) of the preset's weight, ``m`` of them."""
    import numpy.polynomial as P
    import scipy.special

    rules = {
        "chebyshev": lambda: P.chebyshev.chebgauss(m)[0][::-1],
        "legendre": lambda: P.legendre.leggauss(m)[0],
        "hermite": lambda: P.hermite.hermgauss(m)[0],
        "laguerre": lambda: P.laguerre.laggauss(m)[0],
        "jacobi": lambda: scipy.special.roots_jacobi(m, alpha, beta)[0],
    }
    if preset not in rules:
        raise ValueError(f"nodes: 'gauss' needs a preset with a weight ({', '.join(rules)}), got preset {preset!r}; pass explicit nodes instead")
    return np.ascontiguousarray(rules[preset](), dtype=np.float64)


# ----------------------------------------------------------------------------- Chebyshev grids
def _regrid(values: torch.Tensor, size: int, transpose: bool = False) -> torch.Tensor:
    """Change of Chebyshev grid along the last dimension.

    Forward (``transpose=False``): values of a polynomial of degree ``< s`` at the ``s``
    Chebyshev points -> its values at ``size >= s`` points (orthonormal DCT-II, zero-pad, rescale
    by ``sqrt(size/s)``, DCT-III; exact). ``transpose=True`` applies the transpose of the forward
    map from ``size`` points to ``s``, i.e. from the larger grid ``values.shape[-1]`` down to
    ``size`` (DCT-II, truncate, same rescale, DCT-III). Cost ``O(size log size)``.
    """
    old = values.shape[-1]
    if old == size:
        return values
    scale = math.sqrt(max(old, size) / min(old, size))
    coefficients = dct2(values)
    coefficients = truncate_last(coefficients, size) if transpose else pad_last(coefficients, size)
    return dct3(coefficients * scale)


def _sample_grid(output_nodes: int, degree_bound: int) -> tuple[int, int]:
    """``(L, q)``: the ``m`` Chebyshev points are every ``q``-th point (offset ``(q-1)/2``) of the
    ``L = m q`` point grid, ``q`` odd and ``L >= degree_bound``."""
    q = -(-degree_bound // output_nodes)
    q += (q + 1) % 2
    return output_nodes * q, q


def _transfer_tree(A: torch.Tensor, B: torch.Tensor, G: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Values of the transfer matrices ``T_{[kh, kh+h)}`` of the recurrence in ``t ∈ [-1, 1]``
    (``T_i(t) = [[A_i t + B_i, G_i], [1, 0]]``) at the ``2h`` Chebyshev points, for
    ``h = 1, 2, …, size/2``: tensors of shape ``(size/h, 2, 2, 2h)``. Cost ``O(size log² size)``."""
    tree = []
    if size < 2:
        return tree
    t = torch.cos(math.pi * (torch.arange(2, dtype=real_dtype(A.dtype), device=A.device) + 0.5) / 2)
    top = torch.stack((A[:, None] * t + B[:, None], G[:, None].expand(-1, 2)), dim=1)
    bottom = torch.stack((torch.ones_like(top[:, 0]), torch.zeros_like(top[:, 0])), dim=1)
    level = torch.stack((top, bottom), dim=1)  # (size, 2, 2, 2)
    tree.append(level)
    h = 1
    while 2 * h < size:
        fine = _regrid(level, 4 * h)
        level = torch.einsum("krsg,kscg->krcg", fine[1::2], fine[0::2])  # T_right · T_left
        h *= 2
        tree.append(level)
    return tree


# ----------------------------------------------------------------------------- samples
def _samples():
    return [
        Sample(12, 20),
        Sample(16, 16, {"preset": "chebyshev"}),
        Sample(9, 5, {"preset": "hermite"}),
        Sample(7, 11, {"preset": "laguerre", "nodes": "gauss"}),
        Sample(6, 6, {"preset": "jacobi", "alpha": 0.5, "beta": -0.25}),
        Sample(10, 4, {"algorithm": "clenshaw"}),
        Sample(1, 1),
    ]


@register(
    "orthogonal_polynomial",
    samples=_samples,
    params_formula="max(3n − 4, 0) (recurrence coefficients)",
    flops_formula="O(n log² n + m log m) fast; 5·n·m Clenshaw",
    size_ladder=lambda m, n: [{}],
)
class OrthogonalPolynomial(StructuredMatrix):
    """Orthogonal-polynomial transform ``T[j, i] = p_i(z_j)`` with learnable recurrence.

    Args:
        preset: ``"legendre"`` (default), ``"chebyshev"``, ``"hermite"``, ``"laguerre"``,
            ``"jacobi"`` (with ``alpha``, ``beta``) or ``"custom"`` (with ``coefficients``); the
            initial recurrence coefficients.
        nodes: ``"chebyshev"`` (default: the ``m`` Chebyshev points of ``interval``, fast path),
            ``"gauss"`` (Gauss nodes of the preset's weight) or a list of ``m`` floats.
        interval: ``[lo, hi]`` of the Chebyshev nodes and of the fast path's basis; default
            from :func:`default_interval`.
        alpha, beta: Jacobi parameters (``> -1``).
        coefficients: for ``preset="custom"``: ``{"a": [...], "b": [...], "gamma": [...]}`` with
            ``n-1``, ``n-1`` and ``n-2`` entries (``gamma`` starts at step 1).
        algorithm: ``"auto"`` (default), ``"fast"`` (needs Chebyshev nodes) or ``"clenshaw"``.

    Parameters: ``a, b`` (``n-1`` each) and ``gamma`` (``n-2``, steps ``1..n-2``). Costs: fast
    ``O(n log² n + m log m)`` per row after an ``O(n log² n)`` parameter-only tree, memory
    ``O(n + m)`` per row; Clenshaw ``O(n m)`` per row, memory ``O(m)`` per row (plus an
    ``m × √n`` tile of polynomial values for the transpose). Accuracy (relative to
    float64 Clenshaw, random coefficients): see ``docs/families/polynomial.md``; the fast path
    is used by ``"auto"`` only within :data:`FAST_PATH_MAX_DEGREE`.

    Example::

        >>> T = OrthogonalPolynomial(8, 8, preset="chebyshev", dtype=torch.float64)
        >>> T(torch.eye(8, dtype=torch.float64)).shape   # rows: p_0..p_7 at the nodes
        torch.Size([8, 8])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        preset: str = "legendre",
        nodes: Any = "chebyshev",
        interval: list | tuple | None = None,
        alpha: float = 0.0,
        beta: float = 0.0,
        coefficients: dict | None = None,
        algorithm: str = "auto",
        device=None,
        dtype=None,
    ) -> None:
        preset = check_choice("preset", preset, PRESETS)
        algorithm = check_choice("algorithm", algorithm, ALGORITHMS)
        if isinstance(nodes, str):
            nodes = check_choice("nodes", nodes, ["chebyshev", "gauss"])
        n, m = in_features, out_features
        if preset == "custom":
            coefficients = _check_custom(coefficients, n)
        elif coefficients is not None:
            raise ValueError(f"coefficients: only used with preset='custom', got preset={preset!r}")
        if interval is None:
            interval = default_interval(preset, n)
        if not (isinstance(interval, (list, tuple)) and len(interval) == 2 and float(interval[0]) < float(interval[1])):
            raise ValueError(f"interval: expected [lo, hi] with lo < hi, got {describe(interval)}")
        interval = [float(interval[0]), float(interval[1])]
        if algorithm == "fast" and nodes != "chebyshev":
            raise ValueError(f"algorithm: 'fast' needs nodes='chebyshev', got nodes={nodes!r}; use 'auto' or 'clenshaw'")
        if not isinstance(nodes, str):
            node_values = _check_nodes(nodes, m)
            nodes = node_values.tolist()
        elif nodes == "gauss":
            node_values = gauss_points(preset, m, alpha, beta)
        else:
            node_values = chebyshev_points(m, tuple(interval)).numpy()
        options = dict(preset=preset, nodes=nodes, interval=interval, alpha=float(alpha), beta=float(beta), coefficients=coefficients, algorithm=algorithm)
        super().__init__(in_features, out_features, device=device, dtype=dtype, **options)
        steps = max(n - 1, 0)
        for name, length in (("a", steps), ("b", steps), ("gamma", max(n - 2, 0))):
            values = torch.empty(length, device=device, dtype=self.dtype)
            if length:
                self.register_parameter(name, nn.Parameter(values))
            else:  # nothing to learn (n <= 2): an empty constant keeps the code paths uniform
                self.register_buffer(name, values, persistent=False)
        # float64 master copy: the buffer follows dtype moves, the algorithms use exact nodes
        self._exact_nodes = torch.as_tensor(node_values, dtype=torch.float64)
        self.register_buffer("nodes", self._exact_nodes.to(dtype=real_dtype(self.dtype), device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        o, n = self.options, self.in_features
        if o["preset"] == "custom":
            a, b, g = (np.asarray(o["coefficients"][k], dtype=np.float64) for k in ("a", "b", "gamma"))
        else:
            a, b, g = recurrence_coefficients(o["preset"], n, o["alpha"], o["beta"])
            g = g[1:]
        with torch.no_grad():
            for param, values in ((self.a, a), (self.b, b), (self.gamma, g)):
                param.copy_(torch.as_tensor(values, dtype=torch.float64).to(param.dtype))

    # ------------------------------------------------------------------ algorithm choice
    @property
    def uses_fast_path(self) -> bool:
        """Whether multiplication runs the divide and conquer (else Clenshaw)."""
        o = self.options
        if o["algorithm"] != "auto":
            return o["algorithm"] == "fast"
        if o["nodes"] != "chebyshev":
            return False
        precision = torch.float64 if real_dtype(self.dtype) == torch.float64 else torch.float32
        return self.in_features <= FAST_PATH_MAX_DEGREE[o["preset"]][precision]

    def _full_coefficients(self):
        """``a, b`` padded to ``n`` steps and ``γ`` to ``n + 1`` (unused steps are zero)."""
        zero = torch.zeros(1, dtype=self.dtype, device=self.a.device)
        n = self.in_features
        a = torch.cat((self.a, zero))[:n]
        b = torch.cat((self.b, zero))[:n]
        gamma = torch.cat((zero, self.gamma, zero, zero))[: n + 1]
        return a, b, gamma

    # ------------------------------------------------------------------ fast path
    def _shifted_recurrence(self, size: int):
        """Step coefficients in ``t ∈ [-1, 1]`` (``X = mid + half·t``), padded to ``size`` steps."""
        lo, hi = self.options["interval"]
        mid, half = (hi + lo) / 2, (hi - lo) / 2
        a, b, gamma = self._full_coefficients()
        A, B, G = a * half, a * mid + b, gamma[: self.in_features]
        return (pad_last(v, size) for v in (A, B, G))

    def _fast_forward(self, x: torch.Tensor) -> torch.Tensor:
        N = next_power_of_two(self.in_features)
        tree = _transfer_tree(*self._shifted_recurrence(N), N)
        batch = x.shape[0]
        c = pad_last(x, N)
        state = torch.stack((c, torch.zeros_like(c)), dim=-1).unsqueeze(-1)  # (B, N, 2, 1)
        h = 1
        for level in tree:
            left = _regrid(state[:, 0::2], 2 * h)
            right = _regrid(state[:, 1::2], 2 * h)
            state = left + torch.einsum("bkrg,krcg->bkcg", right, level[0::2])
            h *= 2
        values = state[:, 0, 0, :]  # Σ c_i p_i at the N Chebyshev points
        L, q = _sample_grid(self.out_features, N)
        return _regrid(values, L)[:, (q - 1) // 2 :: q].reshape(batch, self.out_features)

    def _fast_transpose(self, y: torch.Tensor) -> torch.Tensor:
        N = next_power_of_two(self.in_features)
        tree = _transfer_tree(*self._shifted_recurrence(N), N)
        batch = y.shape[0]
        L, q = _sample_grid(self.out_features, N)
        # y at grid points (q - 1)/2 + q i, zeros between: padding, not an in-place write into a fresh
        # tensor (which torch.func.vmap refuses for a batched y)
        offset = (q - 1) // 2
        spread = torch.nn.functional.pad(y.unsqueeze(-1), (offset, q - 1 - offset)).reshape(batch, -1)
        grid = pad_last(spread, L) if spread.shape[-1] <= L else spread[:, :L]
        values = _regrid(grid, N, transpose=True)
        state = torch.stack((values, torch.zeros_like(values)), dim=1).unsqueeze(1)  # (B, 1, 2, N)
        h = N // 2
        for level in reversed(tree):
            left = _regrid(state, h, transpose=True)
            right = _regrid(torch.einsum("bkcg,krcg->bkrg", state, level[0::2]), h, transpose=True)
            state = torch.stack((left, right), dim=2).reshape(batch, -1, 2, h)
            h //= 2
        return truncate_last(state[:, :, 0, 0], self.in_features)

    # ------------------------------------------------------------------ Clenshaw
    def _clenshaw_forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, gamma = self._full_coefficients()
        z = self._exact_nodes.to(dtype=x.dtype, device=x.device)
        zeros = torch.zeros(x.shape[0], self.out_features, dtype=x.dtype, device=x.device)

        def segment(start: int, stop: int, beta1, beta2, x, a, b, gamma):
            # β_t = c_t + (a_t z + b_t) β_{t+1} + γ_{t+1} β_{t+2}, t = stop-1 … start; the segment's
            # (a_t z + b_t) rows are formed at once, and each step makes two passes over the (B, m)
            # state into one new buffer (a step costs two kernels, not eight small ones)
            factors = (a[start:stop, None] * z + b[start:stop, None]).unbind(0)
            columns = x[:, start:stop, None].unbind(1)
            gammas = gamma[start + 1 : stop + 1].unbind(0)
            for t in reversed(range(stop - start)):
                beta1, beta2 = torch.addcmul(columns[t], factors[t], beta1).addcmul_(gammas[t], beta2), beta1
            return beta1, beta2

        state = (zeros, zeros)
        for start, stop in reversed(_segments(self.in_features)):
            state = _maybe_checkpoint(segment, start, stop, *state, x, a, b, gamma)
        return state[0]

    def _clenshaw_transpose(self, y: torch.Tensor) -> torch.Tensor:
        a, b, gamma = self._full_coefficients()
        z = self._exact_nodes.to(dtype=y.dtype, device=y.device)
        ones = torch.ones_like(z)

        def segment(start: int, stop: int, p, p_prev, y, a, b, gamma):
            # (Tᵀ u)_i = Σ_j u_j p_i(z_j); p_{i+1} = (a_i z + b_i) p_i + γ_i p_{i-1}: the segment's
            # values p_i(z) (m × segment, O(m √n) memory) by the recurrence, then one product with y
            factors = (a[start:stop, None] * z + b[start:stop, None]).unbind(0)
            gammas = gamma[start:stop].unbind(0)
            values = []
            for i in range(stop - start):
                values.append(p)
                p, p_prev = torch.addcmul(gammas[i] * p_prev, factors[i], p), p
            return p, p_prev, y @ torch.stack(values, dim=1)

        p, p_prev, blocks = ones, torch.zeros_like(ones), []
        for start, stop in _segments(self.in_features):
            p, p_prev, block = _maybe_checkpoint(segment, start, stop, p, p_prev, y, a, b, gamma)
            blocks.append(block)
        return torch.cat(blocks, dim=1)

    # ------------------------------------------------------------------ protocol
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with _full_precision(x):
            return self._fast_forward(x) if self.uses_fast_path else self._clenshaw_forward(x)

    def _forward_transpose(self, y: torch.Tensor) -> torch.Tensor:
        with _full_precision(y):
            return self._fast_transpose(y) if self.uses_fast_path else self._clenshaw_transpose(y)

    def to_dense(self) -> torch.Tensor:
        """``T[j, i] = p_i(z_j)``, built column by column from the recurrence (SPEC.md §6.11)."""
        a, b, gamma = self._full_coefficients()
        z = self._exact_nodes.to(dtype=self.dtype, device=self.device)
        columns = [torch.ones_like(z)]
        previous = torch.zeros_like(z)
        for i in range(self.in_features - 1):
            columns.append((a[i] * z + b[i]) * columns[-1] + gamma[i] * previous)
            previous = columns[-2]
        return torch.stack(columns, dim=1)

    def _matvec_flops(self) -> int:
        mul, add = flop_scale(self.dtype)
        n, m = self.in_features, self.out_features
        if not self.uses_fast_path:
            return n * m * (3 * mul + 2 * add)
        N = next_power_of_two(n)
        total, h = 0, 1
        while h < N:
            pairs = N // (2 * h)
            # regrid of 2 children x 2 components, then a 2x2 pointwise product and the addition
            total += pairs * (4 * (dct_flops(h, self.dtype) + dct_flops(2 * h, self.dtype)) + 2 * h * (4 * mul + 4 * add))
            h *= 2
        L, _ = _sample_grid(m, N)
        return total + dct_flops(N, self.dtype) + dct_flops(L, self.dtype)


def _segments(n: int) -> list[tuple[int, int]]:
    length = max(1, math.isqrt(n))
    return [(start, min(start + length, n)) for start in range(0, n, length)]


def _full_precision(x: torch.Tensor):
    """Autocast off where it is on: the transfer tree and the recurrence amplify rounding errors
    (entries grow like the polynomials), so a bfloat16 product lost ~15 % of the result; the layer
    computes in its own dtype under autocast as well. (No context otherwise: ``torch.autocast``
    refuses device types without autocast, such as ``meta``.)"""
    device = x.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return torch.autocast(device, enabled=False)
    return contextlib.nullcontext()


def _maybe_checkpoint(fn, *args):
    """Run ``fn`` with activation checkpointing when a tensor argument needs gradients (not under a
    ``torch.func`` transform, which refuses the saved-tensor hooks checkpointing uses: there the
    segment keeps its activations)."""
    if torch.is_grad_enabled() and not functorch_transforms() and any(isinstance(v, torch.Tensor) and v.requires_grad for v in args):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def _check_custom(coefficients: Any, n: int) -> dict:
    expected = {"a": max(n - 1, 0), "b": max(n - 1, 0), "gamma": max(n - 2, 0)}
    if not isinstance(coefficients, dict) or set(coefficients) != set(expected):
        raise ValueError(f"coefficients: expected a dict with keys 'a', 'b', 'gamma' for preset='custom', got {describe(coefficients)}")
    checked = {}
    for key, length in expected.items():
        values = [float(v) for v in np.asarray(coefficients[key], dtype=np.float64).reshape(-1)]
        if len(values) != length:
            raise ValueError(f"coefficients: expected {length} values for {key!r} (n = {n} degrees), got {len(values)}")
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"coefficients: expected finite values for {key!r}, got {values}")
        checked[key] = values
    return checked


def _check_nodes(nodes: Any, m: int) -> np.ndarray:
    try:
        values = np.asarray(nodes, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"nodes: expected 'chebyshev', 'gauss' or a list of {m} floats, got {describe(nodes)}") from exc
    if values.shape[0] != m or not np.all(np.isfinite(values)):
        raise ValueError(f"nodes: expected {m} finite values (one per output), got {describe(nodes)}")
    return values
