"""The ``structmat`` command (Typer + Rich), DESIGN.md §7.

Every subcommand runs on built-in defaults and shows progress; the work is done by functions in
``structmat.experiments`` / ``structmat.report`` (this module only parses options and prints).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Structured matrices for deep learning.")
console = Console()


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"structmat {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
) -> None:
    """Structured matrices for deep learning: circuits, butterflies, Kaleidoscope, Monarch, LDR."""


@app.command()
def families() -> None:
    """List the registered families with their parameter and flop formulas."""
    from .core import registry

    table = Table(title="structmat families")
    for column in ["family", "parameters", "matvec flops", "projection", "description"]:
        table.add_column(column)
    for info in registry.all_infos():
        table.add_row(info.name, info.params_formula, info.flops_formula, "yes" if info.has_projection else "fit", info.description.replace("``", ""))
    console.print(table)


@app.command()
def tour(
    out: Path = typer.Option(Path("structmat-report"), "--out", help="Output directory of the report."),
    full: bool = typer.Option(False, "--full/--quick", help="--quick (default): a few minutes on two cores; --full: larger sizes, every family trained."),
) -> None:
    """The main job: run every building block on defaults and write an HTML + JSON report."""
    from .report.tour import run_tour

    path = run_tour(out, quick=not full, console=console)
    console.print(f"[bold green]report written to[/] {path}")


@app.command()
def bench(
    suite: str = typer.Argument(..., help="Benchmark suite: butterfly, butterfly-gpu (needs CUDA), monarch, ldr, fastfood, hadamard-dct, circuits, compiler, hierarchical."),
    quick: bool = typer.Option(False, "--quick", help="Fewer sizes and repeats (smoke run)."),
    output: Optional[Path] = typer.Option(None, "--json", help="Also write the rows as JSON to this file."),
) -> None:
    """Run a speed benchmark suite (structmat.experiments.bench_<suite>) and print its table."""
    import importlib
    import json

    name = suite.strip().lower().replace("-", "_")
    try:
        module = importlib.import_module(f"structmat.experiments.bench_{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"structmat.experiments.bench_{name}":
            raise
        import pkgutil

        from . import experiments

        known = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules(experiments.__path__) if m.name.startswith("bench_"))
        console.print(f"[red]suite: unknown benchmark suite {suite!r}; known: {', '.join(known)}[/]")
        raise typer.Exit(2)
    from .experiments.timing import BenchUnavailable

    try:
        rows = module.run(console=console, quick=quick)
    except BenchUnavailable as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2)
    if output is not None:
        output.write_text(json.dumps(rows, indent=2, default=str))


@app.command()
def transforms(
    sizes: str = typer.Option("8,100,1024", "--sizes", help="Comma-separated sizes n."),
) -> None:
    """Exact fast transforms as structured layers: family, parameters, flops, error vs NumPy/SciPy."""
    from .experiments.transforms_table import transforms_table

    try:
        values = [int(v) for v in sizes.split(",") if v.strip()]
    except ValueError:
        console.print(f"[red]sizes: expected comma-separated integers, got {sizes!r}[/]")
        raise typer.Exit(2)
    if not values or min(values) < 1:
        console.print(f"[red]sizes: expected integers >= 1, got {sizes!r}[/]")
        raise typer.Exit(2)
    transforms_table(values, console=console)


circuit_app = typer.Typer(no_args_is_help=True, help="Linear arithmetic circuits: build, measure, validate.")
app.add_typer(circuit_app, name="circuit")


@circuit_app.command("info")
def circuit_info(
    builder: str = typer.Argument(..., help="fft, hadamard, dct, polymul, toeplitz or random."),
    n: int = typer.Option(64, "--n", help="Number of inputs."),
    size: Optional[int] = typer.Option(None, "--size", help="random: gates including inputs (default 4n)."),
    depth: Optional[int] = typer.Option(None, "--depth", help="random: depth (default ceil(log2 n))."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random constants."),
) -> None:
    """Size, depth and operation counts of a built-in circuit and of its transpose."""
    from .circuits import describe_circuit, example_circuit

    try:
        circuit = example_circuit(builder, n=n, size=size, depth=depth, seed=seed)
    except (ValueError, TypeError) as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2)
    table = Table(title=f"circuit {builder} (n={n})")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for key, value in describe_circuit(circuit):
        table.add_row(key, value)
    console.print(table)


@circuit_app.command("check")
def circuit_check(
    path: Path = typer.Argument(..., help="Circuit JSON file (LinearCircuit/ArithmeticCircuit.to_json())."),
    max_size: int = typer.Option(1_000_000, "--max-size", help="Refuse circuits with more gates."),
) -> None:
    """Validate a circuit JSON file and print its summary; exit code 1 if it is invalid."""
    from .circuits import describe_circuit, load_circuit

    try:
        circuit = load_circuit(path, max_size=max_size)
    except (ValueError, TypeError, OSError) as exc:
        console.print(f"[red]invalid circuit:[/] {exc}")
        raise typer.Exit(1)
    table = Table(title=f"{path} (valid)")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for key, value in describe_circuit(circuit, check=circuit.n_inputs <= 4096):
        table.add_row(key, value)
    console.print(table)


@app.command("compile")
def compile_command(
    target: str = typer.Argument(..., help="fft, hadamard, dct, polymul, toeplitz, random, or a circuit JSON file."),
    n: int = typer.Option(64, "--n", help="Number of inputs of a built-in circuit."),
    size: Optional[int] = typer.Option(None, "--size", help="random: gates including inputs (default 4n)."),
    depth: Optional[int] = typer.Option(None, "--depth", help="random: depth (default ceil(log2 n))."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random constants."),
) -> None:
    """Compile a linear circuit into an exact K-matrix and report s, d, w, e and the error."""
    from rich.progress import Progress

    from .circuits import EXAMPLE_BUILDERS, LinearCircuit, example_circuit, load_circuit
    from .compile import compile_report, max_error, to_kmatrix

    try:
        if target in EXAMPLE_BUILDERS:
            circuit = example_circuit(target, n=n, size=size, depth=depth, seed=seed)
        elif Path(target).is_file():
            circuit = load_circuit(Path(target))
            if not isinstance(circuit, LinearCircuit):
                raise ValueError(f"target: expected a linear circuit, got {type(circuit).__name__}")
        else:
            raise ValueError(f"target: expected one of {list(EXAMPLE_BUILDERS)} or a circuit JSON file, got {target!r}")
    except (ValueError, TypeError, OSError) as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("compiling layers", total=circuit.depth + 1)
        kmatrix = to_kmatrix(circuit, progress=lambda done, total: progress.update(task, completed=done, total=total))
        progress.add_task("checking", total=None)
        error = max_error(circuit, kmatrix, batch=None if circuit.n_inputs <= 1024 else 8)
    table = Table(title=f"{target}: circuit -> K-matrix (𝓑𝓑*)^w_e")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for key, value in compile_report(circuit, kmatrix).items():
        table.add_row(key, f"{value:.3g}" if isinstance(value, float) else str(value))
    table.add_row("max error vs to_matrix()", f"{error:.2e}")
    console.print(table)


@app.command()
def recover(
    out: Path = typer.Option(Path("recovery-results"), "--out", help="Output directory (results.json, table.md, rmse_heatmap.png)."),
    full: bool = typer.Option(False, "--full", help="Sizes 8..1024 (default 8..256)."),
    quick: bool = typer.Option(False, "--quick", help="Sizes 8..32 and a small budget (smoke run)."),
    target: Optional[list[str]] = typer.Option(None, "--target", help="Targets to run (repeatable); default: all."),
    structure: Optional[list[str]] = typer.Option(None, "--structure", help="Structures to run (repeatable); default: all."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes (default: CPU cores)."),
    bp_permutation: str = typer.Option("learned", "--bp-permutation", help="BP permutations: learned, bit_reversal or identity."),
) -> None:
    """Transform recovery (SPEC.md §7.4): learn DFT, DCT, ... as BP/butterfly/K-matrices; RMSE table."""
    from .experiments import recovery

    settings = recovery.FitSettings(bp_permutation=bp_permutation)
    if quick:
        settings = recovery.FitSettings(steps=600, other_steps=300, bp_permutation=bp_permutation)
    recovery.run(
        console=console, quick=quick, full=full, out=out, workers=workers, settings=settings,
        targets=tuple(target) if target else recovery.TARGETS,
        structures=tuple(structure) if structure else recovery.STRUCTURES,
    )


@app.command("project-model")
def project_model(
    model: Optional[Path] = typer.Argument(None, help="A .safetensors or state_dict file (default: the bundled all-MiniLM-L6-v2)."),
    out: Path = typer.Option(Path("wild-results"), "--out", help="Output directory (results.json, table.md, rel_error.png)."),
    include: Optional[str] = typer.Option(None, "--include", help="Regular expression selecting weight names."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Project only the first N selected weights (0 = all; default: one weight of each distinct shape)."),
    full: bool = typer.Option(False, "--full", help="All weights (same as --limit 0)."),
    structure: Optional[list[str]] = typer.Option(None, "--structure", help="Families (repeatable); default: every trainable family."),
    fit_steps: int = typer.Option(150, "--fit-steps", help="Adam steps for families fitted by gradient."),
    fit_seconds: float = typer.Option(5.0, "--fit-seconds", help="Time limit of each gradient fit in seconds (0 = none)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes, one thread each (default: CPU cores, at most 2)."),
) -> None:
    """Project the linear weights of a real network onto every family at 5/10/25/50 % budgets."""
    from .experiments import wild

    try:
        wild.run(console=console, model=model, out=out, include=include, limit=0 if full else limit,
                 structures=structure, fit_steps=fit_steps, fit_seconds=fit_seconds or None, workers=workers)
    except (ValueError, TypeError) as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2)


train_app = typer.Typer(no_args_is_help=True, help="Training experiments: single-layer, MNIST-1D, language model, MiniLM compression.")
app.add_typer(train_app, name="train")
_TRAIN_OUT = typer.Option(Path("structmat-report"), "--out", help="Directory for <experiment>.json and <experiment>.png.")
_TRAIN_FULL = typer.Option(False, "--full", help="Run the full preset (every family, more steps/seeds) instead of the quick one.")
_TRAIN_SEED = typer.Option(0, "--seed", help="Random seed (runs are deterministic for a seed on CPU).")


@train_app.command("single-layer")
def train_single_layer(out: Path = _TRAIN_OUT, full: bool = _TRAIN_FULL, seed: int = _TRAIN_SEED) -> None:
    """The survey's single-layer network y = g(Wx): which families learn which teachers."""
    from .report.training import run_training

    run_training("single-layer", quick=not full, out_dir=out, console=console, seed=seed)


