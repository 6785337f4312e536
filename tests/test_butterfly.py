"""Butterflies, BP, K-matrices, permutations (SPEC.md §1.3, §1.4, §4.14--4.16, §7.2, checks B2, B3,
B5, F2) and the parity of the fused CPU kernels with the pure-PyTorch reference."""

import math

import numpy as np

import pytest
import scipy.linalg
import torch

from structmat.families.bp import BP
from structmat.families.butterfly import Butterfly
from structmat.families.kaleidoscope import Kaleidoscope
from structmat.families.permutation import Permutation
from structmat.ops import use_reference
from structmat.ops.butterfly import (
    FUSED_BACKENDS,
    butterfly_multiply,
    butterfly_multiply_adjoint,
    butterfly_multiply_transpose,
    butterfly_to_dense,
)
from structmat.ops.permutation import bit_reversal_permutation, relaxed_permutation_multiply
from structmat.ops.twiddle import hadamard_twiddle

from helpers import rel_error

DTYPES = [torch.float32, torch.float64, torch.complex64, torch.complex128]


@pytest.fixture
def fresh_launch_caches():
    """Empty the kernels' per-configuration launch caches before and after a test that patches
    their sizing constants (not part of the cache keys; teardown runs before monkeypatch's undo)."""
    from structmat.ops import butterfly_cpu

    caches = (butterfly_cpu._forward_launch, butterfly_cpu._backward_rows_launch)
    for cache in caches:
        cache.cache_clear()
    yield
    for cache in caches:
        cache.cache_clear()


def random_twiddle(stacks, blocks, n, dtype=torch.float64):
    levels = n.bit_length() - 1
    return torch.randn(stacks, blocks, levels, n // 2, 2, 2, dtype=dtype) / math.sqrt(2)


# ------------------------------------------------------------------------------------ kernels
@pytest.mark.skipif("cpu" not in FUSED_BACKENDS, reason="Numba backend not available")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("increasing_stride", [True, False])
@pytest.mark.parametrize("transpose", [False, True])
def test_fused_cpu_matches_reference(dtype, increasing_stride, transpose):
    tol = 1e-10 if dtype in (torch.float64, torch.complex128) else 1e-5
    op = butterfly_multiply_transpose if transpose else butterfly_multiply
    # the row-layout forward runs from N = T on (16 float32 / complex64, 8 float64 / complex128
    # features a vector; complex rows block-planar): N = 16 is one run of small strides, N = 32
    # with 3 butterflies mixes runs and lone factors of stride 16, N >= 64 radix-4 steps; batches
    # off the block grid leave partial blocks; the backward from N = T (complex) or 8 T (real) on
    # (N = 128, 256: several butterflies and stacks, one input row shared by two stacks). Smaller
    # N run the transposed layout, where batches and sizes off the register-tile grid exercise
    # the element-by-element edges. (3, 1, 1, 16, 37) and (2, 2, 1, 8, 33): a one-step complex
    # backward (N = T) whose stacks share one input row
    cases = [(1, 1, 1, 16, 37), (3, 2, 3, 8, 5), (2, 3, 1, 32, 70), (1, 1, 1, 2, 1), (2, 1, 1, 64, 50), (1, 1, 1, 128, 64), (2, 1, 1, 64, 40), (2, 3, 1, 128, 21), (3, 2, 3, 256, 9), (3, 1, 1, 16, 37), (2, 2, 1, 8, 33)]
    for case in cases:
        _assert_fused_matches_reference(op, dtype, increasing_stride, *case, tol=tol)


def _assert_fused_matches_reference(op, dtype, increasing_stride, stacks, blocks, stacks_in, n, batch, tol):
    """Output and both gradients of ``op`` (fused backend) against the reference."""
    tw = random_twiddle(stacks, blocks, n, dtype).requires_grad_(True)
    x = torch.randn(batch, stacks_in, n, dtype=dtype).requires_grad_(True)
    g = torch.randn(batch, stacks, n, dtype=dtype)
    fused = op(tw, x, increasing_stride)
    grads = torch.autograd.grad(fused, (tw, x), g)
    with use_reference():
        ref = op(tw, x, increasing_stride)
        ref_grads = torch.autograd.grad(ref, (tw, x), g)
    assert rel_error(fused, ref) <= tol
    for a, b in zip(grads, ref_grads):
        assert rel_error(a, b) <= tol


@pytest.mark.skipif("cpu" not in FUSED_BACKENDS, reason="Numba backend not available")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("increasing_stride, transpose", [(True, False), (False, True), (False, False)])
def test_row_layout_forward_matches_reference_on_one_thread(dtype, increasing_stride, transpose):
    """One thread (the serial builds): whole and partial row blocks, several input stacks, two
    butterflies (runs of small strides back to back)."""
    import numba

    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        op = butterfly_multiply_transpose if transpose else butterfly_multiply
        for case in [(1, 1, 1, 64, 32), (3, 1, 3, 32, 48), (2, 2, 1, 32, 16), (1, 1, 1, 128, 100)]:
            _assert_fused_matches_reference(op, dtype, increasing_stride, *case, tol=1e-10 if dtype in (torch.float64, torch.complex128) else 1e-5)
    finally:
        numba.set_num_threads(threads)


@pytest.mark.skipif("cpu" not in FUSED_BACKENDS, reason="Numba backend not available")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("workers", [2, 3])
def test_fused_kernels_with_several_workers(dtype, workers, monkeypatch):
    """The parallel builds with 2 and 3 workers (the test workers run one Numba thread each, so the
    workers' chunks run one after another: chunk distribution, per-worker scratch and the summed
    twiddle partials are checked, not the threading), one and two stacks, plain and segmented
    backward plans, whole-tile and partial chunks."""
    from structmat.ops import butterfly_cpu

    monkeypatch.setattr(butterfly_cpu.numba, "get_num_threads", lambda: workers)
    tol = 1e-10 if dtype in (torch.float64, torch.complex128) else 1e-5
    # (3, 1, 3, 256, 300): several stacks with their own inputs, each with worker 0's planar
    # partials in its own stretch of the twiddle gradient; (1, 2, 1, 16, 600): all factors of small
    # stride (no planar slot) in long blocks (complex64: 256 rows), several workers
    for case in [(1, 1, 1, 64, 96), (2, 1, 1, 32, 70), (1, 1, 1, 256, 300), (1, 1, 1, 1024, 256), (1, 1, 1, 1024, 77), (2, 1, 1, 64, 512), (3, 1, 3, 256, 300), (1, 2, 1, 16, 600)]:
        _assert_fused_matches_reference(butterfly_multiply, dtype, True, *case, tol=tol)


@pytest.mark.skipif("cpu" not in FUSED_BACKENDS, reason="Numba backend not available")
def test_rows_plan_groups_the_schedule_into_register_runs_and_radix4_steps():
    from structmat.ops.butterfly_cpu import _rows_plan

    f32, f64, c64, c128 = (np.dtype(t) for t in (np.float32, np.float64, np.complex64, np.complex128))

    def steps(*args):
        kinds, h1, h2, starts, positions, *_, n_slots, _ = _rows_plan(*args)
        return [(int(k), int(a), int(b), int(e - s)) for k, a, b, s, e in zip(kinds, h1, h2, starts[:-1], starts[1:])], n_slots

    # one increasing butterfly, n = 1024, float32 (64 vectors a row): strides 1..8 in registers
    # (64 positions), then (16, 32), (64, 128), (256, 512) (16 positions of 4 vectors each)
    assert steps(1024, 1, True, False, f32) == ([(0, 1, 1, 64), (1, 16, 32, 16), (1, 64, 128, 16), (1, 256, 512, 16)], 6)
    decreasing = ([(1, 512, 256, 16), (1, 128, 64, 16), (1, 32, 16, 16), (0, 8, 8, 64)], 6)
    assert steps(1024, 1, False, False, f32) == steps(1024, 1, True, True, f32) == decreasing
    assert steps(1024, 1, True, False, f64)[0][:2] == [(0, 1, 1, 128), (1, 8, 16, 32)]  # 8 features a vector
    # two butterflies at n = 32: the repeated stride 16 runs alone twice (1 position: the low half)
    assert steps(32, 2, True, False, f32) == ([(0, 1, 1, 2), (2, 16, 16, 1), (2, 16, 16, 1), (0, 8, 8, 2)], 2)
    kinds, h1, h2, starts, positions, strides, offsets, slots, low_slots, _, n_low = _rows_plan(64, 1, True, False, f32)
    # the radix-4 step (16, 32) at feature 0: pairs 0 and 16 (features 0, 32) of stride 16, 0 and 16
    # (features 0, 16) of stride 32, in planar slots 0 and 1 (planes of N / 2 = 32)
    assert positions[starts[1]].tolist() == [0, 0, 16, 4 * 32 + 0, 4 * 32 + 16]
    # the run at feature 16: its blocks from pair 8 on; gradients in low slots 0..3 (planes of 32 x 4)
    assert positions[starts[0] + 1].tolist() == [16, offsets[0] + 8 * 4, offsets[1] - offsets[0], 8 * 4, 32 * 4]
    assert low_slots.tolist() == [0, 1, 2, 3, -1, -1] and n_low == 4
    # complex rows: the plan of their real parts' dtype (T real parts, then T imaginary parts)
    assert steps(1024, 1, True, False, c64) == steps(1024, 1, True, False, f32)
    assert steps(256, 2, False, True, c128) == steps(256, 2, False, True, f64)
    assert _rows_plan(8, 1, True, False, f32) is None and _rows_plan(8, 1, True, False, c64) is None  # N below one vector
    assert _rows_plan(8, 1, True, False, f64) is not None


@pytest.mark.skipif("cpu" not in FUSED_BACKENDS, reason="Numba backend not available")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex128])
@pytest.mark.parametrize("workers", [1, 3])
def test_fused_backward_of_a_gradient_broadcast_over_the_batch(dtype, workers, monkeypatch):
    """A gradient broadcast over the batch (stride 0; the row layout reads its one row for every
    row): autograd hands the backend ``sum()``'s expanded gradient as it is, and the backend's
    result matches the reference, over several blocks and workers."""
    from structmat.ops import butterfly_cpu

    monkeypatch.setattr(butterfly_cpu.numba, "get_num_threads", lambda: workers)
    batch = 300
    plan = butterfly_cpu._backward_rows_launch(256, 1, True, False, dtype, 2, 1, batch, workers)  # the row layout's
    assert plan[1][1][0] == workers and batch > 2 * plan[3][-1]  # blocks and workers this test covers
    tw = random_twiddle(2, 1, 256, dtype).requires_grad_(True)
    x = torch.randn(batch, 1, 256, dtype=dtype).requires_grad_(True)
    row = torch.randn(1, 2, 256, dtype=dtype)
    forward, backward = FUSED_BACKENDS["cpu"]
    seen = []

    def recording_backward(twiddle, x, grad, *args):
        seen.append(grad.stride(0))
        return backward(twiddle, x, grad, *args)

    monkeypatch.setitem(FUSED_BACKENDS, "cpu", (forward, recording_backward))
    loss = (lambda y: y.sum()) if not dtype.is_complex else (lambda y: y.real.sum())
    grads = torch.autograd.grad(loss(butterfly_multiply(tw, x)), (tw, x))
    assert seen == [0] or dtype.is_complex  # complex: the real part's gradient is a new tensor
    with use_reference():
        ref_grads = torch.autograd.grad(loss(butterfly_multiply(tw, x)), (tw, x))
    tol = 1e-10 if dtype != torch.float32 else 1e-5
    for a, b in zip(grads, ref_grads):
        assert rel_error(a, b) <= tol
    direct = butterfly_cpu.butterfly_backward_cpu(tw.detach(), x.detach(), row.expand(batch, 2, 256), True, False)
    with use_reference():
        ref_direct = torch.autograd.grad(butterfly_multiply(tw, x), (tw, x), row.expand(batch, 2, 256))
    for a, b in zip(direct, ref_direct):
        assert rel_error(a, b) <= tol


