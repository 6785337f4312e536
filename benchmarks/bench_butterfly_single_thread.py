"""Butterfly targets of issue 3 in single-thread CPU time (robust on a shared, loaded machine).

Batch 256, float32, one thread everywhere (Numba, torch), ``time.thread_time``, best of 7 repeats;
ratios side by side in one process: fused forward, forward+backward (input and twiddles) of
``sum()`` and of a given contiguous gradient,
``torch.fft.fft``, ``nn.Linear(n, n)`` (n <= 4096) and the pure-PyTorch reference at n = 1024.

    NUMBA_NUM_THREADS=1 python benchmarks/bench_butterfly_single_thread.py [n ...]
"""

import os
import sys

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import torch  # noqa: E402

from structmat.ops import use_reference  # noqa: E402
from structmat.ops.butterfly import butterfly_multiply  # noqa: E402
from structmat.ops.butterfly_cpu import backward_extra_bytes  # noqa: E402
from structmat.experiments.timing import best_thread_time  # noqa: E402

BATCH = 256


def cpu_time(fn, repeat: int = 7) -> float:
    """Best CPU seconds per call of ``fn`` (inner loop of about 20 ms)."""
    return best_thread_time(fn, repeat, inner_time=0.02)


def main(sizes: list[int]) -> None:
    torch.set_num_threads(1)
    print("| n | fwd ms | GFLOP/s | fwd+bwd ms | (f+b)/f | (f+b)/f given grad | fft ms | fwd/fft | × nn.Linear | × reference | bwd extra mem (× input) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        levels = n.bit_length() - 1
        twiddle = torch.randn(1, 1, levels, n // 2, 2, 2) / 2**0.5
        x = torch.randn(BATCH, n)
        with torch.inference_mode():
            forward = cpu_time(lambda: butterfly_multiply(twiddle, x))
            fft = cpu_time(lambda: torch.fft.fft(x))
            linear = None
            if n <= 4096:
                layer = torch.nn.Linear(n, n)
                linear = cpu_time(lambda: layer(x), repeat=3)
            reference = None
            if n == 1024:
                with use_reference():
                    reference = cpu_time(lambda: butterfly_multiply(twiddle, x), repeat=3)
        tw, xg = twiddle.clone().requires_grad_(True), x.clone().requires_grad_(True)

        def forward_backward():
            tw.grad = xg.grad = None
            butterfly_multiply(tw, xg).sum().backward()

        grad = torch.randn(BATCH, 1, n)

        def forward_backward_given_grad():
            tw.grad = xg.grad = None
            butterfly_multiply(tw, xg).backward(grad)

        both = cpu_time(forward_backward)
        both_given_grad = cpu_time(forward_backward_given_grad)
        memory = backward_extra_bytes(twiddle, x[:, None]) / (x.numel() * x.element_size())
        cell = lambda v: "—" if v is None else f"{v / forward:.1f}"  # noqa: E731
        print(
            f"| {n} | {1e3 * forward:.3f} | {3 * n * levels * BATCH / forward / 1e9:.1f} | {1e3 * both:.3f} | "
            f"{both / forward:.2f} | {both_given_grad / forward:.2f} | {1e3 * fft:.3f} | {forward / fft:.2f} | {cell(linear)} | {cell(reference)} | {memory:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [256, 1024, 4096, 16384])
