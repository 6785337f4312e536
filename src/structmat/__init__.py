"""structmat: structured matrices for deep learning.

Arithmetic circuits, every structured family of Rudra's survey and its companion papers
(butterfly, Kaleidoscope, Monarch, LDR, ...), exact fast transforms, compilation of circuits into
K-matrices, projection and fitting, and ``nn.Linear`` drop-ins. See DESIGN.md §2 for the public
contract.
"""

from ._version import __version__
from . import core
from .core import StructuredLinear, StructuredMatrix
from . import ops
from . import circuits
from . import families as _families_package  # registers every family
from .families import transforms
from . import compile  # noqa: A004 - sm.compile (DESIGN.md §2) shadows the builtin only inside this namespace
from .fit import ProjectionResult, fit, project  # the function sm.fit shadows the subpackage name
from . import nn
from .nn import load, param_groups, save, structurize


def families() -> list[str]:
    """Sorted names of all registered structure families."""
    return core.registry.names()


__all__ = ["__version__", "families", "circuits", "compile", "transforms", "StructuredLinear", "StructuredMatrix", "nn", "structurize", "param_groups", "save", "load", "ProjectionResult", "fit", "project"]
