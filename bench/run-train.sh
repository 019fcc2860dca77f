#!/usr/bin/env bash
# bench/run-train.sh — training steps per second of recipes/configs/emoji-ddpm.yaml's model,
# ours (`diffusion train` itself: data loading, EMA and all) against the PyTorch peer
# (bench/torch_train_uncond.py: the same model and step with diffusers' formulas), same batch
# (16), 2 threads, passive OpenMP waiting for both. Prints ms per step, the time ratio and the
# peak-RSS ratio. Needs scripts/fetch-emoji and python3-torch (scripts/setup --dev).
# Usage: bench/run-train.sh [STEPS]   (default 40; the first 10 steps are warm-up)
#        DF_BENCH_ROUNDS=N bench/run-train.sh   (alternating rounds, default 3; see below)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-40}
export OMP_NUM_THREADS=2 OMP_WAIT_POLICY=passive
scripts/build >/dev/null
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# ROUNDS alternating runs of each side (ours, torch, ours, ...), each side's best median kept: on
# a shared virtual machine a neighbour slows whole runs (two identical runs' medians differed by
# a third here), and alternating spreads that over both sides. Peak RSS: the largest of the runs.
rounds=${DF_BENCH_ROUNDS:-3}
ours_ms=1e9 torch_ms=1e9 ours_rss=0 torch_rss=0
for ((r = 0; r < rounds; r++)); do
  rm -rf "$out/run"
  /usr/bin/time -f "%M" -o "$out/rss" build/diffusion train recipes/configs/emoji-ddpm.yaml \
    output_dir="$out/run" max_train_steps="$steps" lr_warmup_steps=0 checkpointing_steps=0 \
    num_validation_images=0 2>/dev/null
  ms=$(python3 -c "
import json,statistics
rows=[json.loads(l) for l in open('$out/run/metrics.jsonl')][10:]
print(round(statistics.median(1000/r['it_s'] for r in rows),2))")
  rss=$(awk '{printf "%.1f", $1/1024}' "$out/rss")
  # the peer builds the model our run exported (unet/config.json) and trains its prediction type
  torch_json=$(/usr/bin/python3 bench/torch_train_uncond.py 10 $((steps - 10)) "$out/run")
  read -r t_ms t_rss < <(python3 -c "import json;j=json.loads('$torch_json');print(j['ms'],j['peak_rss_mib'])")
  echo "round $((r + 1)): ours $ms ms $rss MiB, torch $t_ms ms $t_rss MiB" >&2
  read -r ours_ms ours_rss torch_ms torch_rss < <(python3 -c "
print(min($ours_ms, $ms), max($ours_rss, $rss), min($torch_ms, $t_ms), max($torch_rss, $t_rss))")
done
printf "%-12s %10s %10s %8s %10s %10s %8s\n" mode "ours ms" "torch ms" "time x" "ours MiB" "torch MiB" "RSS x"
printf "%-12s %10s %10s %8.2f %10s %10s %8.2f\n" emoji-ddpm "$ours_ms" "$torch_ms" \
  "$(echo "$ours_ms / $torch_ms" | bc -l)" "$ours_rss" "$torch_rss" "$(echo "$ours_rss / $torch_rss" | bc -l)"
