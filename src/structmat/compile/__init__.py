"""The bridge (SPEC.md §5.2–5.4): compile permutations, sparse matrices and linear circuits into
exact Kaleidoscope matrices.

Public names (DESIGN.md §2): ``to_kmatrix``, ``permutation_to_bbstar``, ``sparse_to_kmatrix``,
``compile_report``.
"""

from .kmatrix import compile_report, max_error, permutation_to_bbstar, sparse_to_kmatrix, to_kmatrix

__all__ = ["to_kmatrix", "permutation_to_bbstar", "sparse_to_kmatrix", "compile_report", "max_error"]
