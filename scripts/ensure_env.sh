#!/usr/bin/env bash
# Creates .venv with requirements.txt when it is missing or out of date, then prints its python.
# Sourced by train.bash, eval.bash and .ci/run so that each works on a fresh machine.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${CADA_VENV:-$repo/.venv}"
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$repo/requirements.txt" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[ensure_env] installing requirements into $venv (first run takes a few minutes)" >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q -r "$repo/requirements.txt" >&2
  echo "$want" > "$stamp"
fi
echo "$venv/bin/python"