@pytest.mark.parametrize("dtype", DTYPES)
def test_frozen_twiddles_take_the_transposed_forward_for_the_input_gradient(dtype, monkeypatch):
    """Twiddles that need no gradient: the input gradient is one fused forward with the conjugate
    twiddles, transposition flipped (the recomputing backward never runs), and matches the
    reference -- one and several stacks, a shared input row, both orientations, sizes in both
    layouts."""
    forward, backward = FUSED_BACKENDS["cpu"]

    def no_backward(*args):
        raise AssertionError("the full backward ran for frozen twiddles")

    monkeypatch.setitem(FUSED_BACKENDS, "cpu", (forward, no_backward))
    tol = 1e-10 if dtype in (torch.float64, torch.complex128) else 1e-5
    for op in (butterfly_multiply, butterfly_multiply_transpose, butterfly_multiply_adjoint):
        for stacks, blocks, stacks_in, n, batch in [(1, 1, 1, 8, 5), (2, 2, 1, 64, 37), (3, 1, 3, 256, 20), (1, 1, 0, 64, 9)]:
            tw = random_twiddle(stacks, blocks, n, dtype)
            x = torch.randn(batch, *([stacks_in] if stacks_in else []), n, dtype=dtype).requires_grad_(True)  # 0: (B, N)
            g = torch.randn(batch, stacks, n, dtype=dtype)
            for loss in (lambda y: (y * g).real.sum(), lambda y: y.real.sum()):  # the latter: a broadcast gradient
                (grad_x,) = torch.autograd.grad(loss(op(tw, x, False)), x)
                with use_reference():
                    (ref,) = torch.autograd.grad(loss(op(tw, x, False)), x)
                assert rel_error(grad_x, ref) <= tol


@pytest.mark.skipif("cpu" not in FUSED_BACKENDS, reason="Numba backend not available")
def test_fused_backends_check_their_operands():
    """The kernels do no bounds checks: direct calls with mismatched dtypes or shapes get clear
    errors instead of reading or writing past a tensor."""
    from structmat.ops.butterfly_cpu import butterfly_backward_cpu, butterfly_forward_cpu

    tw = random_twiddle(1, 1, 16, torch.float64)
    with pytest.raises(TypeError, match="one dtype"):
        butterfly_forward_cpu(tw.float(), torch.randn(3, 1, 16, dtype=torch.float64), True, False)
    with pytest.raises(ValueError, match="^x: expected shape"):
        butterfly_forward_cpu(tw, torch.randn(4, 1, 8, dtype=torch.float64), True, False)
    with pytest.raises(ValueError, match="^x: expected shape"):
        butterfly_backward_cpu(tw, torch.randn(4, 2, 16, dtype=torch.float64), torch.randn(4, 1, 16, dtype=torch.float64), True, False)
    with pytest.raises(ValueError, match="^grad: expected shape"):
        butterfly_backward_cpu(tw, torch.randn(4, 1, 16, dtype=torch.float64), torch.randn(4, 1, 8, dtype=torch.float64), True, False)
    with pytest.raises(ValueError, match="^x: the fused CPU butterfly kernels take CPU tensors"):
        butterfly_forward_cpu(tw, torch.randn(4, 1, 16, dtype=torch.float64, device="meta"), True, False)


