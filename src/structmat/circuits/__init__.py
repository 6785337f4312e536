"""Arithmetic circuits (SPEC.md §2): the linear circuit IR, builders of fast transforms, batched
level-by-level evaluation, the transposition principle, the layered sparse-product form, general
circuits with product gates and their Baur–Strassen gradients.

Public names (DESIGN.md §2): ``LinearCircuit``, ``ArithmeticCircuit``, the builders ``fft``,
``hadamard``, ``dct``, ``polymul``, ``toeplitz``, ``random``, ``from_matrix`` (and ``build`` by
name), ``single_layer_circuit`` and ``describe_circuit`` (the rows printed by
``structmat circuit info``).
"""

from .arithmetic import ArithmeticCircuit, Traced, single_layer_circuit
from .builders import BUILDERS, build, dct, fft, from_matrix, hadamard, polymul, random, toeplitz
from .linear import LayeredSparse, LinearCircuit
from .summary import EXAMPLE_BUILDERS, describe_circuit, example_circuit, load_circuit

__all__ = [
    "LinearCircuit",
    "LayeredSparse",
    "ArithmeticCircuit",
    "Traced",
    "single_layer_circuit",
    "BUILDERS",
    "build",
    "fft",
    "hadamard",
    "dct",
    "polymul",
    "toeplitz",
    "random",
    "from_matrix",
    "describe_circuit",
    "example_circuit",
    "EXAMPLE_BUILDERS",
    "load_circuit",
]
