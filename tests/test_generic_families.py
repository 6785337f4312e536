"""The generic suite: every registered family, every sample instance (DESIGN.md §3).

Adding a family means writing its module and registry entry; these checks then apply to it
unchanged: forward vs to_dense, gradcheck (float64/complex128), transpose/adjoint, counts,
state_dict and config round trips, torch.compile, dtype/device moves, batch shapes, bad input,
the single-layer gradient reduction (SPEC.md §2.6, check A6), torch.func (grad, vmap, per-sample
gradients, jvp), batched vector-Jacobian products, second derivatives and Hessian-vector products,
CPU autocast and Hypothesis-driven shapes.
"""

import copy
import inspect

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import structmat as sm
from structmat.core import registry
from structmat.ops import use_reference

from helpers import rel_error

CASES = [(info.name, sample) for info in registry.all_infos() for sample in info.samples()]
IDS = [f"{name}-{sample.id}" for name, sample in CASES]
FIRST = {}
for _name, _sample in CASES:
    FIRST.setdefault(_name, _sample)
FIRST_CASES = list(FIRST.items())
PROJ_CASES = [(n, s) for n, s in FIRST_CASES if registry.get(n).has_projection]
TRAINABLE_CASES = [
    (n, s)
    for n, s in CASES
    if any(p.requires_grad for p in registry.get(n).create(s.in_features, s.out_features, device="meta", **s.options).parameters())
]


def dtypes_for(name):
    info = registry.get(name)
    return [torch.float64, torch.complex128] if info.supports_complex else [torch.float64]


def make(name, sample, dtype=torch.float64, device=None):
    info = registry.get(name)
    return info.create(sample.in_features, sample.out_features, dtype=dtype, device=device, **sample.options)


def randn(*shape, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype)


def test_registry_has_baselines():
    names = sm.families()
    for name in ["dense", "low_rank", "sparse", "sparse_low_rank"]:
        assert name in names
    assert names == sorted(names)


@pytest.mark.parametrize("name", sm.families())
def test_registry_entry_complete(name):
    info = registry.get(name)
    samples = info.samples()
    assert samples, "a family needs sample instances"
    assert any(s.in_features != s.out_features for s in samples), "include a rectangular sample"
    assert any((s.in_features & (s.in_features - 1)) != 0 for s in samples), "include a non-power-of-two size"
    assert info.params_formula and info.flops_formula
    assert info.description
    # reset_parameters and extra_repr as in nn.Linear (DESIGN.md §3)
    sample = samples[0]
    m = info.create(sample.in_features, sample.out_features, dtype=torch.float64, **sample.options)
    shapes = {k: v.shape for k, v in m.state_dict().items()}
    m.reset_parameters()
    assert {k: v.shape for k, v in m.state_dict().items()} == shapes
    assert bool(torch.isfinite(m.to_dense()).all())
    assert f"in_features={sample.in_features}" in repr(m) and f"out_features={sample.out_features}" in repr(m)


@pytest.mark.parametrize("name,sample", CASES, ids=IDS)
def test_forward_matches_dense(name, sample):
    for dtype in dtypes_for(name):
        m = make(name, sample, dtype)
        x = randn(5, sample.in_features, dtype=dtype)
        y = m(x)
        assert y.shape == (5, sample.out_features) and y.dtype == dtype
        dense = m.to_dense()
        assert dense.shape == (sample.out_features, sample.in_features) and dense.dtype == dtype
        assert rel_error(y, x @ dense.T) <= 1e-10


@pytest.mark.parametrize("name,sample", CASES, ids=IDS)
def test_forward_float32(name, sample):
    m = make(name, sample, torch.float32)
    x = torch.randn(4, sample.in_features)
    ref = x.double() @ m.to_dense().double().T
    assert rel_error(m(x).double(), ref) <= 1e-4


