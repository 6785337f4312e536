"""Transform recovery: learn fast algorithms from the matrices of classical transforms
(SPEC.md §7.4, the Butterfly paper [BF19]).

For each target matrix (DFT, DCT, DST, Hadamard, Hartley, convolution, Legendre, Hilbert and a
Gaussian control, scaled as in SPEC.md §7.4) and size ``n``, every structure is fitted and its
RMSE (SPEC.md §7.1) reported:

* ``bp`` -- the paper's model: BP (one module) for DFT, Hadamard, Hartley, Legendre, Hilbert and
  the control; BPBP (two modules, i.e. BP with an additional learnable permutation factor) for
  DCT, DST and convolution; learnable relaxed permutations (SPEC.md §7.2); complex twiddles with a
  final real part for the real transforms whose fast algorithm goes through the FFT;
* ``butterfly`` -- one untied butterfly (no permutation), ``kaleidoscope`` -- ``BB*`` (width 1);
* ``low_rank``, ``sparse``, ``sparse_low_rank`` -- baselines at the parameter count of the ``bp``
  model (counted in real scalars), by their closed-form projections (the best the class can do).

Success means ``RMSE < 1e-4``. Every learned fit starts with the closed-form hierarchical
factorisation (:mod:`structmat.fit.hierarchical`, the code path of ``sm.project``; exact for BP and
butterfly members such as the DFT and Hadamard, whatever their permutation); only when its RMSE is
not below ``FitSettings.tol`` do the SGD fits run (:func:`structmat.fit.fit`: several trials with
log-uniform learning rates compete by successive halving, the survivor is polished by L-BFGS; ``bp``
with learned permutations: batched restarts, :func:`structmat.fit.batched_bp.fit_bp`), and the
better result is kept. Each row records the ``method`` that produced it: ``hierarchical``, ``sgd``
(``bp`` restarts) or ``hierarchical+sgd`` (a fit warm-started at the hierarchical member).
Outputs: ``results.json``, ``table.md`` and ``rmse_heatmap.png`` (written atomically).
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context

import numpy as np
import scipy.fft
import scipy.linalg
import torch
from numpy.polynomial import legendre as np_legendre
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..core import registry
from ..core.compose import RealPart
from ..core.linear import StructuredLinear
from ..core.errors import check_choice, check_int
from ..core.sizes import is_power_of_two
from ..fit import FitResult, fit, project, rmse
from ..fit.batched_bp import fit_bp
from ..fit.fitting import build_layer, trial_learning_rates
from ..fit.hierarchical import hierarchical_projection
from .outputs import figure_writer, json_writer, markdown_table, text_writer, write_outputs

TARGETS = ("dft", "dct", "dst", "hadamard", "hartley", "convolution", "legendre", "hilbert", "randn")
#: targets with a known fast algorithm in the BP hierarchy: the success criterion applies
FAST_TARGETS = ("dft", "dct", "dst", "hadamard", "hartley", "convolution")
#: real targets whose fast algorithm goes through the FFT: complex model + final real part
COMPLEX_MODEL = ("dft", "dct", "dst", "hartley", "convolution")
#: BP modules of the paper's model per target (SPEC.md §7.4)
BP_MODULES = {"dct": 2, "dst": 2, "convolution": 2}
#: modules whose butterfly is frozen at the identity: ``B · P₂ · P₁``, "BP with an additional
#: learnable permutation factor" (SPEC.md §7.4), stored as a ``bp`` member with ``n_modules=2``
IDENTITY_BUTTERFLIES = {"dct": (0,), "dst": (0,)}
LEARNED = ("bp", "butterfly", "kaleidoscope")
BASELINES = ("low_rank", "sparse", "sparse_low_rank")
STRUCTURES = LEARNED + BASELINES
DEFAULT_SIZES = (8, 16, 32, 64, 128, 256)
FULL_SIZES = DEFAULT_SIZES + (512, 1024)
SUCCESS_RMSE = 1e-4

#: SPEC.md §7.4: RMSE reported by Dao et al. (ICML 2019), N = 8 ... 1024
PAPER_RMSE = {
    "dft": (3.1e-6, 4.6e-6, 8.7e-6, 1.0e-5, 2.0e-5, 3.8e-5, 8.0e-5, 5.7e-5),
    "dct": (4.4e-6, 1.1e-5, 8.6e-6, 1.2e-5, 2.1e-5, 1.9e-5, 3.2e-5, 7.3e-5),
    "dst": (1.1e-6, 7.5e-6, 4.6e-5, 5.1e-5, 3.0e-5, 2.1e-5, 3.6e-5, 4.6e-5),
    "convolution": (4.1e-6, 2.5e-5, 6.5e-5, 7.6e-5, 5.9e-5, 7.8e-5, 6.4e-5, 1.9e-2),
    "hadamard": (8.8e-7, 7.8e-6, 1.3e-5, 3.9e-5, 3.5e-5, 4.5e-5, 6.1e-5, 3.6e-5),
    "hartley": (3.4e-6, 9.0e-6, 1.1e-5, 1.3e-5, 3.6e-5, 4.3e-5, 4.5e-5, 3.6e-5),
    "legendre": (3.4e-2, 2.9e-2, 2.4e-2, 1.4e-2, 7.9e-3, 4.5e-3, 2.6e-3, 1.6e-3),
    "randn": (1.4e-1, 1.6e-1, 1.4e-1, 1.1e-1, 8.4e-2, 6.1e-2, 4.4e-2, 3.1e-2),
}
PAPER_SIZES = (8, 16, 32, 64, 128, 256, 512, 1024)


def target_matrix(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """The recovery target ``T`` (``n x n``, float64 or complex128), scaled as in SPEC.md §7.4.

    ``dft``: ``F_n/√n``; ``dct``/``dst``: scipy's unnormalised type II ``/√n``; ``hadamard``:
    Sylvester ``H_n/√n`` (``n`` a power of two); ``hartley``: ``cas(2πjk/n)/√n``;
    ``convolution``: the circulant of a fixed Gaussian vector ``/√n``; ``legendre``:
    ``P_i(z_j)/√n`` at ``z_j = −1 + 2(j+1)/(n+1)`` (SPEC.md §6.11); ``hilbert``: the Hilbert
    matrix ``1/(i+j+1)`` divided by its spectral norm; ``randn``: a Gaussian matrix ``/√n``.
    """
    check_choice("target", name, TARGETS)
    n = check_int("n", n, minimum=2)
    eye = np.eye(n)
    root = math.sqrt(n)
    rng = np.random.default_rng(seed)
    if name == "dft":
        matrix = np.fft.fft(eye, axis=0) / root
    elif name == "dct":
        matrix = scipy.fft.dct(eye, type=2, axis=0) / root
    elif name == "dst":
        matrix = scipy.fft.dst(eye, type=2, axis=0) / root
    elif name == "hadamard":
        if not is_power_of_two(n):
            raise ValueError(f"n: the Hadamard target needs a power of two, got {n}")
        matrix = scipy.linalg.hadamard(n).astype(np.float64) / root
    elif name == "hartley":
        angle = 2 * np.pi * np.outer(np.arange(n), np.arange(n)) / n
        matrix = (np.cos(angle) + np.sin(angle)) / root
    elif name == "convolution":
        matrix = scipy.linalg.circulant(rng.standard_normal(n)) / root
    elif name == "legendre":
        nodes = -1.0 + 2.0 * (np.arange(n) + 1) / (n + 1)
        matrix = np_legendre.legvander(nodes, n - 1).T / root
    elif name == "hilbert":
        matrix = scipy.linalg.hilbert(n)
        matrix = matrix / np.linalg.norm(matrix, 2)
    else:
        matrix = rng.standard_normal((n, n)) / root
    return torch.from_numpy(np.ascontiguousarray(matrix))


@dataclass(frozen=True)
class FitSettings:
    """Optimisation budget of every learned fit (see :func:`structmat.fit.fit`).

    ``bp`` fits run ``bp_trials[n]`` restarts batched (:func:`structmat.fit.batched_bp.fit_bp`),
    with Gaussian-probe loss estimates (``bp_probes`` vectors) from ``n >= probe_from``, ``steps``
    Adam steps; the other learned structures (comparisons) run ``trials`` restarts of
    ``other_steps`` steps one by one.
    """

    steps: int = 1500
    trials: int = 2
    other_steps: int = 600
    lr_low: float = 3e-3
    lr_high: float = 3e-2
    lbfgs_steps: int = 100
    patience: int = 250
    tol: float = 1e-5
    seed: int = 0
    bp_permutation: str = "learned"
    bp_trials: tuple = ((8, 16), (16, 16), (32, 16), (64, 8), (128, 8), (256, 4), (512, 4), (1024, 4))
    bp_logit_scale: float = 1.0
    bp_probes: int = 16
    probe_from: int = 64

    def trials_for(self, n: int) -> int:
        return dict(self.bp_trials).get(n, min(count for _, count in self.bp_trials))


@dataclass
class RecoveryRow:
    target: str
    n: int
    structure: str
    model: str
    rmse: float
    parameters: int
    real_scalars: int
    seconds: float
    success: bool
    permutation_mass: float | None = None
    rounded_rmse: float | None = None
    paper_rmse: float | None = None
    method: str = "closed_form"
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def learned_model(structure: str, target: str, bp_permutation: str = "learned") -> tuple[str, dict, bool]:
    """``(model label, family options, complex model)`` of a learned structure for ``target``."""
    complex_model = target in COMPLEX_MODEL
    if structure == "bp":
        modules = BP_MODULES.get(target, 1)
        label = "BPP" if target in IDENTITY_BUTTERFLIES else "BPBP" if modules == 2 else "BP"
        return label, {"n_modules": modules, "permutation": bp_permutation, "init": "ortho"}, complex_model
    if structure == "butterfly":
        return "B", {"init": "ortho"}, complex_model
    if structure == "kaleidoscope":
        return "BB*", {"width": 1, "init": "ortho"}, complex_model
    raise ValueError(f"structure: expected one of {list(LEARNED)}, got {structure!r}")


def _real_scalars(count: int, complex_model: bool) -> int:
    return count * (2 if complex_model else 1)


def permutation_mass(matrix) -> tuple[float | None, list[torch.Tensor] | None]:
    """Weight of the relaxed BP permutations on their rounded (hard) permutations: the product
    over gates of ``max(p, 1 − p)`` (SPEC.md §7.2), or ``None`` for other families."""
    logits = getattr(matrix, "logits", None)
    if logits is None or not hasattr(matrix, "hard_permutations"):
        return None, None
    with torch.no_grad():
        p = torch.sigmoid(logits.detach())
        mass = float(torch.maximum(p, 1 - p).prod())
    return mass, matrix.hard_permutations()


def rounded_rmse(matrix, relaxed, target: torch.Tensor) -> float:
    """RMSE of ``matrix`` after rounding every permutation gate of its relaxed part ``relaxed``
    (``matrix`` itself or the complex operator under a real part) to {0, 1} (SPEC.md §7.2)."""
    with torch.no_grad():
        saved = relaxed.logits.detach().clone()
        relaxed.logits.copy_(torch.where(saved >= 0, 80.0, -80.0))
        dense = matrix.to_dense()
        relaxed.logits.copy_(saved)
    return rmse(dense, target)


def operator_under_real_part(matrix):
    """The complex operator ``M`` of a :class:`RealPart` ``Re(M)``, or ``matrix`` itself."""
    return matrix.inner if isinstance(matrix, RealPart) else matrix


def hierarchical_stage(T: torch.Tensor, structure: str, options: dict, complex_model: bool) -> tuple[FitResult, float]:
    """Stage 1 of every learned fit: the closed-form hierarchical factorisation (``sm.project`` with
    ``method="closed_form"``, :mod:`structmat.fit.hierarchical`), blind to the target's identity.

    A real target of a complex model is wrapped in :class:`RealPart` (the paper's final real part):
    for ``bp`` the member is a complex BP whose real part approximates ``T``
    (:func:`structmat.fit.hierarchical.complete_real_bp`: exact for real parts of BP/BPP members such
    as the DCT, DST and Hartley transforms, a heuristic otherwise); the other structures factor ``T`` as a complex matrix.
    Returns ``(result, seconds)``.
    """
    start = time.perf_counter()
    real_part = complex_model and not T.is_complex()
    if real_part and structure == "bp":
        layer = StructuredLinear.from_matrix(RealPart(hierarchical_projection("bp", T, real_part=True, **options)))
    else:
        projection = project(T.to(torch.complex128) if real_part else T, structure, method="closed_form", **options)
        layer = StructuredLinear.from_matrix(RealPart(projection.layer.matrix)) if real_part else projection.layer
    value = rmse(layer.to_dense(), T)
    return FitResult(layer, value, [value], [value]), time.perf_counter() - start


def fit_one(target_name: str, n: int, structure: str, settings: FitSettings) -> RecoveryRow:
    """Fit one learned structure to one target (runs in a worker process).

    Stage 1 is :func:`hierarchical_stage`; when its RMSE is not below ``settings.tol``, the SGD fits
    run (``bp`` with learned permutations: batched restarts from random gates; the other structures:
    :func:`structmat.fit.fit` with the hierarchical member as the warm start of restart 0) and the
    better result is kept. ``method`` records which stage produced it.
    """
    torch.set_num_threads(1)
    T = target_matrix(target_name, n, seed=settings.seed)
    model, options, complex_model = learned_model(structure, target_name, settings.bp_permutation)
    real_part = complex_model and not T.is_complex()
    dtype = torch.complex128 if complex_model else torch.float64
    start = time.perf_counter()
    result, hierarchical_seconds = hierarchical_stage(T, structure, options, complex_model)
    hierarchical_rmse, method = result.rmse, "hierarchical"
    if hierarchical_rmse >= settings.tol and structure == "bp" and settings.bp_permutation == "learned":
        trials = settings.trials_for(n)
        layers = [build_layer("bp", n, n, dtype, settings.seed + r, None, **options).matrix for r in range(trials)]
        layer, value, history, restart_rmse, best = fit_bp(
            T, layers, trial_learning_rates((settings.lr_low, settings.lr_high), trials, settings.seed), settings.steps,
            settings.tol, settings.lbfgs_steps, real_part=real_part, identity_butterflies=IDENTITY_BUTTERFLIES.get(target_name, ()),
            seed=settings.seed, probes=settings.bp_probes if n >= settings.probe_from else None, logit_scale=settings.bp_logit_scale,
        )
        if value < hierarchical_rmse:
            result = FitResult(layer, value, history, restart_rmse, trial_learning_rates((settings.lr_low, settings.lr_high), trials, settings.seed), best)
            method = "sgd"
    elif hierarchical_rmse >= settings.tol:
        warm = operator_under_real_part(result.layer.matrix)
        fitted = fit(
            T, structure, steps=settings.other_steps, lr=(settings.lr_low, settings.lr_high), seed=settings.seed,
            tol=settings.tol, restarts=settings.trials, lbfgs_steps=settings.lbfgs_steps, patience=settings.patience,
            dtype=dtype, real_part=real_part, progress=False, warm_start=warm, **options,
        )
        if fitted.rmse < hierarchical_rmse:
            result, method = fitted, "hierarchical+sgd"
    matrix = result.layer.matrix
    base = operator_under_real_part(matrix)
    mass, hard = permutation_mass(base)
    rounded = rounded_rmse(matrix, base, T) if mass is not None else None
    return RecoveryRow(
        target=target_name, n=n, structure=structure, model=model + (" (complex, real part)" if real_part else " (complex)" if complex_model else ""),
        rmse=result.rmse, parameters=result.layer.num_parameters,
        real_scalars=_real_scalars(result.layer.num_parameters, complex_model), seconds=time.perf_counter() - start,
        success=result.rmse < SUCCESS_RMSE, permutation_mass=mass, rounded_rmse=rounded, method=method,
        details={"restart_rmse": result.restart_rmse, "restart_lr": result.restart_lr, "steps": len(result.history),
                 "hierarchical_rmse": hierarchical_rmse, "hierarchical_seconds": hierarchical_seconds,
                 "hard_permutations": [h.tolist() for h in hard] if hard is not None and n <= 64 else None},
    )


def baseline_one(target_name: str, n: int, structure: str, real_scalars: int, seed: int = 0) -> RecoveryRow:
    """Project one target onto a baseline family with the same number of real scalars."""
    torch.set_num_threads(1)
    T = target_matrix(target_name, n, seed=seed)
    budget = max(1, real_scalars // (2 if T.is_complex() else 1))
    start = time.perf_counter()
    try:
        result = project(T, structure, params=min(budget, n * n), method="closed_form")
    except ValueError as exc:
        return RecoveryRow(target_name, n, structure, structure, math.nan, 0, 0, time.perf_counter() - start, False, details={"error": str(exc)})
    count = result.layer.num_parameters
    return RecoveryRow(
        target=target_name, n=n, structure=structure, model=f"{structure} @ {count} params", rmse=rmse(result.layer.to_dense(), T),
        parameters=count, real_scalars=_real_scalars(count, T.is_complex()), seconds=time.perf_counter() - start,
        success=False, details={"options": result.options},
    )


def _paper(target: str, n: int) -> float | None:
    values = PAPER_RMSE.get(target)
    return values[PAPER_SIZES.index(n)] if values and n in PAPER_SIZES else None


def run_recovery(
    targets=TARGETS,
    sizes=DEFAULT_SIZES,
    structures=STRUCTURES,
    settings: FitSettings = FitSettings(),
    workers: int | None = None,
    console: Console | None = None,
) -> list[RecoveryRow]:
    """Run the grid ``targets x sizes x structures``; returns one row per cell.

    Learned fits run in ``workers`` processes (default: the number of CPU cores, at most 2 here),
    one thread each, largest sizes first. Baselines use the ``bp`` model's parameter count of the
    same ``(target, n)`` (computed on the ``meta`` device when ``bp`` is not in ``structures``).
    """
    for name in targets:
        check_choice("targets", name, TARGETS)
    for name in structures:
        check_choice("structures", name, STRUCTURES)
    sizes = [check_int("sizes", n, minimum=2) for n in sizes]
    for n in sizes:
        if not is_power_of_two(n):
            raise ValueError(f"sizes: expected powers of two (the butterfly sizes of SPEC.md §7.4), got {n}")
    learned = [s for s in structures if s in LEARNED and s in registry.names()]
    missing = [s for s in structures if s not in registry.names()]
    if missing:
        raise ValueError(f"structures: families not registered in this installation: {missing}")
    jobs = [(t, n, s) for n in sorted(sizes, reverse=True) for t in targets for s in learned]
    workers = workers or max(1, min(len(jobs), os.cpu_count() or 1))
    rows: list[RecoveryRow] = []
    console = console or Console()
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("recovering transforms", total=len(jobs) + len(targets) * len(sizes) * sum(s in BASELINES for s in structures))
        if workers == 1:
            for job in jobs:
                rows.append(fit_one(*job, settings))
                bar.update(task, advance=1, description=f"{job[0]} n={job[1]} {job[2]}")
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                futures = {pool.submit(fit_one, *job, settings): job for job in jobs}
                for future in as_completed(futures):
                    job = futures[future]
                    rows.append(future.result())
                    bar.update(task, advance=1, description=f"{job[0]} n={job[1]} {job[2]}")
        for t in targets:
            for n in sizes:
                model, options, complex_model = learned_model("bp", t, settings.bp_permutation)
                reference = registry.count_parameters(registry.get("bp"), n, n, options, dtype=torch.complex128 if complex_model else torch.float64)
                for s in structures:
                    if s in BASELINES:
                        rows.append(baseline_one(t, n, s, _real_scalars(reference, complex_model), settings.seed))
                        bar.update(task, advance=1)
    for row in rows:
        row.paper_rmse = _paper(row.target, row.n) if row.structure == "bp" else None
    order = {s: k for k, s in enumerate(STRUCTURES)}
    rows.sort(key=lambda r: (TARGETS.index(r.target), order[r.structure], r.n))
    return rows


def heatmap(rows: list[RecoveryRow], structures, targets, sizes):
    """A figure with one log10(RMSE) heat map (targets x sizes) per structure."""
    import matplotlib.pyplot as plt

    structures = [s for s in structures if any(r.structure == s for r in rows)]
    cols = min(3, len(structures))
    nrows = math.ceil(len(structures) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.6 * nrows), squeeze=False)
    lookup = {(r.structure, r.target, r.n): r.rmse for r in rows}
    image = None
    for k, structure in enumerate(structures):
        ax = axes[k // cols][k % cols]
        grid = np.array([[lookup.get((structure, t, n), np.nan) for n in sizes] for t in targets], dtype=float)
        image = ax.imshow(np.log10(np.clip(grid, 1e-12, None)), vmin=-7, vmax=0, cmap="viridis_r", aspect="auto")
        for i in range(len(targets)):
            for j in range(len(sizes)):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.0e}", ha="center", va="center", fontsize=6,
                            color="white" if grid[i, j] < SUCCESS_RMSE else "black")
        ax.set_xticks(range(len(sizes)), [str(n) for n in sizes], fontsize=7)
        ax.set_yticks(range(len(targets)), targets, fontsize=7)
        ax.set_title(structure, fontsize=9)
    for k in range(len(structures), nrows * cols):
        axes[k // cols][k % cols].axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="log10 RMSE (success < -4)")
    return fig


def summary_table(rows: list[RecoveryRow], sizes) -> list[dict]:
    """One row per (target, structure): the RMSE at every size, then (learned structures) the method
    that produced each cell, and the paper's RMSE for ``bp``."""
    out = []
    for target in TARGETS:
        for structure in STRUCTURES:
            cells = {r.n: r for r in rows if r.target == target and r.structure == structure}
            if not cells:
                continue
            entry = {"target": target, "structure": structure}
            entry.update({f"n={n}": cells[n].rmse if n in cells else "" for n in sizes})
            out.append(entry)
            if structure in LEARNED:
                methods = {"target": target, "structure": f"{structure}: method"}
                methods.update({f"n={n}": cells[n].method if n in cells else "" for n in sizes})
                out.append(methods)
            if structure == "bp" and target in PAPER_RMSE:
                paper = {"target": target, "structure": "paper (BF19)"}
                paper.update({f"n={n}": _paper(target, n) or "" for n in sizes})
                out.append(paper)
    return out


def run(
    console: Console | None = None,
    quick: bool = False,
    full: bool = False,
    out: str | os.PathLike = "recovery-results",
    targets=TARGETS,
    sizes=None,
    structures=STRUCTURES,
    settings: FitSettings | None = None,
    workers: int | None = None,
) -> list[dict]:
    """``structmat recover``: run the grid, print the table, write ``results.json``, ``table.md``
    and ``rmse_heatmap.png`` into ``out``; returns the rows as dicts.

    ``quick``: sizes 8..32 and a smaller budget (smoke run); ``full``: sizes 8..1024.
    """
    console = console or Console()
    if sizes is None:
        sizes = (8, 16, 32) if quick else FULL_SIZES if full else DEFAULT_SIZES
    if settings is None:
        settings = FitSettings(steps=600, other_steps=300) if quick else FitSettings()
    start = time.perf_counter()
    rows = run_recovery(targets, sizes, structures, settings, workers, console)
    seconds = time.perf_counter() - start
    summary = summary_table(rows, sizes)
    columns = ["target", "structure"] + [f"n={n}" for n in sizes]
    table = Table(title=f"Transform recovery: RMSE (success < {SUCCESS_RMSE:g})")
    for c in columns:
        table.add_column(c)
    for entry in summary:
        cells = []
        for c in columns:
            v = entry.get(c, "")
            if isinstance(v, float):
                style = "green" if v < SUCCESS_RMSE else "red"
                cells.append(f"[{style}]{v:.1e}[/]" if entry["structure"] != "paper (BF19)" else f"{v:.1e}")
            else:
                cells.append(str(v))
        table.add_row(*cells)
    console.print(table)
    learned_bp = [r for r in rows if r.structure == "bp" and r.permutation_mass is not None]
    if learned_bp:
        concentrated = sum(r.permutation_mass >= 0.99 for r in learned_bp if r.success)
        console.print(f"learned permutations with >= 0.99 mass on one permutation: {concentrated}/{sum(r.success for r in learned_bp)} successful bp fits")
    learned_rows = [r for r in rows if r.structure in LEARNED]
    if learned_rows:
        by_method = {m: sum(r.method == m for r in learned_rows) for m in sorted({r.method for r in learned_rows})}
        console.print("learned cells by method: " + ", ".join(f"{m} {k}" for m, k in by_method.items())
                      + f" (successes from the hierarchical factorisation: {sum(r.success and r.method == 'hierarchical' for r in learned_rows)})")
    data = {
        "settings": asdict(settings),
        "sizes": list(sizes),
        "targets": list(targets),
        "structures": list(structures),
        "seconds": seconds,
        "torch_threads_per_worker": 1,
        "rows": [r.to_dict() for r in rows],
        "paper_rmse": {k: dict(zip(PAPER_SIZES, v)) for k, v in PAPER_RMSE.items()},
    }
    md = f"# Transform recovery (RMSE; success < {SUCCESS_RMSE:g})\n\n" + markdown_table(summary, columns)
    paths = write_outputs(out, {
        "results.json": json_writer(data),
        "table.md": text_writer(md),
        "rmse_heatmap.png": figure_writer(heatmap(rows, structures, targets, sizes)),
    })
    console.print(f"wrote {', '.join(str(p) for p in paths.values())} in {seconds:.0f} s")
    return [r.to_dict() for r in rows]
