#!/usr/bin/env bash
# bench/run-sd.sh — Stable Diffusion inference against the real diffusers pipeline (issue 15):
# an SD 1.5-sized pipeline with random weights (the real configs, tests/fixtures/configs/sd15),
# 512x512, 20 steps, CFG 7.5, batch 1, the folder's PNDM scheduler; `diffusion generate` and
# diffusers v0.21.4's StableDiffusionPipeline (bench/torch_sd_pipeline.py, float32, OpenBLAS-
# backed torch) in separate processes, alternating, with the same threads. Prints one line per run
# and a table: seconds (load + generation, and generation alone), peak RSS (ru_maxrss of the
# process), and the ratios ours / diffusers.
#
#   bench/run-sd.sh                           # sd15 512x512, 1 round
#   DF_BENCH_ROUNDS=2 bench/run-sd.sh         # alternating rounds; the best time, the largest RSS
#   DF_BENCH_CASE=sd21 bench/run-sd.sh        # the SD 2.1-sized pipeline at 768x768 (v-prediction, DDIM)
#   DF_BENCH_DIR=/big/disk bench/run-sd.sh    # where the random folders are built (4-5 GB each)
#
# The peer needs diffusers v0.21.4 and transformers v4.33.3 sources in DF_DIFFUSERS_PATH (see
# bench/torch_sd_pipeline.py; Debian packages no diffusers). Building a
# folder takes about a minute; each sd15 run a few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build >/dev/null
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
case_name=${DF_BENCH_CASE:-sd15}
if [ "$case_name" = sd21 ]; then size=768; else size=512; fi
steps=${DF_BENCH_STEPS:-20}
dir=${DF_BENCH_DIR:-runs/bench}/$case_name
py=/usr/bin/python3
if [ ! -f "$dir/model_index.json" ]; then
  $py bench/torch_sd_pipeline.py build "$dir" --variant "$case_name"
fi
prompt="a photo of an astronaut riding a horse on mars"
results=$(mktemp)
trap 'rm -f "$results"' EXIT
rounds=${DF_BENCH_ROUNDS:-1}
for ((r = 0; r < rounds; r++)); do
  # ours: wall time and ru_maxrss of the child, and the generation time it prints
  $py - "$dir" "$size" "$steps" "$prompt" "$dir-ours.png" <<'EOF' | tee -a "$results"
import json, re, resource, subprocess, sys, time, os
d, size, steps, prompt, out = sys.argv[1:6]
t0 = time.perf_counter()
p = subprocess.run(["build/diffusion", "generate", d, "--prompt", prompt, "--steps", steps,
                    "--guidance", "7.5", "--height", size, "--width", size, "--seed", "0",
                    "--out", out], capture_output=True, text=True)
total = time.perf_counter() - t0
if p.returncode != 0:
    sys.exit(p.stderr)
m = re.search(r"image\(s\) of \S+ in ([0-9.]+) s", p.stderr)
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"impl": "ours", "run_s": float(m.group(1)) if m else None, "total_s": round(total, 2),
                  "peak_rss_mib": round(rss), "threads": int(os.environ["OMP_NUM_THREADS"])}))
EOF
  $py bench/torch_sd_pipeline.py run "$dir" --height "$size" --width "$size" --steps "$steps" \
      --prompt "$prompt" --out "$dir-diffusers.png" | tee -a "$results"
done
echo
echo "case $case_name: ${size}x${size}, $steps steps, CFG 7.5, batch 1; threads $OMP_NUM_THREADS ($OMP_WAIT_POLICY);" \
     "best time and largest RSS of $rounds round(s)"
echo "CPU flags: $(grep -o -w 'avx2\|avx512f\|avx512_bf16\|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
$py - "$results" <<'EOF'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    b = rows.get(r["impl"])
    if b:
        r["peak_rss_mib"] = max(r["peak_rss_mib"], b["peak_rss_mib"])
        r["total_s"] = min(r["total_s"], b["total_s"])
        r["run_s"] = min(r["run_s"], b["run_s"])
    rows[r["impl"]] = r
o, t = rows["ours"], rows["diffusers"]
print(f"{'':<10} {'total s':>8} {'generate s':>10} {'peak MiB':>9}")
for name, r in (("ours", o), ("diffusers", t)):
    print(f"{name:<10} {r['total_s']:>8.1f} {r['run_s']:>10.1f} {r['peak_rss_mib']:>9}")
print(f"{'ratio':<10} {o['total_s'] / t['total_s']:>8.2f} {o['run_s'] / t['run_s']:>10.2f} "
      f"{o['peak_rss_mib'] / t['peak_rss_mib']:>9.2f}")
EOF
