"""Row-parallel Numba kernels that fall back to one thread on small inputs.

A kernel over the rows of a 2-D array (``numba.prange`` over rows) is compiled twice, with
``parallel=True`` and serially (``prange`` then runs as ``range``), both with cached compilation.
Calls with fewer than :data:`PARALLEL_MIN_ELEMENTS` elements in the first array run the serial
build: for small inputs, waking the thread pool costs more than the work itself.
"""

from __future__ import annotations

import types

import numba

#: smallest first-argument size (elements) for which the parallel build is used
PARALLEL_MIN_ELEMENTS = 1 << 15


def compile_variant(fn, parallel: bool, **options):
    """``fn`` compiled with ``numba.njit(cache=True, parallel=parallel, **options)`` under its own
    name. Numba's on-disk cache is keyed by the function's qualified name and signature, not by
    the compilation flags, so two builds of one function would share a cache entry (the build
    compiled first would be loaded for both); each variant gets a name suffix instead."""
    name = f"{fn.__name__}_{'parallel' if parallel else 'serial'}"
    variant = types.FunctionType(fn.__code__, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    variant.__qualname__ = variant.__name__
    variant.__doc__ = fn.__doc__
    return numba.njit(cache=True, parallel=parallel, **options)(variant)


class RowKernel:
    """A row-parallel kernel with a serial build for small inputs (see the module docstring)."""

    def __init__(self, fn) -> None:
        self.parallel = compile_variant(fn, parallel=True)
        self.serial = compile_variant(fn, parallel=False)
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__

    def __call__(self, *arrays):
        kernel = self.parallel if arrays[0].size >= PARALLEL_MIN_ELEMENTS else self.serial
        return kernel(*arrays)


def row_kernel(fn) -> RowKernel:
    """Decorator building a :class:`RowKernel` from a Python function over NumPy arrays."""
    return RowKernel(fn)
