#!/usr/bin/env bash
# bench/run-controlnet.sh — one ControlNet training step against diffusers' (issue 20 point 6):
# an SD 1.5-sized UNet2DConditionModel with random weights (tests/fixtures/configs/sd15/unet),
# frozen, and ControlNetModel.from_unet of it trained with AdamW; batch 1, 64x64 latents, a
# 512x512 conditioning image, a 77x768 context (the VAE encode and the text encoder left out of
# both). Ours: build/bench/bench_controlnet; diffusers v0.21.4's classes:
# bench/torch_controlnet_step.py (OpenBLAS-backed torch), in separate processes, alternating,
# with the same threads. Prints one line per run and a table: the last step's milliseconds,
# peak RSS (ru_maxrss), and the ratios ours / diffusers (targets: time <= 0.6, RSS <= 0.6).
#
#   bench/run-controlnet.sh                       # sd15, 64x64 latents, 2 steps, 1 round
#   DF_BENCH_ROUNDS=2 bench/run-controlnet.sh     # alternating rounds: best time, largest RSS
#   DF_BENCH_SIDE=32 bench/run-controlnet.sh      # smaller latents
#   DF_BENCH_CONFIG=path/unet/config.json ...     # another UNet
#
# The peer needs DF_DIFFUSERS_PATH as bench/run-sd.sh. An SD 1.5-sized run holds ~17 GB (the
# peer) and takes minutes a step on 2 cores: run it alone on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build >/dev/null
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
config=${DF_BENCH_CONFIG:-tests/fixtures/configs/sd15/unet/config.json}
side=${DF_BENCH_SIDE:-64}
steps=${DF_BENCH_STEPS:-2}
py=/usr/bin/python3
if [ -z "${DF_DIFFUSERS_PATH:-}" ]; then
  echo "bench/run-controlnet.sh: set DF_DIFFUSERS_PATH (see bench/torch_controlnet_step.py)" >&2
  exit 2
fi
results=$(mktemp)
trap 'rm -f "$results"' EXIT
rounds=${DF_BENCH_ROUNDS:-1}
for ((r = 0; r < rounds; r++)); do
  build/bench/bench_controlnet "$config" "$steps" "$side" | tee -a "$results"
  $py bench/torch_controlnet_step.py "$config" "$steps" "$side" | tee -a "$results"
done
echo
echo "ControlNet step: $config, ${side}x${side} latents, batch 1, $steps steps (the last timed);" \
     "threads $OMP_NUM_THREADS ($OMP_WAIT_POLICY); best time and largest RSS of $rounds round(s)"
echo "CPU flags: $(grep -o -w 'avx2\|avx512f\|avx512_bf16\|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
$py - "$results" <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    b = rows.get(r["impl"])
    if b:
        r["peak_rss_mib"] = max(r["peak_rss_mib"], b["peak_rss_mib"])
        r["ms"] = min(r["ms"], b["ms"])
    rows[r["impl"]] = r
o, t = rows["ours"], rows["diffusers"]
print(f"{'':<10} {'step ms':>9} {'peak MiB':>9}")
for name, r in (("ours", o), ("diffusers", t)):
    print(f"{name:<10} {r['ms']:>9.0f} {r['peak_rss_mib']:>9}")
print(f"{'ratio':<10} {o['ms'] / t['ms']:>9.2f} {o['peak_rss_mib'] / t['peak_rss_mib']:>9.2f}")
PY
