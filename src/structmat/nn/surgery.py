"""Model surgery: replace ``nn.Linear`` layers of any model by structured layers.

:func:`structurize` walks a model (``nn.Sequential``, ``nn.TransformerEncoder``, Hugging
Face-style encoders with ``.query``/``.key``/``.value``/``.dense`` submodules, or anything else),
selects ``nn.Linear`` modules by glob patterns on their qualified names (or a predicate), and
swaps each for a :class:`~structmat.core.StructuredLinear` of the requested family -- projecting
the trained weight onto the family (SPEC.md §7.5) or starting from a fresh initialisation.

Surgery is transactional: every layer is planned (budget resolved, options validated) and built
before the first one is swapped in, so a bad budget or option leaves the model untouched.

Layers that PyTorch reads through ``.weight`` instead of calling them are skipped, with the
reason recorded in :attr:`SurgerySummary.skipped`:

* ``nn.MultiheadAttention.out_proj`` -- ``F.multi_head_attention_forward`` uses its weight
  directly (the query/key/value projections are one packed parameter, not ``nn.Linear``);
* a ``nn.Linear`` whose weight is tied to another module (e.g. a language-model head tied to the
  token embedding) -- replacing it would silently untie the weights.

``nn.TransformerEncoderLayer`` and ``nn.TransformerEncoder`` have an inference fast path that
reads ``linear1.weight``/``linear2.weight`` directly; when their feed-forward layers are replaced,
surgery switches that fast path off for them (``activation_relu_or_gelu = 0`` on the layer --
the flag only selects the fused kernel; the regular path keeps using ``layer.activation`` -- and
``use_nested_tensor = False`` on the encoder), so the structured layers are always the ones used.

Example::

    >>> model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))
    >>> model, summary = structurize(model, "low_rank", params=0.25, return_summary=True)
    >>> print(summary)          # per-layer error, parameters and flops before/after
"""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..core import StructuredLinear, StructuredMatrix, registry
from ..core.dtypes import flop_scale, mult_add_flops
from ..core.errors import describe
from ..fit import project

#: A selection of layers: a glob pattern on qualified module names (``"encoder.*.linear1"``),
#: a list of patterns, or a predicate ``(name, module) -> bool``.
Selector = str | Iterable[str] | Callable[[str, nn.Module], bool] | None


