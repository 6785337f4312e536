"""Butterfly gradients under ``torch.func`` and ``create_graph``: fused backward against the
reference's (float32, wall clock, median of 5; ratios side by side in one process).

For each n (batch 256, one butterfly): eager ``loss.backward()``; ``torch.func.grad`` of the same
loss (the fused backward as a differentiable function since s19; before, the reference's
vector-Jacobian product); a gradient penalty (``create_graph=True``, then the penalty's gradient:
both through the reference's vector-Jacobian product and its graph); per-sample twiddle gradients
``vmap(grad(loss))`` over 32 samples (one fused backward with the samples as stacks). Each row
also times the same call with ``use_reference()`` -- everything through the reference.

    python benchmarks/bench_butterfly_torch_func.py [n ...]
"""

import sys

import torch

from structmat.experiments.timing import time_call
from structmat.ops import use_reference
from structmat.ops.butterfly import butterfly_multiply

BATCH, SAMPLES = 256, 32


def loss(t, v):
    return butterfly_multiply(t, v).square().sum()


def cases(n: int) -> dict:
    levels = n.bit_length() - 1
    twiddle = torch.randn(1, 1, levels, n // 2, 2, 2) / 2**0.5
    x = torch.randn(BATCH, n)
    tw = twiddle.clone().requires_grad_(True)
    xg = x.clone().requires_grad_(True)
    func_grad = torch.func.grad(loss)
    per_sample = torch.func.vmap(torch.func.grad(lambda t, v: loss(t, v.unsqueeze(0))), in_dims=(None, 0))

    def eager():
        tw.grad = None
        loss(tw, x).backward()

    def penalty():
        tw.grad = xg.grad = None
        (gx,) = torch.autograd.grad(loss(tw, xg), xg, create_graph=True)
        gx.square().sum().backward()

    return {
        "eager backward": eager,
        "torch.func.grad": lambda: func_grad(twiddle, x),
        "gradient penalty (create_graph)": penalty,
        f"per-sample grads, {SAMPLES} samples": lambda: per_sample(twiddle, x[:SAMPLES]),
    }


def main(sizes: list[int]) -> None:
    print("| n | case | fused ms | reference ms | reference / fused |")
    print("|---|---|---|---|---|")
    for n in sizes:
        for name, fn in cases(n).items():
            fused = time_call(fn, repeat=5)
            with use_reference():
                reference = time_call(fn, repeat=3)
            print(f"| {n} | {name} | {1e3 * fused:.3g} | {1e3 * reference:.3g} | {reference / fused:.1f} |", flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [256, 1024, 4096])
