#!/usr/bin/env bash
# Runs the test suite (CPU, a few minutes), installing requirements first when needed.
set -euo pipefail
cd "$(dirname "$0")/.."
python=$(bash scripts/ensure_env.sh)
exec "$python" -m pytest -q "$@"
