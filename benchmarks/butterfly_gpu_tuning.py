"""Tuning probes of the Triton butterfly kernels (docs/benchmarks.md, "Butterfly on a GPU"); needs a
CUDA device. ``python benchmarks/butterfly_gpu_tuning.py sweep OUT_DIR`` times the kernels directly
for five shapes over tile sizes, warps and rows per program (writes ``OUT_DIR/sweep.json``);
``python benchmarks/butterfly_gpu_tuning.py host`` measures the host time per call of a launch-only
loop against ``nn.Linear`` and ``torch.fft.fft``."""

import itertools
import json
import math
import os
import sys
import time

import torch

from structmat.experiments.bench_butterfly_gpu import _time as bench_time
from structmat.ops import butterfly_triton as bt
from structmat.ops.butterfly import butterfly_multiply


def _time(fn) -> float:
    return bench_time(fn, warmup=5, rep=25)


def sweep(out_dir: str) -> None:
    rows = []
    for batch, n in [(4096, 1024), (4096, 4096), (4096, 16384), (256, 1024), (256, 16384)]:
        tw = torch.randn(1, 1, int(math.log2(n)), n // 2, 2, 2, device="cuda")
        x, g = torch.randn(batch, 1, n, device="cuda"), torch.randn(batch, 1, n, device="cuda")
        for quads, warps, elements in itertools.product([256, 512, 1024], [4, 8], [4096, 16384]):
            bt.FORWARD_TILE_QUADS, bt.FORWARD_WARPS, bt.ROW_BLOCK_ELEMENTS = quads, warps, elements
            ms = _time(lambda: bt.butterfly_forward_triton(tw, x, True, False))
            rows.append(dict(kind="fwd", batch=batch, n=n, quads=quads, warps=warps, elements=elements, ms=ms))
        bt.ROW_BLOCK_ELEMENTS = 8192
        for quads, warps, fewest in itertools.product([128, 256, 512], [4, 8], [2, 4, 8]):
            bt.BACKWARD_TILE_QUADS, bt.BACKWARD_WARPS, bt.BACKWARD_FEWEST_ROWS = quads, warps, fewest
            ms = _time(lambda: bt.butterfly_backward_triton(tw, x, g, True, False))
            rows.append(dict(kind="bwd", batch=batch, n=n, quads=quads, warps=warps, fewest=fewest, ms=ms))
        for kind in ("fwd", "bwd"):
            best = min((r for r in rows if r["kind"] == kind and (r["batch"], r["n"]) == (batch, n)), key=lambda r: r["ms"])
            print(kind, batch, n, "best", best, flush=True)
    with open(os.path.join(out_dir, "sweep.json"), "w") as f:
        json.dump(rows, f, indent=1)


def _host_us(fn, calls: int = 300) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def host() -> None:
    for n in (256, 1024):
        tw = torch.randn(1, 1, n.bit_length() - 1, n // 2, 2, 2, device="cuda")
        x = torch.randn(256, n, device="cuda")
        linear = torch.nn.Linear(n, n, device="cuda")
        with torch.inference_mode():
            print(f"n={n} batch 256, us per call (host-bound loop): op {_host_us(lambda: butterfly_multiply(tw, x)):.1f}, "
                  f"backend {_host_us(lambda: bt.butterfly_forward_triton(tw, x[:, None], True, False)):.1f}, "
                  f"nn.Linear {_host_us(lambda: linear(x)):.1f}, torch.fft.fft {_host_us(lambda: torch.fft.fft(x)):.1f}", flush=True)


if __name__ == "__main__":
    torch.manual_seed(0)
    if sys.argv[1:2] == ["sweep"] and len(sys.argv) == 3:
        sweep(sys.argv[2])
    elif sys.argv[1:] == ["host"]:
        host()
    else:
        sys.exit(__doc__)
