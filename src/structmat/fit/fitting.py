"""Gradient-based fitting of a structured family to a target matrix (SPEC.md §7.1).

:func:`fit` minimises ``ℓ(θ) = ‖M(θ) − T‖_F² / N`` where ``N`` is the number of real scalars of
the target (``out·in`` for a real target; ``2·out·in`` for a complex one: the mean runs over the real
and imaginary parts) and reports ``RMSE = ℓ^{1/2}``. The optimiser is Adam with a cosine learning
rate schedule, followed by an optional L-BFGS "polish" (strong-Wolfe line search); several
restarts with different seeds (and optionally log-uniform learning rates) compete by successive
halving, as the Butterfly paper's Hyperband search does (SPEC.md §7.4), and the best is kept; the
run stops early once the RMSE is below ``tol``. On CPU the result is a deterministic function of ``seed``.

Example::

    >>> T = torch.fft.fft(torch.eye(16, dtype=torch.complex128)) / 4
    >>> result = fit(T, "bp", steps=1500, lr=3e-2, seed=0)        # doctest: +SKIP
    >>> result.rmse < 1e-4                                         # doctest: +SKIP
    True
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ..core import registry
from ..core.base import StructuredMatrix
from ..core.dtypes import complex_dtype, real_dtype, resolve_dtype
from ..core.errors import check_finite, check_int, check_matrix, describe
from ..core.linear import StructuredLinear
from ..families.bp import BP
from .batched_bp import fit_bp
from ..core.compose import RealPart


@dataclass
class FitResult:
    """Outcome of :func:`fit`.

    Attributes:
        layer: the best :class:`StructuredLinear` found (no bias); ``layer.to_dense()`` approximates
            the target (through :class:`RealPart` when ``real_part=True``).
        rmse: its RMSE (SPEC.md §7.1), evaluated after training.
        history: RMSE after every optimiser step of the best restart (Adam steps, then L-BFGS
            iterations).
        restart_rmse: best RMSE reached by every restart, in order.
        restart_lr: learning rate of every restart.
        best_restart: index of the restart that gave ``layer``.
        seconds: wall-clock time of the whole fit.
        converged: ``rmse < tol``.
        timed_out: the ``time_limit`` ended the fit before its steps were done.
    """

    layer: StructuredLinear
    rmse: float
    history: list[float]
    restart_rmse: list[float] = field(default_factory=list)
    restart_lr: list[float] = field(default_factory=list)
    best_restart: int = 0
    seconds: float = 0.0
    converged: bool = False
    timed_out: bool = False


class _TimeUp(RuntimeError):
    """Raised inside the L-BFGS closure when the next evaluation would pass the deadline."""


def rmse(approximation: torch.Tensor, target: torch.Tensor) -> float:
    """``sqrt(mean |T − M|²)``, the mean over real scalars of the target (SPEC.md §7.1)."""
    with torch.no_grad():
        return math.sqrt(float(_mean_squared_error(approximation, target)))


def dense_matrix(matrix: StructuredMatrix) -> torch.Tensor:
    """The dense ``(out, in)`` matrix of ``matrix`` for fitting and error evaluation (differentiable).

    ``matrix.to_dense()``, except for families that declare the class attribute
    ``dense_by_forward = True``: their ``to_dense`` is a reference construction that multiplies
    dense ``N x N`` factors (``O(N³)`` per factor) or runs the reference kernel on the padded
    identity, while the structured kernel gives the same matrix as ``M I`` -- the forward pass on the
    identity of the smaller side (``apply_transpose`` when ``out < in``) -- at
    ``min(out, in)`` matrix-vector products. The choice depends only on the family, so fits stay
    deterministic.
    """
    if not getattr(matrix, "dense_by_forward", False):
        return matrix.to_dense()
    out_features, in_features = matrix.shape
    if in_features <= out_features:
        eye = torch.eye(in_features, dtype=matrix.dtype, device=matrix.device)
        return matrix.forward(eye).transpose(0, 1)
    return matrix.apply_transpose(torch.eye(out_features, dtype=matrix.dtype, device=matrix.device))


def _mean_squared_error(approximation: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    residual = approximation - target
    if residual.is_complex():
        squared = residual.real.square().sum() + residual.imag.square().sum()
    else:
        squared = residual.square().sum()
    scalars = target.numel() * (2 if target.is_complex() else 1)
    return squared / scalars


def fit_dtype(target: torch.Tensor, dtype: torch.dtype | None, real_part: bool) -> torch.dtype:
    """The layer dtype for fitting ``target``: ``dtype`` if given (validated), else the target's
    (made complex when ``real_part`` asks for a complex model)."""
    if dtype is None:
        dtype = target.dtype if target.dtype in (torch.float32, torch.float64, torch.complex64, torch.complex128) else torch.float64
        if real_part:
            dtype = complex_dtype(dtype)
    dtype = resolve_dtype(dtype)
    if target.is_complex() and not dtype.is_complex:
        raise ValueError(f"dtype: a complex target needs a complex layer dtype, got {dtype}")
    if real_part and (target.is_complex() or not dtype.is_complex):
        raise ValueError(
            f"real_part: expected a real target and a complex layer dtype, got a {target.dtype} target and dtype {dtype}"
        )
    return dtype


def build_layer(
    structure: str, in_features: int, out_features: int, dtype: torch.dtype, init_seed: int, params: Any = None, /, **options: Any
) -> StructuredLinear:
    """A bias-free :class:`StructuredLinear` whose random initialisation depends only on
    ``init_seed`` (the global RNG state is left untouched); ``options`` are family options."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        return StructuredLinear(in_features, out_features, structure, bias=False, dtype=dtype, params=params, **options)


