"""Butterfly products ``x -> B x`` in the canonical twiddle layout (SPEC.md §1.4, §4.14).

Twiddle layout (SPEC.md §1.4, library canonical form)::

    twiddle[s, κ, ℓ, p, r, c]      shape (n_stacks, n_blocks, log N, N/2, 2, 2)

``s`` = stack (output expansion, SPEC.md §1.6), ``κ`` = butterfly in application order, ``ℓ`` =
level in application order, ``p`` = pair, ``(r, c)`` = entry of the 2x2 block. Butterfly ``κ``
is increasing-stride (level ``ℓ`` has stride ``2^ℓ``) when ``increasing_stride`` is true and
``κ`` is even, or ``increasing_stride`` is false and ``κ`` is odd; otherwise decreasing-stride
(stride ``N / 2^{ℓ+1}``): directions alternate, starting with ``increasing_stride``. Pair ``p``
of stride ``h`` joins indices ``i = ⌊p/h⌋·2h + (p mod h)`` and ``i + h``, and with
``t = twiddle[s, κ, ℓ, p] = [[a, b], [c, d]]``::

    y_i = a x_i + b x_{i+h},     y_{i+h} = c x_i + d x_{i+h}.

Ops (``x`` rows are samples, as in ``nn.Linear``):

* :func:`butterfly_multiply` ``(twiddle, x, increasing_stride)``: ``x`` of shape ``(B, N)`` (every
  stack gets the same input) or ``(B, n_stacks, N)`` -> ``(B, n_stacks, N)``, each stack
  ``E_s = B_{s,K-1} ⋯ B_{s,0}`` applied to its row;
* :func:`butterfly_multiply_transpose`: ``E_s^T`` per stack (the blocks in reverse order, levels in
  reverse order, every 2x2 block transposed -- SPEC.md §1.4: the transpose of an
  increasing-stride butterfly is a decreasing-stride one); :func:`butterfly_multiply_adjoint`:
  ``E_s^*``. For the broadcast input ``(B, N)``, the transposed map is
  ``butterfly_multiply_transpose(twiddle, y).sum(1)``.

Cost: ``n_stacks · n_blocks · log N`` passes over the batch, ``3 N log N`` real flops per
butterfly and row (``14 N log N`` complex), SPEC.md §4.14.

Backends (DESIGN.md §4): the pure-PyTorch :func:`butterfly_multiply_reference` follows SPEC.md line
by line and is differentiated by autograd. Fused backends -- Numba on CPU
(:mod:`structmat.ops.butterfly_cpu`), Triton on NVIDIA GPUs (:mod:`structmat.ops.butterfly_triton`,
registered in :data:`FUSED_BACKENDS` under ``"cuda"`` at the first CUDA call) -- run through the ``torch.library`` custom op
``structmat::butterfly_multiply`` with a fake implementation and an autograd formula whose backward
recomputes the intermediates (training memory ``O(B · N)``), so ``torch.compile``,
``torch.func.grad``, ``torch.func.vmap`` (a vmap rule folds a batch of inputs into the rows, a batch
of twiddles into the stacks; vmapped backwards fold their problems into the stacks) and
``gradcheck`` work; under ``torch.func`` the backward is the fused one as a differentiable
function whose own derivative is the reference's (:class:`_FusedButterflyBackward`), with eager
``create_graph`` the reference's vector-Jacobian product, under forward-mode AD the whole op the
reference; plain eager
calls (no compilation, ``torch.func`` or tracing) skip the custom-op dispatch and call the backend
from an ``autograd.Function`` directly (about 80 us less per forward + backward).
:func:`structmat.ops.backend.choose` picks the backend; ``structmat.ops.use_reference()`` or
``STRUCTMAT_REFERENCE=1`` forces the reference.

Example (a 4-point Walsh--Hadamard transform, SPEC.md §6.3)::

    >>> tw = torch.tensor([[1.0, 1.0], [1.0, -1.0]]).expand(1, 1, 2, 2, 2, 2)
    >>> butterfly_multiply(tw, torch.eye(4))[:, 0]
    tensor([[ 1.,  1.,  1.,  1.],
            [ 1., -1.,  1., -1.],
            [ 1.,  1., -1., -1.],
            [ 1., -1., -1.,  1.]])
"""

