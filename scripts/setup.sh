#!/usr/bin/env bash
# Create .venv (once) and install detr with its test and export extras. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# torch/torchvision first, pinned to the builds this project is tested with.
.venv/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install --quiet -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import detr, torch, torchvision; print('detr', detr.__version__, 'torch', torch.__version__, 'torchvision', torchvision.__version__)"
