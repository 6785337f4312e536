"""LLVM code-generation options for structmat's Numba kernels, set once when :mod:`structmat.ops`
is imported (before any kernel is compiled).

``--hoist-runtime-checks=false``: when LLVM (18 and later) vectorises an inner loop that needs a
run-time aliasing check, it hoists that check out of the enclosing loop by widening every pointer's
range to the whole outer iteration space. In a butterfly step the inner loop runs over the batch
(the SIMD dimension) and the outer loop over groups of rows; widened over all groups, the ranges
of the rows a group writes (``dst[j0]``, ``dst[j2]``, ...) overlap each other, the hoisted check
always fails and every group runs the scalar loop. With the checks kept per group (a few compares
per group of ``C`` columns) the radix-4 step runs vectorised: single-threaded, float32, a
32 x 128 tile goes from 21 to 90 GFLOP/s (docs/benchmarks.md, "Butterfly after the s14 kernel
work", item 1). The option is process-wide for LLVM (every Numba kernel compiled afterwards, other
libraries' too); it only changes where LLVM places checks it would emit anyway. It is set only
for LLVM >= :data:`MIN_LLVM` (the hoisting, and the option, arrived in LLVM 18): older LLVMs'
command-line parser may exit the process on an unknown option.

Numba's on-disk cache is keyed by each kernel's own source file, not by LLVM options or by the
helpers it inlines (:mod:`structmat.ops.simd`): after changing either, clear the ``__pycache__``
``*.nbi``/``*.nbc`` files (a fresh clone, as in CI, has none).
"""

from __future__ import annotations

import llvmlite.binding as llvm

#: options handed to LLVM's command-line parser
LLVM_OPTIONS = ("--hoist-runtime-checks=false",)
#: oldest LLVM (major version) that has the options
MIN_LLVM = 18

_applied = False


def apply() -> None:
    """Set :data:`LLVM_OPTIONS` (idempotent)."""
    global _applied
    if _applied:
        return
    if llvm.llvm_version_info[0] >= MIN_LLVM:
        for option in LLVM_OPTIONS:
            llvm.set_option("structmat", option)
    _applied = True


apply()
