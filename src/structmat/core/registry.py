"""The family registry (DESIGN.md §3; modelled on PyTorch's OpInfo).

Every family registers its :class:`~structmat.core.base.StructuredMatrix` subclass with
:func:`register`, giving

* ``samples``: a factory of :class:`Sample` instances (sizes and options, including
  non-powers of two and rectangular shapes) -- the generic test suite walks them;
* ``params_formula`` / ``flops_formula``: human-readable cost formulas (``structmat families``);
* ``size_ladder``: option dicts ordered from small to large, from which :func:`options_for_budget`
  picks the largest member within a parameter budget (``params=`` of ``StructuredLinear``).

Example::

    @register("low_rank", samples=..., size_ladder=lambda m, n: [{"rank": r} for r in ...],
              params_formula="r(m+n)", flops_formula="2r(m+n)")
    class LowRank(StructuredMatrix): ...
"""

from __future__ import annotations

import difflib
import inspect
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .base import StructuredMatrix
from .errors import check_int, describe


@dataclass(frozen=True)
class Sample:
    """One sample instance for the generic tests: sizes and family options."""

    in_features: int
    out_features: int
    options: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.in_features}x{self.out_features}" + (f"[{opts}]" if opts else "")


@dataclass
class FamilyInfo:
    """Registry entry of a family."""

    name: str
    cls: type
    samples: Callable[[], list[Sample]]
    description: str = ""
    params_formula: str = ""
    flops_formula: str = ""
    size_ladder: Callable[[int, int], Iterable[dict]] | None = None
    supports_complex: bool = True
    trainable: bool = True
    tags: tuple[str, ...] = ()

    @property
    def has_projection(self) -> bool:
        return callable(getattr(self.cls, "from_dense", None))

    @property
    def option_names(self) -> list[str]:
        sig = inspect.signature(self.cls.__init__)
        skip = {"self", "in_features", "out_features", "device", "dtype"}
        return [
            n
            for n, p in sig.parameters.items()
            if n not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    def validate_options(self, options: dict) -> None:
        allowed = self.option_names
        for key in options:
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                extra = f"; did you mean {hint[0]!r}?" if hint else ""
                raise TypeError(
                    f"{key}: unknown option for structure {self.name!r} "
                    f"(valid options: {', '.join(allowed) or 'none'}){extra}"
                )

    def create(self, in_features: int, out_features: int, *, device=None, dtype=None, **options) -> StructuredMatrix:
        self.validate_options(options)
        return self.cls(in_features, out_features, device=device, dtype=dtype, **options)


class OptionRange:
    """A lazy size ladder: ``{key: v, **fixed}`` for ``v`` in ``values`` (a ``range`` or list).

    Use it for long ladders (e.g. every nonzero count ``1..m*n``); the parameter count must be
    non-decreasing along the ladder so that :func:`options_for_budget` can bisect it.
    """

    def __init__(self, key: str, values, **fixed: Any) -> None:
        self.key, self.values, self.fixed = key, values, fixed

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: int) -> dict:
        return {self.key: self.values[index], **self.fixed}


_REGISTRY: dict[str, FamilyInfo] = {}


def register(
    name: str,
    *,
    samples: Callable[[], list[Sample]],
    description: str = "",
    params_formula: str = "",
    flops_formula: str = "",
    size_ladder: Callable[[int, int], Iterable[dict]] | None = None,
    supports_complex: bool = True,
    trainable: bool = True,
    tags: Iterable[str] = (),
):
    """Class decorator registering a :class:`StructuredMatrix` subclass under ``name``."""

    def decorator(cls):
        if not (isinstance(cls, type) and issubclass(cls, StructuredMatrix)):
            raise TypeError(f"register: expected a StructuredMatrix subclass, got {describe(cls)}")
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"register: structure {name!r} is already registered")
        cls.family = name
        doc = description or (inspect.getdoc(cls) or "").split("\n")[0]
        _REGISTRY[name] = FamilyInfo(
            name=name,
            cls=cls,
            samples=samples,
            description=doc,
            params_formula=params_formula,
            flops_formula=flops_formula,
            size_ladder=size_ladder,
            supports_complex=supports_complex,
            trainable=trainable,
            tags=tuple(tags),
        )
        return cls

    return decorator


