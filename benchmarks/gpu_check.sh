#!/usr/bin/env bash
# The one-GPU check (about 7 min on an H200): every number a first GPU run has to confirm, in one JSON file.
#   1. trainer      train.py on the synthetic recipe on CUDA, one epoch (400 steps, ITM/ATP from step 200)
#   2. train_step   cada_base training steps at batch 24 and 120: fp32, TF32 (TORCH_ALLOW_TF32_CUBLAS_OVERRIDE),
#                   bf16, bf16 + torch.compile; samples/s and peak memory
#   3. eval         the CUHK-PEDES-size two-stage evaluation (6,156 queries x 3,074 images, k 16)
#   4. losses       the four losses on CPU vs GPU (fp32, TF32, bf16) on identical weights and inputs
#   5. two_procs    two gloo processes sharing the one GPU (world 2 on CUDA tensors) vs one process
#   6. dist_startup a one-process torchrun NCCL start-up
# Runs with whatever torch ${PYTHON:-python3} has (an image's own, without internet, or .venv/bin/python).
# Writes $OUT/gpu_check.json ({"checks": {label: result}}) when OUT is set; a failed part is recorded, not fatal.
# --tiny: the same parts at toy sizes on CPU (tests/test_benchmarks.py runs it).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
SCRATCH="$(mktemp -d)"
trap 'rm -rf "$SCRATCH"' EXIT
RESULTS="$SCRATCH/results.jsonl"
: > "$RESULTS"

# record LABEL [VAR=value ...] -- COMMAND...: runs COMMAND, keeps its last JSON line under LABEL (or its failure)
record() {
  local label=$1; shift
  local env=()
  while [[ $1 != "--" ]]; do env+=("$1"); shift; done
  shift
  echo "== $label" >&2
  local output
  output=$(env "${env[@]}" "$@" 2> >(tail -n 40 >&2))
  local line
  line=$(printf '%s\n' "$output" | grep '^{' | tail -n 1)
  if [[ -z $line ]]; then line='{"ok": false, "error": "no JSON line; see the log above"}'; fi
  printf '%s\t%s\n' "$label" "$line" >> "$RESULTS"
}

if [[ "${1:-}" == "--tiny" ]]; then
  TINY=(--tiny)
  TF32_RERUN=false  # the CPU has no TF32: the same fp32 steps again
  STEP=(--model cada_tiny --image-size 64 32 --steps 1 --device cpu)
  SIZES=(4)
  VARIANTS=fp32,bf16
  EVAL=(--model cada_tiny --queries 24 --gallery 24 --image-size 64 32 --device cpu)
else
  TINY=()
  TF32_RERUN=true
  STEP=(--model cada_base --steps 3)
  SIZES=(24 120)
  VARIANTS=fp32,bf16,bf16+compile
  EVAL=(--model cada_base --queries 6156 --gallery 3074 --k 16)
fi

"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0))"
record trainer -- "$PY" benchmarks/gpu_check_parts.py trainer "${TINY[@]}" --out "$SCRATCH/trainer"
for batch in "${SIZES[@]}"; do
  record "train_step_b${batch}" -- "$PY" benchmarks/train_step.py "${STEP[@]}" --batch "$batch" --variants "$VARIANTS" --json
  if $TF32_RERUN; then
    record "train_step_b${batch}_tf32" TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 -- \
      "$PY" benchmarks/train_step.py "${STEP[@]}" --batch "$batch" --variants fp32 --json
  fi
done
record eval_two_stage -- "$PY" benchmarks/eval_two_stage.py "${EVAL[@]}" --json
record losses_cpu_vs_device -- "$PY" benchmarks/gpu_check_parts.py losses "${TINY[@]}"
record two_processes_one_device -- "$PY" benchmarks/gpu_check_parts.py two_processes "${TINY[@]}" --out "$SCRATCH/two"
record dist_startup -- "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 benchmarks/dist_startup.py --json

"$PY" - "$RESULTS" <<'PYEOF'
import json, os, sys
import torch
checks = {}
for line in open(sys.argv[1]):
    label, result = line.rstrip("\n").split("\t", 1)
    checks[label] = json.loads(result)
print("\ngpu_check summary")
for label, result in checks.items():
    shown = {k: v for k, v in result.items() if k not in ("benchmark", "rows", "error")}
    print(f"  {label:26s} " + ("FAILED " + result["error"][-200:] if "error" in result else json.dumps(shown)[:300]))
    for row in result.get("rows", []):
        print(f"  {'':26s} " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
if os.environ.get("OUT"):
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    with open(os.path.join(os.environ["OUT"], "gpu_check.json"), "w") as handle:
        json.dump({"torch": torch.__version__, "device": device, "checks": checks}, handle, indent=1)
PYEOF
