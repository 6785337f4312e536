"""MNIST-1D: an MLP whose hidden layers are structured, test accuracy against parameter count.

The data set is generated locally by the ``mnist1d`` package (``make_dataset`` with the default
``get_dataset_args()``: 4000 training and 1000 test signals of length 40, 10 classes); nothing is
downloaded. The model is the MLP of the MNIST-1D paper, ``40 -> h -> h -> 10`` with ReLU, trained
with Adam (learning rate 1e-2, batch 100). The two hidden layers (``40 -> h`` and ``h -> h``) are
``StructuredLinear`` layers of one family at a budget given as a fraction of their dense
parameter count; the classifier head stays dense. The dense MLP is run first: the paper reports
about 68 % test accuracy for it.

Returns plain data (:class:`MNIST1DResult`): one row per (family, budget, seed), a summary per
(family, budget) with mean and spread over seeds, and the Pareto front (accuracy vs parameters).
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from ..core import StructuredLinear
from ..nn.surgery import trainable_parameters
from .harness import budget_options, progress_bar, representative_structures, seed_everything, torch_threads, trainable_structures

PAPER_DENSE_MLP_ACCURACY = 0.68


def load_mnist1d(num_samples: int = 5000, seed: int = 42) -> dict[str, torch.Tensor]:
    """The MNIST-1D data set generated locally (no download): ``x``/``x_test`` float32 of shape
    ``(*, 40)``, ``y``/``y_test`` int64 labels. The defaults are those of the paper's data set.

    ``mnist1d`` reseeds Python's and NumPy's global generators; their states are restored here.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, seed
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return {
        "x": torch.as_tensor(data["x"], dtype=torch.float32),
        "y": torch.as_tensor(data["y"], dtype=torch.int64),
        "x_test": torch.as_tensor(data["x_test"], dtype=torch.float32),
        "y_test": torch.as_tensor(data["y_test"], dtype=torch.int64),
    }


def mlp(structure: str, hidden: int, options: tuple[dict, dict], inputs: int = 40, classes: int = 10) -> nn.Sequential:
    """``inputs -> hidden -> hidden -> classes`` with ReLU; the two hidden layers use ``structure``
    with the given options, the classifier head is an ``nn.Linear``."""
    return nn.Sequential(
        StructuredLinear(inputs, hidden, structure, **options[0]),
        nn.ReLU(),
        StructuredLinear(hidden, hidden, structure, **options[1]),
        nn.ReLU(),
        nn.Linear(hidden, classes),
    )


@dataclass
class MNIST1DConfig:
    """Settings of :func:`mnist1d_experiment` (``quick()`` / ``full()`` give the presets)."""

    hidden: int = 100
    budgets: tuple[float, ...] = (0.1, 0.25, 0.5)
    structures: tuple[str, ...] | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 6000
    batch: int = 100
    lr: float = 1e-2
    weight_decay: float = 0.0
    num_samples: int = 5000
    data_seed: int = 42
    threads: int | None = 1

    @classmethod
    def quick(cls, **overrides) -> "MNIST1DConfig":
        return cls(**{"budgets": (0.25,), "seeds": (0,), "steps": 1500, "structures": tuple(representative_structures()), **overrides})

    @classmethod
    def full(cls, **overrides) -> "MNIST1DConfig":
        return cls(**overrides)


@dataclass
class MNIST1DRun:
    structure: str
    budget: float
    seed: int
    options: list[dict]
    parameters: int
    hidden_parameters: int
    train_accuracy: float
    test_accuracy: float
    seconds: float


@dataclass
class MNIST1DResult:
    config: MNIST1DConfig
    runs: list[MNIST1DRun]
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> list[dict]:
        """Mean/min/max test accuracy over seeds per (family, budget), dense first."""
        groups: dict[tuple[str, float], list[MNIST1DRun]] = {}
        for run in self.runs:
            groups.setdefault((run.structure, run.budget), []).append(run)
        rows = []
        for (structure, budget), runs in groups.items():
            accuracies = [r.test_accuracy for r in runs]
            rows.append(
                {
                    "structure": structure,
                    "budget": budget,
                    "parameters": runs[0].parameters,
                    "hidden_parameters": runs[0].hidden_parameters,
                    "test_accuracy": float(np.mean(accuracies)),
                    "min_accuracy": min(accuracies),
                    "max_accuracy": max(accuracies),
                    "seeds": len(runs),
                    "seconds": float(np.mean([r.seconds for r in runs])),
                }
            )
        return rows

    def pareto_front(self) -> list[dict]:
        """Summary rows not dominated by another (fewer or equal parameters and higher accuracy)."""
        rows = sorted(self.summary(), key=lambda r: (r["parameters"], -r["test_accuracy"]))
        front, best = [], -1.0
        for row in rows:
            if row["test_accuracy"] > best:
                front.append(row)
                best = row["test_accuracy"]
        return front

    def to_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "runs": [asdict(r) for r in self.runs],
            "summary": self.summary(),
            "pareto_front": self.pareto_front(),
            "skipped": dict(self.skipped),
        }


