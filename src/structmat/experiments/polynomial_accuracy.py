"""Accuracy of the fast orthogonal-polynomial multiply against Clenshaw (SPEC.md §4.12).

For each preset and size ``n`` (square, ``m = n`` Chebyshev nodes) the fast divide-and-conquer
multiply in float64 and in float32 is compared with float64 Clenshaw evaluation on random
standard-normal coefficient vectors: relative error ``‖y_fast − y_ref‖_F / ‖y_ref‖_F``. The table
in ``docs/families/polynomial.md`` and :data:`FAST_PATH_MAX_DEGREE` come from :func:`run`.
"""

from __future__ import annotations

import torch

from ..families.polynomial import OrthogonalPolynomial

DEFAULT_PRESETS = ("chebyshev", "legendre", "jacobi", "hermite", "laguerre")
DEFAULT_SIZES = (16, 64, 256, 1024, 4096)


def relative_errors(preset: str, n: int, batch: int = 4, seed: int = 0, **options) -> dict:
    """``{"float64": e64, "float32": e32}`` of the fast path against float64 Clenshaw."""
    generator = torch.Generator().manual_seed(seed)
    c = torch.randn(batch, n, dtype=torch.float64, generator=generator)
    reference_layer = OrthogonalPolynomial(n, n, preset=preset, algorithm="clenshaw", dtype=torch.float64, **options)
    fast64 = OrthogonalPolynomial(n, n, preset=preset, algorithm="fast", dtype=torch.float64, **options)
    fast32 = OrthogonalPolynomial(n, n, preset=preset, algorithm="fast", dtype=torch.float32, **options)
    with torch.no_grad():
        reference = reference_layer(c)
        scale = float(torch.linalg.norm(reference))
        errors = {
            "float64": float(torch.linalg.norm(fast64(c) - reference)) / scale,
            "float32": float(torch.linalg.norm(fast32(c.float()).double() - reference)) / scale,
        }
    return errors


def run(console=None, quick: bool = False, presets=DEFAULT_PRESETS, sizes=DEFAULT_SIZES) -> list[dict]:
    """Measure the accuracy table; prints it with Rich when ``console`` is given."""
    sizes = tuple(s for s in sizes if s <= 256) if quick else tuple(sizes)
    rows = []
    for preset in presets:
        options = {"alpha": 0.5, "beta": -0.25} if preset == "jacobi" else {}
        for n in sizes:
            errors = relative_errors(preset, n, **options)
            rows.append({"preset": preset, "n": n, **errors})
    if console is not None:
        from rich.table import Table

        table = Table(title="orthogonal_polynomial: fast path vs float64 Clenshaw (relative error)")
        for column in ("preset", "n", "float64", "float32"):
            table.add_column(column)
        for row in rows:
            table.add_row(row["preset"], str(row["n"]), f"{row['float64']:.1e}", f"{row['float32']:.1e}")
        console.print(table)
    return rows
