"""Matplotlib figures of the training experiments (used by the tour and by ``structmat train``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: enough distinct colours for every registered family
_COLORS = list(plt.cm.tab20.colors) + list(plt.cm.tab20b.colors)


def single_layer_figure(result):
    """Test-error curves per teacher (one panel each), one line per family, log scale."""
    teachers = list(result.config.teachers)
    fig, axes = plt.subplots(1, len(teachers), figsize=(3.6 * len(teachers), 3.4), sharey=True, squeeze=False)
    for ax, teacher in zip(axes[0], teachers):
        ax.set_prop_cycle(color=_COLORS)
        for run in (r for r in result.runs if r.teacher == teacher):
            style = {"color": "k", "lw": 2.0} if run.structure == "dense" else {"lw": 1.2}
            ax.plot(run.steps, [max(v, 1e-14) for v in run.test_loss], label=f"{run.structure} ({run.parameters})", **style)
        ax.set_yscale("log")
        ax.set_title(f"teacher: {teacher}")
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("relative test error")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(f"single layer y = {result.config.activation}(Wx), n = {result.config.n}, budget {result.config.budget:g} n² (dense: n²)")
    fig.tight_layout()
    return fig


def mnist1d_figure(result):
    """Test accuracy against parameters: every (family, budget) with its seed range, Pareto front."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.set_prop_cycle(color=_COLORS)
    summary = result.summary()
    structures = list(dict.fromkeys(row["structure"] for row in summary))
    for structure in structures:
        rows = sorted((r for r in summary if r["structure"] == structure), key=lambda r: r["parameters"])
        x = [r["parameters"] for r in rows]
        y = [100 * r["test_accuracy"] for r in rows]
        err = [[100 * (r["test_accuracy"] - r["min_accuracy"]) for r in rows], [100 * (r["max_accuracy"] - r["test_accuracy"]) for r in rows]]
        marker = "*" if structure == "dense" else "o"
        ax.errorbar(x, y, yerr=err, marker=marker, markersize=11 if structure == "dense" else 5, capsize=2, lw=1, label=structure)
    front = result.pareto_front()
    ax.step([r["parameters"] for r in front], [100 * r["test_accuracy"] for r in front], where="post", color="k", lw=0.8, ls="--", label="Pareto front")
    ax.axhline(68, color="grey", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("model parameters")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"MNIST-1D MLP (hidden {result.config.hidden}), hidden layers structured; dotted: paper's dense MLP (68 %)")
    ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def lm_figure(result):
    """Validation loss against steps and against wall-clock seconds, one line per family."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for run in result.runs:
        label = f"{run.structure} ({run.parameters} params)"
        left.plot(run.steps, run.val_loss, label=label)
        right.plot(run.seconds, run.val_loss, label=label)
    left.set_xlabel("step")
    right.set_xlabel("training seconds")
    left.set_ylabel("validation loss (nats/byte)")
    right.legend(fontsize=8)
    fig.suptitle(f"byte-level transformer on the standard library's source, FFN at {result.config.budget:g} x dense")
    fig.tight_layout()
    return fig


def compress_figure(result):
    """Mean cosine similarity to the original embeddings against linear-layer parameters."""
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.set_prop_cycle(color=_COLORS)
    structures = list(dict.fromkeys(row.structure for row in result.rows))
    for structure in structures:
        rows = sorted((r for r in result.rows if r.structure == structure), key=lambda r: r.linear_parameters)
        ax.plot([r.linear_parameters for r in rows], [r.mean_cosine for r in rows], marker="o", label=structure)
    ax.set_xscale("log")
    ax.set_xlabel("parameters of the linear layers")
    ax.set_ylabel("mean cosine to original embedding")
    ax.set_title("all-MiniLM-L6-v2 projected onto each family (no fine-tuning)")
    ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` as PNG (creating the directory) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
