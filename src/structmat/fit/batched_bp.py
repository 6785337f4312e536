"""Batched restarts for fitting BP/BPBP with learnable permutations (SPEC.md §4.15, §7.2, §7.4).

:func:`fit_bp` trains ``R`` restarts of the ``bp`` family *at once*: every parameter carries a
leading restart dimension, the dense matrices of all restarts are computed in one pass (the model
applied to the identity, ``R·N`` rows), and the loss is the sum of the per-restart losses of
SPEC.md §7.1, so the restarts stay independent (Adam is elementwise; each restart has its own
learning rate). For the small sizes of transform recovery this costs about as much as a single
restart, because per-operation overhead, not arithmetic, dominates.

Protocol (SPEC.md §7.4, adapted):

1. **Relaxed phase** -- Adam (cosine schedule) on twiddles and gate logits (logits at
   ``lr_multipliers['logits']`` times the twiddle rate), successive halving over the restarts;
2. **Rounding** -- the gates of every survivor are rounded to {0, 1} (logits set to ``±ROUNDED_LOGIT``,
   i.e. ``≥ 1 − 2·10⁻⁹`` mass per gate, SPEC.md §7.2) and frozen;
3. **Hard phase** -- Adam on the twiddles only, successive halving continues;
4. **Polish** -- L-BFGS on the best survivor.

The returned layer is an ordinary ``bp`` member (``RealPart`` of one for real targets fitted by a
complex model); its RMSE is recomputed from ``layer.to_dense()``. ``identity_butterflies`` freezes
the butterflies of the listed modules at the identity: with ``n_modules=2`` and ``(0,)`` the model
is ``B · P₂ · P₁``, the paper's "BP with an additional learnable permutation factor" used for
DCT/DST (SPEC.md §7.4).

Cost per step: ``R · N² (3 log N + 9 (log N − 1))`` real flops per module (complex: about 4×), one
backward of the same order, ``O(R N²)`` memory.
"""

from __future__ import annotations

import math

import torch

from ..core.dtypes import real_dtype
from ..core.linear import StructuredLinear
from ..families.bp import BP
from ..ops.permutation import _RELAXED_GENERATORS, relaxed_permutation_levels
from ..core.compose import RealPart

#: logit magnitude of a rounded gate: ``sigmoid(20) = 1 − 2.1·10⁻⁹``
ROUNDED_LOGIT = 20.0


def gate_indices(n: int) -> torch.Tensor:
    """``(log n − 1, 8 n)``: per level ``t`` (blocks of size ``n / 2^t``) the gather indices of the 8
    products ``(P^c)^{s_c} (P^b)^{s_b} (P^a)^{s_a}`` applied blockwise, subset ``S = 4 s_c + 2 s_b + s_a``
    (SPEC.md §7.2)."""
    rows = []
    for t in range(relaxed_permutation_levels(n)):
        m = n >> t
        offsets = torch.arange(0, n, m)[:, None]
        generators = [(offsets + generator(m)[None, :]).reshape(-1) for generator in _RELAXED_GENERATORS]
        subsets = []
        for subset in range(8):
            index = torch.arange(n)
            for s in range(3):  # a first: (P x)_i = x_{σ(i)}, so x[σ_a][σ_b] = x[σ_a[σ_b]]
                if subset >> s & 1:
                    index = index[generators[s]]
            subsets.append(index)
        rows.append(torch.cat(subsets))
    return torch.stack(rows) if rows else torch.zeros(0, 8 * n, dtype=torch.long)


def subset_weights(probabilities: torch.Tensor) -> torch.Tensor:
    """``(…, 8)``: weight of each product ``S`` in the relaxed level factor
    ``Π_s (p_s P^s + (1 − p_s) I)``, from gate probabilities ``(…, 3)``."""
    weights = torch.ones_like(probabilities[..., :1])
    for s in range(3):
        p = probabilities[..., s : s + 1]
        weights = torch.cat([weights * (1 - p), weights * p], dim=-1)
    return weights


