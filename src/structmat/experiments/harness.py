"""Shared plumbing of the training experiments: family selection at a parameter budget, seeding,
and Rich progress bars.

The experiments (``single_layer``, ``mnist1d``, ``lm``, ``compress``) walk the registry, so a family
that lands later is picked up without editing them.
"""

from __future__ import annotations

import contextlib
import random
from typing import Callable, Iterator

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..core import registry


def trainable_structures(exclude: tuple[str, ...] = ("dense",)) -> list[str]:
    """Registered families with trainable parameters (no ``fixed`` tag), minus ``exclude``."""
    return [
        info.name
        for info in registry.all_infos()
        if info.trainable and "fixed" not in info.tags and info.name not in exclude
    ]


def budget_options(structure: str, in_features: int, out_features: int, budget: float | int) -> dict | None:
    """The family's options with the most parameters within ``budget`` (a fraction of
    ``in_features * out_features`` or an absolute count), or ``None`` when even its smallest
    member exceeds the budget."""
    if structure == "dense":
        return {}
    try:
        return registry.options_for_budget(structure, in_features, out_features, budget)
    except ValueError:
        return None


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global generators (CPU runs are then repeatable)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def progress_bar(console: Console | None, description: str, total: int) -> Iterator[Callable[[str], None]]:
    """A Rich progress bar; yields ``advance(label)``. With ``console=None`` nothing is shown."""
    if console is None:
        yield lambda label="": None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[label]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, label="")

        def advance(label: str = "") -> None:
            progress.update(task, advance=1, label=label)

        yield advance
