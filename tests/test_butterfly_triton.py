"""The Triton GPU backend of the butterfly op (structmat.ops.butterfly_triton) against the
reference (DESIGN.md §4: every fast kernel has a parity test).

With a CUDA device the kernels run compiled on it; without one they run under Triton's
interpreter (``TRITON_INTERPRET=1``) on CPU tensors, so the kernels' logic is checked on every
machine. The tests of the op's dispatch to the GPU backend need a CUDA device.
"""

import itertools
import os

import pytest
import torch

from structmat.core import registry
from structmat.ops import butterfly as bf
from structmat.ops import use_reference

from helpers import rel_error

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"

if not ON_GPU:
    # Triton reads the variable when its kernels are defined and again while it interprets them;
    # it stays set for this test process (torch's CPU compiler does not use Triton)
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton", reason="Triton is not installed (the dev extra installs it on Linux)")
from structmat.ops import butterfly_triton as bt  # noqa: E402

needs_gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device (the check runs where one is present)")

TOL = {torch.float32: 1e-5, torch.complex64: 1e-5, torch.float64: 1e-12, torch.complex128: 1e-12}

# (N, stacks, input stacks, n_blocks, batch): sizes from N = 2, several rows per program and
# ragged last row blocks, one input row shared by several stacks, two butterflies per stack
GEOMETRIES = [(2, 1, 1, 1, 3), (8, 2, 1, 2, 5), (16, 3, 3, 1, 4), (64, 1, 1, 2, 17), (256, 2, 2, 1, 9)]


def _twiddle_and_input(n, stacks, s_in, n_blocks, batch, dtype):
    tw = torch.randn(stacks, n_blocks, n.bit_length() - 1, n // 2, 2, 2, dtype=dtype, device=DEVICE)
    x = torch.randn(batch, s_in, n, dtype=dtype, device=DEVICE)
    return tw, x


def _reference(tw, x, grad, increasing, transpose):
    twr, xr = tw.clone().requires_grad_(), x.clone().requires_grad_()
    y = bf.butterfly_multiply_reference(twr, xr, increasing, transpose)
    y.backward(grad)
    return y.detach(), twr.grad, xr.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64, torch.complex128])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "N{}-S{}-in{}-K{}-B{}".format(*g))
def test_forward_and_backward_match_reference(dtype, geometry):
    for increasing, transpose in itertools.product([True, False], [False, True]):
        tw, x = _twiddle_and_input(*geometry, dtype)
        y = bt.butterfly_forward_triton(tw, x, increasing, transpose)
        grad = torch.randn_like(y)
        y_ref, gtw_ref, gx_ref = _reference(tw, x, grad, increasing, transpose)
        assert y.shape == y_ref.shape and y.dtype == dtype
        assert rel_error(y, y_ref) <= TOL[dtype], (increasing, transpose)
        gtw, gx = bt.butterfly_backward_triton(tw, x, grad, increasing, transpose)
        assert gtw.shape == tw.shape and gx.shape == x.shape
        assert rel_error(gtw, gtw_ref) <= TOL[dtype], (increasing, transpose)
        assert rel_error(gx, gx_ref) <= TOL[dtype], (increasing, transpose)


