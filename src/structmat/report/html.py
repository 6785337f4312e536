"""A tiny self-contained HTML report writer: sections, tables and embedded PNG figures.

The page has no external resources (figures are base64 data URIs), so it renders from the file
system without a server.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable

_STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
.ok { color: #186a3b; font-weight: bold; } .bad { color: #b03a2e; font-weight: bold; }
figure { margin: 1em 0; } figcaption { font-size: 0.9em; color: #555; }
code { background: #f5f5f5; padding: 1px 4px; }
"""


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.2e}"
        return f"{value:.4g}"
    return str(value)


def figure_to_data_uri(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class Report:
    """Accumulates sections and writes ``index.html`` (+ PNG files + ``results.json``)."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.parts: list[str] = []
        self.figures: dict[str, Any] = {}
        self.results: dict[str, Any] = {}

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def paragraph(self, text: str, raw: bool = False) -> None:
        self.parts.append(f"<p>{text if raw else html.escape(text)}</p>")

    def table(self, rows: Iterable[dict], columns: list[str] | None = None, highlight: dict | None = None) -> None:
        rows = list(rows)
        if not rows:
            self.parts.append("<p><em>(no rows)</em></p>")
            return
        columns = columns or list(rows[0].keys())
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = []
        for row in rows:
            cells = []
            for c in columns:
                value = row.get(c, "")
                cls = ""
                if highlight and c in highlight:
                    cls = ' class="ok"' if highlight[c](value) else ' class="bad"'
                cells.append(f"<td{cls}>{html.escape(format_value(value))}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        self.parts.append(f"<table><tr>{head}</tr>{''.join(body)}</table>")

    def figure(self, name: str, fig, caption: str = "") -> None:
        self.figures[name] = fig
        uri = figure_to_data_uri(fig)
        self.parts.append(
            f'<figure><img src="{uri}" alt="{html.escape(name)}" style="max-width:100%">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    def write(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, fig in self.figures.items():
            fig.savefig(directory / f"{name}.png", dpi=110, bbox_inches="tight")
        page = (
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>"
            + "\n".join(self.parts)
            + "</body></html>"
        )
        (directory / "index.html").write_text(page, encoding="utf-8")
        (directory / "results.json").write_text(json.dumps(self.results, indent=2, default=_json_default), encoding="utf-8")
        return directory / "index.html"


def _json_default(value):
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "item"):
        return value.item()
    return str(value)
