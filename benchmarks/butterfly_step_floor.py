"""Where a butterfly training step's time goes (float32, batch 256, two threads, wall clock,
medians of 7): the fused forward and backward kernels alone (``FUSED_BACKENDS["cpu"]`` on
preallocated tensors), the op under ``inference_mode`` (the "forward" of issue 3's ratio), a whole
step ``butterfly_multiply(tw, x).backward(g)``, and PyTorch's own floor for a forward + backward
of a one-node graph on one element. docs/benchmarks.md ("Why the last target is reported
blocked") derives from these numbers why forward + backward <= 3.5 x forward is out of reach for a
recomputing backward.

    python benchmarks/butterfly_step_floor.py [n ...]
"""

import sys

import torch

from structmat.experiments.timing import time_call
from structmat.ops.butterfly import FUSED_BACKENDS, butterfly_multiply

BATCH = 256


def median_ms(fn) -> float:
    """Median milliseconds per call over 7 timing loops of about 30 ms each (the shared
    :func:`structmat.experiments.timing.time_call`)."""
    return 1e3 * time_call(fn, repeat=7, min_time=0.03, warmup=20)


def autograd_floor_ms() -> float:
    """A forward + backward of ``y * 1.0`` on one element: the engine's cost per step."""
    y, g = torch.randn(1, requires_grad=True), torch.ones(1)

    def step():
        y.grad = None
        (y * 1.0).backward(g)

    return median_ms(step)


def main(sizes: list[int]) -> None:
    torch.set_num_threads(2)
    forward, backward = FUSED_BACKENDS["cpu"]
    print(f"PyTorch's forward + backward floor (one element): {1e3 * autograd_floor_ms():.1f} us\n")
    print("| n | fwd kernel ms | bwd kernel ms | bwd / fwd kernel | op inference ms (= \"forward\") | step ms | step / forward |")
    print("|---|---|---|---|---|---|---|")
    for n in sizes:
        levels = n.bit_length() - 1
        twiddle = torch.randn(1, 1, levels, n // 2, 2, 2) / 2**0.5
        x, g = torch.randn(BATCH, 1, n), torch.randn(BATCH, 1, n)
        tw, xg = twiddle.clone().requires_grad_(), x.clone().requires_grad_()
        kernel_forward = median_ms(lambda: forward(twiddle, x, True, False))
        kernel_backward = median_ms(lambda: backward(twiddle, x, g, True, False))
        with torch.inference_mode():
            inference = median_ms(lambda: butterfly_multiply(twiddle, x))

        def step():
            tw.grad = xg.grad = None
            butterfly_multiply(tw, xg).backward(g)

        whole = median_ms(step)
        print(
            f"| {n} | {kernel_forward:.4f} | {kernel_backward:.4f} | {kernel_backward / kernel_forward:.2f} | "
            f"{inference:.4f} | {whole:.4f} | {whole / inference:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [256, 1024, 4096, 16384])
