"""Walsh–Hadamard / DCT kernel benchmark; same as ``structmat bench hadamard-dct``."""

from rich.console import Console

from structmat.experiments.bench_hadamard_dct import run

if __name__ == "__main__":
    run(console=Console())
