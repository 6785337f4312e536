"""``structmat tour``: the main job (DESIGN.md §7).

Runs the library's building blocks on built-in defaults and writes
``structmat-report/index.html`` (plots embedded, no external resources) and ``results.json``. Each
step is a function that calls an experiment (plain data) and renders it into the report:

1. the registered families; 2. exact transforms checked against NumPy/SciPy; 3. a transform
recovered by gradient descent (``sm.fit``); 4. circuits compiled to K-matrices; 5. synthetic and
real (pretrained MiniLM) weights projected onto every family; 6. the survey's single-layer network;
7. MNIST-1D with structured hidden layers; 8. speed against ``nn.Linear``.

A step whose module is missing from the build (an optional package absent, e.g. the MiniLM weights)
is listed under "Steps not run" with the reason instead of being faked. :class:`TourSettings` holds
the sizes of the ``quick`` (default, a few minutes on two cores), ``full`` and ``tiny`` (tests)
presets.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from .. import __version__  # noqa: E402
from ..core import registry  # noqa: E402
from ..experiments.projection import projection_table  # noqa: E402
from ..experiments.speed import speed_table  # noqa: E402
from ..experiments.harness import progress_bar, torch_threads  # noqa: E402
from . import plots  # noqa: E402
from .html import Report  # noqa: E402


def step_families(report: Report, console: Console) -> None:
    rows = [
        {
            "family": info.name,
            "parameters": info.params_formula,
            "matvec flops": info.flops_formula,
            "projection": info.has_projection,
            "description": info.description.replace("``", ""),
        }
        for info in registry.all_infos()
    ]
    report.heading("Families")
    report.table(rows)
    report.results["families"] = rows


def step_projection(report: Report, console: Console, n: int, budget: float) -> None:
    infos = [i for i in registry.all_infos() if i.has_projection and "fixed" not in i.tags]
    with progress_bar(console, "projecting test matrices", 3 * len(infos)) as advance:
        rows = projection_table(n=n, budget=budget, progress=advance)
    report.heading(f"Projection onto each family ({int(budget * 100)} % of the dense parameters, n = {n})")
    report.paragraph(
        "Relative Frobenius error ||W - P(W)|| / ||W|| of the closed-form projection of locally generated "
        "matrices onto each family at the same parameter budget."
    )
    data = [r.to_dict() for r in rows]
    report.table(data, ["matrix", "structure", "parameters", "rel_error", "seconds"])
    report.results["projection"] = data
    fig, ax = plt.subplots(figsize=(8, 3.5))
    matrices = sorted({r.matrix for r in rows})
    structures = sorted({r.structure for r in rows})
    width = 0.8 / max(1, len(matrices))
    for k, matrix in enumerate(matrices):
        values = [next((r.rel_error for r in rows if r.matrix == matrix and r.structure == s), float("nan")) for s in structures]
        ax.bar([i + k * width for i in range(len(structures))], values, width=width, label=matrix)
    ax.set_xticks([i + width * (len(matrices) - 1) / 2 for i in range(len(structures))])
    ax.set_xticklabels(structures, rotation=30, ha="right")
    ax.set_ylabel("relative error")
    ax.legend(fontsize=8)
    ax.set_title("projection error at equal parameter budget")
    report.figure("projection", fig, "Projection error per family and test matrix.")
    plt.close(fig)


def step_speed(report: Report, console: Console, n: int, batch: int) -> None:
    infos = registry.all_infos()
    with progress_bar(console, f"timing families at n={n}", len(infos)) as advance:
        rows = speed_table(n=n, batch=batch, progress=advance)
    data = [r.to_dict() for r in rows]
    report.heading(f"Speed against nn.Linear (n = {n}, batch {batch}, float32, forward)")
    report.table(data, ["structure", "parameters", "flops", "seconds", "dense_seconds", "speedup"], highlight={"speedup": lambda v: v >= 1})
    report.results["speed"] = data
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar([r.structure for r in rows], [r.speedup for r in rows], color=["#186a3b" if r.speedup >= 1 else "#b03a2e" for r in rows])
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("speed-up over nn.Linear")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    report.figure("speed", fig, "Forward speed-up over nn.Linear (log scale; > 1 is faster).")
    plt.close(fig)


@dataclass
class TourSettings:
    """Sizes of every step; ``quick()`` (default), ``full()`` and ``tiny()`` (tests) presets."""

    projection_n: int = 128
    speed_n: int = 1024
    speed_batch: int = 64
    transform_sizes: tuple[int, ...] = (8, 16, 64)
    recovery: tuple[tuple[str, int, str], ...] = (("hadamard", 16, "butterfly"), ("dft", 16, "bp"))
    recovery_steps: int = 600
    recovery_trials: int = 2
    compile_n: int = 16
    wild_include: str = r"encoder\.layer\.0\.attention\.self\.query"
    wild_budgets: tuple[float, ...] = (0.25,)
    wild_fit_steps: int = 0
    wild_block: int | None = None
    experiment_overrides: dict = field(default_factory=dict)
    quick: bool = True

    @classmethod
    def quick_preset(cls) -> "TourSettings":
        return cls()

    @classmethod
    def full(cls) -> "TourSettings":
        return cls(
            projection_n=512, speed_n=4096, transform_sizes=(8, 64, 256, 1024),
            recovery=(("hadamard", 32, "butterfly"), ("dft", 32, "bp"), ("dct", 32, "bp")), recovery_steps=1500,
            recovery_trials=4, compile_n=32, wild_include=r"encoder\.layer\.0\.", wild_budgets=(0.1, 0.25, 0.5),
            wild_fit_steps=150, quick=False,
        )

    @classmethod
    def tiny(cls) -> "TourSettings":
        """Seconds, for tests: smallest sizes, a couple of families in the training steps."""
        return cls(
            projection_n=16, speed_n=64, speed_batch=4, transform_sizes=(8,), recovery=(("hadamard", 8, "butterfly"),),
            recovery_steps=60, recovery_trials=1, compile_n=4, wild_budgets=(0.5,), wild_block=32,
            experiment_overrides={
                "single_layer": {"n": 8, "steps": 20, "lrs": (1e-2,), "teachers": ("hadamard", "gaussian"), "structures": ("dense", "low_rank")},
                "mnist1d": {"steps": 20, "hidden": 16, "num_samples": 400, "structures": ("low_rank",)},
            },
        )


def optional_module(name: str):
    """The module ``structmat.<name>``, or the reason it cannot be imported (a step then reports
    that it did not run instead of faking its result)."""
    try:
        return importlib.import_module(f"structmat.{name}"), None
    except (ImportError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def step_transforms(report: Report, console: Console, settings: TourSettings) -> None:
    module, _ = optional_module("experiments.transforms_table")
    with progress_bar(console, "building exact transforms", 1) as advance:
        rows = module.transforms_table(sizes=settings.transform_sizes, console=console)
        advance("done")
    exact = sum(row["max_error"] <= 1e-10 for row in rows)
    report.heading("Exact transforms as structured layers")
    report.paragraph(
        f"Each classical transform is built from butterfly / K-matrix / other structured factors (never a stored dense "
        f"matrix) and applied to the identity with its fast algorithm; max entrywise error against NumPy/SciPy in "
        f"float64. {exact} of {len(rows)} constructions agree to 1e-10."
    )
    report.table(rows, ["transform", "n", "family", "parameters", "flops", "max_error"], highlight={"max_error": lambda v: v <= 1e-10})
    report.results["transforms"] = rows


def step_recovery(report: Report, console: Console, settings: TourSettings) -> None:
    recovery, _ = optional_module("experiments.recovery")
    fit_settings = recovery.FitSettings(steps=settings.recovery_steps, trials=settings.recovery_trials)
    rows = []
    with progress_bar(console, "recovering transforms", len(settings.recovery)) as advance, torch_threads(1):
        for target, n, structure in settings.recovery:
            rows.append(recovery.fit_one(target, n, structure, fit_settings).to_dict())
            advance(f"{target} n={n}")
    data = [{k: row[k] for k in ("target", "n", "structure", "model", "parameters", "rmse", "success", "method", "seconds")} for row in rows]
    report.heading("A transform recovered from its matrix")
    report.paragraph(
        "Butterfly (B) or BP/BPBP factors are learned from the dense target alone: first the closed-form hierarchical "
        "factorisation (exact for butterfly/BP members such as Hadamard and the DFT), then, where it is not exact, "
        f"sm.fit ({fit_settings.steps} Adam steps, {fit_settings.trials} restarts, L-BFGS polish; SPEC.md §7.4); "
        f"'method' says which produced each row. Success: RMSE < {recovery.SUCCESS_RMSE:g}. "
        "`structmat recover` runs the whole grid."
    )
    report.table(data, highlight={"success": bool})
    report.results["recovery"] = data


def step_compile(report: Report, console: Console, settings: TourSettings) -> None:
    compile_module, _ = optional_module("compile")
    from .. import circuits

    n = settings.compile_n
    depth = max(1, n.bit_length() - 1)
    cases = {"fft": circuits.fft(n), "hadamard": circuits.hadamard(n), "random": circuits.random(n, size=n + 2 * n * depth, depth=depth, seed=0)}
    rows = []
    with progress_bar(console, "compiling circuits to K-matrices", len(cases)) as advance:
        for name, circuit in cases.items():
            start = time.perf_counter()
            kmatrix = compile_module.to_kmatrix(circuit)
            row = {"circuit": name, **compile_module.compile_report(circuit, kmatrix)}
            row["max_error"] = compile_module.max_error(circuit, kmatrix)
            row["seconds"] = time.perf_counter() - start
            rows.append(row)
            advance(name)
    report.heading(f"Circuits compiled to K-matrices (n = {n})")
    report.paragraph(
        "Theorem 1 of the Kaleidoscope paper made constructive (SPEC.md §5.4): a linear circuit of size s and depth d "
        "becomes an exact K-matrix (BB*)^w_e with w = O(d) and e = O(s/n); the error is that of the K-matrix's fast "
        "multiply against the circuit's matrix."
    )
    report.table(rows, ["circuit", "n", "s", "d", "w", "e", "params", "w/d", "e/(s/n)", "max_error", "seconds"], highlight={"max_error": lambda v: v <= 1e-10})
    report.results["compile"] = rows


def closed_form_projections(weights: dict, budgets, console: Console | None) -> list[dict]:
    """``sm.project(..., method="closed_form")`` of every weight onto every trainable family with a
    closed-form projection at every budget (rows as in ``experiments.wild``); the fast variant of
    :func:`structmat.experiments.wild.project_weights`, which also fits the other families."""
    from ..fit import project

    infos = [i for i in registry.all_infos() if i.has_projection and i.trainable and "fixed" not in i.tags and i.name != "dense"]
    rows = []
    with progress_bar(console, "projecting real weights (closed forms)", len(weights) * len(infos)) as advance:
        for name, weight in weights.items():
            W = weight.detach().to(torch.float64)
            for info in infos:
                for budget in budgets:
                    try:
                        result = project(W, info.name, params=budget, method="closed_form")
                    except ValueError:
                        continue
                    rows.append({
                        "matrix": name, "shape": list(W.shape), "structure": info.name, "budget": budget,
                        "parameters": result.layer.num_parameters, "rel_error": result.rel_error,
                        "method": result.method, "seconds": result.seconds,
                    })
                advance(info.name)
    return rows


def step_wild(report: Report, console: Console, settings: TourSettings) -> None:
    wild, _ = optional_module("experiments.wild")
    weights = wild.load_linear_weights(None, include=settings.wild_include)
    if settings.wild_block:
        b = settings.wild_block
        weights = {f"{name}[:{b}, :{b}]": W[:b, :b] for name, W in weights.items()}
    if settings.wild_fit_steps:
        rows = [r.to_dict() for r in wild.project_weights(weights, budgets=settings.wild_budgets, fit_steps=settings.wild_fit_steps, lbfgs_steps=20, console=console)]
        how = "closed form where one exists (polished by a fit when it is a heuristic), a gradient fit otherwise"
    else:
        rows = closed_form_projections(weights, settings.wild_budgets, console)
        how = "closed-form projections only (the full tour also fits the families without one)"
    report.heading("Real weights projected onto every family")
    report.paragraph(
        f"Pretrained all-MiniLM-L6-v2 weights ({', '.join(weights)}) projected onto the trainable families — {how} — "
        f"at {', '.join(f'{b:.0%}' for b in settings.wild_budgets)} of the dense parameters; relative Frobenius error. "
        "`structmat project-model` runs every layer."
    )
    report.table(sorted(rows, key=lambda r: (r["budget"], r["rel_error"])), ["matrix", "structure", "budget", "parameters", "rel_error", "method", "seconds"])
    report.results["wild"] = rows


def step_single_layer(report: Report, console: Console, settings: TourSettings) -> None:
    from ..experiments import single_layer

    result = single_layer.run(console=console, quick=settings.quick, **settings.experiment_overrides.get("single_layer", {}))
    c = result.config
    report.heading("The survey's single-layer network y = g(Wx)")
    report.paragraph(
        f"A teacher W* with a small circuit (DFT real part, Hadamard, a random sparse circuit) or without one (Gaussian) "
        f"labels Gaussian inputs through g = {c.activation}; each family learns it at {c.budget:g} n² parameters "
        f"(n = {c.n}; dense has n²), Adam for {c.steps} steps with the best learning rate of {list(c.lrs)}. "
        "Final relative test error (green: below 1e-3):"
    )
    teachers = list(c.teachers)
    report.table(result.error_table(), ["structure", "parameters", *teachers], highlight={t: (lambda v: v < 1e-3) for t in teachers})
    if result.skipped:
        report.paragraph("Not within the budget: " + "; ".join(f"{k} ({v})" for k, v in result.skipped.items()))
    report.figure("single_layer", plots.single_layer_figure(result), "Relative test error during training, per teacher.")
    report.results["single_layer"] = result.to_dict()


def step_mnist1d(report: Report, console: Console, settings: TourSettings) -> None:
    from ..experiments import mnist1d

    result = mnist1d.run(console=console, quick=settings.quick, **settings.experiment_overrides.get("mnist1d", {}))
    c = result.config
    report.heading("MNIST-1D: structured hidden layers")
    report.paragraph(
        f"MLP 40 → {c.hidden} → {c.hidden} → 10 (ReLU) whose two hidden layers are structured at "
        f"{', '.join(f'{b:g}' for b in c.budgets)} of their dense parameters; Adam (lr {c.lr:g}, batch {c.batch}), "
        f"{c.steps} steps, {len(c.seeds)} seed(s); the dense MLP first (the MNIST-1D paper reports about 68 %). "
        "Bold rows lie on the Pareto front of accuracy against parameters."
    )
    front = {(r["structure"], r["budget"]) for r in result.pareto_front()}
    rows = [{**row, "pareto": (row["structure"], row["budget"]) in front} for row in result.summary()]
    report.table(rows, ["structure", "budget", "parameters", "test_accuracy", "min_accuracy", "max_accuracy", "seconds", "pareto"], highlight={"pareto": bool})
    report.figure("mnist1d", plots.mnist1d_figure(result), "Test accuracy against parameter count (bars: range over seeds).")
    report.results["mnist1d"] = result.to_dict()


#: (name, step function, module that must import for the step to run)
STEPS = (
    ("transforms", step_transforms, "experiments.transforms_table"),
    ("recovery", step_recovery, "experiments.recovery"),
    ("compile", step_compile, "compile"),
    ("wild", step_wild, "experiments.wild"),
    ("single_layer", step_single_layer, "experiments.single_layer"),
    ("mnist1d", step_mnist1d, "experiments.mnist1d"),
)


def _step_available(name: str, module: str) -> str | None:
    """``None`` when the step can run, else the reason (missing module or data package)."""
    _, reason = optional_module(module)
    if reason is None and name == "wild":
        try:
            importlib.import_module("structmat.experiments.wild").default_model_path()
        except ValueError as exc:
            reason = str(exc)
    if reason is None and name == "mnist1d" and importlib.util.find_spec("mnist1d") is None:
        reason = "the mnist1d package is not installed (pip install mnist1d)"
    return reason


def run_tour(
    out_dir: str | Path = "structmat-report", quick: bool = True, console: Console | None = None, settings: TourSettings | None = None
) -> Path:
    """Run every step of the tour and write the report. Returns the path of ``index.html``.

    ``settings`` overrides the preset chosen by ``quick`` (``TourSettings.tiny()`` for tests).
    """
    console = console or Console()
    settings = settings or (TourSettings.quick_preset() if quick else TourSettings.full())
    start = time.perf_counter()
    report = Report(f"structmat {__version__} — tour")
    report.paragraph(
        "Structured matrices for deep learning, after Rudra's survey <em>Arithmetic Circuits, Structured "
        "Matrices and (not so) Deep Learning</em> and the Butterfly, Kaleidoscope, Monarch and LDR papers.",
        raw=True,
    )
    report.results["version"] = __version__
    report.results["mode"] = "quick" if settings.quick else "full"
    report.results["settings"] = asdict(settings)
    timings, not_run = {}, {}

    def timed(name, function, *args, **kwargs):
        step_start = time.perf_counter()
        function(report, console, *args, **kwargs)
        timings[name] = time.perf_counter() - step_start

    timed("families", step_families)
    for name, step, module in STEPS[:3]:
        reason = _step_available(name, module)
        if reason is None:
            timed(name, step, settings)
        else:
            not_run[name] = reason
    timed("projection", step_projection, n=settings.projection_n, budget=0.25)
    for name, step, module in STEPS[3:]:
        reason = _step_available(name, module)
        if reason is None:
            timed(name, step, settings)
        else:
            not_run[name] = reason
    timed("speed", step_speed, n=settings.speed_n, batch=settings.speed_batch)
    if not_run:
        report.heading("Steps not run")
        report.table([{"step": k, "reason": v} for k, v in not_run.items()])
    report.heading("Time per step")
    report.table([{"step": k, "seconds": v} for k, v in timings.items()])
    report.results["not_run"] = not_run
    report.results["step_seconds"] = timings
    report.results["seconds"] = time.perf_counter() - start
    path = report.write(out_dir)
    summary = Table(title="structmat tour")
    summary.add_column("step")
    summary.add_column("seconds", justify="right")
    for name, seconds in timings.items():
        summary.add_row(name, f"{seconds:.1f}")
    for name, reason in not_run.items():
        summary.add_row(f"{name} (not run)", reason)
    summary.add_row("report", str(path))
    console.print(summary)
    return path
