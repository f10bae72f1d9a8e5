#!/usr/bin/env bash
# Set up (if needed) and run the built-in demo: generate data, train, evaluate, draw predictions.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/detr demo "$@"