def test_half_precision_runs_the_reference():
    tw = random_twiddle(1, 1, 16, torch.float64)
    x = torch.randn(5, 16, dtype=torch.float64)
    for dtype in (torch.float16, torch.bfloat16):
        y = butterfly_multiply(tw.to(dtype), x.to(dtype))
        assert y.dtype == dtype
        assert rel_error(y, butterfly_multiply(tw, x)) <= 2e-2


@pytest.mark.skipif("cpu" not in FUSED_BACKENDS, reason="Numba backend not available")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex128])
@pytest.mark.parametrize("stacks", [1, 2])
def test_fused_backward_recomputes_in_segments_when_few_inputs_fit(dtype, stacks, monkeypatch):
    """A cache budget of three or four chunk buffers keeps 2 of the 3 step inputs: the lower
    segment is recomputed again; one stack keeps the chunk's input in the input gradient's rows.
    (The transposed-layout backward is called directly: every dtype at this N runs the row layout.)"""
    import numba

    from structmat.ops import butterfly_cpu

    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        n, batch = 256, 512  # large enough that the cache budget, not the memory cap, binds
        tw = random_twiddle(stacks, 1, n, dtype).requires_grad_(True)
        x = torch.randn(batch, 1, n, dtype=dtype).requires_grad_(True)
        chunk = min(batch, 2 * butterfly_cpu._backward_rows_multiple(x))  # segments: chunks of 1-2 iterations
        buffers = (1 if stacks == 1 else 2) + 2  # the adjoint, act[0] unless in grad_x, two inputs
        monkeypatch.setattr(butterfly_cpu, "BACKWARD_CHUNK_BYTES", buffers * chunk * n * x.element_size())
        _, planned_chunk, _, kept, x_in_grad = butterfly_cpu._backward_plan(tw, x, True, False)
        assert (planned_chunk, kept, x_in_grad) == (chunk, 2, stacks == 1)  # 2 of act[1 .. 3]
        g = torch.randn(batch, stacks, n, dtype=dtype)
        grads = (torch.empty_like(tw), torch.empty_like(x))
        butterfly_cpu._backward_transposed(tw.detach(), x.detach(), g, *grads, True, False)
    finally:
        numba.set_num_threads(threads)
    with use_reference():
        ref_grads = torch.autograd.grad(butterfly_multiply(tw, x), (tw, x), g)
    tol = 1e-10 if dtype != torch.float32 else 1e-5
    for a, b in zip(grads, ref_grads):
        assert rel_error(a, b) <= tol


@pytest.mark.skipif("cpu" not in FUSED_BACKENDS, reason="Numba backend not available")
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_fused_cpu_many_chunks_per_worker_and_reused_workspace(dtype, monkeypatch, fresh_launch_caches):
    """Small chunks and blocks: every worker runs several transposed-layout chunks (n = 4;
    float64's backward at n = 16) or row-layout blocks of 4 rows in its slice of the (reused)
    workspace."""
    from structmat.ops import butterfly_cpu

    for name, value in [("CHUNK_BYTES", 1), ("MIN_CHUNK", 8), ("BACKWARD_CHUNK_BYTES", 1), ("MIN_BACKWARD_CHUNK", 8), ("ROWS_BLOCK_BYTES", 1), ("ROWS_BACKWARD_BLOCK_BYTES", 1), ("ROWS_BACKWARD_BLOCK_MIN", 4)]:
        monkeypatch.setattr(butterfly_cpu, name, value)
    # the patched sizes reach the (cached) row-layout plans: blocks of 4 rows
    assert butterfly_cpu._backward_rows_launch(64, 1, True, False, dtype, 2, 1, 61, 2)[3][-1] == butterfly_cpu.ROWS_BLOCK_MIN
    for n, batch in [(64, 61), (16, 45), (4, 45), (64, 61)]:
        tw = random_twiddle(2, 1, n, dtype).requires_grad_(True)
        x = torch.randn(batch, 1, n, dtype=dtype).requires_grad_(True)
        g = torch.randn(batch, 2, n, dtype=dtype)
        fused = butterfly_multiply(tw, x)
        grads = torch.autograd.grad(fused, (tw, x), g)
        with use_reference():
            ref = butterfly_multiply(tw, x)
            ref_grads = torch.autograd.grad(ref, (tw, x), g)
        assert rel_error(fused, ref) <= 1e-10
        for a, b in zip(grads, ref_grads):
            assert rel_error(a, b) <= 1e-10


def test_workspace_set_reuses_views_until_a_slot_is_replaced(monkeypatch):
    """The backward's buffers come as one remembered set of views into the per-slot workspaces:
    the same arrays on the next call; a larger request that replaces a slot's array forgets every
    remembered set (none keeps an old array alive); beyond ``WORKSPACE_MAX_BYTES`` nothing is
    remembered (those are allocated per call)."""
    import threading

    from structmat.ops import butterfly_cpu
    monkeypatch.setattr(butterfly_cpu, "_workspaces", threading.local())  # this test's own caches
    dtype, slots = np.dtype(np.float32), ("a", "b")
    shapes = ((2, 8), (3, 4))
    first = butterfly_cpu._workspace_set(shapes, dtype, slots)
    assert [a.shape for a in first] == [(2, 8), (3, 4)]
    assert all(a is b for a, b in zip(first, butterfly_cpu._workspace_set(shapes, dtype, slots)))
    butterfly_cpu._workspace((1000,), dtype, "b")  # replaces slot b's array
    assert not butterfly_cpu._workspaces.views
    again = butterfly_cpu._workspace_set(shapes, dtype, slots)
    assert np.shares_memory(again[0], first[0]) and not np.shares_memory(again[1], first[1])
    assert np.shares_memory(again[1], butterfly_cpu._workspace((12,), dtype, "b"))
    monkeypatch.setattr(butterfly_cpu, "WORKSPACE_MAX_BYTES", 64)
    big = ((2, 8), (40,))
    assert butterfly_cpu._workspace_set(big, dtype, slots)[1] is not butterfly_cpu._workspace_set(big, dtype, slots)[1]


def test_reference_environment_is_read_at_import_and_on_reset(monkeypatch):
    """``STRUCTMAT_REFERENCE`` is read once (not per op) and again by ``set_reference(None)``."""
    from structmat.ops import backend

    monkeypatch.setattr(backend, "_ENV_FORCED", backend._ENV_FORCED)  # restored afterwards
    monkeypatch.setattr(backend, "_FORCED", None)
    monkeypatch.setenv("STRUCTMAT_REFERENCE", "1")
    backend.set_reference(None)
    assert backend.reference_forced() and backend.choose(torch.ones(2)) == "reference"
    monkeypatch.setenv("STRUCTMAT_REFERENCE", "0")
    assert backend.reference_forced()  # not read again per call
    backend.set_reference(None)
    assert not backend.reference_forced() and backend.choose(torch.ones(2)) in ("cpu", "reference")
    with backend.use_reference():
        assert backend.reference_forced()
    assert not backend.reference_forced()