@dataclass
class LayerReport:
    """What surgery did to one layer.

    ``method`` is the projection route of ``sm.project`` (``"closed_form"``,
    ``"closed_form+fit"``, ``"fit"``, possibly with ``"+rescaled"``; ``rel_error`` is
    ``||W - W_structured||_F / ||W||_F``) or ``"reinitialised"`` (``rel_error`` is ``None``).
    Flops are those of one forward on one input row, bias included (SPEC.md §1.7).
    """

    name: str
    in_features: int
    out_features: int
    structure: str
    options: dict
    method: str
    rel_error: float | None
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SurgerySummary:
    """The result of :func:`structurize`.

    Attributes:
        model: the model after surgery (the same object that was passed in, changed in place,
            unless the model itself was a single ``nn.Linear``, which cannot replace itself).
        structure: the family used.
        layers: one :class:`LayerReport` per replaced layer, in module order.
        skipped: ``(name, reason)`` for matched ``nn.Linear`` layers left in place.
        params_before, params_after: trainable parameters of the whole model.
    """

    model: nn.Module
    structure: str
    layers: list[LayerReport] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0

    @property
    def replaced(self) -> list[str]:
        """Qualified names of the replaced layers."""
        return [layer.name for layer in self.layers]

    @property
    def flops_before(self) -> int:
        """Flops of one forward row through the replaced layers, before surgery."""
        return sum(layer.flops_before for layer in self.layers)

    @property
    def flops_after(self) -> int:
        """Flops of one forward row through the replaced layers, after surgery."""
        return sum(layer.flops_after for layer in self.layers)

    @property
    def max_rel_error(self) -> float | None:
        """Largest projection error over the projected layers (``None`` if none was projected)."""
        errors = [layer.rel_error for layer in self.layers if layer.rel_error is not None]
        return max(errors) if errors else None

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-serialisable) for reports."""
        return {
            "structure": self.structure,
            "layers": [layer.to_dict() for layer in self.layers],
            "skipped": [list(item) for item in self.skipped],
            "params_before": self.params_before,
            "params_after": self.params_after,
            "flops_before": self.flops_before,
            "flops_after": self.flops_after,
        }

    def table(self):
        """A Rich table of the per-layer report."""
        from rich.table import Table

        table = Table(title=f"structurize -> {self.structure}")
        for column in ["layer", "shape", "options", "rel. error", "params", "flops/row"]:
            table.add_column(column)
        for layer in self.layers:
            error = "re-init" if layer.rel_error is None else f"{layer.rel_error:.3e}"
            table.add_row(
                layer.name,
                f"{layer.out_features}x{layer.in_features}",
                ", ".join(f"{k}={v}" for k, v in layer.options.items()),
                error,
                f"{layer.params_before} -> {layer.params_after}",
                f"{layer.flops_before} -> {layer.flops_after}",
            )
        return table

    def __str__(self) -> str:
        lines = [
            f"structurize -> {self.structure}: {len(self.layers)} layer(s) replaced, "
            f"{len(self.skipped)} skipped; model parameters {self.params_before} -> {self.params_after}; "
            f"flops/row of the replaced layers {self.flops_before} -> {self.flops_after}"
        ]
        for layer in self.layers:
            error = "re-initialised" if layer.rel_error is None else f"rel. error {layer.rel_error:.3e}"
            lines.append(
                f"  {layer.name}: {layer.out_features}x{layer.in_features} {layer.options} {error}, "
                f"params {layer.params_before} -> {layer.params_after}"
            )
        lines += [f"  skipped {name}: {reason}" for name, reason in self.skipped]
        return "\n".join(lines)


def project_weight(weight: torch.Tensor, structure: str, options: dict, projection: dict) -> tuple[StructuredMatrix, float, str]:
    """Project a dense weight ``(out, in)`` onto ``structure`` with ``sm.project`` (closed form
    where one exists, warm-started fitting otherwise, SPEC.md §7.5).

    Returns ``(matrix, rel_error, method)`` with ``rel_error = ||W - M||_F / ||W||_F`` and
    ``method`` the projection route (``"closed_form"``, ``"closed_form+fit"``, ``"fit"``, ...).
    """
    result = project(weight, structure, **projection, **options)
    return result.layer.matrix, float(result.rel_error), result.method


def trainable_parameters(model: nn.Module) -> int:
    """Number of distinct trainable scalars of ``model`` (shared parameters count once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def linear_flops(linear: nn.Linear) -> int:
    """Flops of one ``nn.Linear`` forward on one row: ``m n`` multiply-adds plus ``m`` bias
    additions, complex arithmetic counted as in SPEC.md §1.7."""
    dtype = linear.weight.dtype
    bias = flop_scale(dtype)[1] * linear.out_features if linear.bias is not None else 0
    return mult_add_flops(linear.in_features * linear.out_features, dtype) + bias


def _as_patterns(name: str, selector: Selector) -> list[str] | Callable | None:
    if selector is None or callable(selector):
        return selector
    if isinstance(selector, str):
        return [selector]
    try:
        patterns = list(selector)
    except TypeError:
        patterns = None
    if patterns is None or not all(isinstance(p, str) for p in patterns):
        raise TypeError(
            f"{name}: expected a glob pattern, a list of patterns or a predicate (name, module) -> bool, "
            f"got {describe(selector)}"
        )
    return patterns


def _selected(selector, name: str, module: nn.Module) -> bool:
    if callable(selector):
        return bool(selector(name, module))
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in selector)


