"""Neural-network layer: model surgery, optimizer parameter groups, checkpoints, distributed
training helpers. ``StructuredLinear`` (defined in ``core``, see docs/architecture.md) is
re-exported here."""

from ..core import StructuredLinear
from .checkpoint import load, save
from .distributed import distribute, free_port
from .optim import param_groups
from .surgery import LayerReport, SurgerySummary, structurize

__all__ = ["StructuredLinear", "structurize", "SurgerySummary", "LayerReport", "param_groups", "save", "load", "distribute", "free_port"]