def test_cpu_tensors_under_a_default_device_context():
    """``with torch.device("meta")`` (a default device for factory calls) must not redirect the
    kernels' CPU results: the forward and backward still run on the CPU tensors they were given."""
    tw = random_twiddle(1, 1, 16).requires_grad_(True)
    x = torch.randn(3, 16, dtype=torch.float64)
    expected = butterfly_multiply(tw, x)
    with torch.device("meta"):
        y = butterfly_multiply(tw, x)
        y.square().sum().backward()
    assert y.device.type == "cpu" and rel_error(y, expected) <= 1e-12
    assert tw.grad.device.type == "cpu" and rel_error(tw.grad, torch.autograd.grad(expected.square().sum(), tw)[0]) <= 1e-12


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("stacks, stacks_in", [(1, 1), (2, 1), (2, 2)])
def test_torch_func_vmap_over_inputs_and_twiddles(dtype, stacks, stacks_in, monkeypatch):
    """``torch.func.vmap`` over the inputs (they join the batch of rows), the twiddles (they join
    the stacks) or both, at batch dimension 0 or 1, runs the fused kernels and matches the
    reference applied one by one."""
    if "cpu" in FUSED_BACKENDS:
        forward, backward = FUSED_BACKENDS["cpu"]
        calls = []
        monkeypatch.setitem(FUSED_BACKENDS, "cpu", (lambda *args: calls.append(1) or forward(*args), backward))
    n, size = 16, 5
    tw, tws = random_twiddle(stacks, 1, n, dtype), torch.stack([random_twiddle(stacks, 1, n, dtype) for _ in range(size)])
    x, xs = torch.randn(3, stacks_in, n, dtype=dtype), torch.randn(size, 3, stacks_in, n, dtype=dtype)
    for twiddles, inputs, in_dims in [(tw, xs, (None, 0)), (tws, x, (0, None)), (tws, xs, (0, 0)), (tw, xs.movedim(0, 1), (None, 1))]:
        y = torch.func.vmap(butterfly_multiply, in_dims=in_dims)(twiddles, inputs)
        transposed = torch.func.vmap(lambda t, v: butterfly_multiply_transpose(t, v, False), in_dims=in_dims)(twiddles, inputs)
        with use_reference():
            assert rel_error(transposed, torch.func.vmap(lambda t, v: butterfly_multiply_transpose(t, v, False), in_dims=in_dims)(twiddles, inputs)) <= 1e-12
        with use_reference():
            expected = torch.stack([
                butterfly_multiply(twiddles[i] if in_dims[0] == 0 else twiddles, inputs.select(in_dims[1], i) if in_dims[1] is not None else inputs)
                for i in range(size)
            ])
        assert rel_error(y, expected) <= 1e-12
    assert "cpu" not in FUSED_BACKENDS or len(calls) == 8
    # an empty vmapped batch: empty results of the right shape
    assert torch.func.vmap(butterfly_multiply, in_dims=(None, 0))(tw, xs[:0]).shape == (0, 3, stacks, n)
    assert torch.func.vmap(butterfly_multiply, in_dims=(0, None))(tws[:0], x).shape == (0, 3, stacks, n)


def test_per_sample_gradients_with_vmap_of_grad():
    """Per-sample twiddle gradients, ``vmap(grad(loss))`` over the samples, and the gradient of a
    vmapped forward match the reference."""
    n, size = 16, 6
    tw, xs = random_twiddle(1, 2, n), torch.randn(size, n, dtype=torch.float64)

    def loss(t, v):
        return butterfly_multiply(t, v.unsqueeze(0)).square().sum()

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(tw, xs)
    with use_reference():
        expected = torch.stack([torch.func.grad(loss)(tw, xs[i]) for i in range(size)])
    assert per_sample.shape == (size, *tw.shape) and rel_error(per_sample, expected) <= 1e-12
    twg = tw.clone().requires_grad_(True)
    torch.func.vmap(lambda v: butterfly_multiply(twg, v.unsqueeze(0)))(xs).square().sum().backward()
    assert rel_error(twg.grad, expected.sum(0)) <= 1e-12


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")  # torch's forward-AD internals
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("transpose", [False, True])
def test_forward_mode_ad_matches_the_reference(dtype, transpose):
    """Forward-mode AD through the op -- eager dual tensors (also under ``no_grad``, which does not
    turn forward AD off), ``torch.func.jvp``, ``jacfwd`` and second order ``jacfwd(jacfwd)``,
    ``jvp`` of ``jvp`` (real dtypes: jacfwd takes no complex inputs) -- gives the reference's
    tangents, for tangents of the twiddles, the input, or both."""
    from torch.autograd import forward_ad

    op = butterfly_multiply_transpose if transpose else butterfly_multiply
    tw, x = random_twiddle(2, 2, 16, dtype), torch.randn(3, 1 if not transpose else 2, 16, dtype=dtype)
    dtw, dx = torch.randn_like(tw), torch.randn_like(x)
    with use_reference():
        _, expected = torch.func.jvp(op, (tw, x), (dtw, dx))
    with forward_ad.dual_level():
        tangent = forward_ad.unpack_dual(op(forward_ad.make_dual(tw, dtw), forward_ad.make_dual(x, dx))).tangent
        with torch.no_grad():
            no_grad = forward_ad.unpack_dual(op(forward_ad.make_dual(tw, dtw), forward_ad.make_dual(x, dx))).tangent
    assert rel_error(tangent, expected) <= 1e-12 and rel_error(no_grad, expected) <= 1e-12
    assert rel_error(torch.func.jvp(op, (tw, x), (dtw, dx))[1], expected) <= 1e-12
    if not dtype.is_complex:
        # (a smaller butterfly: jacfwd(jacfwd) builds the whole Hessian, 96 x 96 here)
        tw, x = random_twiddle(2, 1, 8, dtype), torch.randn(3, 1 if not transpose else 2, 8, dtype=dtype)
        dtw = torch.randn_like(tw)

        def second(t):  # second directional derivative along dtw
            return torch.func.jvp(lambda u: torch.func.jvp(lambda w: op(w, x), (u,), (dtw,))[1], (t,), (dtw,))[1]

        def in_twiddle(t):
            return op(t, x).square().sum()

        for f in (second, lambda t: torch.func.jacfwd(torch.func.jacfwd(in_twiddle))(t)):
            got = f(tw)
            with use_reference():
                want = f(tw)
            assert want.abs().max() > 1e-3 and rel_error(got, want) <= 1e-10


def test_compiled_training_step_and_vmap_have_no_graph_break(monkeypatch):
    """``torch.compile(fullgraph=True)`` of a training step (twiddles that require grad) traces the
    custom ops -- an ``autograd.Function`` with a custom forward-mode rule would be refused -- and
    its gradient runs the fused backward; a compiled ``vmap`` runs the custom op's vmap rule: one
    fused forward for the whole batch, not one per element."""
    forward, backward = FUSED_BACKENDS["cpu"]
    calls = {"forward": 0, "backward": 0}

    def counting(name, function):
        def counted(*args):
            calls[name] += 1
            return function(*args)

        return counted

    monkeypatch.setitem(FUSED_BACKENDS, "cpu", (counting("forward", forward), counting("backward", backward)))
    tw = random_twiddle(1, 1, 16).requires_grad_(True)
    x = torch.randn(4, 16, dtype=torch.float64)
    step = torch.compile(lambda t, v: butterfly_multiply(t, v).square().sum(), backend="aot_eager", fullgraph=True)
    step(tw, x).backward()
    with use_reference():
        expected = torch.autograd.grad(butterfly_multiply(tw, x).square().sum(), tw)[0]
    assert calls["backward"] == 1 and rel_error(tw.grad, expected) <= 1e-12
    xs = torch.randn(5, 4, 16, dtype=torch.float64)
    calls["forward"] = 0
    batched = torch.compile(torch.func.vmap(butterfly_multiply, in_dims=(None, 0)), backend="aot_eager", fullgraph=True)
    y = batched(tw.detach(), xs)
    with use_reference():
        assert rel_error(y, torch.stack([butterfly_multiply(tw.detach(), v) for v in xs])) <= 1e-12
    assert calls["forward"] == 1


