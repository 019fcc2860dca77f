#!/usr/bin/env bash
# bench/run-checkpointing.sh — what gradient_checkpointing costs and saves: `diffusion train` on
# recipes/configs/emoji-ddpm.yaml's model (data loading, EMA and all), 2 threads, without and with
# the key, at the given resolutions (the activations grow with the side; the weights do not).
# Prints the median ms per step after 5 warm-up steps, the allocator's peak bytes in use
# (metrics.jsonl mem_peak_mib: weights, gradients, optimizer, EMA and the step's activations) and
# the peak RSS of each run (which also holds the allocator's cache and the loader). The two runs
# give the same losses bit for bit (the tests check that); this only measures.
# Needs scripts/fetch-emoji. Usage: bench/run-checkpointing.sh [STEPS] [RESOLUTIONS...]
#   (default 15 steps at 32 and 64)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-15}
shift || true
sides=("${@:-32 64}")
read -r -a sides <<<"${sides[*]}"
export OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive
scripts/build >/dev/null
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
printf "%-6s %-6s %10s %14s %10s\n" side ckpt "ms/step" "mem peak MiB" "RSS MiB"
for side in "${sides[@]}"; do
  for ck in false true; do
    rm -rf "$out/run"
    /usr/bin/time -f "%M" -o "$out/rss" build/diffusion train recipes/configs/emoji-ddpm.yaml \
      output_dir="$out/run" max_train_steps="$steps" lr_warmup_steps=0 checkpointing_steps=0 \
      num_validation_images=0 resolution="$side" gradient_checkpointing="$ck" 2>/dev/null
    read -r ms mem < <(python3 -c "
import json,statistics
rows=[json.loads(l) for l in open('$out/run/metrics.jsonl')]
print(round(statistics.median(1000/r['it_s'] for r in rows[5:]),1), rows[-1]['mem_peak_mib'])")
    printf "%-6s %-6s %10s %14s %10.1f\n" "$side" "$ck" "$ms" "$mem" "$(awk '{print $1/1024}' "$out/rss")"
  done
done
