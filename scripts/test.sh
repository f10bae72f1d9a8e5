#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, the side-by-side tests with the official code included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
