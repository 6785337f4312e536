"""Writing experiment outputs all at once: every file is first written into a temporary folder
beside the destination, then moved into place, so an error half-way leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def write_outputs(out_dir: str | os.PathLike, writers: dict[str, Callable[[Path], None]]) -> dict[str, Path]:
    """Call ``writers[name](path)`` for each file name into a temporary folder, then move the
    files into ``out_dir`` (created if needed). Returns ``{name: final path}``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: expected a directory path, got the existing file {str(out)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for name, write in writers.items():
            write(staging / name)
        out.mkdir(exist_ok=True)
        final = {}
        for name in writers:
            os.replace(staging / name, out / name)
            final[name] = out / name
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def json_writer(data) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_text(json.dumps(data, indent=2, default=str))

    return write


def text_writer(text: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        path.write_text(text)

    return write


def figure_writer(figure) -> Callable[[Path], None]:
    """Save a matplotlib figure (and close it)."""

    def write(path: Path) -> None:
        figure.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(figure)

    return write


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` restricted to ``columns``."""

    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.2e}" if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e4) else f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"
