"""The survey's single-layer network ``y = g(W x)`` (SPEC.md §2.6 and §3).

A teacher ``W*`` generates targets ``y = g(W* x)`` for Gaussian inputs ``x``; a student
``g(W x)`` with ``W`` from one family, at the same parameter budget for every family, learns from
them by Adam on the mean squared error. Teachers with a small linear circuit (the real part of the
DFT and the Walsh--Hadamard matrix, ``O(n log n)`` gates; a random sparse circuit of ``log n``
layers of fan-in-2 gates) are compared with one without (a Gaussian matrix, ``~n²`` gates). The
question of SPEC.md §3 in miniature: which families learn which teachers at a budget far below
``n²``?

Returns plain data (:class:`SingleLayerResult`): per (teacher, family) the loss curve on held-out
inputs, the final relative test error and the relative weight error ``||W - W*||_F / ||W*||_F``.
Deterministic for a fixed seed on CPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from ..core import StructuredLinear
from ..core.errors import check_choice, check_int
from .harness import budget_options, progress_bar, representative_structures, seed_everything, torch_threads, trainable_structures

TEACHERS = ("dft_real", "hadamard", "sparse_circuit", "gaussian")
ACTIVATIONS = {"tanh": torch.tanh, "identity": lambda z: z}


def teacher_matrix(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """The teacher ``W*`` (float64, ``(n, n)``), scaled to ``||W*||_F = sqrt(n)`` so that each
    output of ``W* x`` has unit variance on average for ``x ~ N(0, I)``.

    * ``dft_real``: ``Re F_n``, ``F_jk = exp(-2 pi i jk / n)`` (an FFT circuit, ``O(n log n)``);
    * ``hadamard``: Sylvester's Walsh--Hadamard matrix (leading ``n x n`` block of the next power of
      two), ``n log n`` additions;
    * ``sparse_circuit``: a product of ``ceil(log2 n)`` random layers of fan-in-2 gates (each layer
      rotates randomly chosen pairs of coordinates), a circuit of ``2 n ceil(log2 n)`` gates whose
      pairings, unlike a butterfly's, follow no stride pattern;
    * ``gaussian``: i.i.d. ``N(0, 1)`` entries, no circuit smaller than ``~n²``.
    """
    check_choice("teacher", name, TEACHERS)
    n = check_int("n", n, minimum=2)
    generator = torch.Generator().manual_seed(seed)
    if name == "dft_real":
        k = torch.arange(n, dtype=torch.float64)
        W = torch.cos(2 * math.pi * torch.outer(k, k) / n)
    elif name == "hadamard":
        size = 1 << (n - 1).bit_length()
        H = torch.ones(1, 1, dtype=torch.float64)
        while H.shape[0] < size:
            H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
        W = H[:n, :n]
    elif name == "sparse_circuit":
        W = torch.eye(n, dtype=torch.float64)
        for _ in range(max(1, math.ceil(math.log2(n)))):
            W = _random_pairing_layer(n, generator) @ W
    else:
        W = torch.randn(n, n, generator=generator, dtype=torch.float64)
    return W * (math.sqrt(n) / torch.linalg.norm(W))


def _random_pairing_layer(n: int, generator: torch.Generator) -> torch.Tensor:
    """One layer of fan-in-2 gates: the coordinates are paired at random and each pair is rotated
    by a random angle (an unpaired last coordinate, for odd ``n``, is kept), so the layer is
    orthogonal and the product of layers stays well conditioned."""
    layer = torch.eye(n, dtype=torch.float64)
    order = torch.randperm(n, generator=generator)
    angles = torch.rand(n // 2, generator=generator, dtype=torch.float64) * (2 * math.pi)
    i, j = order[0 : 2 * (n // 2) : 2], order[1 : 2 * (n // 2) : 2]
    c, s = torch.cos(angles), torch.sin(angles)
    layer[i, i], layer[i, j], layer[j, i], layer[j, j] = c, -s, s, c
    return layer


@dataclass
class SingleLayerConfig:
    """Settings of :func:`single_layer_experiment` (``quick()`` / ``full()`` give the presets)."""

    n: int = 64
    budget: float = 0.375
    teachers: tuple[str, ...] = TEACHERS
    structures: tuple[str, ...] | None = None
    activation: str = "tanh"
    steps: int = 400
    batch: int = 64
    lrs: tuple[float, ...] = (3e-3, 1e-2, 3e-2)
    test_size: int = 1024
    curve_points: int = 20
    seed: int = 0
    threads: int | None = 1

    @classmethod
    def quick(cls, **overrides) -> "SingleLayerConfig":
        return cls(**{"steps": 400, "lrs": (1e-2, 3e-2), "structures": ("dense", *representative_structures()), **overrides})

    @classmethod
    def full(cls, **overrides) -> "SingleLayerConfig":
        return cls(**{"n": 128, "budget": 0.25, "steps": 3000, "curve_points": 40, **overrides})


@dataclass
class SingleLayerRun:
    """One student trained on one teacher."""

    teacher: str
    structure: str
    options: dict
    parameters: int
    lr: float
    steps: list[int]
    test_loss: list[float]
    test_error: float
    weight_error: float
    seconds: float

    def row(self) -> dict:
        return {
            "teacher": self.teacher,
            "structure": self.structure,
            "parameters": self.parameters,
            "lr": self.lr,
            "test_error": self.test_error,
            "weight_error": self.weight_error,
            "seconds": self.seconds,
        }


@dataclass
class SingleLayerResult:
    config: SingleLayerConfig
    runs: list[SingleLayerRun]
    skipped: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[dict]:
        return [run.row() for run in self.runs]

    def error_table(self) -> list[dict]:
        """One row per family, one column per teacher: final relative test error."""
        table: dict[str, dict] = {}
        for run in self.runs:
            row = table.setdefault(run.structure, {"structure": run.structure, "parameters": run.parameters})
            row[run.teacher] = run.test_error
        return list(table.values())

    def to_dict(self) -> dict:
        return {"config": asdict(self.config), "runs": [asdict(r) for r in self.runs], "skipped": dict(self.skipped)}


def _train_student(
    teacher: torch.Tensor, structure: str, options: dict, config: SingleLayerConfig, seed: int, lr: float
) -> tuple[SingleLayerRun, float]:
    """Adam with learning rate ``lr`` (cosine decay) on fresh Gaussian minibatches; the loss curve
    is the relative error ``E|g(Wx) - y|² / E|y|²`` on ``config.test_size`` held-out inputs.
    Returns the run and its final error on separate validation inputs (for choosing ``lr``)."""
    n = config.n
    g = ACTIVATIONS[config.activation]
    W_star = teacher.to(torch.float32)
    data = torch.Generator().manual_seed(seed)
    x_test = torch.randn(config.test_size, n, generator=data)
    y_test = g(x_test @ W_star.T)
    seed_everything(seed)
    student = StructuredLinear(n, n, structure, bias=False, **options)
    optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
    checkpoints = set(np.linspace(0, config.steps, config.curve_points + 1).round().astype(int).tolist())

    def relative_error(x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.no_grad():
            return float(torch.mean((g(student(x)) - y) ** 2) / torch.mean(y**2))

    steps, losses = [], []
    start = time.perf_counter()
    for step in range(config.steps + 1):
        if step in checkpoints:
            steps.append(step)
            losses.append(relative_error(x_test, y_test))
        if step == config.steps:
            break
        x = torch.randn(config.batch, n, generator=data)
        loss = torch.mean((g(student(x)) - g(x @ W_star.T)) ** 2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    seconds = time.perf_counter() - start
    x_valid = torch.randn(config.test_size, n, generator=data)
    with torch.no_grad():
        weight_error = float(torch.linalg.norm(student.to_dense().double() - teacher) / torch.linalg.norm(teacher))
    run = SingleLayerRun(
        teacher="",
        structure=structure,
        options=dict(student.options),
        parameters=student.num_parameters,
        lr=lr,
        steps=steps,
        test_loss=losses,
        test_error=losses[-1],
        weight_error=weight_error,
        seconds=seconds,
    )
    return run, relative_error(x_valid, g(x_valid @ W_star.T))


def _best_student(teacher: torch.Tensor, structure: str, options: dict, config: SingleLayerConfig, seed: int) -> SingleLayerRun:
    """The run of the learning rate in ``config.lrs`` with the lowest error on validation inputs
    (drawn apart from the training and test inputs); ``seconds`` adds up all the runs."""
    trials = [_train_student(teacher, structure, options, config, seed, lr) for lr in config.lrs]
    best, _ = min(trials, key=lambda trial: trial[1])
    best.seconds = sum(run.seconds for run, _ in trials)
    return best


def plan_students(config: SingleLayerConfig) -> tuple[list[tuple[str, dict]], dict[str, str]]:
    """``[(structure, options)]`` of the students within the budget, and the skipped families
    with the reason."""
    structures = list(config.structures) if config.structures is not None else ["dense", *trainable_structures()]
    plans, skipped = [], {}
    for structure in structures:
        options = budget_options(structure, config.n, config.n, config.budget)
        if options is None:
            skipped[structure] = f"smallest member exceeds the budget of {config.budget} x n² parameters"
        else:
            plans.append((structure, options))
    return plans, skipped


def single_layer_experiment(config: SingleLayerConfig | None = None, progress=None) -> SingleLayerResult:
    """Train every family (at ``config.budget`` parameters) on every teacher; ``dense`` (with all
    ``n²`` parameters) is the reference row. ``progress(label)`` is called after each run."""
    config = config or SingleLayerConfig()
    for teacher in config.teachers:
        check_choice("teacher", teacher, TEACHERS)
    check_choice("activation", config.activation, sorted(ACTIVATIONS))
    plans, skipped = plan_students(config)
    runs = []
    with torch_threads(config.threads):
        for t, teacher_name in enumerate(config.teachers):
            teacher = teacher_matrix(teacher_name, config.n, seed=config.seed + 1000 * t)
            for structure, options in plans:
                run = _best_student(teacher, structure, options, config, seed=config.seed + t)
                run.teacher = teacher_name
                runs.append(run)
                if progress:
                    progress(f"{teacher_name}/{structure}")
    return SingleLayerResult(config, runs, skipped)


def print_result(result: SingleLayerResult, console: Console) -> None:
    table = Table(title=f"single layer y = {result.config.activation}(W x), n = {result.config.n}: final relative test error")
    table.add_column("structure")
    table.add_column("parameters", justify="right")
    for teacher in result.config.teachers:
        table.add_column(teacher, justify="right")
    for row in result.error_table():
        table.add_row(row["structure"], str(row["parameters"]), *(f"{row.get(t, float('nan')):.2e}" for t in result.config.teachers))
    console.print(table)
    for structure, reason in result.skipped.items():
        console.print(f"[yellow]skipped {structure}: {reason}[/]")


def run(console: Console | None = None, quick: bool = True, **overrides) -> SingleLayerResult:
    """The CLI/tour entry point: run the preset (quick or full) with a progress bar and print the
    error table."""
    config = SingleLayerConfig.quick(**overrides) if quick else SingleLayerConfig.full(**overrides)
    total = len(config.teachers) * len(plan_students(config)[0])
    with progress_bar(console, "single-layer students", total) as advance:
        result = single_layer_experiment(config, progress=advance)
    if console is not None:
        print_result(result, console)
    return result
