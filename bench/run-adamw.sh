#!/usr/bin/env bash
# bench/run-adamw.sh — AdamW step time over 100 M parameters (100 tensors) on 2 threads: ours
# (bench_adamw) against torch.optim.AdamW default and foreach (bench/torch_adamw.py, Debian's
# python3-torch), each the median of a few steps; prints the three times and the ratios
# ours / torch (the target is <= 0.5). Needs a Release build in build/ (scripts/build).
# usage: bench/run-adamw.sh [PARAMS] [STEPS]
#        DF_BENCH_ROUNDS=N bench/run-adamw.sh   (alternating rounds, default 3)
# The two sides run alternately (ours, torch, ours, ...) and each keeps its best median: on a
# shared machine a neighbour slows whole runs. Both run with passive OpenMP waiting
# (OMP_WAIT_POLICY, unless set): with spinning waits a descheduled thread made torch's 2-thread
# step 6x slower than its 1-thread step on a loaded 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
params=${1:-100000000}
steps=${2:-3}
rounds=${DF_BENCH_ROUNDS:-3}
threads=2
export OMP_NUM_THREADS=$threads OMP_PROC_BIND=false OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
bin=build/bench/bench_adamw
[[ -x $bin ]] || { echo "run-adamw: $bin missing (run scripts/build)" >&2; exit 1; }
ours=1e30 tdef=1e30 tfe=1e30
min() { awk -v a="$1" -v b="$2" 'BEGIN { print (a < b) ? a : b }'; }
for ((r = 0; r < rounds; r++)); do
  o=$("$bin" --params "$params" --tensors 100 --steps "$steps" | sed -n 's/^ours_ms=//p')
  torch_out=$(/usr/bin/python3 bench/torch_adamw.py --params "$params" --tensors 100 \
              --steps "$steps" --threads "$threads")
  d=$(sed -n 's/^torch_default_ms=//p' <<<"$torch_out")
  f=$(sed -n 's/^torch_foreach_ms=//p' <<<"$torch_out")
  echo "round $((r + 1)): ours $o ms, torch default $d ms, foreach $f ms" >&2
  ours=$(min "$ours" "$o") tdef=$(min "$tdef" "$d") tfe=$(min "$tfe" "$f")
done
echo "AdamW step, $params params in 100 tensors, $threads threads ($OMP_WAIT_POLICY), median of $steps steps, best of $rounds rounds"
printf '  ours           %10.2f ms\n' "$ours"
printf '  torch default  %10.2f ms   ratio ours/torch %.3f\n' "$tdef" "$(awk -v a="$ours" -v b="$tdef" 'BEGIN{print a/b}')"
printf '  torch foreach  %10.2f ms   ratio ours/torch %.3f\n' "$tfe" "$(awk -v a="$ours" -v b="$tfe" 'BEGIN{print a/b}')"
