#!/usr/bin/env bash
# bench/run-ops.sh — op benchmark against PyTorch: builds bench_ops, runs it and the PyTorch peer
# (bench/torch_ops.py, Debian's /usr/bin/python3 with python3-torch) with 2 threads each, and
# prints one table: shape, op, our GFLOP/s, PyTorch GFLOP/s, ratio (ours / PyTorch).
#
#   bench/run-ops.sh                      # 10 timed iterations after 2 warm-ups
#   DF_BENCH_ITERS=30 bench/run-ops.sh    # more iterations (quiet machine)
#   DF_BENCH_ITERS=3 DF_BENCH_BATCH=8 bench/run-ops.sh   # a quick smoke run
#   DF_CONV_LAYOUT=nhwc bench/run-ops.sh  # another conv layout (docs/layout.md)
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j 2 --target bench_ops >/dev/null
export OMP_NUM_THREADS=2
ours=$(mktemp) theirs=$(mktemp)
trap 'rm -f "$ours" "$theirs"' EXIT
build/bench/bench_ops >"$ours"
/usr/bin/python3 bench/torch_ops.py >"$theirs"
echo "threads: 2, iterations: ${DF_BENCH_ITERS:-10} (median), conv layout: ${DF_CONV_LAYOUT:-any}"
awk -F'\t' '
  NR == FNR { them[$1 "\t" $2] = $4; next }
  BEGIN { printf "%-22s %-17s %10s %10s %7s\n", "shape", "op", "ours", "pytorch", "ratio";
          printf "%-22s %-17s %10s %10s %7s\n", "", "", "GFLOP/s", "GFLOP/s", "" }
  { t = them[$1 "\t" $2];
    printf "%-22s %-17s %10.1f %10.1f %7.2f\n", $1, $2, $4, t, (t > 0 ? $4 / t : 0) }
' "$theirs" "$ours"