def test_nested_torch_func_grad_matches_the_reference():
    """Second derivatives through the custom op (``torch.func.grad`` of ``torch.func.grad``): the
    fused backward is itself differentiated, through the reference's vector-Jacobian product (the
    kernels have no derivative; dropping it once returned zero second derivatives)."""
    tw = random_twiddle(1, 1, 16)
    x = torch.randn(3, 16, dtype=torch.float64)

    def curvature(t):
        return torch.func.grad(lambda u: butterfly_multiply(u, x).square().sum())(t).square().sum()

    second = torch.func.grad(curvature)(tw)
    with use_reference():
        expected = torch.func.grad(curvature)(tw)
    assert expected.abs().max() > 1 and rel_error(second, expected) <= 1e-10


def _counting_backward(monkeypatch):
    """Counts the calls of the CPU backend's fused backward kernel."""
    forward, backward = FUSED_BACKENDS["cpu"]
    calls = []

    def counted(*args):
        calls.append(args[1].shape)
        return backward(*args)

    monkeypatch.setitem(FUSED_BACKENDS, "cpu", (forward, counted))
    return calls


@pytest.mark.skipif("cpu" not in FUSED_BACKENDS, reason="Numba backend not available")
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("stacks, stacks_in, transpose", [(1, 1, False), (3, 1, True), (2, 2, False)])
def test_torch_func_gradients_run_the_fused_backward(dtype, stacks, stacks_in, transpose, monkeypatch):
    """First-order gradients under ``torch.func.grad`` (which always builds the graph) run the
    fused backward kernel, not the reference's, and match the reference; a top-level
    ``torch.func.vjp`` function called with ``create_graph=False`` runs it too. Eager
    ``create_graph=True`` (and a top-level ``vjp`` function, which builds the graph by default: the
    gradient may be differentiated) builds the reference's graph instead."""
    calls = _counting_backward(monkeypatch)
    op = butterfly_multiply_transpose if transpose else butterfly_multiply
    tw = random_twiddle(stacks, 2, 16, dtype)
    x = torch.randn(5, stacks_in, 16, dtype=dtype)
    g = torch.randn(5, stacks, 16, dtype=dtype)

    def loss(t, v):
        return op(t, v, False).abs().square().sum()

    loss_grad = torch.func.grad(loss, argnums=(0, 1))(tw, x)
    assert len(calls) == 1
    _, vjp = torch.func.vjp(lambda t, v: op(t, v, False), tw, x)
    vjp_no_graph = vjp(g, create_graph=False)
    assert len(calls) == 2
    vjp_graph = vjp(g)
    twg, xg = tw.clone().requires_grad_(), x.clone().requires_grad_()
    graph = torch.autograd.grad(op(twg, xg, False), (twg, xg), g, create_graph=True)
    assert len(calls) == 2 and all(t.requires_grad for t in graph)
    with use_reference():
        expected_loss_grad = torch.func.grad(loss, argnums=(0, 1))(tw, x)
        _, vjp = torch.func.vjp(lambda t, v: op(t, v, False), tw, x)
        expected = vjp(g)
    for got, want in [*zip(loss_grad, expected_loss_grad), *zip(vjp_no_graph, expected), *zip(vjp_graph, expected), *zip(graph, expected)]:
        assert got.shape == want.shape and rel_error(got.detach(), want) <= 1e-12


