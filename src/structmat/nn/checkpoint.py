"""Checkpoints of models with structured layers, in ``safetensors`` (no pickle).

File layout: the tensors are the model's ``state_dict()`` (tensors that share memory, such as tied
weights, are stored once and listed as aliases); the ``safetensors`` metadata (a str -> str map)
holds

* ``format``: ``"structmat"`` and ``format_version``: ``"1"``;
* ``structmat_version``: the library version that wrote the file;
* ``structured``: JSON ``{qualified module name: config}`` for every structured module
  (``StructuredLinear.config()`` -- family, sizes, dtype, options, bias -- or, for a bare
  ``StructuredMatrix`` used as a module, its ``config()``);
* ``aliases``: JSON ``{name: name of the stored tensor it shares memory with}``;
* ``complex``: JSON list of the tensors stored as ``torch.view_as_real`` (safetensors has no
  complex128 type; all complex tensors are stored this way, as real tensors with a last
  dimension of 2).

:func:`load` rebuilds the structured modules from their configs
(``structmat.core.compose.build_from_config``) into a model built by the user's code -- the
original (unstructured) architecture or one already changed by :func:`~structmat.nn.structurize`
-- and turns structured layers that the checkpoint stores as plain ``weight``/``bias`` back into
``nn.Linear``. Everything (metadata, module paths, sizes, key sets, shapes, dtypes) is checked
before the model is touched; a malformed or mismatched file raises ``ValueError`` and leaves the
model as it was.

Example::

    >>> save(model, "model.safetensors")
    >>> load("model.safetensors", fresh_model)   # same architecture, surgery or not
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import nn

from .._version import __version__
from ..core import StructuredLinear, StructuredMatrix
from ..core.compose import build_from_config
from ..core.errors import describe

FORMAT = "structmat"
FORMAT_VERSION = "1"


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside ``DistributedDataParallel``/``DataParallel`` and
    ``torch.compile`` wrappers (whose ``state_dict`` keys carry ``module.``/``_orig_mod.``)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def outermost_modules(model: nn.Module, types: tuple[type, ...]) -> dict[str, nn.Module]:
    """``{qualified name: module}`` of the modules of ``model`` (itself included) that are
    instances of ``types`` and do not lie inside another such module."""
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if not isinstance(module, types):
            continue
        if "" in found or any(name.startswith(outer + ".") for outer in found):
            continue
        found[name] = module
    return found


def structured_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The outermost structured modules of ``model``: ``StructuredLinear`` layers, and
    ``StructuredMatrix`` modules not inside one."""
    return outermost_modules(model, (StructuredLinear, StructuredMatrix))


def _as_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def _storage_key(tensor: torch.Tensor) -> tuple:
    return (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)


