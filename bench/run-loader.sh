#!/usr/bin/env bash
# bench/run-loader.sh — data pipeline throughput, ours (1 and 2 worker threads) vs Pillow in one
# Python process, from an image folder and from an HDF5 pack of the emoji data.
#   bench/run-loader.sh [RESOLUTION] [SECONDS] [REPEATS]   (defaults 32, 2 and 3; short runs)
# Each configuration runs REPEATS times, interleaved with the others, and the best run counts:
# the machine is shared, and the best of a few short runs is the least disturbed one.
# Needs scripts/fetch-emoji (data/emoji-google) and a build (scripts/build). The pack is written
# to data/bench-emoji-google-64.h5 once. Prints a Markdown table.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
res="${1:-32}"
secs="${2:-2}"
reps="${3:-3}"
build="${DF_BUILD_DIR:-$root/build}"
folder="$root/data/emoji-google"
pack="$root/data/bench-emoji-google-64.h5"
[[ -f "$folder/metadata.jsonl" ]] || { echo "run-loader: run scripts/fetch-emoji first" >&2; exit 1; }
[[ -f "$pack" ]] || "$build/diffusion" dataset pack "$folder" "$pack" --resolution 64 >&2

# measure CMD...: prints "<images/s> <CPU microseconds per image>" (user + sys over images): the
# CPU figure stays meaningful when other jobs share the machine's cores.
measure() {
  local out cpu
  out=$( { /usr/bin/time -f "cpu=%U+%S" "$@" ; } 2>&1 )
  local ips n
  ips=$(sed -n 's/.*images_per_s=\([0-9.]*\).*/\1/p' <<<"$out")
  n=$(sed -n 's/.*images=\([0-9]*\).*/\1/p' <<<"$out")
  cpu=$(sed -n 's/^cpu=\([0-9.+]*\)$/\1/p' <<<"$out")
  awk -v ips="$ips" -v n="$n" -v cpu="$cpu" 'BEGIN { split(cpu, c, "+"); printf "%s %.0f\n", ips, (c[1] + c[2]) * 1e6 / n }'
}
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores" >&2
echo "| source | Pillow (1 process) img/s | ours 1 thread img/s | ours 2 threads img/s | ours 2 threads / Pillow | CPU us/img Pillow / ours |"
echo "|---|---|---|---|---|---|"
best() { sort -k1,1 -g -r | head -1; }
for src in folder pack; do
  path="$folder"; [[ $src == pack ]] && path="$pack"
  has_pil=1
  [[ $src == pack ]] && ! /usr/bin/python3 -c "import h5py" 2>/dev/null && has_pil=0
  pil_runs=""; one_runs=""; two_runs=""
  for ((r = 0; r < reps; r++)); do
    if ((has_pil)); then
      pil_runs+="$(measure /usr/bin/python3 "$root/bench/pillow_loader.py" "$path" "$res" 32 "$secs")"$'\n'
    fi
    one_runs+="$(measure "$build/bench/bench_loader" "$path" "$res" 1 32 "$secs")"$'\n'
    two_runs+="$(measure "$build/bench/bench_loader" "$path" "$res" 2 32 "$secs")"$'\n'
  done
  pil="n/a"; pcpu="n/a"
  ((has_pil)) && read -r pil pcpu < <(best <<<"$pil_runs")
  read -r one ocpu < <(best <<<"$one_runs")
  read -r two _ < <(best <<<"$two_runs")
  ratio="n/a"
  [[ $pil != n/a ]] && ratio=$(awk -v a="$two" -v b="$pil" 'BEGIN { printf "%.2fx", a / b }')
  echo "| $src ($res px from 64x64 PNG emoji) | $pil | $one | $two | $ratio | $pcpu / $ocpu |"
done
