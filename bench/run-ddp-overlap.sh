#!/usr/bin/env bash
# bench/run-ddp-overlap.sh — data parallelism on one machine (docs/clusters.md "Measurements"):
# `diffusion train` on recipes/configs/emoji-ddpm.yaml, global batch 16, as 1 rank x 2 OpenMP
# threads and as 2 ranks x 1 thread (mpirun) with the gradients summed after backward
# (ddp_bucket_mb=0) and in buckets during backward (the default 25 MiB, one bucket for this
# 4.3 MB gradient, and 1 MiB, five buckets). Prints the mean s/step of steps 2..N (from the
# logged it/s), rank 0's share of step time waiting in MPI (metrics.jsonl mpi_wait_s: the
# sum's wait and the step's agreement, the slowest rank included) and the smallest and median
# wait of a step (the smallest: a step where rank 0 came last, about the transfer alone), and
# how many buckets started during backward and finished their exchange before the final wait.
# The ranks' layouts give the same bits (tests/mpi); this only measures. ROUNDS repeats the
# layouts alternately (a shared machine's load drifts). Needs scripts/fetch-emoji and Open MPI.
# Usage: bench/run-ddp-overlap.sh [STEPS] [ROUNDS]   (default 40 steps, 1 round)
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-40}
rounds=${2:-1}
export OMP_WAIT_POLICY=passive OMPI_MCA_btl_vader_single_copy_mechanism=none
scripts/build >/dev/null
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
args=(recipes/configs/emoji-ddpm.yaml max_train_steps="$steps" lr_warmup_steps=0
  checkpointing_steps=0 num_validation_images=0 dataloader_num_workers=1)
mpi=(mpirun --allow-run-as-root --oversubscribe -np 2 -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY)
summary() { # run folder, label
  python3 - "$1/metrics.jsonl" "$2" <<'PY'
import json, sys
import statistics
rows = [json.loads(l) for l in open(sys.argv[1])][1:]
step = sum(1 / r["it_s"] for r in rows)
waits = [r.get("mpi_wait_s", 0) for r in rows]
share, low, mid = "-", "-", "-"
if "mpi_wait_s" in rows[0]:
    share = f"{100 * sum(waits) / step:.1f} %"
    low, mid = f"{1000 * min(waits):.1f}", f"{1000 * statistics.median(waits):.1f}"
print(f"{sys.argv[2]:<34} {step / len(rows):8.3f} {share:>10} {low:>9} {mid:>9}")
PY
}
printf "%-34s %8s %10s %9s %9s\n" layout "s/step" "MPI wait" "min ms" "median ms"
for _ in $(seq "$rounds"); do
  rm -rf "$out"/*
  OMP_NUM_THREADS=2 build/diffusion train "${args[@]}" output_dir="$out/one" 2>/dev/null
  summary "$out/one" "1 rank x 2 threads, batch 16"
  for mb in 0 25 1; do
    "${mpi[@]}" build/diffusion train "${args[@]}" train_batch_size=8 ddp_bucket_mb=$mb \
      output_dir="$out/two$mb" 2>"$out/two$mb.log"
    summary "$out/two$mb" "2 ranks x 1 thread, ddp_bucket_mb $mb"
    grep -o "[0-9]* of [0-9]* buckets started during backward, [0-9]* exchanged before the final wait" \
      "$out/two$mb.log" | sed 's/^/    /' || true
  done
done
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
