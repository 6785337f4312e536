"""Fitting and projection onto structured families (DESIGN.md §2, SPEC.md §7).

* :func:`project` -- closest member of a family to a dense matrix (closed form where one exists,
  warm-started gradient fitting otherwise), within a parameter budget;
* :func:`bp_from_dense`, :func:`factor_bp`, :func:`kaleidoscope_from_dense` -- the closed-form
  hierarchical factorisation onto BP (gate permutation by beam search) and K-matrices
  (:mod:`structmat.fit.hierarchical`), used by :func:`project`;
* :func:`fit` -- gradient-based fitting (Adam + schedule, L-BFGS polish, restarts), the engine of
  transform recovery;
* :class:`RealPart` -- ``Re(M)`` of a complex structured operator (for real targets fitted by
  complex models).
"""

from .fitting import FitResult, fit, rmse
from .hierarchical import bp_from_dense, factor_bp, kaleidoscope_from_dense
from .projection import ProjectionResult, project, relative_error
from ..core.compose import RealPart

__all__ = [
    "FitResult", "ProjectionResult", "RealPart", "bp_from_dense", "factor_bp", "fit", "kaleidoscope_from_dense", "project",
    "relative_error", "rmse",
]
