"""``structmat train <experiment>``: run one training experiment, print its table, and save its
plain data (``<name>.json``) and figure (``<name>.png``) in an output directory."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from rich.console import Console

from . import plots
from .html import _json_default

#: experiment name (CLI) -> (module of ``structmat.experiments``, figure function)
EXPERIMENTS = {
    "single-layer": ("single_layer", plots.single_layer_figure),
    "mnist1d": ("mnist1d", plots.mnist1d_figure),
    "lm": ("lm", plots.lm_figure),
    "compress": ("compress", plots.compress_figure),
}


def run_training(name: str, quick: bool = True, out_dir: str | Path | None = "structmat-report", console: Console | None = None, **overrides):
    """Run the experiment ``name`` (a key of :data:`EXPERIMENTS`) with its quick or full preset
    (``overrides`` replace preset fields); with ``out_dir``, write ``<name>.json`` and
    ``<name>.png`` there. Returns the experiment's result object."""
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment: expected one of {sorted(EXPERIMENTS)}, got {name!r}")
    module_name, figure = EXPERIMENTS[name]
    module = importlib.import_module(f"structmat.experiments.{module_name}")
    result = module.run(console=console, quick=quick, **overrides)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps(result.to_dict(), indent=2, default=_json_default), encoding="utf-8")
        plots.save_figure(figure(result), out / f"{name}.png")
        if console is not None:
            console.print(f"[green]wrote[/] {out / (name + '.json')} and {out / (name + '.png')}")
    return result
