"""Data-parallel training of structured models with ``torch.distributed`` (docs/distributed.md).

Structured layers are ordinary ``nn.Module`` objects whose parameters are plain tensors, so the
standard PyTorch wrappers apply unchanged:

* ``"ddp"`` -- ``DistributedDataParallel``: every rank holds the whole model, gradients are
  averaged by all-reduce after ``backward`` (``gloo`` on CPU, ``nccl`` on GPUs);
* ``"fsdp"`` -- fully sharded data parallelism (FSDP2, ``torch.distributed.fsdp.fully_shard``):
  every ``StructuredLinear`` / ``nn.Linear`` / bare ``StructuredMatrix`` becomes one shard unit
  and the root another; parameters are sharded along their first dimension across ranks and
  all-gathered around each unit's forward and backward. Works on CPU with ``gloo``.

Both average gradients over ranks, so with a mean loss a step on ``world_size`` slices of a global
batch equals a single-process step on the whole batch (checked by tests/test_distributed.py).

Example (inside a process started by ``torchrun``)::

    torch.distributed.init_process_group("gloo")
    model = distribute(model, "ddp")
"""

from __future__ import annotations

import socket

from torch import nn

from ..core import StructuredLinear, StructuredMatrix
from ..core.errors import check_choice, describe
from .checkpoint import outermost_modules

STRATEGIES = ("ddp", "fsdp")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (for ``init_method=f"tcp://{host}:{port}"``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _fully_shard():
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import fully_shard
        except ImportError as exc:
            raise ValueError("strategy: 'fsdp' needs FSDP2 (torch >= 2.4 built with distributed support)") from exc
    return fully_shard


def distribute(model: nn.Module, strategy: str = "ddp", **kwargs) -> nn.Module:
    """Wrap ``model`` for data-parallel training in the initialised default process group.

    Args:
        model: the model, already on this rank's device.
        strategy: ``"ddp"`` (returns a ``DistributedDataParallel`` wrapper) or ``"fsdp"``
            (shards ``model`` in place with ``fully_shard`` and returns it).
        **kwargs: passed to ``DistributedDataParallel`` or ``fully_shard``.

    Raises:
        RuntimeError: no process group is initialised (call
            ``torch.distributed.init_process_group`` first, e.g. under ``torchrun``).
    """
    import torch.distributed as dist

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {describe(model)}")
    check_choice("strategy", strategy, STRATEGIES)
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "distribute: expected an initialised torch.distributed process group, got none; "
            "call torch.distributed.init_process_group(...) first (torchrun sets the environment)"
        )
    if strategy == "ddp":
        return nn.parallel.DistributedDataParallel(model, **kwargs)
    fully_shard = _fully_shard()
    units = outermost_modules(model, (StructuredLinear, StructuredMatrix, nn.Linear))
    for name, module in units.items():
        if name:
            fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)
    return model
