#!/usr/bin/env bash
# bench/run-loader.sh — data pipeline throughput, ours (1 and 2 worker threads) vs Pillow in one
# Python process, from an image folder and from an HDF5 pack of the emoji data.
#   bench/run-loader.sh [RESOLUTION] [SECONDS]     (defaults 32 and 5; short runs)
# Needs scripts/fetch-emoji (data/emoji-google) and a build (scripts/build). The pack is written
# to data/bench-emoji-google-64.h5 once. Prints a Markdown table.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
res="${1:-32}"
secs="${2:-5}"
build="${DF_BUILD_DIR:-$root/build}"
folder="$root/data/emoji-google"
pack="$root/data/bench-emoji-google-64.h5"
[[ -f "$folder/metadata.jsonl" ]] || { echo "run-loader: run scripts/fetch-emoji first" >&2; exit 1; }
[[ -f "$pack" ]] || "$build/diffusion" dataset pack "$folder" "$pack" --resolution 64 >&2

rate() { sed -n 's/.*images_per_s=\([0-9.]*\).*/\1/p'; }
echo "| source | Pillow (1 process) img/s | ours 1 thread img/s | ours 2 threads img/s | ours 2 threads / Pillow |"
echo "|---|---|---|---|---|"
for src in folder pack; do
  path="$folder"; [[ $src == pack ]] && path="$pack"
  pil="n/a"
  if [[ $src == folder ]] || /usr/bin/python3 -c "import h5py" 2>/dev/null; then
    pil=$(/usr/bin/python3 "$root/bench/pillow_loader.py" "$path" "$res" 32 "$secs" | rate)
  fi
  one=$("$build/bench/bench_loader" "$path" "$res" 1 32 "$secs" | rate)
  two=$("$build/bench/bench_loader" "$path" "$res" 2 32 "$secs" | rate)
  ratio="n/a"
  [[ $pil != n/a ]] && ratio=$(awk -v a="$two" -v b="$pil" 'BEGIN { printf "%.2fx", a / b }')
  echo "| $src ($res px from 64x64 PNG emoji) | $pil | $one | $two | $ratio |"
done
