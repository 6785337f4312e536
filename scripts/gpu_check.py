"""CUDA check of every family and of the hierarchical factorisations (run by hand on a machine with a
GPU; CI has none, and the library needs none).

For every registered family and every registry sample, in float64 (and complex128 where the family
supports it), on ``cuda``: ``forward`` equals ``x @ to_dense().T``, ``transpose`` equals
``y @ to_dense()``, a backward pass gives finite gradients on the GPU, and the layer moved back to
the CPU gives the same dense matrix. Then ``bp_from_dense`` (real part, BPP) and
``kaleidoscope_from_dense`` (two-sided ``BB*``) on CUDA tensors. Prints one line per failure and a
summary; exits 1 on any failure.

Usage: ``PYTHONPATH=src python scripts/gpu_check.py``
"""

from __future__ import annotations

import sys
import time
import traceback

import numpy as np
import scipy.fft
import scipy.linalg
import torch

from structmat.core import registry
from structmat.fit.hierarchical import bp_from_dense, kaleidoscope_from_dense


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().abs().norm() / b.detach().abs().norm().clamp_min(1e-300))


def check_family(info, sample, dtype, device) -> str | None:
    torch.manual_seed(0)
    matrix = info.create(sample.in_features, sample.out_features, dtype=dtype, device=device, **sample.options)
    dense = matrix.to_dense().detach()
    x = torch.randn(5, sample.in_features, dtype=dtype, device=device)
    y = torch.randn(5, sample.out_features, dtype=dtype, device=device)
    forward = relative(matrix(x).detach(), x @ dense.T)
    transpose = relative(matrix.transpose()(y).detach(), y @ dense)
    out = matrix(x.requires_grad_())
    (out.abs().square().sum() if out.is_complex() else out.square().sum()).backward()
    finite = all(  # an empty parameter (e.g. no gate level at size 2) gets no gradient
        p.numel() == 0 or (p.grad is not None and p.grad.device.type == device and bool(torch.isfinite(p.grad).all()))
        for p in matrix.parameters() if p.requires_grad
    )
    back = relative(matrix.to("cpu").to_dense().detach(), dense.cpu())
    if max(forward, transpose, back) > 1e-9 or not finite:
        return f"forward {forward:.1e} transpose {transpose:.1e} cpu-round-trip {back:.1e} finite grads {finite}"
    return None


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    device = "cuda"
    failures, checked = [], 0
    start = time.perf_counter()
    for info in registry.all_infos():
        dtypes = [torch.float64] + ([torch.complex128] if info.supports_complex else [])
        for sample in info.samples():
            for dtype in dtypes:
                checked += 1
                try:
                    problem = check_family(info, sample, dtype, device)
                except Exception:  # report every failure, keep going
                    problem = traceback.format_exc(limit=3).strip().splitlines()[-1]
                if problem:
                    failures.append(f"{info.name} {sample.in_features}x{sample.out_features} {sample.options} {dtype}: {problem}")
    print(f"families: {checked} cases in {time.perf_counter() - start:.1f} s")
    n = 32
    eye = np.eye(n)
    dct = torch.from_numpy(scipy.fft.dct(eye, type=2, axis=0)).to(device)
    circulant = torch.from_numpy(scipy.linalg.circulant(np.random.default_rng(0).standard_normal(n))).to(device)
    for name, run in [
        ("bp_from_dense(DCT, real_part, BPP)", lambda: relative(bp_from_dense(dct, n_modules=2, real_part=True).to_dense().real, dct)),
        ("kaleidoscope_from_dense(circulant)", lambda: relative(kaleidoscope_from_dense(circulant.to(torch.complex128)).to_dense(), circulant.to(torch.complex128))),
    ]:
        checked += 1
        try:
            error = run()
            print(f"{name}: relative error {error:.1e}")
            if error > 1e-10:
                failures.append(f"{name}: relative error {error:.1e}")
        except Exception:
            failures.append(f"{name}: " + traceback.format_exc(limit=3).strip().splitlines()[-1])
    for line in failures:
        print("FAIL", line)
    print(f"{checked - len(failures)} of {checked} checks passed on {torch.cuda.get_device_name()}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