def _weight_owners(model: nn.Module) -> dict[int, list[str]]:
    """``id(parameter) -> [qualified names of the modules that own it]`` (tied weights)."""
    owners: dict[int, list[str]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for param in module.parameters(recurse=False):
            owners.setdefault(id(param), []).append(module_name)
    return owners


def _skip_reason(name: str, linear: nn.Linear, parents: dict[str, nn.Module], owners: dict[int, list[str]]) -> str | None:
    parent_name = name.rpartition(".")[0]
    parent = parents.get(parent_name)
    if isinstance(parent, nn.MultiheadAttention):
        return (
            "nn.MultiheadAttention reads out_proj.weight directly (F.multi_head_attention_forward), "
            "so a structured out_proj would be ignored"
        )
    tied = sorted(set(owners.get(id(linear.weight), [])) - {name})
    if tied:
        return f"its weight is tied to {', '.join(tied)}; replacing it would untie the weights"
    return None


def _disable_fused_fast_paths(model: nn.Module, replaced: set[str]) -> None:
    """Switch off PyTorch's fused transformer inference paths that read ``linear1.weight``."""
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.TransformerEncoderLayer) and (
            f"{prefix}linear1" in replaced or f"{prefix}linear2" in replaced
        ):
            module.activation_relu_or_gelu = 0
        elif isinstance(module, nn.TransformerEncoder) and any(r.startswith(prefix) for r in replaced):
            module.use_nested_tensor = False


def _build_layer(
    name: str, linear: nn.Linear, info: registry.FamilyInfo, options: dict, project: bool, projection: dict
) -> tuple[StructuredLinear, str, float | None]:
    weight = linear.weight
    fixed_without_projection = ("fixed" in info.tags or not info.trainable) and not info.has_projection
    if project and weight.device.type != "meta" and not fixed_without_projection:
        try:
            matrix, error, method = project_weight(weight.detach(), info.name, options, projection)
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"structurize: projecting layer {name!r} onto {info.name!r} failed: {exc}") from exc
        bias = linear.bias.detach() if linear.bias is not None else False
        layer = StructuredLinear.from_matrix(matrix, bias=bias)
    else:
        layer = StructuredLinear(
            linear.in_features, linear.out_features, info.name, bias=linear.bias is not None,
            device=weight.device, dtype=weight.dtype, **options,
        )
        error, method = None, "reinitialised"
    layer.train(linear.training)
    if not weight.requires_grad:
        layer.matrix.requires_grad_(False)
    if layer.bias is not None and linear.bias is not None and not linear.bias.requires_grad:
        layer.bias.requires_grad_(False)
    return layer, method, error


