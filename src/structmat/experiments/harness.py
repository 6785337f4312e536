"""Shared plumbing of the training experiments: family selection at a parameter budget, seeding,
and Rich progress bars.

The experiments (``single_layer``, ``mnist1d``, ``lm``, ``compress``) walk the registry, so a family
that lands later is picked up without editing them.
"""

from __future__ import annotations

import contextlib
import random
from typing import Callable, Iterator

import numba
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


#: One representative per kind of family (low rank, sparsity, block/Kronecker products, Monarch,
#: butterflies, circulant/LDR, diagonal-transform products) for the quick presets: training every
#: registered family is the full presets' job.
REPRESENTATIVES = (
    "low_rank",
    "sparse",
    "block_diagonal",
    "kronecker",
    "btt",
    "monarch",
    "butterfly",
    "kaleidoscope",
    "circulant",
    "toeplitz_like",
    "fastfood",
)


def representative_structures() -> list[str]:
    """The registered members of :data:`REPRESENTATIVES`, in that order."""
    registered = set(registry.names())
    return [name for name in REPRESENTATIVES if name in registered]


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


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)`` (restored afterwards; ``None`` leaves
    the setting alone).

    The experiments default to one thread: CPU results are then reproducible bit for bit on any
    machine (the order of floating-point reductions in a matrix product depends on the thread
    count, and training amplifies the difference), and the small layers they train run faster
    without threading overhead, above all on a loaded machine.
    """
    if threads is None:
        yield
        return
    previous = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(threads)
    # Numba's OpenMP threading layer shares the OpenMP runtime with PyTorch: a parallel Numba
    # kernel would reset PyTorch's thread count to Numba's, so both are set.
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        numba.set_num_threads(previous[1])


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
