"""The fused Fastfood kernels equal the op-by-op reference (SPEC.md §4.13; issue 8): forward,
transpose and every gradient, in all four dtypes, stacked blocks, rectangular sizes, any batch."""

import contextlib

import numba
import pytest
import torch

import structmat as sm
from structmat.families.fastfood import Fastfood
from structmat.ops import hadamard_cpu, use_reference
from structmat.ops.fastfood import fastfood_multiply, fastfood_multiply_transpose

#: relative tolerance of fused vs reference per dtype (float64 exactness tier, float32 rounding)
TOLERANCE = {torch.float64: 1e-10, torch.complex128: 1e-10, torch.float32: 1e-5, torch.complex64: 1e-5}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    scale = float(torch.linalg.norm(b))
    return float(torch.linalg.norm(a - b)) / scale if scale else float(torch.linalg.norm(a))


def _parameters(blocks: int, size: int, dtype, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    S, G, B = (torch.randn(blocks, size, generator=generator, dtype=torch.float64).to(dtype) for _ in range(3))
    if dtype.is_complex:
        S, G, B = (p + 0.5j * torch.randn(blocks, size, generator=generator, dtype=torch.float64).to(dtype) for p in (S, G, B))
    permutation = torch.stack([torch.randperm(size, generator=generator) for _ in range(blocks)])
    return [p.requires_grad_(True) for p in (S, G, B)], permutation


def _value_and_gradients(fn, inp, params, permutation, features):
    out = fn(inp, *params, permutation, features)
    seed = torch.Generator().manual_seed(1)
    grad = torch.randn(out.shape, generator=seed, dtype=torch.float64).to(out.dtype)
    if out.numel() == 0:
        return [out]
    return [out, *torch.autograd.grad(out, (inp, *params), grad)]


# (in, out, batch): K = 1 and K > 1 blocks, n < N (padding), m < K N (truncation), batch 0 and 1
# in every dtype; a batch large enough for the parallel build (x.numel() >= PARALLEL_MIN_ELEMENTS)
# in the real dtypes (the complex ones run the same kernel source; every build costs seconds to compile)
SHAPES = [(16, 16, 3), (12, 20, 5), (3, 17, 4), (100, 7, 1), (1, 1, 2), (5, 40, 0)]
CASES = [(*shape, dtype) for shape in SHAPES for dtype in TOLERANCE]
CASES += [(96, 300, 400, dtype) for dtype in (torch.float32, torch.float64)]


@pytest.mark.parametrize("transpose", [False, True], ids=["forward", "transpose"])
@pytest.mark.parametrize("n,m,batch,dtype", CASES, ids=[f"{n}-{m}-{b}-{str(d)[6:]}" for n, m, b, d in CASES])
def test_fused_matches_reference(n, m, batch, transpose, dtype):
    size = 1 << max(0, (n - 1).bit_length())
    blocks = -(-m // size)
    params, permutation = _parameters(blocks, size, dtype, seed=n + m)
    fn, width, features = (fastfood_multiply_transpose, m, n) if transpose else (fastfood_multiply, n, m)
    inp = torch.randn(batch, width, dtype=torch.float64).to(dtype).requires_grad_(True)
    fused = _value_and_gradients(fn, inp, params, permutation, features)
    with sm.ops.use_reference():
        reference = _value_and_gradients(fn, inp, params, permutation, features)
    assert fused[0].shape == (batch, features) and fused[0].dtype == dtype
    for got, want in zip(fused, reference):
        assert _relative(got, want) <= TOLERANCE[dtype]
    if batch:
        assert "fastfood" in fused[0].grad_fn.name().lower()  # the fused op ran (the reference ends in a slice or product)


@pytest.mark.parametrize("transpose", [False, True], ids=["forward", "transpose"])
def test_gradcheck(transpose):
    params, permutation = _parameters(3, 8, torch.float64)
    fn, width, features = (fastfood_multiply_transpose, 21, 6) if transpose else (fastfood_multiply, 6, 21)
    inp = torch.randn(3, width, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, S, G, B: fn(x, S, G, B, permutation, features), (inp, *params))


def test_torch_func_grad():
    layer = sm.StructuredLinear(12, 20, "fastfood", dtype=torch.float64)
    x = torch.randn(3, 12, dtype=torch.float64)
    params = {name: p.detach() for name, p in layer.named_parameters()}
    grads = torch.func.grad(lambda p: torch.func.functional_call(layer, p, (x,)).square().sum())(params)
    layer(x).square().sum().backward()
    for name, p in layer.named_parameters():
        assert _relative(grads[name], p.grad) <= 1e-12


def test_second_order_gradients_match_the_reference():
    """Nested ``torch.func.grad`` and eager ``create_graph=True`` would differentiate the fused
    backward, which has no derivative (zero second derivatives, silently): the reference runs
    there, and its second derivatives match an all-reference run; first order runs fused."""
    k, n = 2, 16
    S, G, B = (torch.randn(k, n, dtype=torch.float64) for _ in range(3))
    permutation = torch.stack([torch.randperm(n) for _ in range(k)])
    x = torch.randn(3, 12, dtype=torch.float64)

    def loss(s, v):
        return fastfood_multiply(v, s, G, B, permutation, 20).square().sum()

    with use_reference():
        expected = torch.func.grad(loss)(S, x)
    assert _relative(torch.func.grad(loss)(S, x), expected) <= 1e-12
    def curvature(s):
        return torch.func.grad(loss)(s, x).square().sum()

    with use_reference():
        expected_second = torch.func.grad(curvature)(S)
    assert expected_second.abs().max() > 0 and _relative(torch.func.grad(curvature)(S), expected_second) <= 1e-12

    def penalty(reference: bool):
        s = S.clone().requires_grad_()
        xx = x.clone().requires_grad_()
        with use_reference(reference):
            (gx,) = torch.autograd.grad(loss(s, xx), xx, create_graph=True)
            return torch.autograd.grad(gx.square().sum(), s)[0]

    assert _relative(penalty(False), penalty(True)) <= 1e-12


def test_independent_of_thread_count():
    params, permutation = _parameters(2, 64, torch.float64)
    x = torch.randn(700, 50, dtype=torch.float64, requires_grad=True)
    results = []
    saved = numba.get_num_threads()
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            results.append(_value_and_gradients(fastfood_multiply, x, params, permutation, 100))
    finally:
        numba.set_num_threads(saved)
    for got, want in zip(results[-1], results[0]):
        assert _relative(got, want) <= 1e-12


def test_layer_uses_fused_kernels_and_compiles():
    layer = sm.StructuredLinear(20, 30, "fastfood", dtype=torch.float64)
    x = torch.randn(4, 20, dtype=torch.float64)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    assert _relative(compiled(x), layer(x)) <= 1e-12


def test_hadamard_inplace_matches_reference():
    x = torch.randn(37, 256, dtype=torch.float64)
    rows = x.numpy().copy()
    hadamard_cpu.hadamard_rows_inplace(rows)
    assert _relative(torch.from_numpy(rows), sm.ops.hadamard.hadamard_reference(x)) <= 1e-14


def test_row_kernel_builds_have_distinct_cache_names():
    kernel = hadamard_cpu.fastfood_rows
    assert kernel.parallel.py_func.__qualname__ != kernel.serial.py_func.__qualname__
    assert kernel.parallel.targetoptions.get("parallel") and not kernel.serial.targetoptions.get("parallel")


def test_bad_input():
    params, permutation = _parameters(2, 8, torch.float64)
    with pytest.raises(ValueError, match="x: expected"):
        fastfood_multiply(torch.randn(2, 9, dtype=torch.float64), *params, permutation, 10)
    with pytest.raises(ValueError, match="out_features"):
        fastfood_multiply(torch.randn(2, 8, dtype=torch.float64), *params, permutation, 17)
    with pytest.raises(ValueError, match="in_features"):
        fastfood_multiply_transpose(torch.randn(2, 16, dtype=torch.float64), *params, permutation, 9)
    for bad in (permutation + 1, torch.zeros_like(permutation)):  # out of range; repeated entries
        for fn, width in ((fastfood_multiply, 8), (fastfood_multiply_transpose, 16)):
            for forced in (False, True):
                with pytest.raises(ValueError, match=r"permutation: expected every row to be a permutation of \[0, 8\)"):
                    with use_reference() if forced else contextlib.nullcontext():
                        fn(torch.randn(2, width, dtype=torch.float64), *params, bad, 8)
    with pytest.raises(ValueError, match="permutation: expected an integer tensor"):
        fastfood_multiply(torch.randn(2, 8, dtype=torch.float64), *params, permutation.double(), 8)
    with pytest.raises(ValueError, match="S, G, B, permutation"):
        fastfood_multiply(torch.randn(2, 8, dtype=torch.float64), params[0], params[1][:, :4], params[2], permutation, 8)


def test_bench_fastfood_rows():
    from structmat.experiments.bench_fastfood import run
    from structmat.experiments.bench_ldr import torch_structured_layers

    saved = (torch.get_num_threads(), numba.get_num_threads())
    rows = run(quick=True, sizes=[64], threads=[1])
    assert (torch.get_num_threads(), numba.get_num_threads()) == saved  # thread counts restored
    assert [(r["n"], r["threads"], r["pass"]) for r in rows] == [(64, 1, "forward"), (64, 1, "forward+backward")]
    assert all(r["fused_s"] > 0 and r["op_by_op_s"] > 0 for r in rows)
    installed = torch_structured_layers() is not None
    assert all((r["torch_structured_s"] is not None) == installed for r in rows)


def test_corrupted_permutation_buffer_is_caught_after_load_state_dict():
    """A checkpoint whose permutation has repeated entries must not reach the unchecked kernels
    (the validation of a buffer is remembered only until the buffer changes)."""
    layer = Fastfood(8, 8, dtype=torch.float64)
    x = torch.randn(3, 8, dtype=torch.float64)
    layer(x)  # validated and remembered
    state = layer.state_dict()
    state["permutation"] = torch.zeros_like(state["permutation"])
    layer.load_state_dict(state)
    with pytest.raises(ValueError, match="permutation: expected every row to be a permutation"):
        layer(x)
    with torch.no_grad(), pytest.raises(ValueError, match="permutation"):
        layer(x)