def _is_writer() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def save(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``model``'s state and the configs of its structured layers to ``path``
    (``safetensors``). Tensors are copied to the CPU; the round trip through :func:`load` is
    bit-exact.

    Distributed training: ``DistributedDataParallel`` and ``torch.compile`` wrappers are
    unwrapped. In an initialised process group only rank 0 writes the file; with FSDP-sharded
    parameters every rank must call ``save`` (the shards are all-gathered, a collective).
    """
    from safetensors.torch import save_file

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {describe(model)}")
    model = unwrap(model)
    configs = {name: module.config() for name, module in structured_modules(model).items()}
    try:
        structured = json.dumps(configs)
    except TypeError as exc:
        raise ValueError(f"model: a structured layer has options that are not JSON-serialisable ({exc})") from exc
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    complex_names: list[str] = []
    first_name: dict[tuple, str] = {}
    state = model.state_dict()  # keeps every tensor alive, so storage addresses identify aliases
    for name, tensor in state.items():
        if tensor.device.type == "meta":
            raise ValueError(f"model: cannot save tensor {name!r} on the meta device (it holds no data)")
        gather = getattr(tensor, "full_tensor", None)
        if callable(gather):  # an FSDP2-sharded DTensor: all-gather the whole tensor (collective)
            tensor = gather()
        else:
            key = _storage_key(tensor)
            if key in first_name:
                aliases[name] = first_name[key]
                continue
            first_name[key] = name
        tensor = tensor.detach().to("cpu")
        if tensor.is_complex():
            complex_names.append(name)
            tensor = torch.view_as_real(tensor.resolve_conj())
        tensors[name] = tensor.contiguous().clone()
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "structmat_version": __version__,
        "structured": structured,
        "aliases": json.dumps(aliases),
        "complex": json.dumps(complex_names),
    }
    if _is_writer():
        save_file(tensors, os.fspath(path), metadata=metadata)


def _fail(path, message: str) -> ValueError:
    return ValueError(f"checkpoint {os.fspath(path)!r}: {message}")


def _read(path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, str]]:
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a file path (str or os.PathLike), got {describe(path)}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no checkpoint file at {os.fspath(path)!r}")
    try:
        with safe_open(os.fspath(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _fail(path, f"not a readable safetensors file ({exc})") from exc
    if metadata.get("format") != FORMAT:
        raise _fail(path, f"expected metadata format={FORMAT!r} (written by structmat.save), got {metadata.get('format')!r}")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise _fail(path, f"expected format_version {FORMAT_VERSION!r}, got {metadata.get('format_version')!r}")
    try:
        configs = json.loads(metadata["structured"])
        aliases = json.loads(metadata.get("aliases", "{}"))
        complex_names = json.loads(metadata.get("complex", "[]"))
    except (KeyError, json.JSONDecodeError) as exc:
        raise _fail(path, f"malformed structmat metadata ({exc!r})") from exc
    if not isinstance(configs, dict) or not all(isinstance(c, dict) for c in configs.values()):
        raise _fail(path, f"malformed 'structured' metadata: expected {{name: config}}, got {describe(configs)}")
    if not isinstance(aliases, dict) or not all(isinstance(v, str) and v in tensors for v in aliases.values()):
        raise _fail(path, "malformed 'aliases' metadata: every alias must name a stored tensor")
    if not isinstance(complex_names, list):
        raise _fail(path, f"malformed 'complex' metadata: expected a list of tensor names, got {describe(complex_names)}")
    for name in complex_names:
        stored = tensors.get(name) if isinstance(name, str) else None
        if stored is None or stored.dtype not in (torch.float32, torch.float64) or stored.dim() == 0 or stored.shape[-1] != 2:
            raise _fail(path, f"malformed 'complex' metadata: {name!r} is not a stored real tensor with a last dimension of 2")
        tensors[name] = torch.view_as_complex(stored)
    return tensors, configs, aliases


def _module_sizes(module: nn.Module) -> tuple[int, int] | None:
    if isinstance(module, (nn.Linear, StructuredLinear, StructuredMatrix)):
        return module.in_features, module.out_features
    return None


def _rebuild(config: dict, device: torch.device) -> nn.Module:
    if "bias" in config:  # a StructuredLinear layer
        matrix_config = {k: v for k, v in config.items() if k != "bias"}
        return StructuredLinear.from_matrix(build_from_config(matrix_config, device=device), bias=bool(config["bias"]))
    return build_from_config(config, device=device)


def _module_device(module: nn.Module) -> torch.device:
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


def _plan(path, model: nn.Module, tensors: dict, configs: dict) -> dict[str, nn.Module]:
    """New modules to install: ``{qualified name: module}`` (validated, nothing mutated)."""
    modules = dict(model.named_modules())
    current = structured_modules(model)
    plan: dict[str, nn.Module] = {}
    for name, config in configs.items():
        if name not in modules:
            raise _fail(path, f"the model has no module {name!r} (a checkpoint of a different architecture?)")
        existing = modules[name]
        sizes = _module_sizes(existing)
        if sizes is None:
            raise _fail(path, f"module {name!r} is a {type(existing).__name__} in the model, but a structured layer in the checkpoint")
        if isinstance(existing, (StructuredLinear, StructuredMatrix)) and _as_json(existing.config()) == config:
            continue  # already the right layer (keeps its parameter objects); only the state is loaded
        if not name:
            raise _fail(path, "the model itself would have to be replaced by a different structured layer; build it from the checkpoint's config instead")
        try:
            module = _rebuild(config, _module_device(existing))
        except (ValueError, TypeError, KeyError) as exc:
            raise _fail(path, f"cannot rebuild structured module {name!r} from {describe(config)}: {exc}") from exc
        if _module_sizes(module) != sizes:
            raise _fail(
                path,
                f"module {name!r} maps {sizes[0]} -> {sizes[1]} features in the model, "
                f"but {module.in_features} -> {module.out_features} in the checkpoint",
            )
        plan[name] = module
    # structured layers of the model that the checkpoint stores as plain nn.Linear weights
    for name, module in current.items():
        if name in configs or not isinstance(module, StructuredLinear):
            continue
        if not name:
            continue  # the root cannot be replaced in place; left to the key check
        prefix = f"{name}."
        weight = tensors.get(prefix + "weight")
        if weight is None or weight.dim() != 2 or tuple(weight.shape) != (module.out_features, module.in_features):
            continue  # left to the key check, which names what is missing
        plan[name] = nn.Linear(
            module.in_features, module.out_features, bias=prefix + "bias" in tensors,
            device=_module_device(module), dtype=weight.dtype,
        )
    return plan


def _planned_state(model: nn.Module, plan: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """The ``state_dict`` the model will have once ``plan`` is installed."""
    prefixes = [f"{name}." if name else "" for name in plan]
    state = {k: v for k, v in model.state_dict().items() if not any(k.startswith(p) for p in prefixes)}
    for name, module in plan.items():
        prefix = f"{name}." if name else ""
        state.update({prefix + k: v for k, v in module.state_dict().items()})
    return state


def _check_state(path, expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> None:
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing from the file: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"not in the model: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
        raise _fail(path, "does not match the model's architecture (" + "; ".join(parts) + ")")
    for key, target in expected.items():
        stored = tensors[key]
        if tuple(stored.shape) != tuple(target.shape):
            raise _fail(path, f"tensor {key!r}: expected shape {tuple(target.shape)}, got {tuple(stored.shape)}")
        if stored.dtype.is_complex != target.dtype.is_complex or stored.dtype.is_floating_point != target.dtype.is_floating_point:
            raise _fail(path, f"tensor {key!r}: expected dtype {target.dtype}, got {stored.dtype}")


def load(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Load a checkpoint written by :func:`save` into ``model`` and return ``model``.

    Structured layers recorded in the checkpoint are rebuilt from their configs (replacing
    ``nn.Linear`` layers or differently configured structured layers at the same paths), then
    the state is loaded (``strict``). ``model`` may be wrapped in DDP or ``torch.compile``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a structmat safetensors checkpoint, or does not match the
            model's architecture (module paths, sizes, keys, shapes) -- the model is unchanged.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {describe(model)}")
    tensors, configs, aliases = _read(path)
    for name, target in aliases.items():
        tensors[name] = tensors[target]
    target_model = unwrap(model)
    plan = _plan(path, target_model, tensors, configs)
    _check_state(path, _planned_state(target_model, plan), tensors)

    replaced: list[tuple[nn.Module, str, nn.Module]] = []
    modules = dict(target_model.named_modules())
    for name, module in plan.items():
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name]
        replaced.append((parent, child, getattr(parent, child, None)))
        setattr(parent, child, module)
    try:
        with torch.no_grad():
            target_model.load_state_dict(tensors, strict=True)
    except Exception:
        for parent, child, old in reversed(replaced):
            setattr(parent, child, old)
        raise
    return model

