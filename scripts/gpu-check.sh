#!/usr/bin/env bash
# The checks that need a CUDA GPU, for a machine that has one with PyTorch, Triton, pytest,
# pytest-xdist and Hypothesis installed (no venv is made: the GPU build of torch is the machine's):
# the Triton butterfly kernels compiled on the device against the reference, every family moved to
# the GPU against the CPU, scripts/gpu_check.py (families and factorisations on CUDA), then
# `structmat bench butterfly-gpu`. Logs and the benchmark's JSON go
# to the folder given (default gpu-check/).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-check}"
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 COLUMNS=240
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" || exit 1
status=0
python3 -m pytest -q -p no:cacheprovider -n 8 -rs tests/test_butterfly_triton.py "tests/test_generic_families.py::test_cuda_matches_cpu" 2>&1 | tee "$out/tests.log" || status=1
python3 scripts/gpu_check.py 2>&1 | tee "$out/gpu_check.log" || status=1
python3 -m structmat.cli bench butterfly-gpu --json "$out/bench.json" 2>&1 | tee "$out/bench.log" || status=1
exit "$status"
