"""``structmat tour``: the main job (DESIGN.md §7).

Runs the library's building blocks on built-in defaults and writes
``structmat-report/index.html`` (plots embedded) and ``results.json``. Each step is a function
returning plain data; the tour renders them. Steps are added here as the library grows.
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402

from .. import __version__  # noqa: E402
from ..core import registry  # noqa: E402
from ..experiments.projection import projection_table  # noqa: E402
from ..experiments.speed import speed_table  # noqa: E402
from .html import Report  # noqa: E402


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=console)


def step_families(report: Report, console: Console) -> None:
    rows = [
        {
            "family": info.name,
            "parameters": info.params_formula,
            "matvec flops": info.flops_formula,
            "projection": info.has_projection,
            "description": info.description,
        }
        for info in registry.all_infos()
    ]
    report.heading("Families")
    report.table(rows)
    report.results["families"] = rows


def step_projection(report: Report, console: Console, n: int, budget: float) -> None:
    infos = [i for i in registry.all_infos() if i.has_projection and "fixed" not in i.tags]
    with _progress(console) as progress:
        task = progress.add_task("projecting test matrices", total=3 * len(infos))
        rows = projection_table(n=n, budget=budget, progress=lambda _: progress.advance(task))
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
    with _progress(console) as progress:
        task = progress.add_task(f"timing families at n={n}", total=len(infos))
        rows = speed_table(n=n, batch=batch, progress=lambda _: progress.advance(task))
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


def run_tour(out_dir: str | Path = "structmat-report", quick: bool = True, console: Console | None = None) -> Path:
    """Run every step of the tour and write the report. Returns the path of ``index.html``."""
    console = console or Console()
    start = time.perf_counter()
    report = Report(f"structmat {__version__} — tour")
    report.paragraph(
        "Structured matrices for deep learning, after Rudra's survey <em>Arithmetic Circuits, Structured "
        "Matrices and (not so) Deep Learning</em> and the Butterfly, Kaleidoscope, Monarch and LDR papers.",
        raw=True,
    )
    report.results["version"] = __version__
    report.results["mode"] = "quick" if quick else "full"
    step_families(report, console)
    step_projection(report, console, n=128 if quick else 512, budget=0.25)
    step_speed(report, console, n=1024 if quick else 4096, batch=64)
    report.results["seconds"] = time.perf_counter() - start
    path = report.write(out_dir)
    summary = Table(title="structmat tour")
    summary.add_column("step")
    summary.add_column("result")
    summary.add_row("families", str(len(report.results["families"])))
    summary.add_row("projections", str(len(report.results["projection"])))
    summary.add_row("speed rows", str(len(report.results["speed"])))
    summary.add_row("report", str(path))
    console.print(summary)
    return path
