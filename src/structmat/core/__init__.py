"""Core layer: the StructuredMatrix protocol, the family registry, sizes, dtypes, errors."""

from . import dtypes, errors, init, registry, sizes
from .base import StructuredMatrix, TransposedMatrix
from .linear import StructuredLinear
from .registry import FamilyInfo, OptionRange, Sample, register

__all__ = [
    "StructuredMatrix",
    "TransposedMatrix",
    "StructuredLinear",
    "FamilyInfo",
    "OptionRange",
    "Sample",
    "register",
    "registry",
    "sizes",
    "dtypes",
    "errors",
    "init",
]