def _trainable(layer: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in layer.parameters() if p.requires_grad]


class _Trial:
    """One restart: Adam with a cosine schedule over ``steps`` (run in chunks, for successive
    halving), then an optional L-BFGS polish; tracks the best state seen.

    ``deadline`` (a ``time.perf_counter()`` value or ``None``): no step starts when the last step's
    duration (at first: three evaluations of the loss) would carry it past the deadline."""

    def __init__(self, layer: StructuredLinear, target: torch.Tensor, lr: float, steps: int, deadline: float | None = None) -> None:
        self.layer, self.target, self.lr = layer, target, lr
        self.params = _trainable(layer)
        self.history: list[float] = []
        self.deadline, self.timed_out = deadline, False
        started = time.perf_counter()
        self.best_rmse = self.evaluate()
        self.step_seconds = 3 * (time.perf_counter() - started)
        self.best_state = copy.deepcopy(layer.state_dict())
        self.step = 0
        self.stopped = not self.params or steps == 0
        self.record, self.record_step = math.inf, 0
        if self.params:
            self.optimizer = torch.optim.Adam(self.params, lr=lr)
            self.schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(1, steps), eta_min=lr * 1e-2)

    def loss(self) -> torch.Tensor:
        return _mean_squared_error(dense_matrix(self.layer.matrix), self.target)

    def evaluate(self) -> float:
        with torch.no_grad():
            value = math.sqrt(max(0.0, float(self.loss())))
        return value if math.isfinite(value) else math.inf

    def remember(self) -> None:
        value = self.evaluate()
        if value < self.best_rmse:
            self.best_rmse = value
            self.best_state = copy.deepcopy(self.layer.state_dict())

    def out_of_time(self) -> bool:
        if self.deadline is not None and time.perf_counter() + self.step_seconds > self.deadline:
            self.timed_out = True
        return self.timed_out

    def adam_until(self, end: int, tol: float, patience: int | None, advance) -> None:
        """Adam steps up to global step ``end``; stops early below ``tol``, on a plateau of
        ``patience`` steps, on a non-finite loss, or at the deadline."""
        while not self.stopped and self.step < end:
            if self.out_of_time():
                self.stopped = True
                break
            started = time.perf_counter()
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss()
            value = math.sqrt(max(0.0, float(loss.detach())))
            if not math.isfinite(value):
                self.stopped = True
                break
            self.history.append(value)
            if value < self.record * (1 - 1e-3):
                self.record, self.record_step = value, self.step
            if value < tol or (patience is not None and self.step - self.record_step >= patience):
                self.stopped = True
                break
            loss.backward()
            self.optimizer.step()
            self.schedule.step()
            self.step += 1
            self.step_seconds = time.perf_counter() - started
            if self.step % 50 == 0:
                self.remember()
            advance(value)
        self.remember()

    def lbfgs(self, iterations: int, tol: float) -> None:
        if not self.params or iterations == 0 or self.best_rmse < tol or self.out_of_time():
            return
        self.layer.load_state_dict(self.best_state)
        optimizer = torch.optim.LBFGS(
            self.params, lr=1.0, max_iter=iterations, history_size=50, line_search_fn="strong_wolfe",
            tolerance_grad=1e-15, tolerance_change=1e-20,
        )

        def closure():
            if self.out_of_time():
                raise _TimeUp("time_limit reached")
            optimizer.zero_grad(set_to_none=True)
            loss = self.loss()
            value = math.sqrt(max(0.0, float(loss.detach())))
            if math.isfinite(value):
                loss.backward()
            self.history.append(value)
            return loss

        try:
            optimizer.step(closure)
        except RuntimeError:
            # a non-finite line search (e.g. an overflowing relaxed factor) or the deadline
            # (_TimeUp): keep the best state seen
            pass
        self.remember()
        self.layer.load_state_dict(self.best_state)


