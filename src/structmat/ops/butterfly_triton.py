"""Triton GPU kernels for :mod:`structmat.ops.butterfly` (DESIGN.md §4; SPEC.md §1.4, §4.14).

Registered in :data:`structmat.ops.butterfly.FUSED_BACKENDS` under ``"cuda"`` when a CUDA device
and Triton are present; the op's autograd formula, ``torch.compile`` support, vmap rule and
reference fallbacks are the ones the CPU backend uses (:mod:`structmat.ops.butterfly`), so the
families run on the GPU unchanged.

Layout: one program takes a block of ``BLOCK_B`` rows of one stack and runs every factor of the
product over them. Each step is a pass over the row block in the output's own rows (level-1/2
cache): a tile of ``BLOCK_B x BLOCK_P`` pairs at a time, pair ``p`` of a factor of stride ``h``
joining elements ``lo = (p // h) 2h + p % h`` and ``lo + h`` (SPEC.md §1.4, as
:func:`structmat.ops.butterfly.butterfly_factor_multiply`), with a block barrier between steps (and
between a tile's loads and its in-place stores). Complex tensors are read as interleaved real
and imaginary parts (``torch.view_as_real``). Cost per row: ``K log N`` passes over ``N``
elements, ``3 N log N`` real flops per butterfly (SPEC.md §4.14).

Backward by recomputation (training memory ``O(B N)``, never ``K log N`` copies of the batch):
a persistent grid of ``P`` programs per stack loops over the row blocks; for each block it
recomputes every step's input into its own scratch slots (``K log N`` slots of one row block),
then walks the steps back, turning the output adjoint into the input adjoint in the rows of
``grad_x`` and adding the coefficient gradients ``Σ_rows ȳ x*`` (torch's convention: ``*``
conjugates complex values) into the program's own partial twiddle gradient. The ``P`` partials
are summed afterwards (deterministic: no atomics). ``P`` is capped so that the scratch slots and
partials stay under :data:`BACKWARD_WORKSPACE_BYTES`.

The kernels also run under Triton's interpreter (``TRITON_INTERPRET=1``, on CPU tensors), which
is how the test suite checks them on machines without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .butterfly import FUSED_BACKENDS

#: elements of one tile (rows x pairs) a program works on at a time
TILE = 2048
#: elements of one program's row block (rows x N): the rows stay in the level-1/2 cache between steps
ROW_BLOCK_ELEMENTS = 8192
#: cap on the backward's workspace (recomputed step inputs of the programs' row blocks plus their
#: partial twiddle gradients); fewer programs run when a larger workspace would be needed
BACKWARD_WORKSPACE_BYTES = 256 * 2**20

#: fewest rows per block of the backward: every block adds its coefficient gradients into its
#: program's partial (reading and writing ``2 N`` values per step), so short blocks multiply that
#: traffic
BACKWARD_FEWEST_ROWS = 4

_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)


@triton.jit
def _step_geometry(q, K, LOG_N, N, INCREASING, TRANSPOSE: tl.constexpr):
    """Factor index ``idx = block · log N + level`` and stride of application step ``q``
    (:func:`structmat.ops.butterfly.butterfly_schedule`; reversed for the transposed product)."""
    if TRANSPOSE:
        idx = K - 1 - q
    else:
        idx = q
    blk = idx // LOG_N
    lvl = idx - blk * LOG_N
    inc = (INCREASING + blk) % 2
    stride = inc * (1 << lvl) + (1 - inc) * (N >> (lvl + 1))
    return idx, stride


@triton.jit
def _pair_offsets(p, stride):
    """Element offsets ``(lo, hi)`` of pairs ``p`` of a factor of stride ``stride``."""
    j = p // stride
    lo = j * (2 * stride) + (p - j * stride)
    return lo, lo + stride


@triton.jit
def _coefficients(tw, tw_offset, mask, COMPLEX: tl.constexpr, TRANSPOSE: tl.constexpr):
    """The 2x2 blocks ``(a, b, c, d)`` of the pairs (real parts, then imaginary parts; zeros for a
    real dtype), transposed when ``TRANSPOSE``."""
    if COMPLEX:
        base = tw + tw_offset * 8
        ar = tl.load(base, mask=mask, other=0.0)
        ai = tl.load(base + 1, mask=mask, other=0.0)
        br = tl.load(base + 2, mask=mask, other=0.0)
        bi = tl.load(base + 3, mask=mask, other=0.0)
        cr = tl.load(base + 4, mask=mask, other=0.0)
        ci = tl.load(base + 5, mask=mask, other=0.0)
        dr = tl.load(base + 6, mask=mask, other=0.0)
        di = tl.load(base + 7, mask=mask, other=0.0)
    else:
        base = tw + tw_offset * 4
        ar = tl.load(base, mask=mask, other=0.0)
        br = tl.load(base + 1, mask=mask, other=0.0)
        cr = tl.load(base + 2, mask=mask, other=0.0)
        dr = tl.load(base + 3, mask=mask, other=0.0)
        ai = ar * 0
        bi = ai
        ci = ai
        di = ai
    if TRANSPOSE:
        return ar, ai, cr, ci, br, bi, dr, di
    return ar, ai, br, bi, cr, ci, dr, di


@triton.jit
def _load(ptr, offset, mask, COMPLEX: tl.constexpr):
    """Values at element ``offset`` (real and imaginary parts; zeros for a real dtype)."""
    if COMPLEX:
        re = tl.load(ptr + 2 * offset, mask=mask, other=0.0)
        im = tl.load(ptr + 2 * offset + 1, mask=mask, other=0.0)
    else:
        re = tl.load(ptr + offset, mask=mask, other=0.0)
        im = re * 0
    return re, im


@triton.jit
def _store(ptr, offset, re, im, mask, COMPLEX: tl.constexpr):
    if COMPLEX:
        tl.store(ptr + 2 * offset, re, mask=mask)
        tl.store(ptr + 2 * offset + 1, im, mask=mask)
    else:
        tl.store(ptr + offset, re, mask=mask)


@triton.jit
def _mul_add(ar, ai, xr, xi, br, bi, yr, yi, COMPLEX: tl.constexpr):
    """``a x + b y``."""
    if COMPLEX:
        return ar * xr - ai * xi + br * yr - bi * yi, ar * xi + ai * xr + br * yi + bi * yr
    return ar * xr + br * yr, xi


@triton.jit
def _conj_mul_add(ar, ai, xr, xi, br, bi, yr, yi, COMPLEX: tl.constexpr):
    """``a* x + b* y``."""
    if COMPLEX:
        return ar * xr + ai * xi + br * yr + bi * yi, ar * xi - ai * xr + br * yi - bi * yr
    return ar * xr + br * yr, xi


@triton.jit
def _conj_mul(ar, ai, xr, xi, COMPLEX: tl.constexpr):
    """``a* x``."""
    if COMPLEX:
        return ar * xr + ai * xi, ar * xi - ai * xr
    return ar * xr, xi


@triton.jit
def _copy_rows(src, src_row, dst, dst_row, rmask, N, BLOCK_P: tl.constexpr, C: tl.constexpr):
    """``dst`` rows = ``src`` rows (``C`` reals per element)."""
    e = tl.arange(0, BLOCK_P)[None, :]
    for e0 in range(0, N * C, BLOCK_P):
        mask = rmask & (e0 + e < N * C)
        tl.store(dst + dst_row + e0 + e, tl.load(src + src_row + e0 + e, mask=mask, other=0.0), mask=mask)


@triton.jit
def _apply_step(tw, tw_base, src, src_row, dst, dst_row, stride, rmask,
                N, BLOCK_P: tl.constexpr, COMPLEX: tl.constexpr, TRANSPOSE: tl.constexpr):
    """One factor: ``dst`` rows = factor · ``src`` rows (``src`` may be ``dst``: each tile is
    read before it is written)."""
    HALF = N // 2
    pp = tl.arange(0, BLOCK_P)[None, :]
    for p0 in range(0, HALF, BLOCK_P):
        p = p0 + pp
        pmask = p < HALF
        mask = rmask & pmask
        lo, hi = _pair_offsets(p, stride)
        ar, ai, br, bi, cr, ci, dr, di = _coefficients(tw, tw_base + p, pmask, COMPLEX, TRANSPOSE)
        lr, li = _load(src + src_row, lo, mask, COMPLEX)
        hr, hi_ = _load(src + src_row, hi, mask, COMPLEX)
        tl.debug_barrier()  # every thread has read its tile before any thread writes it
        yr, yi = _mul_add(ar, ai, lr, li, br, bi, hr, hi_, COMPLEX)
        zr, zi = _mul_add(cr, ci, lr, li, dr, di, hr, hi_, COMPLEX)
        _store(dst + dst_row, lo, yr, yi, mask, COMPLEX)
        _store(dst + dst_row, hi, zr, zi, mask, COMPLEX)
    tl.debug_barrier()  # the step is complete before the next one reads it


@triton.jit
def _forward_kernel(tw, x, out, B, S, S_IN, N, LOG_N, K, INCREASING,
                    TRANSPOSE: tl.constexpr, COMPLEX: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr):
    """Rows ``BLOCK_B · program_id(0) + [0, BLOCK_B)`` of stack ``program_id(1)``."""
    C: tl.constexpr = 2 if COMPLEX else 1
    s = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)[:, None]
    rmask = rows < B
    rows = rows.to(tl.int64)
    x_row = (rows * S_IN + s % S_IN) * (N * C)
    out_row = (rows * S + s) * (N * C)
    _copy_rows(x, x_row, out, out_row, rmask, N, BLOCK_P, C)
    tl.debug_barrier()
    for q in range(K):
        idx, stride = _step_geometry(q, K, LOG_N, N, INCREASING, TRANSPOSE)
        _apply_step(tw, (s * K + idx) * (N // 2), out, out_row, out, out_row, stride, rmask, N, BLOCK_P, COMPLEX, TRANSPOSE)


@triton.jit
def _backward_kernel(tw, x, grad, grad_x, partial, scratch, B, S, S_IN, ROW_BLOCKS, N, LOG_N, K, INCREASING,
                     TRANSPOSE: tl.constexpr, COMPLEX: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr):
    """Program ``program_id(0)`` of ``P`` takes row blocks ``program_id(0) + k P`` of stack
    ``program_id(1)``; ``grad_x`` is per stack ``(B, S, N)``, ``partial`` ``(P, S, K, N/2, 2, 2)``
    (zeroed), ``scratch`` ``(P, S, K, BLOCK_B, N)``."""
    HALF = N // 2
    C: tl.constexpr = 2 if COMPLEX else 1
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    s = tl.program_id(1)
    slots = scratch + ((pid * S + s) * K).to(tl.int64) * (BLOCK_B * N * C)
    part = partial + ((pid * S + s) * K).to(tl.int64) * (HALF * 4 * C)
    local = tl.arange(0, BLOCK_B)[:, None]
    slot_row = local * (N * C)
    pp = tl.arange(0, BLOCK_P)[None, :]
    for block in range(pid, ROW_BLOCKS, programs):
        rows = block * BLOCK_B + local
        rmask = rows < B
        rows = rows.to(tl.int64)
        x_row = (rows * S_IN + s % S_IN) * (N * C)
        g_row = (rows * S + s) * (N * C)
        # the inputs of every step (rows past B hold zeros and add nothing to the gradients)
        _copy_rows(x, x_row, slots, slot_row, rmask, N, BLOCK_P, C)
        _copy_rows(grad, g_row, grad_x, g_row, rmask, N, BLOCK_P, C)
        tl.debug_barrier()
        for q in range(K - 1):
            idx, stride = _step_geometry(q, K, LOG_N, N, INCREASING, TRANSPOSE)
            _apply_step(tw, (s * K + idx) * HALF, slots + q * (BLOCK_B * N * C), slot_row,
                        slots + (q + 1) * (BLOCK_B * N * C), slot_row, stride, rmask, N, BLOCK_P, COMPLEX, TRANSPOSE)
        # the walk back: grad_x rows hold the adjoint of the current step's output
        for r in range(K):
            q = K - 1 - r
            idx, stride = _step_geometry(q, K, LOG_N, N, INCREASING, TRANSPOSE)
            tw_base = (s * K + idx) * HALF
            step_in = slots + q * (BLOCK_B * N * C)
            for p0 in range(0, HALF, BLOCK_P):
                p = p0 + pp
                pmask = p < HALF
                mask = rmask & pmask
                lo, hi = _pair_offsets(p, stride)
                # the factor as applied (transposed blocks for the transposed product)
                ar, ai, br, bi, cr, ci, dr, di = _coefficients(tw, tw_base + p, pmask, COMPLEX, TRANSPOSE)
                lr, li = _load(step_in + slot_row, lo, mask, COMPLEX)
                hr, hi_ = _load(step_in + slot_row, hi, mask, COMPLEX)
                ur, ui = _load(grad_x + g_row, lo, mask, COMPLEX)
                vr, vi = _load(grad_x + g_row, hi, mask, COMPLEX)
                tl.debug_barrier()
                # input adjoint: M^* ȳ
                gr, gi = _conj_mul_add(ar, ai, ur, ui, cr, ci, vr, vi, COMPLEX)
                hgr, hgi = _conj_mul_add(br, bi, ur, ui, dr, di, vr, vi, COMPLEX)
                _store(grad_x + g_row, lo, gr, gi, mask, COMPLEX)
                _store(grad_x + g_row, hi, hgr, hgi, mask, COMPLEX)
                # matrix gradient Σ_rows ȳ x^* of the applied block, entry (i, j) = ȳ_i x_j^*
                m00r, m00i = _conj_mul(lr, li, ur, ui, COMPLEX)
                m01r, m01i = _conj_mul(hr, hi_, ur, ui, COMPLEX)
                m10r, m10i = _conj_mul(lr, li, vr, vi, COMPLEX)
                m11r, m11i = _conj_mul(hr, hi_, vr, vi, COMPLEX)
                if TRANSPOSE:  # the twiddle block is the transpose of the applied one
                    m01r, m10r = m10r, m01r
                    m01i, m10i = m10i, m01i
                base = part + (idx * HALF + p) * (4 * C)
                _accumulate(base, 0, tl.sum(m00r, axis=0)[None, :], tl.sum(m00i, axis=0)[None, :], pmask, COMPLEX)
                _accumulate(base, 1, tl.sum(m01r, axis=0)[None, :], tl.sum(m01i, axis=0)[None, :], pmask, COMPLEX)
                _accumulate(base, 2, tl.sum(m10r, axis=0)[None, :], tl.sum(m10i, axis=0)[None, :], pmask, COMPLEX)
                _accumulate(base, 3, tl.sum(m11r, axis=0)[None, :], tl.sum(m11i, axis=0)[None, :], pmask, COMPLEX)
            tl.debug_barrier()


@triton.jit
def _accumulate(base, entry: tl.constexpr, re, im, mask, COMPLEX: tl.constexpr):
    """``partial[entry] += (re, im)`` (only this program writes its partial)."""
    if COMPLEX:
        ptr = base + 2 * entry
        tl.store(ptr, tl.load(ptr, mask=mask, other=0.0) + re, mask=mask)
        tl.store(ptr + 1, tl.load(ptr + 1, mask=mask, other=0.0) + im, mask=mask)
    else:
        ptr = base + entry
        tl.store(ptr, tl.load(ptr, mask=mask, other=0.0) + re, mask=mask)


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _units(x: torch.Tensor) -> int:
    """Programs that fill the device twice over (twice its multiprocessors; 4 under the interpreter)."""
    return 2 * torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 4


def _blocks(n: int, complex_: bool, batch: int, stacks: int, units: int, fewest_rows: int) -> tuple[int, int]:
    """``(BLOCK_B, BLOCK_P)``: rows per program -- up to :data:`ROW_BLOCK_ELEMENTS` elements, halved
    (down to ``fewest_rows``, and at least that many) while there are fewer row blocks than ``units``
    -- and pairs per tile
    (up to :data:`TILE` elements)."""
    block_b = max(fewest_rows, min(16, ROW_BLOCK_ELEMENTS // (n * (2 if complex_ else 1))))
    while block_b > fewest_rows and triton.cdiv(batch, block_b) * stacks < units:
        block_b //= 2
    block_p = max(1, min(_next_power_of_two(n // 2), TILE // block_b))
    return block_b, block_p


def _check(twiddle: torch.Tensor, x: torch.Tensor, *others: torch.Tensor) -> None:
    for name, t in (("twiddle", twiddle), ("x", x), *(("grad", o) for o in others)):
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name}: the Triton butterfly kernels take float32, float64, complex64 or complex128, got {t.dtype}")
        if t.dtype != x.dtype or t.device != x.device:
            raise ValueError(f"{name}: expected {x.dtype} on {x.device} like x, got {t.dtype} on {t.device}")
        if not t.is_contiguous() or t.is_conj() or t.is_neg():
            raise ValueError(f"{name}: expected a contiguous tensor without lazy conjugation")


def _real(t: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


def _geometry(twiddle: torch.Tensor, x: torch.Tensor):
    stacks, n_blocks, log_n, half = twiddle.shape[:4]
    n = 2 * half
    return stacks, n, log_n, n_blocks * log_n


def butterfly_forward_triton(twiddle: torch.Tensor, x: torch.Tensor, increasing_stride: bool, transpose: bool) -> torch.Tensor:
    """Fused forward: ``x`` ``(B, S_in, N)`` -> ``(B, S, N)`` (see :mod:`structmat.ops.butterfly`)."""
    _check(twiddle, x)
    stacks, n, log_n, k = _geometry(twiddle, x)
    batch = x.shape[0]
    out = torch.empty(batch, stacks, n, dtype=x.dtype, device=x.device)
    if batch == 0:
        return out
    block_b, block_p = _blocks(n, x.is_complex(), batch, stacks, _units(x), 1)
    grid = (triton.cdiv(batch, block_b), stacks)
    _forward_kernel[grid](_real(twiddle), _real(x), _real(out), batch, stacks, x.shape[1], n, log_n, k, int(bool(increasing_stride)),
                          TRANSPOSE=bool(transpose), COMPLEX=x.is_complex(), BLOCK_B=block_b, BLOCK_P=block_p)
    return out


def _programs(units: int, row_blocks: int, stacks: int, per_program_bytes: int) -> int:
    """Programs per stack of the backward's persistent grid: ``units`` in all, no more than there
    are row blocks, and within :data:`BACKWARD_WORKSPACE_BYTES`."""
    by_memory = BACKWARD_WORKSPACE_BYTES // max(1, stacks * per_program_bytes)
    return max(1, min(row_blocks, -(-units // stacks), by_memory))


def butterfly_backward_triton(
    twiddle: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, increasing_stride: bool, transpose: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused backward: ``(grad_twiddle, grad_x)`` by recomputation (see the module docstring)."""
    grad = grad.to(x.dtype).contiguous()
    _check(twiddle, x, grad)
    stacks, n, log_n, k = _geometry(twiddle, x)
    batch, s_in = x.shape[0], x.shape[1]
    if grad.shape != (batch, stacks, n):
        raise ValueError(f"grad: expected shape {(batch, stacks, n)}, got {tuple(grad.shape)}")
    grad_x = torch.empty(batch, stacks, n, dtype=x.dtype, device=x.device)
    if batch == 0:
        return torch.zeros_like(twiddle), grad_x[:, :s_in]
    units = _units(x)
    block_b, block_p = _blocks(n, x.is_complex(), batch, stacks, units, BACKWARD_FEWEST_ROWS)
    row_blocks = triton.cdiv(batch, block_b)
    item = x.element_size()
    per_program = k * (block_b * n + 2 * n) * item  # step inputs + partial (N/2 pairs x 4 entries)
    programs = _programs(units, row_blocks, stacks, per_program)
    scratch = torch.empty(programs, stacks, k, block_b, n, dtype=x.dtype, device=x.device)
    partial = torch.zeros(programs, *twiddle.shape, dtype=x.dtype, device=x.device)
    _backward_kernel[(programs, stacks)](
        _real(twiddle), _real(x), _real(grad), _real(grad_x), _real(partial), _real(scratch), batch, stacks, s_in, row_blocks,
        n, log_n, k, int(bool(increasing_stride)), TRANSPOSE=bool(transpose), COMPLEX=x.is_complex(), BLOCK_B=block_b, BLOCK_P=block_p)
    grad_twiddle = partial.sum(0) if programs > 1 else partial[0]
    if s_in == 1 and stacks > 1:
        grad_x = grad_x.sum(1, keepdim=True)
    return grad_twiddle, grad_x


FUSED_BACKENDS["cuda"] = (butterfly_forward_triton, butterfly_backward_triton)