@train_app.command("mnist1d")
def train_mnist1d(
    out: Path = _TRAIN_OUT,
    full: bool = _TRAIN_FULL,
    seeds: int = typer.Option(0, "--seeds", help="Number of seeds (0: the preset's)."),
    steps: int = typer.Option(0, "--steps", help="Training steps (0: the preset's)."),
) -> None:
    """MNIST-1D MLP with structured hidden layers: test accuracy vs parameters (dense first)."""
    from .report.training import run_training

    overrides = {"seeds": tuple(range(seeds))} if seeds else {}
    if steps:
        overrides["steps"] = steps
    run_training("mnist1d", quick=not full, out_dir=out, console=console, **overrides)


@train_app.command("lm")
def train_lm(out: Path = _TRAIN_OUT, full: bool = _TRAIN_FULL, seed: int = _TRAIN_SEED) -> None:
    """Byte-level transformer on the standard library's source with structured FFN layers."""
    from .report.training import run_training

    run_training("lm", quick=not full, out_dir=out, console=console, seed=seed)


@train_app.command("compress")
def train_compress(out: Path = _TRAIN_OUT, full: bool = _TRAIN_FULL) -> None:
    """Project every linear layer of pretrained all-MiniLM-L6-v2 onto each family; embedding cosine."""
    from .report.training import run_training

    run_training("compress", quick=not full, out_dir=out, console=console)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