def names() -> list[str]:
    """Sorted names of all registered families."""
    return sorted(_REGISTRY)


def get(name: Any) -> FamilyInfo:
    """The registry entry of ``name``; unknown names get a "did you mean" error."""
    if isinstance(name, type) and issubclass(name, StructuredMatrix) and name.family in _REGISTRY:
        return _REGISTRY[name.family]
    if not isinstance(name, str):
        raise TypeError(f"structure: expected a family name (str), got {describe(name)}")
    key = name.strip().lower().replace("-", "_")
    if key in _REGISTRY:
        return _REGISTRY[key]
    hints = difflib.get_close_matches(key, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(h) for h in hints)}?" if hints else ""
    raise ValueError(f"structure: unknown family {name!r}{hint} (known: {', '.join(names())})")


def all_infos() -> list[FamilyInfo]:
    return [_REGISTRY[n] for n in names()]


def resolve_budget(params: Any, in_features: int, out_features: int) -> int:
    """A parameter budget as an absolute count: ints are absolute, floats in (0, 1] are a
    fraction of the dense count ``in_features * out_features``."""
    if isinstance(params, bool) or not isinstance(params, numbers.Real):
        raise TypeError(f"params: expected an int (count) or a float in (0, 1] (fraction), got {describe(params)}")
    if isinstance(params, numbers.Integral):
        return check_int("params", params, minimum=1)
    value = float(params)
    if not (0.0 < value <= 1.0):
        raise ValueError(f"params: a float budget is a fraction of the dense count and must lie in (0, 1], got {value}")
    return max(1, int(value * in_features * out_features))


def count_parameters(info: FamilyInfo, in_features: int, out_features: int, options: dict, dtype=None) -> int:
    """Parameter count of a family member, built on the ``meta`` device (no memory used)."""
    return info.create(in_features, out_features, device="meta", dtype=dtype, **options).num_parameters


def options_for_budget(
    structure: Any, in_features: int, out_features: int, params: Any, dtype=None, **fixed: Any
) -> dict:
    """Options of ``structure`` with the most parameters that stay within the budget ``params``.

    ``fixed`` options are kept as given; the family's ``size_ladder`` supplies the candidates.
    Raises ``ValueError`` when even the smallest member exceeds the budget.
    """
    info = get(structure)
    budget = resolve_budget(params, in_features, out_features)
    ladder = info.size_ladder(in_features, out_features) if info.size_ladder else [{}]
    if not hasattr(ladder, "__getitem__"):
        ladder = list(ladder)

    build_errors: list[Exception] = []
    built: list[int] = []

    def count(index: int) -> int | None:
        try:
            built.append(count_parameters(info, in_features, out_features, {**ladder[index], **fixed}, dtype))
        except (ValueError, TypeError) as exc:
            build_errors.append(exc)
            return None
        return built[-1]

    best, best_count, smallest = None, -1, None
    if len(ladder) <= 64:
        # short ladders: scan everything (need not be ordered)
        for index in range(len(ladder)):
            c = count(index)
            if c is None:
                continue
            smallest = c if smallest is None else min(smallest, c)
            if best_count < c <= budget:
                best, best_count = index, c
    else:
        # long ladders are ordered by parameter count: bisect for the last member within budget
        lo, hi = 0, len(ladder) - 1
        smallest = count(0)
        while lo <= hi:
            mid = (lo + hi) // 2
            c = count(mid)
            if c is not None and c <= budget:
                best, best_count, lo = mid, c, mid + 1
            else:
                hi = mid - 1
    if best is None:
        if not built and build_errors:
            # no candidate could be built at all: the fixed options conflict with the ladder
            raise ValueError(
                f"params: no member of structure {info.name!r} for shape ({out_features}, {in_features}) "
                f"can be built with the options {fixed} (reason: {build_errors[0]})"
            ) from build_errors[0]
        minimum = f"{smallest}" if smallest is not None else "unknown"
        raise ValueError(
            f"params: budget {budget} is below the minimum of structure {info.name!r} for shape "
            f"({out_features}, {in_features}) (smallest member has {minimum} parameters)"
        )
    return {**ladder[best], **fixed}