from __future__ import annotations

from typing import Callable

import torch

from ..core.errors import describe
from ..core.sizes import is_power_of_two
from .backend import KERNEL_DTYPES, choose, forward_mode_active, functorch_transforms, numba_available, triton_available

#: Fused backends by device type: ``(forward, backward)`` with
#: ``forward(twiddle, x, increasing_stride, transpose) -> out`` and
#: ``backward(twiddle, x, grad, increasing_stride, transpose) -> (grad_twiddle, grad_x)``,
#: all tensors contiguous (the CPU backend's ``grad`` may also be broadcast over the batch, see
#: :func:`_backend_grad`), ``x`` of shape ``(B, S_in, N)`` with ``S_in`` in ``{1, n_stacks}``.
FUSED_BACKENDS: dict[str, tuple[Callable, Callable]] = {}

#: the most stacks one fused call takes (the Triton kernels launch one grid row per stack, and
#: CUDA's second grid dimension stops at 65535); vmap rules that fold a batch of problems into the
#: stacks split the batch so that no call exceeds it
MAX_STACKS = 65535


def _fold_chunks(size: int, stacks: int) -> list[slice]:
    """Slices of a vmapped batch of ``size`` problems of ``stacks`` stacks each such that one slice,
    folded into the stacks, takes at most :data:`MAX_STACKS` stacks."""
    step = max(1, MAX_STACKS // stacks)
    return [slice(start, min(size, start + step)) for start in range(0, size, step)]


def check_twiddle(twiddle, name: str = "twiddle", n_blocks: int | None = None) -> torch.Tensor:
    """Validate a canonical twiddle tensor ``(n_stacks, n_blocks, log N, N/2, 2, 2)`` (SPEC.md §1.4)."""
    if not isinstance(twiddle, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor of shape (n_stacks, n_blocks, log N, N/2, 2, 2), got {describe(twiddle)}")
    if not (twiddle.is_floating_point() or twiddle.is_complex()):
        raise TypeError(f"{name}: expected a floating-point or complex tensor, got {describe(twiddle)}")
    shape = tuple(twiddle.shape)
    ok = len(shape) == 6 and shape[4:] == (2, 2) and shape[0] >= 1 and shape[1] >= 1 and shape[3] >= 1
    if ok:
        half = shape[3]
        ok = is_power_of_two(2 * half) and shape[2] == (2 * half).bit_length() - 1
    if not ok:
        raise ValueError(
            f"{name}: expected shape (n_stacks, n_blocks, log N, N/2, 2, 2) with N a power of two >= 2 "
            f"(e.g. (1, 1, 3, 4, 2, 2) for N = 8), got {describe(twiddle)}"
        )
    if n_blocks is not None and shape[1] != n_blocks:
        raise ValueError(f"{name}: expected n_blocks = {n_blocks} (dimension 1), got shape {shape}")
    return twiddle


def check_backend_operands(twiddle: torch.Tensor, x: torch.Tensor, grad: torch.Tensor | None = None, kernels: str = "fused") -> None:
    """Dtypes and shapes as the fused backends take them (:data:`FUSED_BACKENDS`). Their kernels
    read every tensor with one dtype and do no bounds checks: the op (:func:`_multiply`) promotes
    and validates first; this guards direct calls. Each backend checks its devices itself."""
    if twiddle.dtype != x.dtype:
        raise TypeError(f"twiddle and x: expected one dtype (promote first), got {twiddle.dtype} and {x.dtype}")
    if x.dtype not in KERNEL_DTYPES:
        raise TypeError(f"x: the {kernels} butterfly kernels take float32, float64, complex64 or complex128, got {x.dtype}")
    stacks, n = twiddle.shape[0], 2 * twiddle.shape[3]
    if twiddle.dim() != 6 or x.dim() != 3 or x.shape[2] != n or x.shape[1] not in (1, stacks):
        raise ValueError(f"x: expected shape (B, 1 or {stacks}, {n}) for twiddle {tuple(twiddle.shape)}, got {tuple(x.shape)}")
    if grad is not None and tuple(grad.shape) != (x.shape[0], stacks, n):
        raise ValueError(f"grad: expected shape {(x.shape[0], stacks, n)}, got {tuple(grad.shape)}")


def butterfly_size(twiddle: torch.Tensor) -> int:
    """``N`` of a canonical twiddle tensor."""
    return 2 * twiddle.shape[3]


def butterfly_schedule(n: int, n_blocks: int, increasing_stride: bool) -> list[tuple[int, int, int]]:
    """``(κ, ℓ, stride)`` of every factor in application order (directions alternate with ``κ``)."""
    levels = n.bit_length() - 1
    schedule = []
    for block in range(n_blocks):
        increasing = bool(increasing_stride) != bool(block % 2)
        for level in range(levels):
            stride = 1 << level if increasing else n >> (level + 1)
            schedule.append((block, level, stride))
    return schedule


def butterfly_factor_multiply(factor: torch.Tensor, x: torch.Tensor, stride: int, transpose: bool = False) -> torch.Tensor:
    """One butterfly factor of stride ``h`` (SPEC.md §1.4) applied to ``x`` of shape ``(B, S, N)``.

    ``factor`` has shape ``(S, N/2, 2, 2)``. Viewing ``x`` as ``(B, S, N/2h, 2, h)``, pair
    ``p = block·h + offset`` joins ``x[..., block, 0, offset]`` (low) and ``x[..., block, 1, offset]``
    (high). ``transpose`` uses ``t^T`` for every block.
    """
    batch, stacks, n = x.shape
    if transpose:
        factor = factor.transpose(-1, -2)
    t = factor.reshape(stacks, n // (2 * stride), stride, 2, 2)
    pairs = x.reshape(batch, stacks, n // (2 * stride), 2, stride)
    low, high = pairs[:, :, :, 0, :], pairs[:, :, :, 1, :]
    y_low = t[..., 0, 0] * low + t[..., 0, 1] * high
    y_high = t[..., 1, 0] * low + t[..., 1, 1] * high
    return torch.stack([y_low, y_high], dim=3).reshape(batch, stacks, n)


def butterfly_multiply_reference(twiddle: torch.Tensor, x: torch.Tensor, increasing_stride: bool = True, transpose: bool = False) -> torch.Tensor:
    """Pure-PyTorch reference (SPEC.md §1.4): ``x`` ``(B, S_in, N)`` -> ``(B, n_stacks, N)``."""
    stacks, n_blocks = twiddle.shape[:2]
    n = butterfly_size(twiddle)
    x = x.expand(x.shape[0], stacks, n)
    schedule = butterfly_schedule(n, n_blocks, increasing_stride)
    if transpose:
        schedule = schedule[::-1]
    for block, level, stride in schedule:
        x = butterfly_factor_multiply(twiddle[:, block, level], x, stride, transpose)
    return x


# ---------------------------------------------------------------------------------------------
# The custom op wrapping the fused backends


def _fused(t: torch.Tensor) -> tuple[Callable, Callable]:
    """The fused backend of ``t``'s device type."""
    try:
        return FUSED_BACKENDS["cpu" if t.is_cpu else t.device.type]  # (is_cpu: no device object)
    except KeyError:
        raise ValueError(f"device: no fused butterfly backend for device type {t.device.type!r}") from None


@torch.library.custom_op("structmat::butterfly_multiply", mutates_args=())
def _butterfly_fused(twiddle: torch.Tensor, x: torch.Tensor, increasing_stride: bool, transpose: bool) -> torch.Tensor:
    forward, _ = _fused(x)
    return forward(twiddle.contiguous(), x.contiguous(), increasing_stride, transpose)


@_butterfly_fused.register_fake
def _(twiddle, x, increasing_stride, transpose):
    return x.new_empty(x.shape[0], twiddle.shape[0], x.shape[2], dtype=torch.promote_types(x.dtype, twiddle.dtype))


@torch.library.custom_op("structmat::butterfly_multiply_backward", mutates_args=())
def _butterfly_fused_backward(
    twiddle: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, increasing_stride: bool, transpose: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    _, backward = _fused(x)
    return backward(twiddle.contiguous(), x.contiguous(), grad.contiguous(), increasing_stride, transpose)


@_butterfly_fused_backward.register_fake
def _(twiddle, x, grad, increasing_stride, transpose):
    return torch.empty_like(twiddle), torch.empty_like(x)


#: tensor types the fused backends may receive directly (no ``__torch_dispatch__`` of their own)
_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def _plain_eager(*tensors: torch.Tensor) -> bool:
    """Whether the backend may be called directly, bypassing the custom ops (their dispatch costs
    ~20 us per call, 10 % of a batch-256 forward + backward at N = 1024): plain CPU/GPU tensors
    outside ``torch.compile``, ``torch.func`` and tracing (no fake, functional or wrapped tensors,
    no dispatch mode, no gradient batched by ``is_grads_batched``). ``nn.Parameter`` counts as
    plain: the families pass their twiddle parameters directly."""
    return (
        not torch.compiler.is_compiling()
        and torch._C._len_torch_dispatch_stack() == 0
        and all(
            type(t) in _PLAIN_TENSOR_TYPES
            and not torch._C._functorch.is_functorch_wrapped_tensor(t)
            and not torch._C._functorch.is_legacy_batchedtensor(t)  # (backend.legacy_batched)
            for t in tensors
        )
    )


def _forward_op(twiddle, x, increasing_stride, transpose):
    if _plain_eager(twiddle, x):
        forward, _ = _fused(x)
        return forward(twiddle.contiguous(), x.contiguous(), increasing_stride, transpose)
    return _butterfly_fused(twiddle, x, increasing_stride, transpose)


def _setup_context(ctx, inputs, output):
    twiddle, x, increasing_stride, transpose = inputs
    ctx.save_for_backward(twiddle, x)
    ctx.increasing_stride, ctx.transpose = increasing_stride, transpose


def _backend_grad(grad: torch.Tensor) -> torch.Tensor:
    """The output gradient as the fused backends take it: contiguous, except that the CPU backend
    reads a gradient broadcast over the batch (``sum()``'s: an expanded scalar) as one row --
    copying it to the batch's size would run a torch kernel whose OpenMP threads then spin against
    the backward's."""
    if grad.is_cpu and grad.shape[0] > 1 and grad.stride(0) == 0:
        return grad
    return grad.contiguous()


def _input_adjoint(twiddle: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, increasing_stride: bool, transpose: bool) -> torch.Tensor:
    """``x̄ = W^* ȳ`` alone (SPEC.md §4.14, frozen twiddles): one fused forward with the conjugate
    twiddles and the transposition flipped -- no recomputation, one forward's cost instead of the
    full backward's 3-4 (stacks sharing one input row add their adjoints)."""
    forward, _ = _fused(x)
    grad_x = forward(twiddle.conj().resolve_conj().contiguous(), grad.contiguous(), increasing_stride, not transpose)
    if x.shape[1] == 1 and grad_x.shape[1] > 1:
        grad_x = grad_x.sum(dim=1, keepdim=True)
    return grad_x


def _backward(ctx, grad):
    """The autograd formula: the fused backward (:func:`_first_order_backward`), unless the
    backward may itself be differentiated (grad mode on):

    * under a ``torch.func`` transform (``grad``/``vjp`` always build the graph, whether or not
      anything differentiates it again) the fused backward runs as :class:`_FusedButterflyBackward`,
      a differentiable function whose derivative is the reference's;
    * in eager ``create_graph=True`` (gradient penalties, double backward: the gradient will be
      differentiated) the vector-Jacobian product of the differentiable reference, whose graph the
      second backward then walks (about half the time of differentiating the reference's
      vector-Jacobian product afresh, as :class:`_FusedButterflyBackward` must). The reference's
      backward keeps its ``K log N`` intermediates: memory ``O(B N K log N)``."""
    if torch.is_grad_enabled():
        twiddle, x = ctx.saved_tensors
        if functorch_transforms():
            grad_twiddle, grad_x = _FusedButterflyBackward.apply(twiddle, x, grad, ctx.increasing_stride, ctx.transpose)
        else:
            grad_twiddle, grad_x = _reference_vjp(twiddle, x, grad, ctx.increasing_stride, ctx.transpose)
        return grad_twiddle, grad_x, None, None
    return _first_order_backward(ctx, grad)


def _fused_vjp(twiddle: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, increasing_stride: bool, transpose: bool, plain: bool | None = None):
    """``(grad_twiddle, grad_x)`` by the fused backward: the backend directly for plain eager
    tensors, the custom op ``structmat::butterfly_multiply_backward`` under a tracer (``plain``:
    :func:`_plain_eager` of the three, when the caller has it already)."""
    if _plain_eager(twiddle, x, grad) if plain is None else plain:
        _, backward = _fused(x)
        return backward(twiddle.contiguous(), x.contiguous(), _backend_grad(grad), increasing_stride, transpose)
    return _butterfly_fused_backward(twiddle, x, grad, increasing_stride, transpose)


def _first_order_backward(ctx, grad):
    """The fused backward (the custom op under a tracer); with frozen twiddles the input adjoint
    alone (:func:`_input_adjoint`)."""
    twiddle, x = ctx.saved_tensors
    plain = _plain_eager(twiddle, x, grad)
    if plain and not getattr(ctx, "needs_input_grad", (True,))[0]:  # frozen twiddles: the adjoint only
        if grad.shape[0] > 1 and grad.stride(0) == 0:  # broadcast over the batch: one row
            one = _input_adjoint(twiddle, x, grad[:1], ctx.increasing_stride, ctx.transpose)
            return None, one.expand(x.shape[0], -1, -1), None, None
        return None, _input_adjoint(twiddle, x, grad, ctx.increasing_stride, ctx.transpose), None, None
    grad_twiddle, grad_x = _fused_vjp(twiddle, x, grad, ctx.increasing_stride, ctx.transpose, plain)
    return grad_twiddle, grad_x, None, None


def _reference_vjp(twiddle, x, grad, increasing_stride, transpose):
    """``(grad_twiddle, grad_x)`` by the differentiable reference (SPEC.md §1.4): the vector-Jacobian
    product whose own derivatives are the second-order terms of :class:`_FusedButterflyBackward`."""
    _, vjp = torch.func.vjp(lambda t, v: butterfly_multiply_reference(t, v, increasing_stride, transpose), twiddle, x)
    return vjp(grad)


class _FusedButterflyBackward(torch.autograd.Function):
    """The fused backward as a differentiable function of ``(twiddle, x, grad)``: first-order
    gradients under a ``torch.func`` transform run the fused kernels (memory ``O(B N)``, no ``K
    log N`` intermediates), and differentiating them once more (``grad`` of ``grad``,
    Hessian-vector products) takes the vector-Jacobian product of the reference's vector-Jacobian
    product -- the kernels have no derivative of their own, and skipping it would silently drop the
    second-order terms."""

    @staticmethod
    def forward(twiddle, x, grad, increasing_stride, transpose):
        return _fused_vjp(twiddle, x, grad, increasing_stride, transpose)

    @staticmethod
    def setup_context(ctx, inputs, output):
        twiddle, x, grad, increasing_stride, transpose = inputs
        ctx.save_for_backward(twiddle, x, grad)
        ctx.increasing_stride, ctx.transpose = increasing_stride, transpose

    @staticmethod
    def backward(ctx, grad_grad_twiddle, grad_grad_x):
        twiddle, x, grad = ctx.saved_tensors
        _, vjp = torch.func.vjp(lambda t, v, g: _reference_vjp(t, v, g, ctx.increasing_stride, ctx.transpose), twiddle, x, grad)
        return (*vjp((grad_grad_twiddle, grad_grad_x)), None, None)

    @staticmethod
    def vmap(info, in_dims, twiddle, x, grad, increasing_stride, transpose):
        """A batch of ``V`` problems (per-sample gradients: ``vmap(grad(loss))``) as one fused
        backward with ``V · S`` stacks: stack ``(v, s)`` is twiddle ``v``'s stack ``s`` on problem
        ``v``'s rows, so every problem keeps its own twiddle gradient (SPEC.md §1.6)."""
        size = info.batch_size

        def batch_first(t, dim):
            return t.expand(size, *t.shape) if dim is None else t.movedim(dim, 0)

        tw, xv, gv = (batch_first(t, d) for t, d in zip((twiddle, x, grad), in_dims[:3]))
        stacks = tw.shape[1]
        rows, stacks_in, n = xv.shape[1:]
        if size == 0:  # no problems: empty gradients
            return (tw.new_zeros(tw.shape), xv.new_zeros(xv.shape)), (0, 0)
        grads_tw, grads_x = [], []
        for part in _fold_chunks(size, stacks):
            tw_part, x_part, grad_part = tw[part], xv[part], gv[part]
            count = tw_part.shape[0]
            folded_x = x_part.expand(count, rows, stacks, n).transpose(0, 1).reshape(rows, count * stacks, n)
            folded_grad = grad_part.transpose(0, 1).reshape(rows, count * stacks, n)
            grad_tw, grad_x = _FusedButterflyBackward.apply(
                tw_part.reshape(count * stacks, *tw.shape[2:]), folded_x, folded_grad, increasing_stride, transpose
            )
            grad_x = grad_x.reshape(rows, count, stacks, n).transpose(0, 1)
            if stacks_in == 1 and stacks > 1:  # stacks sharing one input row add their adjoints
                grad_x = grad_x.sum(dim=2, keepdim=True)
            grads_tw.append(grad_tw.reshape(tw_part.shape))
            grads_x.append(grad_x)
        if len(grads_tw) == 1:  # (the usual case: no copy)
            return (grads_tw[0], grads_x[0]), (0, 0)
        return (torch.cat(grads_tw), torch.cat(grads_x)), (0, 0)


_butterfly_fused.register_autograd(_backward, setup_context=_setup_context)
torch.library.register_vmap("structmat::butterfly_multiply", lambda info, in_dims, *args: _batched(_butterfly_fused, info, in_dims, *args))


def _batched(apply, info, in_dims, twiddle, x, increasing_stride, transpose):
    """``torch.func.vmap`` rule of the op (``apply``: :class:`_FusedButterfly`'s ``apply`` in eager
    mode, the custom op ``structmat::butterfly_multiply`` under ``torch.compile``): a batch of
    inputs ``x`` joins the op's batch of rows; a batch of twiddles joins its stacks (each stack a
    butterfly of its own on its own input rows, SPEC.md §1.6), the inputs repeated per twiddle
    where they are not batched themselves."""
    tw_dim, x_dim = in_dims[0], in_dims[1]
    size = info.batch_size
    if tw_dim is None:  # (V, B, S_in, N) -> (V B, S_in, N)
        x = x.movedim(x_dim, 0)
        batch = x.shape[1]
        y = apply(twiddle, x.reshape(size * batch, *x.shape[2:]), increasing_stride, transpose)
        return y.reshape(size, batch, *y.shape[1:]), 0
    twiddle = twiddle.movedim(tw_dim, 0)  # (V, S, K, log N, N/2, 2, 2)
    stacks, n = twiddle.shape[1], x.shape[-1]
    if x_dim is not None:
        x = x.movedim(x_dim, 1)  # (B, V, S_in, N)
    # (no stacks at all for an empty batch of twiddles: the reference's empty result)
    apply = apply if size else butterfly_multiply_reference
    outputs = []
    for part in _fold_chunks(size, stacks) or [slice(0, 0)]:
        folded = twiddle[part].reshape(-1, *twiddle.shape[2:])  # (V' S, K, log N, N/2, 2, 2)
        count = folded.shape[0] // stacks
        if x_dim is None and x.shape[1] == 1:  # one input row shared by every stack of every twiddle
            rows = x
        else:
            rows = x.unsqueeze(1).expand(-1, count, -1, -1) if x_dim is None else x[:, part]  # (B, V', S_in, N)
            rows = rows.expand(-1, -1, stacks, -1).reshape(x.shape[0], count * stacks, n)
        y = apply(folded, rows, increasing_stride, transpose)
        outputs.append(y.reshape(y.shape[0], count, stacks, n))
    return (outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)), 1


class _FusedButterfly(torch.autograd.Function):
    """The custom ops as an ``autograd.Function`` with ``setup_context``: the form that
    ``torch.func`` transforms (``grad``, ``vjp``, ``vmap``) and ``torch.compile`` accept (plain eager
    autograd takes :class:`_EagerFusedButterfly`). No ``jvp`` rule: Dynamo refuses an
    ``autograd.Function`` with a custom ``jvp`` whose inputs require grad, and a custom ``jvp`` is
    not differentiated by an outer forward-mode transform -- forward-mode AD runs the reference
    instead (:func:`structmat.ops.backend.forward_mode_active`)."""

    @staticmethod
    def forward(twiddle, x, increasing_stride, transpose):
        return _forward_op(twiddle, x, increasing_stride, transpose)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)

    vmap = staticmethod(lambda info, in_dims, *args: _batched(_FusedButterfly.apply, info, in_dims, *args))


class _EagerFusedButterfly(torch.autograd.Function):
    """Plain eager autograd (no ``torch.func`` transform, no compilation, see :func:`_plain_eager`):
    the backends directly, and an old-style ``forward(ctx, ...)`` -- ``Function.apply`` binds the
    arguments of a ``setup_context``-style forward with ``inspect.signature`` on every call
    (~25 us, 5-10 % of a batch-256 forward + backward at N = 1024).

    A backward with ``create_graph=True`` (gradient penalties, double backward) runs the
    vector-Jacobian product through the differentiable reference instead (:func:`_backward`), so
    second-order terms are exact rather than silently missing."""

    @staticmethod
    def forward(ctx, twiddle, x, increasing_stride, transpose):
        _setup_context(ctx, (twiddle, x, increasing_stride, transpose), None)
        forward, _ = _fused(x)
        return forward(twiddle.contiguous(), x.contiguous(), increasing_stride, transpose)

    backward = staticmethod(_backward)


# ---------------------------------------------------------------------------------------------
# Public entry points


def _register_gpu_backend() -> None:
    """Registers the Triton backend (:mod:`structmat.ops.butterfly_triton`) at the first CUDA call
    where it can run -- not when structmat is imported: probing the device's capability would
    initialise CUDA in every process that imports the library."""
    if triton_available():
        from .butterfly_triton import butterfly_backward_triton, butterfly_forward_triton

        FUSED_BACKENDS["cuda"] = (butterfly_forward_triton, butterfly_backward_triton)


def _multiply(twiddle: torch.Tensor, x: torch.Tensor, increasing_stride: bool, transpose: bool) -> torch.Tensor:
    twiddle = check_twiddle(twiddle)
    n, stacks = butterfly_size(twiddle), twiddle.shape[0]
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a tensor of shape (B, {n}) or (B, {stacks}, {n}), got {describe(x)}")
    if x.dim() == 2 and x.shape[1] == n:
        x = x.unsqueeze(1)
    if x.dim() != 3 or x.shape[2] != n or x.shape[1] not in (1, stacks):
        raise ValueError(f"x: expected shape (B, {n}) or (B, {stacks}, {n}), got {describe(x)}")
    dtype = x.dtype
    if twiddle.dtype != dtype:
        dtype = torch.promote_types(twiddle.dtype, x.dtype)
        twiddle, x = twiddle.to(dtype), x.to(dtype)
    backend = choose(twiddle, x)
    if backend == "cuda" and "cuda" not in FUSED_BACKENDS:
        _register_gpu_backend()
    if backend == "reference" or backend not in FUSED_BACKENDS or x.shape[0] == 0 or dtype not in KERNEL_DTYPES or forward_mode_active():
        # (float16/bfloat16, and forward-mode AD: the reference)
        return butterfly_multiply_reference(twiddle, x, increasing_stride, transpose)
    if not torch.is_grad_enabled() and _plain_eager(twiddle, x):
        # eager inference: the backend directly (the autograd.Function and custom-op dispatch cost
        # ~30 us per call, 10-20 % of a batch-256 forward at N <= 1024); a tracer or fake tensors
        # still see the custom op, vmapped ones the vmap rule of _FusedButterfly
        forward, _ = _fused(x)
        return forward(twiddle.contiguous(), x.contiguous(), bool(increasing_stride), bool(transpose))
    if _plain_eager(twiddle, x) and not functorch_transforms():
        return _EagerFusedButterfly.apply(twiddle, x, bool(increasing_stride), bool(transpose))
    return _FusedButterfly.apply(twiddle, x, bool(increasing_stride), bool(transpose))


def butterfly_multiply(twiddle: torch.Tensor, x: torch.Tensor, increasing_stride: bool = True) -> torch.Tensor:
    """``E_s x`` for every stack ``s``: ``x`` ``(B, N)`` or ``(B, n_stacks, N)`` -> ``(B, n_stacks, N)``.

    ``twiddle`` is canonical ``(n_stacks, n_blocks, log N, N/2, 2, 2)``; the first butterfly is
    increasing-stride when ``increasing_stride`` (directions alternate). Differentiable in both
    arguments. Cost ``3 N log N`` real flops per butterfly, stack and row (SPEC.md §4.14).
    """
    return _multiply(twiddle, x, increasing_stride, transpose=False)


def butterfly_multiply_transpose(twiddle: torch.Tensor, y: torch.Tensor, increasing_stride: bool = True) -> torch.Tensor:
    """``E_s^T y_s`` for every stack: ``y`` ``(B, N)`` or ``(B, n_stacks, N)`` -> ``(B, n_stacks, N)``.

    ``increasing_stride`` describes the forward product ``E_s`` (SPEC.md §1.4); the transpose runs
    its factors in reverse order with transposed 2x2 blocks, at the cost of the forward.
    """
    return _multiply(twiddle, y, increasing_stride, transpose=True)


def butterfly_multiply_adjoint(twiddle: torch.Tensor, y: torch.Tensor, increasing_stride: bool = True) -> torch.Tensor:
    """``E_s^* y_s`` (conjugate transpose; equals the transpose for real twiddles)."""
    if not twiddle.is_complex():
        return butterfly_multiply_transpose(twiddle, y, increasing_stride)
    return butterfly_multiply_transpose(twiddle.conj(), y, increasing_stride)


def butterfly_to_dense(twiddle: torch.Tensor, increasing_stride: bool = True) -> torch.Tensor:
    """The dense ``(n_stacks · N, N)`` matrix ``[E_0; E_1; …]`` (differentiable; for tests and
    projections -- never used by a forward pass)."""
    twiddle = check_twiddle(twiddle)
    n = butterfly_size(twiddle)
    eye = torch.eye(n, dtype=twiddle.dtype, device=twiddle.device)
    columns = butterfly_multiply_reference(twiddle, eye[:, None, :], increasing_stride)  # (N_in, S, N_out)
    return columns.reshape(n, -1).transpose(0, 1)


if numba_available():
    from . import butterfly_cpu  # noqa: E402,F401 - registers the fused CPU backend in FUSED_BACKENDS
