#!/usr/bin/env bash
# Train CADA.  bash train.bash [CONFIG] [section.key=value ...]
#   CONFIG defaults to configs/synthetic.yaml (built-in synthetic data, CPU-sized model).
#   GPUS=N        processes per machine (N > 1 or NNODES > 1 launches torchrun)
#   NNODES=M NODE_RANK=r MASTER_ADDR=host MASTER_PORT=port   for several machines
set -euo pipefail
cd "$(dirname "$0")"
python=$(bash scripts/ensure_env.sh)
config=configs/synthetic.yaml
if [ $# -gt 0 ] && [[ "$1" != *=* ]]; then config=$1; shift; fi
gpus=${GPUS:-1}
nnodes=${NNODES:-1}
if [ "$gpus" -gt 1 ] || [ "$nnodes" -gt 1 ]; then
  exec "$python" -m torch.distributed.run --nproc_per_node "$gpus" --nnodes "$nnodes" \
    --node_rank "${NODE_RANK:-0}" --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
    train.py "$config" "$@"
fi
exec "$python" train.py "$config" "$@"
