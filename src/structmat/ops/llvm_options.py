"""LLVM code-generation options for structmat's Numba kernels, set once when :mod:`structmat.ops`
is imported (before any kernel is compiled).

``--hoist-runtime-checks=false``: when LLVM (17 and later) vectorises an inner loop that needs a
run-time aliasing check, it hoists that check out of the enclosing loop by widening every pointer's
range to the whole outer iteration space. In a butterfly step the inner loop runs over the batch
(the SIMD dimension) and the outer loop over groups of rows; widened over all groups, the ranges
of the rows a group writes (``dst[j0]``, ``dst[j2]``, ...) overlap each other, the hoisted check
always fails and every group runs the scalar loop. With the checks kept per group (a few compares
per group of ``C`` columns) the radix-4 step runs vectorised: single-threaded, float32, a
32 x 128 tile goes from 21 to 90 GFLOP/s (docs/benchmarks.md, "Butterfly: the hoisted aliasing
check"). The option is process-wide for LLVM; it only changes where LLVM places checks it would
emit anyway. Unknown options are ignored by older LLVMs (llvmlite prints nothing and carries on).
"""

from __future__ import annotations

import llvmlite.binding as llvm

#: options handed to LLVM's command-line parser
LLVM_OPTIONS = ("--hoist-runtime-checks=false",)

_applied = False


def apply() -> None:
    """Set :data:`LLVM_OPTIONS` (idempotent)."""
    global _applied
    if _applied:
        return
    for option in LLVM_OPTIONS:
        llvm.set_option("structmat", option)
    _applied = True


apply()
