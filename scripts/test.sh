#!/usr/bin/env bash
# Quickstart 2: set up the environment and run the test suite on two worker processes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
.venv/bin/python -m pytest -n 2 -q "$@"
