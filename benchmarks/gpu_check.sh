#!/usr/bin/env bash
# One-GPU readiness check (< 5 min on an H100): cada_base training steps at batch 24 (fp32, bf16,
# bf16 + compile, fp32 with the AdamW step inside backward) with peak memory, the CUHK-PEDES-size
# two-stage evaluation (6,156 x 3,074, k 16), and a one-process torchrun NCCL start-up; prints one
# table and writes $OUT/gpu_check.json if $OUT is set.
# --tiny runs the same steps at toy sizes on CPU (tested). Python: ${PYTHON:-python3}.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [[ "${1:-}" == "--tiny" ]]; then
  TRAIN=(--model cada_tiny --batch 4 --image-size 64 32 --steps 1 --device cpu --variants baseline,fp32,bf16)
  EVAL=(--model cada_tiny --queries 24 --gallery 24 --image-size 64 32 --device cpu)
else
  TRAIN=(--model cada_base --batch 24 --steps 3 --variants baseline,fp32,bf16,bf16+compile,fp32+in_backward)
  EVAL=(--model cada_base --queries 6156 --gallery 3074 --k 16)
fi
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
"$PY" benchmarks/train_step.py "${TRAIN[@]}" --json | tee -a "$LOG"
"$PY" benchmarks/eval_two_stage.py "${EVAL[@]}" --json | tee -a "$LOG"
"$PY" -m torch.distributed.run --standalone --nproc_per_node=1 benchmarks/dist_startup.py --json | tee -a "$LOG" \
  || echo '{"benchmark": "dist_startup", "all_reduce_ok": false}' >> "$LOG"
"$PY" - "$LOG" <<'PYEOF'
import json, os, sys
results = [json.loads(line) for line in open(sys.argv[1]) if line.startswith('{"benchmark"')]
print("\ngpu_check summary")
for result in results:
    name = result["benchmark"]
    for row in result.get("rows", [result]):
        fields = {k: v for k, v in row.items() if k not in ("benchmark",)}
        print(f"  {name:15s} " + "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()))
if os.environ.get("OUT"):
    with open(os.path.join(os.environ["OUT"], "gpu_check.json"), "w") as handle:
        json.dump(results, handle, indent=1)
PYEOF
