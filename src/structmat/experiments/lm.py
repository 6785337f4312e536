"""A small character-level transformer language model with structured feed-forward layers.

Corpus: the Python standard library's own source files on the running interpreter (``*.py``
under ``sysconfig.get_paths()["stdlib"]``, sorted by path, read as bytes up to a size limit) --
local, and the same for every run on one Python version. The byte stream is split 90/10 into
training and validation text; tokens are bytes (vocabulary 256).

Model: a pre-norm GPT-style decoder (learned positions, causal multi-head attention with dense
projections, a feed-forward block ``d -> 4d -> d`` with GELU, output head tied to the token
embedding). The two feed-forward matrices of every block are ``StructuredLinear`` layers of one
family at a budget given as a fraction of their dense count (SPEC.md §7.6: "replace dense
projections/FFN weights by Monarch ... 25--50 % of dense parameters"); ``dense`` is the baseline.

Returns plain data (:class:`LMResult`): per family the parameter counts, the validation loss
curve against steps and against wall-clock seconds, and the final validation loss (nats per
byte; bits per byte = nats / ln 2).
"""

from __future__ import annotations

import math
import sysconfig
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from ..core import StructuredLinear, registry
from ..nn.surgery import trainable_parameters
from .harness import budget_options, progress_bar, seed_everything, torch_threads

DEFAULT_STRUCTURES = ("dense", "monarch", "butterfly", "low_rank")


