"""Hierarchical factorisation benchmark; same as ``structmat bench hierarchical``."""

from rich.console import Console

from structmat.experiments.bench_hierarchical import run

if __name__ == "__main__":
    run(console=Console())