class BatchedBPModel:
    """``R`` independent ``bp`` members of size ``N`` (``n_modules`` modules, learned permutations),
    with parameters stacked along a leading restart dimension.

    ``twiddle``: real ``(R, k, N − 1, 2, 2)`` (or ``(…, 2, 2, 2)``, the real view of complex
    twiddles); ``logits``: ``(R, k, log N − 1, 3)``; both leaf tensors with ``requires_grad``.
    """

    def __init__(self, layers: list[BP], identity_butterflies: tuple[int, ...] = ()) -> None:
        first = layers[0]
        self.size, self.n_modules, self.is_complex = first.size, first.n_modules, first.dtype.is_complex
        self.in_features, self.out_features = first.in_features, first.out_features
        self.identity_butterflies = tuple(identity_butterflies)
        twiddle = torch.stack([layer.twiddle.detach() for layer in layers])
        for module in self.identity_butterflies:
            twiddle[:, module] = torch.eye(2, dtype=twiddle.dtype)
        self.twiddle = (torch.view_as_real(twiddle) if self.is_complex else twiddle).clone().requires_grad_(True)
        self.logits = torch.stack([layer.logits.detach() for layer in layers]).clone().requires_grad_(True)
        self.gates = gate_indices(self.size)
        self.generators = [
            [(torch.arange(0, self.size, self.size >> t)[:, None] + g(self.size >> t)[None, :]).reshape(-1) for g in _RELAXED_GENERATORS]
            for t in range(self.gates.shape[0])
        ]
        self.hard = False

    @property
    def restarts(self) -> int:
        return self.twiddle.shape[0]

    def parameters(self) -> list[torch.Tensor]:
        return [self.twiddle] if self.hard else [self.twiddle, self.logits]

    def select(self, keep: list[int]) -> None:
        """Keep only the restarts ``keep`` (in that order)."""
        index = torch.tensor(keep)
        self.twiddle = self.twiddle.detach()[index].clone().requires_grad_(True)
        self.logits = self.logits.detach()[index].clone().requires_grad_(True)

    def round_gates(self) -> None:
        """Round every gate to {0, 1} (logits ``±ROUNDED_LOGIT``) and freeze the logits."""
        with torch.no_grad():
            self.logits = torch.where(self.logits >= 0, ROUNDED_LOGIT, -ROUNDED_LOGIT).to(self.logits.dtype)
        self.hard = True

    def complex_twiddle(self) -> torch.Tensor:
        return torch.view_as_complex(self.twiddle) if self.is_complex else self.twiddle

    def dense(self) -> torch.Tensor:
        """``(R, out, in)``: every restart's matrix (the model applied to the identity)."""
        eye = torch.eye(self.size, dtype=self.complex_twiddle().dtype)[: self.in_features]
        return self.apply(eye).transpose(-1, -2)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``(R, rows, out)``: every restart applied to the rows of ``x`` (``(rows, in)``).

        Small problems gather the 8 products of a level at once and contract with einsum (fewest
        operations: per-operation overhead dominates); large ones apply the gates one by one and
        the 2x2 blocks elementwise (least memory traffic)."""
        twiddle = self.complex_twiddle()
        restarts, n, rows = self.restarts, self.size, x.shape[0]
        x = x.to(twiddle.dtype)
        x = torch.nn.functional.pad(x, (0, n - x.shape[-1])).expand(restarts, rows, n)
        fused = restarts * rows * n <= 1 << 16
        probabilities = torch.sigmoid(self.logits).to(twiddle.dtype)  # (R, k, levels, 3)
        weights = subset_weights(probabilities)
        for k in range(self.n_modules):
            for t in range(self.gates.shape[0]):
                if fused:
                    gathered = x[..., self.gates[t]].reshape(restarts, rows, 8, n)
                    x = torch.einsum("rbsn,rs->rbn", gathered, weights[:, k, t])
                else:
                    for s, index in enumerate(self.generators[t]):
                        x = torch.lerp(x, x[..., index], probabilities[:, k, t, s].reshape(restarts, 1, 1))
            if k in self.identity_butterflies:
                continue
            for level in range(n.bit_length() - 1):
                h = 1 << level
                t = twiddle[:, k, h - 1 : 2 * h - 1]  # (R, h, 2, 2): tied, indexed by the in-block offset
                pairs = x.reshape(restarts, rows, n // (2 * h), 2, h)
                if fused:
                    x = torch.einsum("rpoi,rbjip->rbjop", t, pairs).reshape(restarts, rows, n)
                else:
                    t = t.reshape(restarts, 1, 1, h, 2, 2)
                    low, high = pairs[..., 0, :], pairs[..., 1, :]
                    x = torch.stack([t[..., 0, 0] * low + t[..., 0, 1] * high, t[..., 1, 0] * low + t[..., 1, 1] * high], dim=-2)
                    x = x.reshape(restarts, rows, n)
        return x[..., : self.out_features]

    def export(self, restart: int, template: BP) -> BP:
        """Restart ``restart`` as a ``bp`` member (a copy of ``template`` with its parameters)."""
        layer = BP(template.in_features, template.out_features, n_modules=template.n_modules, permutation="learned",
                   init=template.init, dtype=template.dtype)
        with torch.no_grad():
            layer.twiddle.copy_(self.complex_twiddle()[restart].detach())
            layer.logits.copy_(self.logits[restart].detach())
        return layer


def _per_restart_mse(dense: torch.Tensor, target: torch.Tensor, real_part: bool) -> torch.Tensor:
    if real_part:
        dense = dense.real
    residual = dense - target
    squared = torch.view_as_real(residual).square().sum(-1) if residual.is_complex() else residual.square()
    scalars = target.numel() * (2 if target.is_complex() else 1)
    return squared.sum((-1, -2)) / scalars


class _BatchedAdam:
    """Adam (elementwise, so restarts stay independent) with one learning rate per restart."""

    def __init__(self, tensors: list[torch.Tensor], lr: torch.Tensor, multipliers: list[float], betas=(0.9, 0.999), eps=1e-8):
        self.lr, self.multipliers, self.betas, self.eps = lr, multipliers, betas, eps
        self.m = [torch.zeros_like(t) for t in tensors]
        self.v = [torch.zeros_like(t) for t in tensors]
        self.count = 0

    def select(self, keep: list[int]) -> None:
        index = torch.tensor(keep)
        self.lr = self.lr[index]
        self.m = [m[index] for m in self.m]
        self.v = [v[index] for v in self.v]

    def reset(self, tensors: list[torch.Tensor], multipliers: list[float]) -> None:
        self.multipliers = multipliers
        self.m = [torch.zeros_like(t) for t in tensors]
        self.v = [torch.zeros_like(t) for t in tensors]
        self.count = 0

    @torch.no_grad()
    def step(self, tensors: list[torch.Tensor], scale: float) -> None:
        b1, b2 = self.betas
        self.count += 1
        c1, c2 = 1 - b1**self.count, 1 - b2**self.count
        for tensor, m, v, mult in zip(tensors, self.m, self.v, self.multipliers):
            g = tensor.grad
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            lr = (self.lr * (scale * mult / c1)).reshape(-1, *([1] * (tensor.dim() - 1)))
            tensor.sub_(lr * m / (v / c2).sqrt().add_(self.eps))
            tensor.grad = None


def fit_bp(
    target: torch.Tensor,
    layers: list[BP],
    learning_rates: list[float],
    steps: int,
    tol: float,
    lbfgs_steps: int = 100,
    real_part: bool = False,
    identity_butterflies: tuple[int, ...] = (),
    relaxed_fraction: float = 0.6,
    logit_scale: float = 1.0,
    seed: int = 0,
    probes: int | None = None,
):
    """Train the restarts ``layers`` (``bp`` members with learned permutations, same options) on
    ``target`` together; returns ``(layer, rmse, history, restart_rmse, best_restart)``.

    ``steps`` Adam steps in all, the first ``relaxed_fraction`` with relaxed gates, the rest with
    rounded, frozen gates; successive halving keeps the better half of the restarts
    ``1 + ceil(log2 R)`` times, evenly spaced; L-BFGS (``lbfgs_steps``) polishes the survivor.
    ``logit_scale > 0`` (default 1) draws the initial gate logits i.i.d. ``N(0, logit_scale²)`` from
    ``seed``, so every restart starts leaning towards a different permutation (measured: DFT n = 32,
    12 single restarts, 4 vs 3 successes; DCT n = 8, 4 vs 3); ``0`` keeps the layers' zeros (every
    gate at 1/2). ``probes``: Adam
    steps use the unbiased loss estimate of ``probes`` Gaussian input vectors (``R·probes·N log N``
    per step instead of ``R·N² log N``); the exact loss is evaluated every 25 steps (history,
    halving, early stop).
    """
    model = BatchedBPModel(layers, identity_butterflies)
    generator = torch.Generator().manual_seed(seed)
    if logit_scale:
        with torch.no_grad():
            model.logits.copy_(logit_scale * torch.randn(model.logits.shape, generator=generator, dtype=model.logits.dtype))
    restarts = model.restarts
    lr = torch.tensor(learning_rates, dtype=real_dtype(model.twiddle.dtype))
    multiplier = float(BP.lr_multipliers.get("logits", 1.0))
    optimizer = _BatchedAdam(model.parameters(), lr, [1.0, multiplier])
    if model.identity_butterflies:
        frozen = torch.ones_like(model.twiddle)
        frozen[:, list(model.identity_butterflies)] = 0
    else:
        frozen = None
    target = target.to(model.complex_twiddle().dtype if target.is_complex() else model.logits.dtype)
    rounds = 1 + math.ceil(math.log2(restarts))
    boundaries = {round(steps * (k + 1) / rounds) for k in range(rounds - 1)}
    relaxed_steps = round(steps * relaxed_fraction)
    alive = list(range(restarts))  # original restart numbers of the rows of the model
    best_rmse = [math.inf] * restarts
    history: dict[int, list[float]] = {r: [] for r in range(restarts)}
    converged = False
    for step in range(steps):
        if step == relaxed_steps:
            model.round_gates()
            optimizer.reset(model.parameters(), [1.0])
        exact = probes is None or step % 25 == 0 or step + 1 in boundaries or step + 1 == steps
        if probes is None:
            mse = _per_restart_mse(model.dense(), target, real_part)
            values = mse.detach().clamp_min(0).sqrt().tolist()
        else:
            if exact:
                with torch.no_grad():
                    values = _per_restart_mse(model.dense(), target, real_part).clamp_min(0).sqrt().tolist()
            # unbiased estimate E‖(M − T) x‖² = ‖M − T‖_F² from Gaussian probes x; its noise vanishes
            # with the residual, so the fit still converges to the exact factorisation
            x = torch.randn(probes, target.shape[1], generator=generator, dtype=model.logits.dtype)
            output = model.apply(x)
            residual = (output.real if real_part else output) - x.to(target.dtype) @ target.transpose(0, 1)
            squared = torch.view_as_real(residual).square().sum(-1) if residual.is_complex() else residual.square()
            mse = squared.sum((-1, -2)) / (probes * target.numel() * (2 if target.is_complex() else 1))
        if not exact:
            values = mse.detach().clamp_min(0).sqrt().tolist()
            if all(math.isfinite(v) for v in values):
                mse.sum().backward()
                if frozen is not None:
                    model.twiddle.grad.mul_(frozen[: model.restarts])
                optimizer.step(model.parameters(), 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * step / max(1, steps))))
                continue
        for row, value in enumerate(values):
            r = alive[row]
            history[r].append(value)
            if value < best_rmse[r]:
                best_rmse[r] = value
        if model.hard and min(values) < tol:
            converged = True
            break
        if not all(math.isfinite(v) for v in values):
            keep = [row for row, v in enumerate(values) if math.isfinite(v)] or [0]
            _select(model, optimizer, keep, alive)
            if len(alive) == 1 and not math.isfinite(values[keep[0]]):
                break
            continue
        mse.sum().backward()
        if frozen is not None:
            model.twiddle.grad.mul_(frozen[: model.restarts])
        scale = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * step / max(1, steps)))
        optimizer.step(model.parameters(), scale)
        if step + 1 in boundaries and len(alive) > 1:
            order = sorted(range(len(alive)), key=lambda row: values[row])
            _select(model, optimizer, order[: max(1, math.ceil(len(alive) / 2))], alive)
            if frozen is not None:
                frozen = frozen[: model.restarts]
    if not model.hard:
        model.round_gates()
    with torch.no_grad():
        final = _per_restart_mse(model.dense(), target, real_part).clamp_min(0).sqrt().tolist()
    row = min(range(len(final)), key=lambda j: final[j])
    best = alive[row]
    layer = model.export(row, layers[0])
    result = StructuredLinear.from_matrix(RealPart(layer) if real_part else layer)
    if not converged and lbfgs_steps:
        _lbfgs(result, target, lbfgs_steps, history[best], frozen_modules=model.identity_butterflies)
    with torch.no_grad():
        value = math.sqrt(max(0.0, float(_per_restart_mse(result.matrix.to_dense()[None], target, False)[0])))
    for r, v in zip(alive, final):
        best_rmse[r] = min(best_rmse[r], v)
    best_rmse[best] = min(best_rmse[best], value)
    return result, value, history[best], best_rmse, best


def _select(model: BatchedBPModel, optimizer: _BatchedAdam, keep: list[int], alive: list[int]) -> None:
    model.select(keep)
    optimizer.select(keep)
    alive[:] = [alive[j] for j in keep]


def _lbfgs(layer: StructuredLinear, target: torch.Tensor, iterations: int, history: list[float], frozen_modules=()) -> None:
    """L-BFGS on the twiddles of a ``bp`` layer (gates stay rounded); keeps the best state."""
    base = layer.matrix.inner if isinstance(layer.matrix, RealPart) else layer.matrix
    twiddle = base.twiddle
    mask = None
    if frozen_modules:
        mask = torch.ones(twiddle.shape, dtype=real_dtype(twiddle.dtype))
        mask[list(frozen_modules)] = 0
    saved = twiddle.detach().clone()
    optimizer = torch.optim.LBFGS([twiddle], lr=1.0, max_iter=iterations, history_size=50, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-15, tolerance_change=1e-20)
    best = [history[-1] if history else math.inf, saved]

    def closure():
        optimizer.zero_grad(set_to_none=True)
        loss = _per_restart_mse(layer.matrix.to_dense()[None], target, False)[0]
        value = math.sqrt(max(0.0, float(loss.detach())))
        if math.isfinite(value):
            loss.backward()
            if mask is not None:
                twiddle.grad.mul_(mask.to(twiddle.grad.dtype))
            if value < best[0]:
                best[0], best[1] = value, twiddle.detach().clone()
        history.append(value)
        return loss

    base.logits.requires_grad_(False)
    try:
        optimizer.step(closure)
    except RuntimeError:
        pass  # a non-finite line search: keep the best state seen
    finally:
        base.logits.requires_grad_(True)
    with torch.no_grad():
        twiddle.copy_(best[1])
    twiddle.grad = None


__all__ = ["BatchedBPModel", "ROUNDED_LOGIT", "fit_bp", "gate_indices"]