def structurize(
    model: nn.Module,
    structure: str,
    include: Selector = None,
    exclude: Selector = None,
    project: bool = True,
    params: int | float | None = None,
    projection: dict | None = None,
    return_summary: bool = False,
    **options: Any,
) -> nn.Module | tuple[nn.Module, SurgerySummary]:
    """Replace ``nn.Linear`` layers of ``model`` (in place) by ``StructuredLinear(structure)``.

    Args:
        model: any ``nn.Module``; a bare ``nn.Linear`` is replaced by a new module returned as
            ``summary.model``.
        structure: a registered family (``structmat.families()``).
        include: which layers to replace -- a glob pattern on qualified module names
            (``"encoder.layer.*.intermediate.dense"``), a list of them, or a predicate
            ``(name, module) -> bool``; ``None`` selects every ``nn.Linear``.
        exclude: layers to leave alone, in the same forms; applied after ``include``.
        project: project each trained weight onto the family with ``sm.project`` (SPEC.md
            §7.5) and keep the bias; otherwise (and for fixed families without a projection)
            build freshly initialised layers.
        params: per-layer parameter budget of the structured weight: an int (count) or a float
            in (0, 1] (fraction of that layer's dense ``in * out``); resolved per layer with the
            family's size ladder (largest member within budget).
        projection: extra arguments of ``sm.project`` (``method``, ``steps``, ``lr``,
            ``seed``, ...), e.g. ``{"steps": 200}`` to shorten fits of families without a closed
            form, or ``from_dense`` arguments of the family.
        **options: family options (``rank=``, ``nblocks=``, ...), the same for every layer.

        return_summary: also return the :class:`SurgerySummary`.

    Returns:
        the model (changed in place; a bare ``nn.Linear`` comes back as its replacement), as in
        DESIGN.md §2's ``model = sm.structurize(model, ...)``; with ``return_summary=True`` the
        pair ``(model, summary)`` -- the summary lists the layers replaced, per-layer errors,
        parameters and flops before and after, and the skipped layers with reasons. The summary
        of the last call is also kept on the model as ``model.structurize_summary``.

    Raises:
        ValueError: no family member fits ``params`` for some layer, or a projection fails --
            raised before any layer is swapped, so the model is left untouched.
        TypeError: bad ``model``/``include``/``exclude``, or an unknown family option.

    Warns:
        UserWarning: when an ``include`` pattern matches no ``nn.Linear`` (listing the names
        that exist), or when an explicitly included layer must be skipped.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {describe(model)}")
    info = registry.get(structure)
    info.validate_options(options)
    if projection is None:
        projection = {}
    elif not isinstance(projection, dict):
        raise TypeError(f"projection: expected a dict of sm.project arguments, got {describe(projection)}")
    include_sel = _as_patterns("include", include)
    exclude_sel = _as_patterns("exclude", exclude)

    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    linear_names = [name or "<model>" for name, _ in linears]
    for selector_name, selector in (("include", include_sel), ("exclude", exclude_sel)):
        if isinstance(selector, list):
            for pattern in selector:
                if not any(fnmatch.fnmatchcase(name, pattern) for name, _ in linears):
                    shown = ", ".join(linear_names[:40]) + (" ..." if len(linear_names) > 40 else "")
                    warnings.warn(
                        f"{selector_name}: pattern {pattern!r} matches no nn.Linear layer; "
                        f"the nn.Linear layers are: {shown or 'none'}",
                        UserWarning,
                        stacklevel=2,
                    )

    parents = dict(model.named_modules())
    owners = _weight_owners(model)
    summary = SurgerySummary(model=model, structure=info.name, params_before=trainable_parameters(model))

    # 1. plan: choose options for every layer (budget errors surface before anything changes)
    plan: list[tuple[str, nn.Linear, dict]] = []
    for name, linear in linears:
        if include_sel is not None and not _selected(include_sel, name, linear):
            continue
        if exclude_sel is not None and _selected(exclude_sel, name, linear):
            continue
        reason = _skip_reason(name, linear, parents, owners)
        if reason is not None:
            summary.skipped.append((name, reason))
            if include_sel is not None:
                warnings.warn(f"include: skipping layer {name!r}: {reason}", UserWarning, stacklevel=2)
            continue
        layer_options = dict(options)
        if params is not None:
            try:
                layer_options = registry.options_for_budget(
                    info.name, linear.in_features, linear.out_features, params, dtype=linear.weight.dtype, **options
                )
            except ValueError as exc:
                raise ValueError(f"{exc} (layer {name!r})") from exc
        plan.append((name, linear, layer_options))

    # 2. build every replacement (projection errors surface before anything changes)
    built = []
    for name, linear, layer_options in plan:
        layer, method, error = _build_layer(name, linear, info, layer_options, project, projection)
        built.append((name, linear, layer))
        summary.layers.append(
            LayerReport(
                name=name or "<model>",
                in_features=linear.in_features,
                out_features=linear.out_features,
                structure=info.name,
                options=dict(layer.options),
                method=method,
                rel_error=error,
                params_before=linear.weight.numel(),
                params_after=layer.num_parameters,
                flops_before=linear_flops(linear),
                flops_after=layer.flops(1),
            )
        )

    # 3. swap
    for name, _, layer in built:
        if not name:
            summary.model = layer
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(parents[parent_name], child, layer)
    _disable_fused_fast_paths(summary.model, {name for name, _, _ in built})
    summary.params_after = trainable_parameters(summary.model)
    summary.model.structurize_summary = summary
    return (summary.model, summary) if return_summary else summary.model
