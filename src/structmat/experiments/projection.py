"""Project test matrices onto every family with a closed-form projection (``from_dense``).

The matrices are generated locally, so nothing is downloaded: a Gaussian matrix (no structure),
a smooth kernel matrix (a Gaussian RBF kernel on sorted points; numerically low-rank and close to
Toeplitz), and a "trained-like" matrix (low rank plus heavy-tailed noise, like weights of a
trained layer). Real pretrained weights are projected by ``structmat project-model``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ..core import registry
from ..fit import project


def test_matrices(n: int = 256, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(n, n, generator=g, dtype=torch.float64) / math.sqrt(n)
    points = torch.linspace(0, 1, n, dtype=torch.float64)
    kernel = torch.exp(-((points[:, None] - points[None, :]) ** 2) / 0.02)
    rank = max(1, n // 16)
    low = torch.randn(n, rank, generator=g, dtype=torch.float64) @ torch.randn(rank, n, generator=g, dtype=torch.float64)
    noise = torch.distributions.StudentT(3.0).sample((n, n)).to(torch.float64) * 0.1
    trained = (low / math.sqrt(n * rank) + noise / math.sqrt(n))
    return {"gaussian": gaussian, "rbf_kernel": kernel, "low_rank_plus_noise": trained}


@dataclass
class ProjectionRow:
    matrix: str
    structure: str
    parameters: int
    dense_parameters: int
    rel_error: float
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def projection_table(n: int = 256, budget: float = 0.25, progress=None) -> list[ProjectionRow]:
    """Relative Frobenius error of the projection of each test matrix onto each family at a
    parameter budget of ``budget`` times the dense count (families with ``from_dense``)."""
    rows = []
    for matrix_name, W in test_matrices(n).items():
        for info in registry.all_infos():
            if not info.has_projection or "fixed" in info.tags:
                continue
            try:
                # sm.project: the closed form, guarded so that it is never worse than zero
                result = project(W, info.name, params=budget, method="closed_form")
            except ValueError:
                if progress:
                    progress(f"{matrix_name}/{info.name} skipped")
                continue
            layer, err, seconds = result.layer, result.rel_error, result.seconds
            rows.append(ProjectionRow(matrix_name, info.name, layer.num_parameters, n * n, err, seconds))
            if progress:
                progress(f"{matrix_name}/{info.name}")
    return rows