@pytest.mark.parametrize("name,sample", CASES, ids=IDS)
def test_transpose_and_adjoint(name, sample):
    for dtype in dtypes_for(name):
        m = make(name, sample, dtype)
        M = m.to_dense()
        y = randn(3, sample.out_features, dtype=dtype)
        t = m.transpose()
        assert isinstance(t, sm.StructuredMatrix)
        assert (t.in_features, t.out_features) == (sample.out_features, sample.in_features)
        assert rel_error(t(y), y @ M) <= 1e-10
        assert rel_error(t.to_dense(), M.T) <= 1e-12
        a = m.adjoint()
        assert rel_error(a(y), y @ M.conj()) <= 1e-10
        assert rel_error(a.to_dense(), M.conj().T) <= 1e-12
        x = randn(2, sample.in_features, dtype=dtype)
        assert rel_error(t.transpose()(x), x @ M.T) <= 1e-10
        assert rel_error(a.adjoint()(x), x @ M.T) <= 1e-10
        assert t.num_parameters == m.num_parameters


def _gradcheck_module(m, x):
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    params = [p.detach().clone().requires_grad_(True) for n, p in m.named_parameters() if p.requires_grad]

    def fn(inp, *values):
        return torch.func.functional_call(m, dict(zip(names, values)), (inp,))

    return torch.autograd.gradcheck(fn, (x, *params), fast_mode=True, eps=1e-6, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("name,sample", CASES, ids=IDS)
def test_gradcheck(name, sample):
    for dtype in dtypes_for(name):
        m = make(name, sample, dtype)
        x = randn(3, sample.in_features, dtype=dtype).requires_grad_(True)
        assert _gradcheck_module(m, x)


@pytest.mark.parametrize("name,sample", CASES, ids=IDS)
def test_gradcheck_transpose(name, sample):
    m = make(name, sample, torch.float64)
    y = randn(2, sample.out_features).requires_grad_(True)
    assert _gradcheck_module(m.transpose(), y)


@pytest.mark.parametrize("name,sample", CASES, ids=IDS)
def test_counts(name, sample):
    m = make(name, sample, torch.float32)
    trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert m.num_parameters == trainable
    # a fixed gather (e.g. a permutation) does no arithmetic: 0 flops by SPEC.md §1.7
    assert isinstance(m.flops(), int) and (m.flops() > 0 or "fixed" in registry.get(name).tags)
    assert m.flops(batch=7) == 7 * m.flops(1)
    assert m.flops(batch=0) == 0
    meta = make(name, sample, torch.float32, device="meta")
    assert meta.num_parameters == m.num_parameters
    # shape inference without data: the forward runs on the meta device
    assert meta(torch.empty(2, sample.in_features, device="meta")).shape == (2, sample.out_features)
    layer = sm.StructuredLinear(sample.in_features, sample.out_features, name, **sample.options)
    assert layer.num_parameters == m.num_parameters
    assert layer.flops(3) == m.flops(3) + 3 * sample.out_features
    c = make(name, sample, torch.complex64) if registry.get(name).supports_complex else None
    if c is not None:
        assert c.flops() > m.flops() or m.flops() == 0


@pytest.mark.parametrize("name,sample", CASES, ids=IDS)
def test_state_dict_and_config_roundtrip(name, sample):
    m = make(name, sample, torch.float64)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    cfg = m.config()
    assert cfg["structure"] == name
    import json

    cfg = json.loads(json.dumps(cfg))  # options must be JSON-serialisable
    rebuilt = registry.get(cfg["structure"]).create(cfg["in_features"], cfg["out_features"], dtype=torch.float64, **cfg["options"])
    rebuilt.load_state_dict(m.state_dict())
    assert torch.equal(rebuilt.to_dense(), m.to_dense())
    x = randn(2, sample.in_features)
    assert torch.allclose(rebuilt(x), m(x), rtol=0, atol=0)


@pytest.mark.parametrize("name,sample", FIRST_CASES, ids=[n for n, _ in FIRST_CASES])
def test_torch_compile_forward(name, sample):
    torch._dynamo.reset()
    layer = sm.StructuredLinear(sample.in_features, sample.out_features, name, dtype=torch.float64, **sample.options)
    compiled = torch.compile(layer, backend="aot_eager")
    x = randn(4, sample.in_features)
    assert rel_error(compiled(x), layer(x)) <= 1e-12
    compiled(x).square().sum().backward()
    params = [p for p in layer.parameters() if p.requires_grad]
    compiled_grads = [p.grad.clone() for p in params]
    layer.zero_grad()
    layer(x).square().sum().backward()
    for got, expected in zip(compiled_grads, (p.grad for p in params)):
        assert rel_error(got, expected) <= 1e-12


@pytest.mark.parametrize("name,sample", CASES, ids=IDS)
def test_dtype_and_device_moves(name, sample):
    m = make(name, sample, torch.float32)
    dense32 = m.to_dense().detach()
    m64 = m.to(torch.float64)
    assert m64.dtype == torch.float64
    x = randn(3, sample.in_features)
    assert rel_error(m64(x), x @ m64.to_dense().T) <= 1e-10
    assert rel_error(m64.to_dense().float(), dense32) <= 1e-6
    m32 = m64.float()
    assert m32(torch.randn(2, sample.in_features)).dtype == torch.float32
    assert m32.to("cpu").device.type == "cpu"
    if registry.get(name).supports_complex:
        c = make(name, sample, torch.complex64)
        assert c(torch.randn(2, sample.in_features)).dtype == torch.complex64  # real input to a complex layer


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the check runs where one is present)")
@pytest.mark.parametrize("name,sample", CASES, ids=IDS)
def test_cuda_matches_cpu(name, sample):
    """Moved to the GPU, a layer computes what it computes on the CPU -- forward, transpose,
    adjoint, input and parameter gradients, float64, float32 and complex128 where the family takes
    it -- with its outputs and gradients on the GPU."""
    cases = [(dtype, 1e-10) for dtype in dtypes_for(name)] + [(torch.float32, 1e-4)]
    for dtype, tol in cases:
        cpu = make(name, sample, dtype)
        gpu = copy.deepcopy(cpu).to("cuda")
        x = torch.randn(5, sample.in_features, dtype=dtype)
        xc, xg = x.clone().requires_grad_(), x.to("cuda").requires_grad_()
        yc, yg = cpu(xc), gpu(xg)
        assert yg.device.type == "cuda"
        assert rel_error(yg.cpu(), yc) <= tol
        g = torch.randn_like(yc)
        yc.backward(g)
        yg.backward(g.to("cuda"))
        assert xg.grad.device.type == "cuda" and rel_error(xg.grad.cpu(), xc.grad) <= tol
        for (pname, pc), pg in zip(cpu.named_parameters(), gpu.parameters()):
            if pc.grad is not None:
                assert pg.grad.device.type == "cuda" and rel_error(pg.grad.cpu(), pc.grad) <= tol, pname
        assert rel_error(gpu.to_dense().cpu(), cpu.to_dense()) <= tol
        y = torch.randn(4, sample.out_features, dtype=dtype)
        for view in ("transpose", "adjoint"):
            got = getattr(gpu, view)()(y.to("cuda"))
            assert got.device.type == "cuda" and rel_error(got.cpu(), getattr(cpu, view)()(y)) <= tol, view