def test_backward_with_few_programs(monkeypatch):
    """A workspace cap that admits one program (then two): each program loops over several row
    blocks, accumulating its partial twiddle gradient across them."""
    n, batch = 64, 40
    if not ON_GPU:  # (the interpreter's one program at a time would cap the grid at one per stack)
        monkeypatch.setattr(bt, "_units", lambda x: 4)
    tw, x = _twiddle_and_input(n, 2, 1, 1, batch, torch.float64)
    grad = torch.randn(batch, 2, n, dtype=torch.float64, device=DEVICE)
    _, gtw_ref, gx_ref = _reference(tw, x, grad, True, False)
    block_b = bt._rows(n, False, batch, 2, bt._units(x), bt.BACKWARD_FEWEST_ROWS)
    row_blocks = -(-batch // block_b)
    assert row_blocks >= 3
    per_stack_and_program = (3 * block_b * n + 6 * 2 * n) * 8  # 3 pass inputs, partial of 6 factors
    for programs in (1, 2):
        monkeypatch.setattr(bt, "BACKWARD_WORKSPACE_BYTES", programs * 2 * per_stack_and_program)
        assert bt._programs(bt._units(x), row_blocks, 2, per_stack_and_program, x.numel() * 8) == programs
        gtw, gx = bt.butterfly_backward_triton(tw, x, grad, True, False)
        assert rel_error(gtw, gtw_ref) <= 1e-12 and rel_error(gx, gx_ref) <= 1e-12


def test_lazy_conjugates_and_strided_inputs():
    """Inputs as the op hands them over (``butterfly_multiply_adjoint`` passes ``twiddle.conj()``, a
    lazily conjugated view) or as a caller may: conjugate, negated and non-contiguous tensors give
    the values of their resolved copies."""
    tw, x = _twiddle_and_input(16, 2, 1, 1, 3, torch.complex128)
    grad = torch.randn(3, 2, 16, dtype=torch.complex128, device=DEVICE)
    strided = x.transpose(0, 2).contiguous().transpose(0, 2)
    for t, v, g in ((tw.conj(), x, grad), (tw, strided.conj(), grad.conj()), (-tw, torch.neg(x.conj()), grad)):
        y_ref, gtw_ref, gx_ref = _reference(t.resolve_conj().resolve_neg(), v.resolve_conj().resolve_neg(), g.resolve_conj(), True, True)
        assert rel_error(bt.butterfly_forward_triton(t, v, True, True), y_ref) <= 1e-12
        gtw, gx = bt.butterfly_backward_triton(t, v, g, True, True)
        assert rel_error(gtw, gtw_ref) <= 1e-12 and rel_error(gx, gx_ref) <= 1e-12


def test_nan_propagates_row_wise():
    tw, x = _twiddle_and_input(16, 1, 1, 1, 3, torch.float32)
    x[1, 0, 3] = float("nan")
    y = bt.butterfly_forward_triton(tw, x, True, False)
    assert torch.isnan(y[1]).all() and torch.isfinite(y[[0, 2]]).all()


def test_empty_batch():
    tw, x = _twiddle_and_input(8, 2, 1, 1, 0, torch.float32)
    assert bt.butterfly_forward_triton(tw, x, True, False).shape == (0, 2, 8)
    gtw, gx = bt.butterfly_backward_triton(tw, x, torch.zeros(0, 2, 8, device=DEVICE), True, False)
    assert gx.shape == (0, 1, 8) and gtw.shape == tw.shape and not gtw.any()


def test_bad_input():
    tw, x = _twiddle_and_input(8, 1, 1, 1, 2, torch.float32)
    with pytest.raises(TypeError, match="x: the Triton butterfly kernels take"):
        bt.butterfly_forward_triton(tw.half(), x.half(), True, False)
    with pytest.raises(TypeError, match="twiddle and x: expected one dtype"):
        bt.butterfly_forward_triton(tw.double(), x, True, False)
    with pytest.raises(ValueError, match="x: expected shape"):
        bt.butterfly_forward_triton(tw, x[..., :4], True, False)
    with pytest.raises(ValueError, match="x: expected shape"):
        bt.butterfly_forward_triton(tw, x.expand(2, 3, 8), True, False)
    with pytest.raises(ValueError, match="grad: expected shape"):
        bt.butterfly_backward_triton(tw, x, torch.zeros(3, 1, 8, device=DEVICE), True, False)
    with pytest.raises(TypeError, match="grad: expected a floating-point"):
        bt.butterfly_backward_triton(tw, x, torch.zeros(2, 1, 8, dtype=torch.int64, device=DEVICE), True, False)


@pytest.mark.parametrize("name", ["butterfly", "bp", "kaleidoscope"])
def test_families_through_the_triton_kernels(name, monkeypatch):
    """The butterfly-based families, complex, with their op running the Triton kernels (on the GPU,
    or under the interpreter standing in for the CPU backend): forward, transpose and adjoint (whose
    twiddles reach the kernels as lazily conjugated views) against the dense matrix, and the input
    and parameter gradients against the reference's."""
    if not ON_GPU:
        monkeypatch.setitem(bf.FUSED_BACKENDS, "cpu", (bt.butterfly_forward_triton, bt.butterfly_backward_triton))
    info = registry.get(name)
    for sample in info.samples():
        m = info.create(sample.in_features, sample.out_features, dtype=torch.complex128, device=DEVICE, **sample.options)
        M = m.to_dense().detach()
        x = torch.randn(3, sample.in_features, dtype=torch.complex128, device=DEVICE)
        y = torch.randn(3, sample.out_features, dtype=torch.complex128, device=DEVICE)
        assert rel_error(m(x), x @ M.T) <= 1e-12, sample.id
        assert rel_error(m.transpose()(y), y @ M) <= 1e-12, sample.id
        assert rel_error(m.adjoint()(y), y @ M.conj()) <= 1e-12, sample.id
        grads = []
        for reference in (False, True):
            with use_reference(reference):
                m.zero_grad()
                v = x.clone().requires_grad_()
                (m(v) * y.conj()).real.sum().backward()
                grads.append([v.grad] + [p.grad for p in m.parameters() if p.requires_grad])
        for got, want in zip(*grads):
            assert (got is None) == (want is None), sample.id
            assert got is None or rel_error(got, want) <= 1e-12, sample.id


@needs_gpu
def test_op_runs_the_gpu_backend(monkeypatch):
    """``butterfly_multiply`` on CUDA tensors runs the Triton kernels (forward and backward) and
    matches the reference; float16 falls back to the reference."""
    calls = []
    forward, backward = bt.butterfly_forward_triton, bt.butterfly_backward_triton
    monkeypatch.setitem(bf.FUSED_BACKENDS, "cuda", (lambda *a: calls.append("f") or forward(*a), lambda *a: calls.append("b") or backward(*a)))
    tw, x = _twiddle_and_input(32, 1, 1, 2, 6, torch.float64)
    tw.requires_grad_()
    y = bf.butterfly_multiply(tw, x[:, 0])
    y.square().sum().backward()
    assert calls == ["f", "b"]
    y_ref, gtw_ref, _ = _reference(tw.detach(), x, 2 * y.detach(), True, False)
    assert rel_error(y, y_ref) <= 1e-12 and rel_error(tw.grad, gtw_ref) <= 1e-12
    assert bf.butterfly_multiply(tw.detach().half(), x[:, 0].half()).dtype == torch.float16
    assert calls == ["f", "b"]


def test_gpu_backend_registers_at_first_use(monkeypatch):
    """The Triton backend joins FUSED_BACKENDS at the first CUDA call where it can run, not at
    import (which would initialise CUDA), and only there."""
    monkeypatch.delitem(bf.FUSED_BACKENDS, "cuda", raising=False)
    monkeypatch.setattr(bf, "triton_available", lambda: False)
    bf._register_gpu_backend()
    assert "cuda" not in bf.FUSED_BACKENDS
    monkeypatch.setattr(bf, "triton_available", lambda: True)
    bf._register_gpu_backend()
    assert bf.FUSED_BACKENDS["cuda"] == (bt.butterfly_forward_triton, bt.butterfly_backward_triton)


@needs_gpu
def test_gradcheck_on_gpu():
    tw, x = _twiddle_and_input(8, 2, 1, 2, 3, torch.complex128)
    tw.requires_grad_()
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda t, v: bf.butterfly_multiply(t, v, False), (tw, x))


@needs_gpu
def test_compiled_training_step_on_gpu():
    tw, x = _twiddle_and_input(64, 1, 1, 1, 8, torch.float32)
    tw.requires_grad_()

    def step(t, v):
        return bf.butterfly_multiply(t, v).square().sum()

    compiled = torch.compile(step, fullgraph=True)
    loss = compiled(tw, x)
    (g,) = torch.autograd.grad(loss, tw)
    with use_reference():
        loss_ref = step(tw, x)
        (g_ref,) = torch.autograd.grad(loss_ref, tw)
    assert rel_error(loss, loss_ref) <= 1e-5 and rel_error(g, g_ref) <= 1e-4


def test_gpu_bench_without_a_gpu_says_so(monkeypatch):
    from typer.testing import CliRunner

    from structmat.cli import app
    from structmat.experiments import bench_butterfly_gpu

    monkeypatch.setattr(bench_butterfly_gpu, "triton_available", lambda: False)  # (as on a machine without one)
    result = CliRunner().invoke(app, ["bench", "butterfly-gpu", "--quick"])
    assert result.exit_code == 2 and "needs an NVIDIA GPU" in result.output
