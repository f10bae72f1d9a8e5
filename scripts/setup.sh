#!/usr/bin/env bash
# Create .venv (once) and install detr (distribution detr-aligned) with its test and export extras. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# pip's own output without the warnings about this machine's extra package folders; pip's exit status is kept.
pip_quiet() { .venv/bin/python -m pip "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
pip_quiet install --quiet --upgrade pip
# torch/torchvision first, pinned to the builds this project is tested with.
pip_quiet install --quiet torch==2.14.1 torchvision==0.29.1
# Until issue #16 this project was installed as `detr`, the registry name of a third party's upload of the
# official code; it is `detr-aligned` now (import name and command stay `detr`). Drop an old install of it.
if .venv/bin/python -m pip show detr 2>/dev/null | grep -qx "Editable project location: $(pwd -P)"; then
  pip_quiet uninstall --quiet -y detr
fi
pip_quiet install --quiet -e ".[dev]"
.venv/bin/python -c "import detr, torch, torchvision; print('detr', detr.__version__, 'torch', torch.__version__, 'torchvision', torchvision.__version__)"