@pytest.mark.parametrize("name,sample", CASES, ids=IDS)
def test_batch_shapes(name, sample):
    m = make(name, sample, torch.float64)
    M = m.to_dense()
    x = randn(sample.in_features)
    assert m(x).shape == (sample.out_features,)
    assert rel_error(m(x), M @ x) <= 1e-10
    x = randn(2, 3, sample.in_features)
    y = m(x)
    assert y.shape == (2, 3, sample.out_features)
    assert rel_error(y, x @ M.T) <= 1e-10
    empty = m(randn(0, sample.in_features))
    assert empty.shape == (0, sample.out_features)
    layer = sm.StructuredLinear(sample.in_features, sample.out_features, name, dtype=torch.float64, **sample.options)
    assert layer(randn(0, 2, sample.in_features)).shape == (0, 2, sample.out_features)


@pytest.mark.parametrize("name,sample", FIRST_CASES, ids=[n for n, _ in FIRST_CASES])
def test_bad_input(name, sample):
    m = make(name, sample, torch.float32)
    # each message names the argument, the expected and the received value
    with pytest.raises(ValueError, match=rf"^x: expected shape \(\*, {sample.in_features}\).*got shape \(2, {sample.in_features + 1}\)"):
        m(torch.randn(2, sample.in_features + 1))
    with pytest.raises(TypeError, match=r"^x: expected a floating-point or complex tensor.*torch.int64"):
        m(torch.ones(2, sample.in_features, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"^x: expected a floating-point or complex tensor.*torch.bool"):
        m(torch.ones(2, sample.in_features, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"^x: expected a torch.Tensor, got .*\(list\)"):
        m([0.0] * sample.in_features)
    with pytest.raises(TypeError, match=r"^x: expected dtype torch.float32.*got torch.float64"):
        m(torch.randn(2, sample.in_features, dtype=torch.float64))
    with pytest.raises(ValueError, match=rf"^x: expected shape \(\*, {sample.out_features}\)"):
        m.transpose()(torch.randn(2, sample.out_features + 1))
    with pytest.raises(TypeError, match=r"^dtype: expected one of float32, float64, complex64, complex128, got torch.float16"):
        make(name, sample, torch.float16)
    with pytest.raises(ValueError, match="in_features"):
        sm.StructuredLinear(0, sample.out_features, name)
    with pytest.raises(ValueError, match="out_features"):
        sm.StructuredLinear(sample.in_features, 0, name)
    with pytest.raises(TypeError, match="not_an_option"):
        sm.StructuredLinear(sample.in_features, sample.out_features, name, not_an_option=3)


@pytest.mark.parametrize("name,sample", PROJ_CASES, ids=[n for n, _ in PROJ_CASES])
def test_from_dense_contract(name, sample):
    info = registry.get(name)
    m = make(name, sample, torch.float64)
    accepted = inspect.signature(info.cls.from_dense).parameters
    options = {k: v for k, v in sample.options.items() if k in accepted}
    proj = info.cls.from_dense(m.to_dense().detach(), **options)
    assert isinstance(proj, info.cls)
    assert proj.to_dense().shape == m.to_dense().shape and proj.dtype == torch.float64
    with pytest.raises(ValueError, match="W"):
        info.cls.from_dense(torch.randn(3, 4, 5))
    with pytest.raises(ValueError, match="W"):
        info.cls.from_dense(torch.randn(3))


@pytest.mark.parametrize("name,sample", TRAINABLE_CASES, ids=[f"{n}-{s.id}" for n, s in TRAINABLE_CASES])
def test_single_layer_reduction(name, sample):
    """SPEC.md §2.6 / check A6: dL/dθ equals the gradient of Σ_b u_bᵀ W(θ) x_b, u fixed."""
    m = make(name, sample, torch.float64)
    params = [p for p in m.parameters() if p.requires_grad]
    x = randn(4, sample.in_features)
    target = randn(4, sample.out_features)
    z = m(x)
    loss = ((torch.tanh(z) - target) ** 2).sum()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    u = (2 * (torch.tanh(z) - target) * (1 - torch.tanh(z) ** 2)).detach()
    f = (u * (x @ m.to_dense().T)).sum()
    grads_f = torch.autograd.grad(f, params, allow_unused=True)
    for g, h in zip(grads, grads_f):
        if g is None or h is None:
            assert (g is None or float(g.abs().max()) == 0) and (h is None or float(h.abs().max()) == 0)
        else:
            assert rel_error(g, h) <= 1e-9


def _square_loss(y):
    return (y.abs() ** 2).sum() if y.is_complex() else y.square().sum()


def _layer_and_transpose(name, sample, dtype):
    """``(module, its input width)`` for the layer and for its transpose (SPEC.md §2.3)."""
    m = make(name, sample, dtype)
    return ((m, sample.in_features), (m.transpose(), sample.out_features))


@pytest.mark.filterwarnings("ignore:There is a performance drop because we have not yet implemented the batching rule")
@pytest.mark.parametrize("name,sample", CASES, ids=IDS)
def test_torch_func_grad_vmap_and_per_sample_gradients(name, sample):
    """``torch.func`` on every family and its transpose: ``grad`` through ``functional_call``
    equals eager autograd, ``vmap`` over inputs equals the batched forward, and per-sample
    gradients (``vmap(grad)``) equal one ``grad`` per sample (fused ops without a rule for a
    transform take their reference)."""
    for dtype in dtypes_for(name):
        for m, features in _layer_and_transpose(name, sample, dtype):
            x = randn(3, features, dtype=dtype)
            batched = torch.func.vmap(lambda v: m(v.unsqueeze(0)).squeeze(0))(x)
            assert rel_error(batched, m(x).detach()) <= 1e-12
            params = {k: p.detach() for k, p in m.named_parameters() if p.requires_grad}
            if not params:
                continue

            def loss(p, v):
                return _square_loss(torch.func.functional_call(m, p, (v,)))

            got = torch.func.grad(loss)(params, x)
            m.zero_grad()
            loss(dict(m.named_parameters()), x).backward()
            for k, p in m.named_parameters():
                if k in params:
                    expected = p.grad if p.grad is not None else torch.zeros_like(p)
                    assert rel_error(got[k], expected) <= 1e-12, k
            per_sample = torch.func.vmap(torch.func.grad(lambda p, v: loss(p, v.unsqueeze(0))), in_dims=(None, 0))(params, x)
            for i in range(x.shape[0]):
                one = torch.func.grad(loss)(params, x[i : i + 1])
                for k in params:
                    assert rel_error(per_sample[k][i], one[k]) <= 1e-12, k


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")  # torch's forward-AD internals
@pytest.mark.parametrize("name,sample", CASES, ids=IDS)
def test_forward_mode_jvp(name, sample):
    """Forward-mode AD (``torch.func.jvp``) on every family and its transpose: the input tangent
    maps through the dense matrix, and the parameter tangent equals the all-reference run's (fused
    ops without a forward-mode rule take their reference)."""
    for dtype in dtypes_for(name):
        for m, features in _layer_and_transpose(name, sample, dtype):
            x = randn(3, features, dtype=dtype)
            dx = randn(3, features, dtype=dtype)
            y, tangent = torch.func.jvp(m, (x,), (dx,))
            M = m.to_dense().detach()
            assert rel_error(y, x @ M.T) <= 1e-10 and rel_error(tangent, dx @ M.T) <= 1e-10
            params = {k: p.detach() for k, p in m.named_parameters() if p.requires_grad}
            if not params:
                continue
            directions = {k: torch.randn_like(p) for k, p in params.items()}

            def through_params(p):
                return torch.func.functional_call(m, p, (x,))

            _, got = torch.func.jvp(through_params, (params,), (directions,))
            with use_reference():
                _, expected = torch.func.jvp(through_params, (params,), (directions,))
            assert rel_error(got, expected) <= 1e-10


@pytest.mark.filterwarnings("ignore:There is a performance drop because we have not yet implemented the batching rule")
@pytest.mark.parametrize("name,sample", CASES, ids=IDS)
def test_batched_vector_jacobian_products(name, sample):
    """``torch.autograd.grad(..., is_grads_batched=True)`` -- what
    ``torch.autograd.functional.jacobian(vectorize=True)`` runs -- on every family and its
    transpose: the batched output gradient has no storage, so fused kernels must not read it; the
    results equal the all-reference run's and, for the input, the dense matrix's."""
    for dtype in dtypes_for(name):
        for m, features in _layer_and_transpose(name, sample, dtype):
            params = [p for p in m.parameters() if p.requires_grad]
            x = randn(2, features, dtype=dtype)
            cotangents = None

            def batched_vjp(reference: bool):
                nonlocal cotangents
                xx = x.clone().requires_grad_()
                with use_reference(reference):
                    y = m(xx)
                    if cotangents is None:
                        cotangents = randn(3, *y.shape, dtype=y.dtype)
                    return torch.autograd.grad(y, [xx, *params], cotangents, is_grads_batched=True, allow_unused=True)

            got, expected = batched_vjp(False), batched_vjp(True)
            assert rel_error(got[0], cotangents @ m.to_dense().detach().conj()) <= 1e-10
            for g, e in zip(got, expected):
                assert (g is None) == (e is None) and (g is None or rel_error(g, e) <= 1e-10)


@pytest.mark.parametrize("name,sample", CASES, ids=IDS)
def test_second_order_gradients_match_the_reference(name, sample):
    """Second derivatives on every family and its transpose match the all-reference run: a gradient
    penalty (``create_graph=True``, then the penalty's gradient), ``torch.func.grad`` inside eager
    autograd, and nested ``torch.func.grad``. Fused backwards without a derivative of their own must
    not drop second-order terms silently (``nn.Linear`` supports double backward)."""
    for dtype in dtypes_for(name):
        for m, features in _layer_and_transpose(name, sample, dtype):
            params = [p for p in m.parameters() if p.requires_grad]
            x = randn(3, features, dtype=dtype)

            def penalty_gradients(reference: bool):
                xx = x.clone().requires_grad_()
                with use_reference(reference):
                    (gx,) = torch.autograd.grad(_square_loss(m(xx)), xx, create_graph=True)
                    return torch.autograd.grad(_square_loss(gx), params, allow_unused=True) if params else ()

            for got, expected in zip(penalty_gradients(False), penalty_gradients(True)):
                if expected is None:
                    assert got is None or float(got.abs().max()) == 0
                else:
                    assert rel_error(got, expected) <= 1e-9
            if not params:
                continue

            def loss(p, v):
                return _square_loss(torch.func.functional_call(m, p, (v,)))

            def grad_norm(gradients):
                return sum(_square_loss(g) for g in gradients.values())

            def functional_inside_eager(reference: bool):
                # torch.func.grad inside eager autograd: its gradient carries the eager graph
                leaves = {k: p.detach().clone().requires_grad_() for k, p in m.named_parameters() if p.requires_grad}
                with use_reference(reference):
                    penalty = grad_norm(torch.func.grad(loss)(leaves, x))
                    return torch.autograd.grad(penalty, list(leaves.values()), allow_unused=True)

            def nested(reference: bool):
                detached = {k: p.detach() for k, p in m.named_parameters() if p.requires_grad}
                with use_reference(reference):
                    return tuple(torch.func.grad(lambda p: grad_norm(torch.func.grad(loss)(p, x)))(detached).values())

            for case in (functional_inside_eager, nested):
                for got, expected in zip(case(False), case(True)):
                    if expected is None or got is None:
                        assert all(t is None or float(t.abs().max()) == 0 for t in (got, expected)), case.__name__
                    else:
                        assert rel_error(got, expected) <= 1e-9, case.__name__


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")  # torch's forward-AD internals
@pytest.mark.parametrize("name,sample", CASES, ids=IDS)
def test_hessian_vector_products_agree(name, sample):
    """Hessian-vector products in the parameters by reverse-over-reverse (``create_graph``, then a
    second backward) and by forward-over-reverse (``jvp`` of ``torch.func.grad``) agree on every
    family: different derivative code paths, so an unstable derivative formula (a backward that
    divides by a parameter) shows up even where fused and reference paths share it."""
    for dtype in dtypes_for(name):
        m = make(name, sample, dtype)
        params = {k: p.detach() for k, p in m.named_parameters() if p.requires_grad}
        if not params:
            continue
        x = randn(3, sample.in_features, dtype=dtype)
        direction = {k: torch.randn_like(p) for k, p in params.items()}

        def loss(p):
            return _square_loss(torch.func.functional_call(m, p, (x,)))

        _, forward_over_reverse = torch.func.jvp(torch.func.grad(loss), (params,), (direction,))
        leaves = {k: p.clone().requires_grad_() for k, p in params.items()}
        first = torch.autograd.grad(loss(leaves), list(leaves.values()), create_graph=True, allow_unused=True)
        dot = sum((g * direction[k].conj()).real.sum() for g, k in zip(first, leaves) if g is not None)
        reverse_over_reverse = torch.autograd.grad(dot, list(leaves.values()), allow_unused=True)
        for g, k in zip(reverse_over_reverse, leaves):
            expected = forward_over_reverse[k]
            assert rel_error(torch.zeros_like(expected) if g is None else g, expected) <= 1e-9, k


@pytest.mark.parametrize("name,sample", CASES, ids=IDS)
def test_cpu_autocast_runs(name, sample):
    """Under ``torch.autocast("cpu", bfloat16)`` a float32 layer runs forward and backward (ops
    torch autocasts compute in bfloat16, the others in float32) and stays within bfloat16's
    precision of the float32 result -- no dtype clash inside a kernel."""
    m = make(name, sample, torch.float32)
    x = torch.randn(3, sample.in_features, requires_grad=True)
    expected = m(x).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
        y.float().square().sum().backward()
    assert y.shape == expected.shape and rel_error(y.float(), expected) <= 5e-2
    assert all(bool(torch.isfinite(t.grad).all()) for t in (x, *m.parameters()) if t.grad is not None)


@pytest.mark.parametrize("name,sample", CASES, ids=IDS)
def test_nan_propagates_row_wise(name, sample):
    """NaN/Inf behave as in nn.Linear: a NaN input row gives NaN outputs in that row only (no
    mixing across the batch, no exception, no hang); the transposed product likewise."""
    m = make(name, sample, torch.float64)
    M = m.to_dense().detach()
    for op, features, dense in ((m, sample.in_features, M.T), (m.transpose(), sample.out_features, M)):
        x = randn(3, features)
        x[1] = float("nan")
        x[2, 0] = float("inf") if features > 1 else x[2, 0]
        y = op(x)
        assert bool(torch.isnan(y[1]).any())
        assert rel_error(y[0], x[0] @ dense) <= 1e-10


def test_unknown_structure_suggests():
    with pytest.raises(ValueError, match="did you mean 'low_rank'"):
        sm.StructuredLinear(4, 4, "lowrank")
    with pytest.raises(TypeError, match="structure"):
        sm.StructuredLinear(4, 4, 3)


@pytest.mark.parametrize("name", sm.families())
@given(
    in_features=st.integers(1, 300),
    out_features=st.integers(1, 300),
    batch=st.lists(st.integers(0, 3), min_size=0, max_size=2),
)
def test_hypothesis_shapes(name, in_features, out_features, batch):
    layer = sm.StructuredLinear(in_features, out_features, name, dtype=torch.float64)
    x = torch.randn(*batch, in_features, dtype=torch.float64)
    y = layer(x)
    assert y.shape == (*batch, out_features)
    if x.numel():
        ref = x @ layer.to_dense().T + layer.bias
        assert rel_error(y, ref) <= 1e-9
