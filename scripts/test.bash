#!/usr/bin/env bash
# Runs the test suite (CPU, a few minutes), installing requirements first when needed. It runs in one process per
# core (pytest-xdist; tests/conftest.py orders the modules); add -n 0 for a single process.
set -euo pipefail
cd "$(dirname "$0")/.."
python=$(bash scripts/ensure_env.sh)
exec "$python" -m pytest -q -n auto --dist loadfile --no-loadscope-reorder "$@"
