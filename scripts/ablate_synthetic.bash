#!/usr/bin/env bash
# Loss ablation and seed spread of the synthetic recipe (configs/synthetic.yaml), then one markdown table.
#   bash scripts/ablate_synthetic.bash [section.key=value ...]     (overrides go to every run)
#   JOBS=N      runs at a time (default 1); THREADS=T torch threads per run (default: cores / JOBS)
#   OUT=DIR     where the runs go (default outputs/ablation_synthetic)
# Runs: global only, + ITM, + ATP (= the recipe, which leaves ARA out), + ARA at weight 1, and the recipe with
# seeds 1 and 2 (seed 42 is the + ATP run). Every run takes the recipe's steps.
# Global only has no trained ITM head, so it is evaluated without the re-ranking stage.
# Example on a 16-core GPU machine: JOBS=6 THREADS=2 bash scripts/ablate_synthetic.bash train.device=cuda
set -euo pipefail
cd "$(dirname "$0")/.."
python=$(bash scripts/ensure_env.sh)
out=${OUT:-outputs/ablation_synthetic}
jobs=${JOBS:-1}
threads=${THREADS:-$(( $(nproc) / jobs > 0 ? $(nproc) / jobs : 1 ))}
config=configs/synthetic.yaml
mkdir -p "$out"

declare -A runs=(
  [global]="loss.itm.weight=0 loss.atp.weight=0 loss.ara.weight=0 eval.rerank=false"
  [global+itm]="loss.atp.weight=0 loss.ara.weight=0"
  [recipe_seed42]="train.seed=42"
  [recipe+ara]="loss.ara.weight=1.0"
  [recipe_seed1]="train.seed=1"
  [recipe_seed2]="train.seed=2"
)
order=(global global+itm recipe_seed42 recipe+ara recipe_seed1 recipe_seed2)

# Generate the data set once, before parallel runs would race to create it.
"$python" -c "import sys; from engine.builders import load_splits; from utils.config import load_config
load_splits(load_config(sys.argv[1], sys.argv[2:]))" "$config" "$@" > "$out/data.log" 2>&1

run() {
  local name=$1; shift
  echo "[ablate] $name: started ($threads threads)"
  # shellcheck disable=SC2086  # the run's overrides are space-separated words
  if OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads "$python" train.py "$config" ${runs[$name]} \
      train.output_dir="$out/$name" train.resume=auto "$@" > "$out/$name.stdout" 2>&1; then
    echo "[ablate] $name: done"
  else
    echo "[ablate] $name: FAILED, see $out/$name.stdout" >&2
  fi
}
for name in "${order[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  run "$name" "$@" &
done
wait

"$python" - "$out" "${order[@]}" > "$out/ablation.md" <<'PY'
"""Markdown table of both stages per run, the seed spread of R1 and the attribute oracle."""
import json
import statistics
import sys
from pathlib import Path

out, names = Path(sys.argv[1]), sys.argv[2:]
metrics = ("R1", "R5", "R10", "mAP")
print("| run | stage | " + " | ".join(metrics) + " |")
print("|---|---|" + "---:|" * len(metrics))
records, r1 = {}, {"global": [], "reranked": []}
for name in names:
    path = out / name / "results.json"
    if not path.is_file():
        print(f"| {name} | missing ({path}) |" + " |" * len(metrics))
        continue
    records[name] = json.loads(path.read_text())
    for stage in ("global", "reranked"):
        values = records[name]["stages"].get(stage)
        if values is None:
            print(f"| {name} | {stage} |" + " n/a |" * len(metrics))
            continue
        print(f"| {name} | {stage} | " + " | ".join(f"{values[m]:.2f}" for m in metrics) + " |")
        if name.startswith("recipe_seed"):
            r1[stage].append(values["R1"])
print()
for stage, values in r1.items():
    if len(values) > 1:
        print(f"- {stage} R1 over {len(values)} seeds of the recipe: {statistics.mean(values):.2f} ± "
              f"{statistics.stdev(values):.2f} (mean ± sample std)")
oracle = next((r["oracle"] for r in records.values() if r.get("oracle")), None)
if oracle:
    print(f"- oracle (true attributes) R1 {oracle['R1']:.2f}, R5 {oracle['R5']:.2f}, R10 {oracle['R10']:.2f}, "
          f"mAP {oracle['mAP']:.2f}")
if records:
    first = next(iter(records.values()))
    print(f"- chance R1 {first['chance_r1']:.2f}; {first['split']} split, {first['num_queries']} queries, "
          f"{first['num_gallery']} gallery images")
PY
cat "$out/ablation.md"
