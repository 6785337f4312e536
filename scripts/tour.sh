#!/usr/bin/env bash
# Quickstart 1: set up the environment and run the main job, `structmat tour` on its defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
.venv/bin/structmat tour "$@"
