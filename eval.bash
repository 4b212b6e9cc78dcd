#!/usr/bin/env bash
# Evaluate a checkpoint.  bash eval.bash CHECKPOINT [CONFIG] [section.key=value ...]
#   Without CONFIG the checkpoint's own config is used. GPUS=N shards the queries over N processes.
set -euo pipefail
cd "$(dirname "$0")"
if [ $# -lt 1 ]; then echo "usage: bash eval.bash CHECKPOINT [CONFIG] [section.key=value ...]" >&2; exit 2; fi
python=$(bash scripts/ensure_env.sh)
gpus=${GPUS:-1}
if [ "$gpus" -gt 1 ]; then
  exec "$python" -m torch.distributed.run --standalone --nproc_per_node "$gpus" eval.py "$@"  # a free port
fi
exec "$python" eval.py "$@"