def stdlib_corpus(max_bytes: int = 1_000_000) -> bytes:
    """The first ``max_bytes`` bytes of the concatenated ``*.py`` files of the standard library
    (sorted by relative path; test suites and unreadable files skipped)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, size = [], 0
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        relative = path.relative_to(root).parts
        if any(part in ("test", "tests", "site-packages", "idlelib") for part in relative):
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        chunks.append(data)
        size += len(data)
        if size >= max_bytes:
            break
    return b"".join(chunks)[:max_bytes]


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, structure: str, ffn_options: tuple[dict, dict]) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.ffn_in = StructuredLinear(width, 4 * width, structure, **ffn_options[0])
        self.ffn_out = StructuredLinear(4 * width, width, structure, **ffn_options[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        attended = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(B, T, D))
        return x + self.ffn_out(nn.functional.gelu(self.ffn_in(self.norm2(x))))


class CharTransformer(nn.Module):
    """Byte-level decoder: ``(B, T)`` int64 tokens -> ``(B, T, 256)`` next-byte logits."""

    def __init__(self, structure: str, ffn_options: tuple[dict, dict], width: int = 128, layers: int = 2, heads: int = 4, context: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, width)
        nn.init.normal_(self.embed.weight, std=0.02)  # small, as in GPT-2: the tied head starts near uniform
        self.position = nn.Parameter(torch.zeros(context, width))
        nn.init.normal_(self.position, std=0.02)
        self.blocks = nn.ModuleList(_Block(width, heads, structure, ffn_options) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.position[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.norm(x) @ self.embed.weight.T

    def ffn_parameters(self) -> int:
        return sum(block.ffn_in.num_parameters + block.ffn_out.num_parameters for block in self.blocks)


@dataclass
class LMConfig:
    """Settings of :func:`lm_experiment` (``quick()`` / ``full()`` give the presets)."""

    structures: tuple[str, ...] = DEFAULT_STRUCTURES
    budget: float = 0.25
    width: int = 128
    layers: int = 2
    heads: int = 4
    context: int = 128
    batch: int = 32
    steps: int = 1500
    lr: float = 3e-3
    corpus_bytes: int = 2_000_000
    eval_every: int = 100
    eval_batches: int = 8
    seed: int = 0
    threads: int | None = 1

    @classmethod
    def quick(cls, **overrides) -> "LMConfig":
        return cls(**{"width": 64, "context": 64, "steps": 300, "eval_every": 50, "corpus_bytes": 300_000, **overrides})

    @classmethod
    def full(cls, **overrides) -> "LMConfig":
        return cls(**{"width": 256, "layers": 4, "heads": 8, "steps": 3000, "eval_every": 200, "corpus_bytes": 4_000_000, **overrides})


@dataclass
class LMRun:
    structure: str
    options: list[dict]
    parameters: int
    ffn_parameters: int
    steps: list[int]
    seconds: list[float]
    val_loss: list[float]
    final_val_loss: float
    train_seconds: float

    @property
    def bits_per_byte(self) -> float:
        return self.final_val_loss / math.log(2)

    def row(self) -> dict:
        return {
            "structure": self.structure,
            "parameters": self.parameters,
            "ffn_parameters": self.ffn_parameters,
            "val_loss": self.final_val_loss,
            "bits_per_byte": self.bits_per_byte,
            "train_seconds": self.train_seconds,
        }


@dataclass
class LMResult:
    config: LMConfig
    runs: list[LMRun]
    skipped: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[dict]:
        return [run.row() for run in self.runs]

    def to_dict(self) -> dict:
        return {"config": asdict(self.config), "runs": [asdict(r) for r in self.runs], "rows": self.rows(), "skipped": dict(self.skipped)}


def _batches(data: torch.Tensor, context: int, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.randint(0, data.numel() - context - 1, (batch,), generator=generator)
    window = torch.stack([data[s : s + context + 1] for s in starts.tolist()])
    return window[:, :-1], window[:, 1:]


def plan_models(config: LMConfig) -> tuple[list[tuple[str, tuple[dict, dict]]], dict[str, str]]:
    """Feed-forward options per registered family of ``config.structures`` within the budget."""
    plans, skipped = [], {}
    registered = set(registry.names())
    for structure in config.structures:
        if structure not in registered:
            skipped[structure] = "not registered"
            continue
        first = budget_options(structure, config.width, 4 * config.width, config.budget)
        second = budget_options(structure, 4 * config.width, config.width, config.budget)
        if first is None or second is None:
            skipped[structure] = "smallest member exceeds the budget"
            continue
        plans.append((structure, (first, second)))
    return plans, skipped


def _train_one(structure: str, options: tuple[dict, dict], train: torch.Tensor, valid: torch.Tensor, config: LMConfig) -> LMRun:
    seed_everything(config.seed)
    model = CharTransformer(structure, options, config.width, config.layers, config.heads, config.context)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.steps, pct_start=0.1)
    data_generator = torch.Generator().manual_seed(config.seed)
    eval_generator = torch.Generator().manual_seed(config.seed + 1)
    eval_batches = [_batches(valid, config.context, config.batch, eval_generator) for _ in range(config.eval_batches)]

    def validation_loss() -> float:
        model.eval()
        with torch.no_grad():
            losses = [nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()) for x, y in eval_batches]
        model.train()
        return float(torch.stack(losses).mean())

    steps, seconds, losses = [0], [0.0], [validation_loss()]
    elapsed = 0.0
    for step in range(1, config.steps + 1):
        start = time.perf_counter()
        x, y = _batches(train, config.context, config.batch, data_generator)
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        elapsed += time.perf_counter() - start
        if step % config.eval_every == 0 or step == config.steps:
            steps.append(step)
            seconds.append(elapsed)
            losses.append(validation_loss())
    return LMRun(
        structure=structure,
        options=[dict(model.blocks[0].ffn_in.options), dict(model.blocks[0].ffn_out.options)],
        parameters=trainable_parameters(model),
        ffn_parameters=model.ffn_parameters(),
        steps=steps,
        seconds=seconds,
        val_loss=losses,
        final_val_loss=losses[-1],
        train_seconds=elapsed,
    )


def lm_experiment(config: LMConfig | None = None, progress=None) -> LMResult:
    """Train the model once per family of ``config.structures`` (those registered and within the
    budget) on the same data order; ``progress(label)`` is called after each model."""
    config = config or LMConfig()
    corpus = torch.frombuffer(bytearray(stdlib_corpus(config.corpus_bytes)), dtype=torch.uint8).to(torch.int64)
    split = int(0.9 * corpus.numel())
    train, valid = corpus[:split], corpus[split:]
    plans, skipped = plan_models(config)
    runs = []
    with torch_threads(config.threads):
        for structure, options in plans:
            runs.append(_train_one(structure, options, train, valid, config))
            if progress:
                progress(structure)
    return LMResult(config, runs, skipped)


def print_result(result: LMResult, console: Console) -> None:
    c = result.config
    table = Table(title=f"byte-level transformer (d={c.width}, {c.layers} layers, context {c.context}, {c.steps} steps), FFN at {c.budget:g} x dense")
    for column in ["structure", "parameters", "FFN parameters", "val loss (nats/byte)", "bits/byte", "train seconds"]:
        table.add_column(column, justify="left" if column == "structure" else "right")
    for row in result.rows():
        table.add_row(
            row["structure"], str(row["parameters"]), str(row["ffn_parameters"]), f"{row['val_loss']:.3f}", f"{row['bits_per_byte']:.3f}", f"{row['train_seconds']:.1f}"
        )
    console.print(table)
    for structure, reason in result.skipped.items():
        console.print(f"[yellow]skipped {structure}: {reason}[/]")


def run(console: Console | None = None, quick: bool = True, **overrides) -> LMResult:
    """The CLI entry point: the preset (quick or full) with a progress bar, then the table."""
    config = LMConfig.quick(**overrides) if quick else LMConfig.full(**overrides)
    with progress_bar(console, "language models", len(plan_models(config)[0])) as advance:
        result = lm_experiment(config, progress=advance)
    if console is not None:
        print_result(result, console)
    return result
