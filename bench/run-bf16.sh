#!/usr/bin/env bash
# bench/run-bf16.sh — mixed precision (issue 22): our step in fp32 and in bf16, interleaved
# (fp32, bf16, fp32, ...) in separate processes with 2 threads each, best median of ROUNDS kept
# per side. Two models:
#   train32    bench_unet train32 (UNet2DModel 64/128/128 at 32x32, batch 32: zero grad,
#              forward, MSE, backward), DF_BENCH_MIXED=bf16 for the bf16 side;
#   emoji-ddpm `diffusion train recipes/configs/emoji-ddpm.yaml` (the whole step: data, EMA,
#              optimizer), mixed_precision=bf16 for the bf16 side; needs scripts/fetch-emoji.
# Prints ms per step of each side, the ratio bf16 / fp32, the oneDNN ISA, and the load average
# (the machine this runs on is usually shared). DNNL_MAX_CPU_ISA=AVX2 shows the emulated path.
#   bench/run-bf16.sh                       # both models, 3 rounds
#   DF_BENCH_MODES=train32 bench/run-bf16.sh
#   DF_BENCH_ROUNDS=5 DF_BENCH_ITERS=5 DF_BENCH_STEPS=40 bench/run-bf16.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build >/dev/null
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
rounds=${DF_BENCH_ROUNDS:-3} iters=${DF_BENCH_ITERS:-3} steps=${DF_BENCH_STEPS:-30}
modes=${DF_BENCH_MODES:-"train32 emoji-ddpm"}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# one measurement: prints ms per step
measure() { # MODE SIDE
  local mode=$1 side=$2
  if [[ $mode == train32 ]]; then
    local mixed=""
    [[ $side == bf16 ]] && mixed=bf16
    DF_BENCH_MIXED=$mixed build/bench/bench_unet train32 1 "$iters" |
      python3 -c "import json,sys;print(json.loads(sys.stdin.read())['ms'])"
  else
    rm -rf "$out/run"
    build/diffusion train recipes/configs/emoji-ddpm.yaml output_dir="$out/run" \
      max_train_steps="$steps" lr_warmup_steps=0 checkpointing_steps=0 num_validation_images=0 \
      mixed_precision="$([[ $side == bf16 ]] && echo bf16 || echo no)" 2>/dev/null
    python3 -c "
import json,statistics
rows=[json.loads(l) for l in open('$out/run/metrics.jsonl')][10:]
print(round(statistics.median(1000/r['it_s'] for r in rows),2))"
  fi
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
printf "%-12s %10s %10s %8s\n" mode "fp32 ms" "bf16 ms" "bf16/fp32"
for mode in $modes; do
  best32=1e9 best16=1e9
  for ((r = 0; r < rounds; r++)); do
    a=$(measure "$mode" fp32)
    b=$(measure "$mode" bf16)
    echo "$mode round $((r + 1)): fp32 $a ms, bf16 $b ms (load $(cut -d' ' -f1 /proc/loadavg))" >&2
    read -r best32 best16 < <(python3 -c "print(min($best32, $a), min($best16, $b))")
  done
  printf "%-12s %10s %10s %8.2f\n" "$mode" "$best32" "$best16" "$(echo "$best16 / $best32" | bc -l)"
done
isa=$(ONEDNN_VERBOSE=1 build/bench/bench_unet infer32 0 1 2>/dev/null | grep -m1 -o "isa:[^,]*" || true)
echo "oneDNN ${isa:-isa: unknown}; load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