def train_mlp(model: nn.Module, data: dict[str, torch.Tensor], config: MNIST1DConfig, seed: int) -> tuple[float, float]:
    """Adam on the cross-entropy for ``config.steps`` minibatches drawn with ``seed``; returns
    ``(train_accuracy, test_accuracy)``."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    x, y = data["x"], data["y"]
    for _ in range(config.steps):
        index = torch.randint(0, x.shape[0], (config.batch,), generator=generator)
        loss = nn.functional.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        train = float((model(x).argmax(-1) == y).float().mean())
        test = float((model(data["x_test"]).argmax(-1) == data["y_test"]).float().mean())
    return train, test


def plan_models(config: MNIST1DConfig) -> tuple[list[tuple[str, float, tuple[dict, dict]]], dict[str, str]]:
    """``[(structure, budget, (options of layer 1, options of layer 2))]``: dense first, then every
    family at every budget it can meet; and the skipped (family, budget) pairs with the reason."""
    plans = [("dense", 1.0, ({}, {}))]
    skipped = {}
    structures = list(config.structures) if config.structures is not None else trainable_structures()
    for structure in structures:
        if structure == "dense":
            continue
        for budget in config.budgets:
            first = budget_options(structure, 40, config.hidden, budget)
            second = budget_options(structure, config.hidden, config.hidden, budget)
            if first is None or second is None:
                skipped[f"{structure}@{budget}"] = "smallest member exceeds the budget"
                continue
            plans.append((structure, budget, (first, second)))
    return plans, skipped


def mnist1d_experiment(config: MNIST1DConfig | None = None, progress=None) -> MNIST1DResult:
    """Train the dense MLP, then each family at each budget, for every seed."""
    config = config or MNIST1DConfig()
    data = load_mnist1d(config.num_samples, config.data_seed)
    plans, skipped = plan_models(config)
    runs = []
    with torch_threads(config.threads):
        for structure, budget, options in plans:
            for seed in config.seeds:
                runs.append(_train_one(structure, budget, options, seed, data, config))
                if progress:
                    progress(f"{structure}@{budget} seed {seed}")
    return MNIST1DResult(config, runs, skipped)


def _train_one(structure: str, budget: float, options: tuple[dict, dict], seed: int, data: dict, config: MNIST1DConfig) -> MNIST1DRun:
    seed_everything(seed)
    model = mlp(structure, config.hidden, options)
    structured = [layer for layer in model if isinstance(layer, StructuredLinear)]
    start = time.perf_counter()
    train, test = train_mlp(model, data, config, seed)
    return MNIST1DRun(
        structure=structure,
        budget=budget,
        seed=seed,
        options=[dict(layer.options) for layer in structured],
        parameters=trainable_parameters(model),
        hidden_parameters=sum(layer.num_parameters for layer in structured),
        train_accuracy=train,
        test_accuracy=test,
        seconds=time.perf_counter() - start,
    )


def print_result(result: MNIST1DResult, console: Console) -> None:
    front = {(r["structure"], r["budget"]) for r in result.pareto_front()}
    table = Table(title=f"MNIST-1D MLP (hidden {result.config.hidden}), test accuracy over {len(result.config.seeds)} seed(s); * = Pareto front")
    for column in ["structure", "budget", "parameters", "test accuracy", "min", "max", "seconds"]:
        table.add_column(column, justify="left" if column == "structure" else "right")
    for row in result.summary():
        mark = " *" if (row["structure"], row["budget"]) in front else ""
        table.add_row(
            row["structure"] + mark,
            f"{row['budget']:g}",
            str(row["parameters"]),
            f"{100 * row['test_accuracy']:.1f} %",
            f"{100 * row['min_accuracy']:.1f} %",
            f"{100 * row['max_accuracy']:.1f} %",
            f"{row['seconds']:.1f}",
        )
    console.print(table)
    console.print(f"(the MNIST-1D paper reports about {100 * PAPER_DENSE_MLP_ACCURACY:.0f} % for its dense MLP)")


def run(console: Console | None = None, quick: bool = True, **overrides) -> MNIST1DResult:
    """The CLI/tour entry point: the preset (quick or full) with a progress bar, then the table."""
    config = MNIST1DConfig.quick(**overrides) if quick else MNIST1DConfig.full(**overrides)
    total = len(plan_models(config)[0]) * len(config.seeds)
    with progress_bar(console, "MNIST-1D models", total) as advance:
        result = mnist1d_experiment(config, progress=advance)
    if console is not None:
        print_result(result, console)
    return result
