"""Speed of every family against ``nn.Linear`` at one size (the tour's speed table).

For each registered family: forward time of ``StructuredLinear(n, n, family)`` on a batch, the
time of ``nn.Linear(n, n)`` on the same input measured in the same run, their ratio, and the
parameter and flop counts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..core import StructuredLinear, registry
from .timing import time_forward


@dataclass
class SpeedRow:
    structure: str
    n: int
    batch: int
    parameters: int
    flops: int
    seconds: float
    dense_seconds: float

    @property
    def speedup(self) -> float:
        return self.dense_seconds / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict:
        return {**asdict(self), "speedup": self.speedup}


def speed_table(n: int = 1024, batch: int = 64, structures: list[str] | None = None, progress=None, min_time: float = 0.02) -> list[SpeedRow]:
    """Forward time of each family vs ``nn.Linear(n, n)`` (float32, inference mode)."""
    torch.manual_seed(0)
    x = torch.randn(batch, n)
    dense = torch.nn.Linear(n, n)
    dense_seconds = time_forward(dense, x, min_time=min_time, repeat=3)
    rows = []
    for name in structures or registry.names():
        info = registry.get(name)
        if "fixed" in info.tags:
            if progress:
                progress(name)
            continue
        layer = StructuredLinear(n, n, name, bias=True)
        seconds = time_forward(layer, x, min_time=min_time, repeat=3)
        rows.append(SpeedRow(name, n, batch, layer.num_parameters, layer.flops(batch), seconds, dense_seconds))
        if progress:
            progress(name)
    return rows