@pytest.mark.skipif("cpu" not in FUSED_BACKENDS, reason="Numba backend not available")
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("stacks, stacks_in", [(1, 1), (3, 1), (2, 2)])
@pytest.mark.parametrize("in_dims", [(None, 0, 0), (0, None, 0), (0, 0, 0), (None, None, 0), (1, 2, 1)])
def test_vmap_of_the_fused_backward_is_one_call_with_problems_as_stacks(dtype, stacks, stacks_in, in_dims, monkeypatch):
    """``vmap`` of a vector-Jacobian product (per-sample gradients) runs one fused backward in
    which every vmapped problem is a stack of its own (twiddle and input gradients per problem),
    for any combination of batched twiddles, inputs and output gradients."""
    calls = _counting_backward(monkeypatch)
    size, n, rows = 4, 8, 3
    shapes = [(stacks, 2, 3, n // 2, 2, 2), (rows, stacks_in, n), (rows, stacks, n)]
    args = []
    for shape, dim in zip(shapes, in_dims):
        if dim is not None:
            shape = (*shape[:dim], size, *shape[dim:])
        args.append(torch.randn(shape, dtype=dtype))

    def vjp(t, v, g):
        return torch.func.vjp(lambda a, b: butterfly_multiply(a, b, False), t, v)[1](g)

    got = torch.func.vmap(vjp, in_dims=in_dims)(*args)
    assert len(calls) == 1 and calls[0][1] == size * stacks  # one call; problems x stacks as stacks
    with use_reference():
        for i in range(size):
            expected = vjp(*(a if d is None else a.select(d, i) for a, d in zip(args, in_dims)))
            for got_part, want in zip(got, expected):
                assert got_part.shape[1:] == want.shape and rel_error(got_part[i], want) <= 1e-12
    empty = [a if d is None else a.narrow(d, 0, 0) for a, d in zip(args, in_dims)]
    assert [t.shape[0] for t in torch.func.vmap(vjp, in_dims=in_dims)(*empty)] == [0, 0]


@pytest.mark.skipif("cpu" not in FUSED_BACKENDS, reason="Numba backend not available")
def test_vmap_rules_split_batches_beyond_the_stack_limit(monkeypatch):
    """The vmap rules fold vmapped problems into the stacks; beyond ``MAX_STACKS`` (the Triton
    grid's limit) they split the batch into several fused calls, each within the limit, with the
    same results."""
    import structmat.ops.butterfly as module

    tw = torch.randn(7, 3, 1, 3, 4, 2, 2, dtype=torch.float64)  # 7 problems x 3 stacks
    x = torch.randn(7, 2, 1, 8, dtype=torch.float64)
    g = torch.randn(7, 2, 3, 8, dtype=torch.float64)

    def vjp(t, v, w):
        return torch.func.vjp(lambda a, b: butterfly_multiply(a, b, True), t, v)[1](w)

    expected_forward = torch.func.vmap(butterfly_multiply)(tw, x)
    expected_backward = torch.func.vmap(vjp)(tw, x, g)
    forward, backward = FUSED_BACKENDS["cpu"]
    seen = []

    def counted(function):
        def call(twiddle, *args):
            seen.append(twiddle.shape[0])
            return function(twiddle, *args)

        return call

    monkeypatch.setitem(FUSED_BACKENDS, "cpu", (counted(forward), counted(backward)))
    monkeypatch.setattr(module, "MAX_STACKS", 6)  # two problems per call
    assert rel_error(torch.func.vmap(butterfly_multiply)(tw, x), expected_forward) <= 1e-15
    for got, want in zip(torch.func.vmap(vjp)(tw, x, g), expected_backward):
        assert rel_error(got, want) <= 1e-15
    assert max(seen) <= 6 and len(seen) >= 8  # 4 forward calls, 4 backward calls, and the vjp's forwards


@pytest.mark.skipif("cpu" not in FUSED_BACKENDS, reason="Numba backend not available")
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_gradcheck_of_the_fused_backward_under_torch_func(dtype, monkeypatch):
    """Second derivatives of the fused path: the map ``(twiddle, x, grad) -> (grad_twiddle,
    grad_x)`` that ``torch.func.grad`` computes with the fused kernel is differentiated through the
    reference's vector-Jacobian product; ``gradcheck`` checks that derivative numerically (with
    eager ``create_graph``, ``gradgradcheck``, the reference's graph), and the fused kernel ran."""
    calls = _counting_backward(monkeypatch)
    tw = random_twiddle(2, 2, 8, dtype).requires_grad_(True)
    x = torch.randn(3, 1, 8, dtype=dtype).requires_grad_(True)
    g = torch.randn(3, 2, 8, dtype=dtype).requires_grad_(True)

    def first_order(t, v, w):  # the vector-Jacobian product (w^* y is linear in y)
        return torch.func.grad(lambda a, b: (w.conj() * butterfly_multiply(a, b, True)).sum().real, argnums=(0, 1))(t, v)

    assert torch.autograd.gradcheck(first_order, (tw, x, g), fast_mode=True)
    assert len(calls) > 0
    assert torch.autograd.gradgradcheck(lambda t, v: butterfly_multiply(t, v, True), (tw, x), fast_mode=True)


@pytest.mark.skipif("cpu" not in FUSED_BACKENDS, reason="Numba backend not available")
def test_fused_kernels_leave_storage_resizable():
    """FSDP2 frees unsharded parameters by resizing their storage to zero: the kernels must not pin
    it (``Tensor.numpy()`` would)."""
    tw = random_twiddle(1, 1, 16, torch.float32).requires_grad_(True)
    x = torch.randn(5, 16).requires_grad_(True)
    butterfly_multiply(tw, x).sum().backward()
    butterfly_multiply_transpose(tw, x).sum().backward()
    for tensor in (tw, x):
        tensor.untyped_storage().resize_(0)
        assert tensor.untyped_storage().nbytes() == 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_gradcheck_both_backends(dtype):
    tw = random_twiddle(2, 2, 4, dtype).requires_grad_(True)
    x = torch.randn(2, 1, 4, dtype=dtype).requires_grad_(True)
    for reference in (False, True):
        with use_reference(reference):
            assert torch.autograd.gradcheck(lambda t, v: butterfly_multiply(t, v, False), (tw, x), fast_mode=True)
            assert torch.autograd.gradcheck(lambda t, v: butterfly_multiply_adjoint(t, v, True), (tw, x), fast_mode=True)


def test_torch_func_grad_and_compile():
    tw = random_twiddle(1, 1, 16)
    x = torch.randn(4, 16, dtype=torch.float64)
    grad = torch.func.grad(lambda t: butterfly_multiply(t, x).square().sum())(tw)
    with use_reference():
        expected = torch.func.grad(lambda t: butterfly_multiply(t, x).square().sum())(tw)
    assert rel_error(grad, expected) <= 1e-12
    compiled = torch.compile(lambda t, v: butterfly_multiply(t, v), backend="aot_eager", fullgraph=True)
    assert rel_error(compiled(tw, x), butterfly_multiply(tw, x)) <= 1e-12


@pytest.mark.skipif("cpu" not in FUSED_BACKENDS, reason="Numba backend not available")
def test_tracing_sees_the_custom_ops():
    """Eager autograd calls the kernels directly; a tracer (dispatch mode) must still record the
    custom ops of the forward and of the backward, not the traced values as constants."""
    from torch.fx.experimental.proxy_tensor import make_fx

    tw = random_twiddle(1, 1, 8).requires_grad_(True)
    x = torch.randn(3, 8, dtype=torch.float64).requires_grad_(True)

    def loss_grads(t, v):
        return torch.autograd.grad(butterfly_multiply(t, v).square().sum(), (t, v))

    graph = make_fx(loss_grads)(tw, x)
    targets = {str(node.target) for node in graph.graph.nodes if node.op == "call_function"}
    assert {"structmat.butterfly_multiply.default", "structmat.butterfly_multiply_backward.default"} <= targets
    tw2, x2 = random_twiddle(1, 1, 8).requires_grad_(True), torch.randn(3, 8, dtype=torch.float64).requires_grad_(True)
    for a, b in zip(graph(tw2, x2), loss_grads(tw2, x2)):
        assert rel_error(a, b) <= 1e-12
    with torch.no_grad():  # inference calls the kernel directly only outside a tracer
        inference = make_fx(lambda t, v: butterfly_multiply(t, v))(tw, x)
    assert "structmat.butterfly_multiply.default" in {str(node.target) for node in inference.graph.nodes}
    assert rel_error(inference(tw2, x2), butterfly_multiply(tw2, x2)) <= 1e-12


@pytest.mark.skipif("cpu" not in FUSED_BACKENDS, reason="Numba backend not available")
def test_parameter_twiddles_take_the_eager_path():
    """The families pass their twiddle ``nn.Parameter`` straight to the op: eager training must use
    the direct ``autograd.Function`` (not the custom-op dispatch), with the reference's gradient."""
    tw = torch.nn.Parameter(random_twiddle(1, 1, 8))
    x = torch.randn(3, 8, dtype=torch.float64)
    y = butterfly_multiply(tw, x)
    assert type(y.grad_fn).__name__ == "_EagerFusedButterflyBackward"
    (grad,) = torch.autograd.grad(y.square().sum(), tw)
    with use_reference():
        (expected,) = torch.autograd.grad(butterfly_multiply(tw, x).square().sum(), tw)
    assert rel_error(grad, expected) <= 1e-12


@pytest.mark.parametrize("increasing_stride", [True, False])
def test_transpose_is_reversed_transposed_blocks(increasing_stride):
    """SPEC.md §1.4 / B11: E^T is the opposite-stride butterfly with transposed blocks, levels reversed."""
    tw = random_twiddle(1, 1, 16)
    dense = butterfly_to_dense(tw, increasing_stride)
    flipped = tw.flip(2).transpose(-1, -2)
    assert rel_error(butterfly_to_dense(flipped, not increasing_stride), dense.T) <= 1e-12
    y = torch.randn(3, 16, dtype=torch.float64)
    assert rel_error(butterfly_multiply_transpose(tw, y, increasing_stride)[:, 0], y @ dense) <= 1e-12


def test_bit_reversal_conjugation_lemma():
    """Check B3: P_br B_inc P_br = decreasing-stride butterfly with pair indices bit-reversed."""
    for n in (4, 16, 256):
        tw = random_twiddle(1, 1, n)
        br = bit_reversal_permutation(n)
        B = butterfly_to_dense(tw, True)
        conjugated = B[br][:, br]
        pairs = bit_reversal_permutation(n // 2) if n > 2 else torch.zeros(1, dtype=torch.long)
        dec = tw[:, :, :, pairs]
        assert rel_error(butterfly_to_dense(dec, False), conjugated) <= 1e-10


def test_hadamard_twiddles_give_scipy_hadamard():
    """Check B2 (exact, both stride orders)."""
    for n in (2, 8, 64):
        expected = torch.tensor(scipy.linalg.hadamard(n), dtype=torch.float64)
        for inc in (True, False):
            layer = Butterfly.from_twiddle(hadamard_twiddle(n)[None, None], increasing_stride=inc)
            assert torch.equal(layer.to_dense().detach(), expected)


def test_dft_init_and_bp():
    n = 16
    F = torch.fft.fft(torch.eye(n, dtype=torch.complex128), dim=0)
    br = bit_reversal_permutation(n)
    layer = Butterfly(n, n, init="fft", dtype=torch.complex128)
    assert rel_error(layer.to_dense()[:, br], F) <= 1e-12
    bp = BP(n, n, init="fft", permutation="bit_reversal", dtype=torch.complex128)
    assert rel_error(bp.to_dense(), F) <= 1e-12
    unitary = Butterfly(n, n, init="fft", orthogonal=True, dtype=torch.complex128)
    assert rel_error(unitary.to_dense()[:, br], F / math.sqrt(n)) <= 1e-12


# ------------------------------------------------------------------------------------ counts (B5)
def test_bench_butterfly_rows():
    """The benchmark's rows (tiny sizes): float32 rows for every batch and size, then complex64
    ones; timings and ratios positive, the memory column from the kernel's allocation plan."""
    from structmat.experiments.bench_butterfly import run

    rows = run(quick=True, sizes=[16, 64], batches=[2, 8])
    assert [(r["dtype"], r["batch"], r["n"]) for r in rows] == [
        ("float32", 2, 16), ("float32", 2, 64), ("float32", 8, 16), ("float32", 8, 64), ("complex64", 8, 16), ("complex64", 8, 64)
    ]
    for r in rows:
        assert r["forward_ms"] > 0 and r["fwd_bwd_given_grad_over_fwd"] > 0 and r["ratio_vs_fft"] > 0
        assert r["backward_extra_memory_x_input"] > 1  # at least the input gradient
    assert all(r["fwd_bwd_frozen_over_fwd"] > 0 and r["speedup_vs_reference"] > 0 for r in rows if r["dtype"] == "float32")


def test_parameter_and_flop_counts():
    for n in (4, 64, 1024):
        k = n.bit_length() - 1
        assert Butterfly(n, n, device="meta").num_parameters == 2 * n * k
        assert Butterfly(n, n, device="meta").flops() == 3 * n * k
        assert BP(n, n, permutation="identity", device="meta").num_parameters == 4 * (n - 1)
        for w, e in [(1, 1), (2, 2), (3, 4)]:
            K = Kaleidoscope(n, n, width=w, expansion=e, device="meta")
            assert (K.width, K.expansion) == (w, e)
            assert K.num_parameters == 4 * w * e * n * int(math.log2(e * n))
            assert K.flops() == 6 * w * e * n * int(math.log2(e * n))
    assert BP(16, 16, n_modules=2, device="meta").num_parameters == 2 * (4 * 15 + 3 * 3)


# ------------------------------------------------------------------------------------ orthogonal
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_orthogonal_parametrisation_stays_orthogonal(dtype):
    layer = Butterfly(16, 16, orthogonal=True, dtype=dtype)
    target = torch.randn(16, 16, dtype=dtype)
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    for _ in range(5):
        opt.zero_grad()
        loss = (layer.to_dense() - target).abs().square().sum()
        loss.backward()
        opt.step()
    W = layer.to_dense().detach()
    assert float((W @ W.conj().T - torch.eye(16, dtype=dtype)).abs().max()) <= 1e-12
    assert layer.num_parameters == (16 // 2) * 4 * (4 if dtype.is_complex else 1)


def test_from_dense_recovers_butterflies():
    for inc in (True, False):
        for dtype in (torch.float64, torch.complex128):
            W = Butterfly(16, 16, increasing_stride=inc, dtype=dtype).to_dense().detach()
            assert rel_error(Butterfly.from_dense(W, increasing_stride=inc).to_dense(), W) <= 1e-10


def test_kaleidoscope_from_twiddle_and_bbstar():
    tw = random_twiddle(1, 2, 8)
    K = Kaleidoscope.from_twiddle(tw, 8, 8)
    dec = Butterfly.from_twiddle(tw[:, :1], increasing_stride=False).to_dense()
    inc = Butterfly.from_twiddle(tw[:, 1:], increasing_stride=True).to_dense()
    assert rel_error(K.to_dense(), inc @ dec) <= 1e-12  # BB*: decreasing first, then increasing
    corner = Kaleidoscope.from_twiddle(random_twiddle(1, 4, 16), 5, 7)
    assert (corner.width, corner.expansion, corner.size) == (2, 2, 16)


# ------------------------------------------------------------------------------------ permutations
def test_permutation_layer():
    perm = torch.randperm(11)
    P = Permutation.from_perm(perm, dtype=torch.float64)
    x = torch.randn(3, 11, dtype=torch.float64)
    assert torch.equal(P(x), x[:, perm])
    assert torch.equal(P.transpose()(P(x)), x)
    assert torch.equal(P.to_dense(), torch.eye(11, dtype=torch.float64)[perm])
    assert P.num_parameters == 0


def test_relaxed_permutation_limits():
    """Check F2: all-a logits at +inf give P_br; {a, c} at level 0 give P' (SPEC.md §6.4)."""
    n = 16
    levels = n.bit_length() - 2
    index = torch.arange(n, dtype=torch.float64)[None]
    all_a = torch.tensor([[1.0, 0.0, 0.0]] * levels, dtype=torch.float64)
    assert torch.equal(relaxed_permutation_multiply(all_a, index)[0].long(), bit_reversal_permutation(n))
    ac = torch.zeros(levels, 3, dtype=torch.float64)
    ac[0, 0] = ac[0, 2] = 1.0
    p_prime = torch.cat([torch.arange(0, n, 2), torch.arange(n - 1, 0, -2)])
    assert torch.equal(relaxed_permutation_multiply(ac, index)[0].long(), p_prime)
    bp = BP(n, n, dtype=torch.float64)
    with torch.no_grad():
        bp.logits.fill_(-60.0)
        bp.logits[..., 0] = 60.0
    assert torch.equal(bp.hard_permutations()[0], bit_reversal_permutation(n))
    relaxed = relaxed_permutation_multiply(torch.rand(levels, 3, dtype=torch.float64), torch.eye(n, dtype=torch.float64))
    assert rel_error(relaxed.sum(0), torch.ones(n, dtype=torch.float64)) <= 1e-12  # doubly stochastic
    assert rel_error(relaxed.sum(1), torch.ones(n, dtype=torch.float64)) <= 1e-12


def test_relaxed_permutation_concentrates_when_trained():
    n = 16
    bp = BP(n, n, init="identity", dtype=torch.float64)
    bp.twiddle.requires_grad_(False)
    target = torch.eye(n, dtype=torch.float64)[bit_reversal_permutation(n)]
    opt = torch.optim.Adam([bp.logits], lr=0.2)
    for _ in range(150):
        opt.zero_grad()
        (bp.to_dense() - target).square().sum().backward()
        opt.step()
    probs = torch.sigmoid(bp.logits.detach())
    assert float(torch.minimum(probs, 1 - probs).max()) <= 0.01  # >= 0.99 mass on one choice per gate
    assert rel_error(bp.to_dense(), target) <= 0.05


# ------------------------------------------------------------------------------------ bad input
def test_bad_input():
    with pytest.raises(ValueError, match="width"):
        Kaleidoscope(8, 8, width=0)
    with pytest.raises(ValueError, match="expansion"):
        Kaleidoscope(8, 8, expansion=0)
    with pytest.raises(ValueError, match="init"):
        Butterfly(8, 8, init="xavier")
    with pytest.raises(ValueError, match="init"):
        Butterfly(8, 8, init="fft", dtype=torch.float32)
    with pytest.raises(ValueError, match="init"):
        Butterfly(8, 8, init="hadamard", orthogonal=True)
    with pytest.raises(ValueError, match="twiddle"):
        Butterfly.from_twiddle(torch.randn(1, 1, 3, 5, 2, 2))
    with pytest.raises(ValueError, match="twiddle"):
        Kaleidoscope.from_twiddle(torch.randn(1, 3, 3, 4, 2, 2), 8, 8)
    with pytest.raises(ValueError, match="twiddle"):
        butterfly_multiply(torch.randn(3, 4, 2, 2), torch.randn(2, 8))
    with pytest.raises(ValueError, match="x"):
        butterfly_multiply(random_twiddle(1, 1, 8), torch.randn(2, 7))
    with pytest.raises(ValueError, match="perm"):
        Permutation.from_perm([0, 0, 1])
    with pytest.raises(ValueError, match="perm"):
        Permutation.from_perm([0, 3, 1])
    with pytest.raises(ValueError, match="permutation"):
        BP(8, 8, permutation="random")
    with pytest.raises(ValueError, match="padded_size"):
        Butterfly(8, 8, padded_size=12)


def test_bp_logits_get_a_larger_learning_rate():
    import structmat as sm

    bp = BP(16, 16)
    rates = {p.shape: group["lr"] for group in sm.param_groups(torch.nn.Sequential(bp), lr=0.1) for p in group["params"]}
    assert rates == {bp.logits.shape: 1.0, bp.twiddle.shape: 0.1}


@pytest.mark.parametrize("n", [256, 1024, 4096, 16384])
@pytest.mark.parametrize("threads", [1, 2, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
def test_fused_backward_memory_within_three_inputs(n, threads, dtype, monkeypatch):
    """Issue 3: the fused backward's allocations (input gradient, per-thread scratch, twiddle
    partials) stay within 3x the input at batch 256, whatever the thread count."""
    butterfly_cpu = pytest.importorskip("structmat.ops.butterfly_cpu")
    monkeypatch.setattr(butterfly_cpu.numba, "get_num_threads", lambda: threads)
    levels = n.bit_length() - 1
    twiddle = torch.empty(1, 1, levels, n // 2, 2, 2, device="meta", dtype=dtype)
    x = torch.empty(256, 1, n, device="meta", dtype=dtype)
    extra = butterfly_cpu.backward_extra_bytes(twiddle, x)
    assert extra <= 3 * x.numel() * x.element_size()


def test_row_backward_drops_workers_to_stay_within_the_memory_cap(monkeypatch):
    """n = 16384 (a twiddle of 1.75 MiB against 64 KiB rows): beyond the twiddle gradient (which
    holds worker 0's planar partials) and the planar coefficients, every worker takes its block
    buffers and the gradients of the small-stride runs, every extra worker a planar partial (1.25
    MiB). Blocks shrink from 8 to 4 rows before workers are dropped: at batch 96 two workers fit
    under the cap (2.95x the input) with 8 rows, three with 4; at batch 64 two with 4. Small
    batches get fewer rows per block instead: batch 32 fits in blocks of one row (2.9x), n = 1024,
    batch 32 in blocks of 4 rows."""
    from structmat.ops import butterfly_cpu
    n, levels = 16384, 14
    twiddle = torch.empty(1, 1, levels, n // 2, 2, 2, device="meta")
    for batch, most, rows in [(96, 3, {1: 8, 2: 8, 3: 4, 4: 4}), (64, 2, {1: 8, 2: 4, 3: 4, 4: 4}), (32, 1, dict.fromkeys(range(1, 5), 1))]:
        x = torch.empty(batch, 1, n, device="meta")
        for threads in (1, 2, 3, 4):
            monkeypatch.setattr(butterfly_cpu.numba, "get_num_threads", lambda: threads)
            launch = butterfly_cpu._backward_rows_launch(n, 1, True, False, torch.float32, 1, 1, batch, threads)
            assert (launch[1][1][0], launch[3][-1]) == (min(threads, most), rows[threads])
            assert butterfly_cpu.backward_extra_bytes(twiddle, x) <= butterfly_cpu.BACKWARD_EXTRA_X_INPUT * x.numel() * x.element_size()
    small = torch.empty(32, 1, 1024, device="meta")
    assert butterfly_cpu._backward_rows_launch(1024, 1, True, False, torch.float32, 1, 1, 32, 2)[3][-1] == 4
    # small N: below the forward's block (32 rows at n = 256) workers are dropped first
    launch = butterfly_cpu._backward_rows_launch(256, 1, True, False, torch.float32, 1, 1, 64, 2)
    assert (launch[1][1][0], launch[3][-1]) == (1, 32)
    assert butterfly_cpu.backward_extra_bytes(torch.empty(1, 1, 10, 512, 2, 2, device="meta"), small) <= 3 * small.numel() * small.element_size()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64])
@pytest.mark.parametrize("broadcast", [False, True])
def test_row_backward_leaves_its_inputs_alone(dtype, broadcast, monkeypatch, fresh_launch_caches):
    """The row backward writes only its results: not ``x``, ``twiddle`` or the output gradient (the
    walk back overwrites its own buffers), also where the real row layout runs one step (N = T,
    reachable with ``ROWS_BACKWARD_MIN_VECTORS`` patched to 1) for stacks sharing one input row
    and a gradient broadcast over the batch; and it matches the reference there."""
    from structmat.ops import butterfly_cpu

    monkeypatch.setattr(butterfly_cpu, "ROWS_BACKWARD_MIN_VECTORS", 1)
    _, backward = FUSED_BACKENDS["cpu"]
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for n, stacks, stacks_in in [(16, 3, 1), (16, 2, 2), (256, 2, 1)]:
        assert butterfly_cpu._backward_rows_launch(n, 1, True, False, dtype, stacks, stacks_in, 40, 2) is not None
        tw = random_twiddle(stacks, 1, n, dtype)
        x = torch.randn(40, stacks_in, n, dtype=dtype)
        g = torch.randn(1 if broadcast else 40, stacks, n, dtype=dtype).expand(40, -1, -1)
        copies = [t.clone() for t in (tw, x, g)]
        grad_tw, grad_x = backward(tw, x, g, True, False)
        for t, copy in zip((tw, x, g), copies):
            assert torch.equal(t, copy)
        twr, xr = tw.clone().requires_grad_(True), x.clone().requires_grad_(True)
        with use_reference():
            ref = torch.autograd.grad(butterfly_multiply(twr, xr), (twr, xr), g)
        assert rel_error(grad_tw, ref[0]) <= tol and rel_error(grad_x, ref[1]) <= tol


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_double_backward_matches_the_reference(dtype):
    """A gradient penalty (``create_graph=True``) through the fused eager path gives the reference's
    second-order gradients (the fused backward's derivative is the reference VJP's)."""
    g = torch.Generator().manual_seed(3)
    twiddle = torch.randn(1, 1, 5, 16, 2, 2, generator=g, dtype=dtype)
    x = torch.randn(6, 32, generator=g, dtype=dtype)

    def penalty_gradient(reference: bool):
        tw, xx = twiddle.clone().requires_grad_(), x.clone().requires_grad_()
        with use_reference(reference):
            y = butterfly_multiply(tw, xx)
            (gx,) = torch.autograd.grad(y.abs().square().sum(), xx, create_graph=True)
            return torch.autograd.grad(gx.abs().square().sum(), tw)[0]

    fused, reference = penalty_gradient(False), penalty_gradient(True)
    assert float(reference.abs().max()) > 0 and rel_error(fused, reference) <= 1e-10