def trial_learning_rates(lr: float | tuple[float, float], restarts: int, seed: int) -> list[float]:
    """One learning rate per restart: ``lr`` itself, or log-uniform samples in ``(low, high)``
    drawn from ``seed`` (the Butterfly paper's search, SPEC.md §7.4)."""
    if isinstance(lr, (tuple, list)):
        if len(lr) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf for v in lr) or lr[0] > lr[1]:
            raise ValueError(f"lr: expected a positive float or a (low, high) range with 0 < low <= high, got {describe(lr)}")
        g = torch.Generator().manual_seed(seed)
        u = torch.rand(restarts, generator=g, dtype=torch.float64)
        low, high = math.log(lr[0]), math.log(lr[1])
        return [math.exp(low + float(t) * (high - low)) for t in u]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr: expected a positive finite float or a (low, high) range, got {describe(lr)}")
    return [float(lr)] * restarts


def fit(
    target: Any,
    structure: str = "butterfly",
    steps: int = 2000,
    lr: float | tuple[float, float] = 1e-2,
    seed: int = 0,
    tol: float = 1e-6,
    restarts: int = 1,
    *,
    lbfgs_steps: int = 100,
    patience: int | None = None,
    time_limit: float | None = None,
    params: Any = None,
    dtype: torch.dtype | None = None,
    real_part: bool = False,
    warm_start: StructuredMatrix | StructuredLinear | None = None,
    progress: bool | None = None,
    console: Console | None = None,
    family_options: dict | None = None,
    **options: Any,
) -> FitResult:
    """Fit a member of ``structure`` to the matrix ``target`` by gradient descent (SPEC.md §7.1).

    Args:
        target: ``(out_features, in_features)`` real or complex matrix (tensor or array-like),
            finite entries.
        structure: registered family name.
        steps: Adam steps per restart (cosine schedule from ``lr`` down to ``lr/100``).
        lr: Adam learning rate, or a ``(low, high)`` range from which every restart draws a
            log-uniform rate.
        seed: base seed; restart ``r`` initialises with ``seed + r``.
        tol: stop as soon as the RMSE is below ``tol``.
        restarts: number of independent initialisations, run by successive halving (each round
            keeps the better half; the survivor completes ``steps``); the best is kept.
        lbfgs_steps: L-BFGS iterations polishing the final survivor (0 disables).
        patience: end the Adam phase of a restart once the RMSE has not improved by 0.1 % for
            this many steps (``None``: run all ``steps``).
        time_limit: wall-clock seconds for the optimisation (``None``: no limit); no Adam step or
            L-BFGS evaluation starts that would end past it (the result then depends on the
            machine's speed; ``FitResult.timed_out`` says whether it acted).
        params: parameter budget (int count, or float fraction of ``out·in``) choosing the
            family's size options, as in :class:`StructuredLinear`.
        dtype: layer dtype; default: the target's (complex when ``real_part``).
        real_part: fit ``Re(M)`` of a complex model to a real target (the Butterfly paper's
            final real part); the returned layer wraps :class:`RealPart`.
        warm_start: a member of ``structure`` (same shape and options) whose parameters
            initialise restart 0.
        progress: show a Rich progress bar (default: when the console is a terminal).
        console: Rich console for the progress bar.
        family_options: family options as a dict -- for options whose names clash with the
            arguments above (e.g. a family's own ``seed``); merged with ``**options``.
        **options: family options (see ``structmat families``).

    Returns:
        :class:`FitResult` with ``layer``, ``rmse`` and ``history``.

    Cost: per step one dense evaluation (:func:`dense_matrix`) of the family and its backward
    (``O(out·in)`` memory).
    ``bp`` with learned permutations (and no ``warm_start``) trains all restarts in one batched
    pass and rounds the gates after 60 % of the steps (:func:`structmat.fit.batched_bp.fit_bp`);
    ``patience`` and ``time_limit`` do not apply there.
    """
    T = check_finite("target", check_matrix("target", target)).detach()
    info = registry.get(structure)
    if family_options is not None:
        if not isinstance(family_options, dict):
            raise TypeError(f"family_options: expected a dict, got {describe(family_options)}")
        options = {**family_options, **options}
    steps = check_int("steps", steps, minimum=0)
    restarts = check_int("restarts", restarts, minimum=1)
    lbfgs_steps = check_int("lbfgs_steps", lbfgs_steps, minimum=0)
    if patience is not None:
        patience = check_int("patience", patience, minimum=1)
    if time_limit is not None and (isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)) or not time_limit > 0):
        raise ValueError(f"time_limit: expected a positive number of seconds or None, got {describe(time_limit)}")
    seed = check_int("seed", seed)
    learning_rates = trial_learning_rates(lr, restarts, seed)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
        raise ValueError(f"tol: expected a float >= 0, got {describe(tol)}")
    dtype = fit_dtype(T, dtype, real_part)
    T = T.to(dtype if T.is_complex() else real_dtype(dtype))
    out_features, in_features = T.shape
    if "fixed" in info.tags or not info.trainable:
        raise ValueError(f"structure: {info.name!r} is a fixed family (no trainable parameters); there is nothing to fit")
    warm = warm_start.matrix if isinstance(warm_start, StructuredLinear) else warm_start
    if warm is not None and not isinstance(warm, StructuredMatrix):
        raise TypeError(f"warm_start: expected a StructuredMatrix or StructuredLinear of structure {info.name!r}, got {describe(warm_start)}")
    if warm is not None and (warm.family != info.name or warm.shape != (out_features, in_features)):
        raise ValueError(
            f"warm_start: expected a {info.name!r} member of shape {(out_features, in_features)}, got a {warm.family!r} member of shape {warm.shape}"
        )

    show = console is not None and console.is_terminal if progress is None else bool(progress)
    start = time.perf_counter()
    deadline = None if time_limit is None else start + float(time_limit)
    layers = [build_layer(info.name, in_features, out_features, dtype, seed + r, params, **options) for r in range(restarts)]
    if isinstance(layers[0].matrix, BP) and layers[0].matrix.permutation == "learned" and warm is None and steps > 0:
        # BP with learnable permutations: all restarts in one batched pass, gates rounded half-way
        layer, value, history, restart_rmse, best = fit_bp(
            T, [l.matrix for l in layers], learning_rates, steps, float(tol), lbfgs_steps, real_part=real_part, seed=seed,
        )
        return FitResult(layer=layer, rmse=value, history=history, restart_rmse=restart_rmse, restart_lr=learning_rates,
                         best_restart=best, seconds=time.perf_counter() - start, converged=value < tol)
    trials: list[_Trial] = []
    for restart, (trial_lr, layer) in enumerate(zip(learning_rates, layers)):
        if warm is not None and restart == 0:
            layer.matrix.load_state_dict(warm.state_dict())
        if real_part:
            layer = StructuredLinear.from_matrix(RealPart(layer.matrix))
        trials.append(_Trial(layer, T, trial_lr, steps, deadline))
    # successive halving: every round runs the surviving trials to the next boundary, then keeps
    # the better half; the last survivor completes all `steps`
    rounds = 1 + math.ceil(math.log2(restarts))
    boundaries = [round(steps * (k + 1) / rounds) for k in range(rounds)]
    alive = list(range(restarts))
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("rmse {task.fields[rmse]:.2e}"), TimeElapsedColumn(),
        console=console, transient=True, disable=not show,
    ) as bar:
        planned = sum(math.ceil(restarts / 2**k) * (boundaries[k] - (boundaries[k - 1] if k else 0)) for k in range(rounds))
        task = bar.add_task(f"fitting {info.name} {out_features}x{in_features}", total=planned, rmse=float("nan"))

        def advance(value: float) -> None:
            bar.update(task, advance=1, rmse=value)

        for k, end in enumerate(boundaries):
            for r in alive:
                trials[r].adam_until(end, float(tol), patience, advance)
            alive.sort(key=lambda r: trials[r].best_rmse)
            if trials[alive[0]].best_rmse < tol:
                break
            alive = alive[: max(1, math.ceil(len(alive) / 2))]
        trials[alive[0]].lbfgs(lbfgs_steps, float(tol))
        bar.update(task, completed=planned)
    best = min(range(len(trials)), key=lambda r: trials[r].best_rmse)
    trial = trials[best]
    trial.layer.load_state_dict(trial.best_state)
    for p in trial.layer.parameters():
        p.grad = None
    final = trial.evaluate()
    return FitResult(
        layer=trial.layer,
        rmse=final,
        history=trial.history,
        restart_rmse=[t.best_rmse for t in trials],
        restart_lr=[t.lr for t in trials],
        best_restart=best,
        seconds=time.perf_counter() - start,
        converged=final < tol,
        timed_out=any(t.timed_out for t in trials),
    )
