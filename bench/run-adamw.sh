#!/usr/bin/env bash
# bench/run-adamw.sh — AdamW step time over 100 M parameters (100 tensors) on 2 threads: ours
# (bench_adamw) against torch.optim.AdamW default and foreach (bench/torch_adamw.py, Debian's
# python3-torch), each the median of a few steps; prints the three times and the ratios
# ours / torch (the target is <= 0.5). Needs a Release build in build/ (scripts/build).
# usage: bench/run-adamw.sh [PARAMS] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
params=${1:-100000000}
steps=${2:-3}
threads=2
bin=build/bench/bench_adamw
[[ -x $bin ]] || { echo "run-adamw: $bin missing (run scripts/build)" >&2; exit 1; }
ours=$(OMP_NUM_THREADS=$threads OMP_PROC_BIND=false "$bin" --params "$params" --tensors 100 \
       --steps "$steps" | sed -n 's/^ours_ms=//p')
torch_out=$(OMP_NUM_THREADS=$threads /usr/bin/python3 bench/torch_adamw.py --params "$params" \
            --tensors 100 --steps "$steps" --threads "$threads")
tdef=$(sed -n 's/^torch_default_ms=//p' <<<"$torch_out")
tfe=$(sed -n 's/^torch_foreach_ms=//p' <<<"$torch_out")
echo "AdamW step, $params params in 100 tensors, $threads threads, median of $steps steps"
printf '  ours           %10.2f ms\n' "$ours"
printf '  torch default  %10.2f ms   ratio ours/torch %.3f\n' "$tdef" "$(awk -v a="$ours" -v b="$tdef" 'BEGIN{print a/b}')"
printf '  torch foreach  %10.2f ms   ratio ours/torch %.3f\n' "$tfe" "$(awk -v a="$ours" -v b="$tfe" 'BEGIN{print a/b}')"
