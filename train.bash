#!/usr/bin/env bash
# Train CADA.  bash train.bash [CONFIG] [section.key=value ...]
#   CONFIG defaults to configs/synthetic.yaml (built-in synthetic data, CPU-sized model).
#   GPUS=N        processes per machine (N > 1 or NNODES > 1 launches torchrun; one machine: --standalone)
#   NNODES=M NODE_RANK=r MASTER_ADDR=host [MASTER_PORT=port]   for several machines, which must share
#                 train.output_dir (a network file system): resume and the final test read the files rank 0 writes
set -euo pipefail
cd "$(dirname "$0")"
python=$(bash scripts/ensure_env.sh)
config=configs/synthetic.yaml
if [ $# -gt 0 ] && [[ "$1" != *=* ]]; then config=$1; shift; fi
gpus=${GPUS:-1}
nnodes=${NNODES:-1}
if [ "$nnodes" -gt 1 ]; then
  # every node must see one shared train.output_dir (rank 0 writes the checkpoints, all ranks resume from them)
  : "${MASTER_ADDR:?NNODES>1 needs MASTER_ADDR (the address of node 0) and NODE_RANK on every node}"
  exec "$python" -m torch.distributed.run --nproc_per_node "$gpus" --nnodes "$nnodes" \
    --node_rank "${NODE_RANK:?NNODES>1 needs NODE_RANK (0..NNODES-1) on every node}" \
    --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}" train.py "$config" "$@"
fi
if [ "$gpus" -gt 1 ]; then  # one machine: --standalone picks a free port, so two jobs can run side by side
  exec "$python" -m torch.distributed.run --standalone --nproc_per_node "$gpus" train.py "$config" "$@"
fi
exec "$python" train.py "$config" "$@"
