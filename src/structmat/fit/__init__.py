"""Fitting and projection onto structured families (DESIGN.md §2, SPEC.md §7).

* :func:`project` -- closest member of a family to a dense matrix (closed form where one exists,
  warm-started gradient fitting otherwise), within a parameter budget;
* :func:`fit` -- gradient-based fitting (Adam + schedule, L-BFGS polish, restarts), the engine of
  transform recovery;
* :class:`RealPart` -- ``Re(M)`` of a complex structured operator (for real targets fitted by
  complex models).
"""

from .fitting import FitResult, fit, rmse
from .projection import ProjectionResult, project, relative_error
from ..core.compose import RealPart

__all__ = ["FitResult", "ProjectionResult", "RealPart", "fit", "project", "relative_error", "rmse"]
