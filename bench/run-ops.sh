#!/usr/bin/env bash
# bench/run-ops.sh — op benchmark against PyTorch: builds bench_ops, runs it and the PyTorch peer
# (bench/torch_ops.py, Debian's /usr/bin/python3 with python3-torch) with 2 threads each, and
# prints one table: shape, op, our GFLOP/s, PyTorch GFLOP/s, ratio (ours / PyTorch).
#
#   bench/run-ops.sh                      # 3 rounds of 10 timed iterations after 2 warm-ups
#   DF_BENCH_ITERS=30 bench/run-ops.sh    # more iterations (quiet machine)
#   DF_BENCH_ITERS=3 DF_BENCH_BATCH=8 bench/run-ops.sh   # a quick smoke run
#   DF_CONV_LAYOUT=nhwc bench/run-ops.sh  # another conv layout (docs/layout.md)
#   DF_BENCH_LAYOUT=plain bench/run-ops.sh  # our activations plain NCHW, as PyTorch's (default:
#                                         # channel-blocked, the layout our models keep)
#   DF_BENCH_ROUNDS=5 bench/run-ops.sh    # more alternating rounds (default 3, see below)
#   DF_BENCH_THREADS=1 DF_BENCH_CLOCK=cpu bench/run-ops.sh  # CPU time, 1 thread: for a machine
#                                         # shared with other jobs (not the headline numbers;
#                                         # our conv_bwd_weights still runs DF_DNNL_REDUCTION_THREADS
#                                         # = 2 threads, see autograd/dnnl_impl.h)
# The two programs run alternately, DF_BENCH_ROUNDS times each (ours, torch, ours, torch, ...),
# and each side's best time per case is kept: on a shared virtual machine a neighbour slows
# whole runs (medians of identical runs varied up to 2x here); alternating spreads that over both
# sides, and the minimum is the time the work itself takes.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j 2 --target bench_ops >/dev/null
# passive OpenMP waiting on both sides (unless set): on a shared 2-core machine spinning waits for a
# descheduled thread multiply step times (see bench/run-adamw.sh)
export OMP_NUM_THREADS=${DF_BENCH_THREADS:-2} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
ours=$(mktemp) theirs=$(mktemp)
trap 'rm -f "$ours" "$theirs"' EXIT
rounds=${DF_BENCH_ROUNDS:-3}
for ((r = 0; r < rounds; r++)); do
  build/bench/bench_ops >>"$ours"
  /usr/bin/python3 bench/torch_ops.py >>"$theirs"
done
echo "threads: $OMP_NUM_THREADS ($OMP_WAIT_POLICY), iterations: ${DF_BENCH_ITERS:-10} x $rounds rounds, best time per case, clock: ${DF_BENCH_CLOCK:-wall}, activations: ${DF_BENCH_LAYOUT:-blocked} (ours; PyTorch: NCHW), conv layout for plain: ${DF_CONV_LAYOUT:-any}"
# per case each side's best (minimum) time over all rounds and iterations (column 5; a neighbour
# on a shared machine only ever adds time), as GFLOP/s: column 4 (GFLOP/s at the median) times
# column 3 (the median ms) is the case's GFLOP
awk -F'\t' '
  function keep(arr, k, v) { if (!(k in arr) || v < arr[k]) arr[k] = v }
  NR == FNR { keep(them, $1 "\t" $2, $5); next }
  { k = $1 "\t" $2; if (!(k in ours)) order[n++] = k; keep(ours, k, $5); gflop[k] = $4 * $3 / 1000 }
  END {
    printf "%-22s %-17s %10s %10s %7s\n", "shape", "op", "ours", "pytorch", "ratio";
    printf "%-22s %-17s %10s %10s %7s\n", "", "", "GFLOP/s", "GFLOP/s", "";
    for (i = 0; i < n; i++) {
      k = order[i]; split(k, f, "\t");
      printf "%-22s %-17s %10.1f %10.1f %7.2f\n", f[1], f[2], gflop[k] / ours[k] * 1000,
             gflop[k] / them[k] * 1000, them[k] / ours[k]
      # after the three conv passes of a shape: forward + backward, what a training step pays
      if (f[2] ~ /^conv_/) { e2e_g += gflop[k]; e2e_o += ours[k]; e2e_t += them[k] }
      if (f[2] == "conv_bwd_weights") {
        printf "%-22s %-17s %10.1f %10.1f %7.2f\n", f[1], "conv_fwd+bwd", e2e_g / e2e_o * 1000,
               e2e_g / e2e_t * 1000, e2e_t / e2e_o
        e2e_g = e2e_o = e2e_t = 0
      }
    }
  }
' "$theirs" "$ours"
