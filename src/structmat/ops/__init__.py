"""Numerical kernels: a pure-PyTorch reference for every op, plus fast backends chosen
automatically (see :mod:`structmat.ops.backend`)."""

from . import llvm_options  # noqa: F401  (before any Numba kernel is compiled)
from . import backend
from .backend import reference_forced, set_reference, use_reference

__all__ = ["backend", "reference_forced", "set_reference", "use_reference"]
