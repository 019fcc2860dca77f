#!/usr/bin/env bash
# bench/run-t2i.sh — a text-to-image training step of an SD 1.5-sized UNet (issue 17 point 8):
# the random SD 1.5-sized pipeline of bench/run-sd.sh (the real configs, random weights),
# 512x512 images (64x64 latents), batch 1, the whole UNet trained with AdamW, VAE and text
# encoder frozen; ours (`diffusion train` with recipe text_to_image: loader, loss, clipping,
# AdamW, all of it) against the step of diffusers v0.21.4's train_text_to_image.py
# (bench/torch_t2i_step.py, float32, OpenBLAS-backed torch), with and without cached latents,
# the same threads, no EMA on either side (the script's default). Gradient checkpointing is on
# for both by default (the script's --gradient_checkpointing; with it, ours peaked at 21 GB of
# the machine's 24 GiB, so the runs without it were not tried): DF_BENCH_CHECKPOINTING=0 turns
# it off.
# Prints ms per step (the median after the first step) and peak RSS, with the ratios.
#
#   bench/run-t2i.sh                  # 4 steps per run, both modes
#   DF_BENCH_STEPS=6 bench/run-t2i.sh
#   DF_BENCH_DIR=/big/disk bench/run-t2i.sh   # where the random folder is (built if missing)
#
# Needs scripts/fetch-emoji (one emoji image as the data) and DF_DIFFUSERS_PATH (see
# bench/torch_sd_pipeline.py). Each run takes a few minutes on 2 cores and up to ~20 GB.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build >/dev/null
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
steps=${DF_BENCH_STEPS:-4}
ckpt=${DF_BENCH_CHECKPOINTING:-1}
dir=${DF_BENCH_DIR:-runs/bench}/sd15
py=/usr/bin/python3
if [ ! -f "$dir/unet/diffusion_pytorch_model.safetensors" ]; then
  $py bench/torch_sd_pipeline.py build "$dir" --variant sd15
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/data"
cp data/emoji-google/1f34e.png "$work/data/"
echo '{"file_name": "1f34e.png", "text": "red apple"}' >"$work/data/metadata.jsonl"
flag=()
[ "$ckpt" = 1 ] && flag=(--gradient-checkpointing)
ckpt_key=$([ "$ckpt" = 1 ] && echo true || echo false)
results=$work/results
for cached in false true; do
  rm -rf "$work/run"
  cat >"$work/config.yaml" <<EOF
recipe: text_to_image
pretrained_model_name_or_path: $dir
train_data_dir: $work/data
output_dir: $work/run
resolution: 512
center_crop: true
random_flip: false
cache_latents: $cached
train_batch_size: 1
max_train_steps: $steps
learning_rate: 1.0e-5
lr_scheduler: constant
lr_warmup_steps: 0
adam_weight_decay: 1.0e-2
max_grad_norm: 1.0
gradient_checkpointing: $ckpt_key
use_ema: false
checkpointing_steps: 0
logging_steps: 1
num_validation_images: 0
EOF
  /usr/bin/time -f "%M" -o "$work/rss" build/diffusion train "$work/config.yaml" 2>"$work/log" ||
    { cat "$work/log"; exit 1; }
  $py - "$work/run/metrics.jsonl" "$work/rss" "$cached" <<'PY' | tee -a "$results"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
ms = [1000 / r["it_s"] for r in rows if r.get("it_s")]
print(json.dumps({"impl": "ours", "cached": sys.argv[3] == "true",
                  "ms": round(statistics.median(ms[1:] or ms), 1), "steps_ms": [round(m) for m in ms],
                  "peak_rss_mib": round(int(open(sys.argv[2]).read().split()[-1]) / 1024)}))
PY
  extra=()
  [ "$cached" = true ] && extra=(--cached-latents)
  $py bench/torch_t2i_step.py "$dir" "$work/data/1f34e.png" "red apple" --resolution 512 \
    --steps "$steps" "${flag[@]}" "${extra[@]}" | $py -c "
import json, sys
j = json.loads(sys.stdin.read()); j['cached'] = '$cached' == 'true'; print(json.dumps(j))" | tee -a "$results"
done
echo
echo "SD 1.5-sized UNet, 64x64 latents, batch 1, AdamW; gradient checkpointing $ckpt_key;" \
     "threads $OMP_NUM_THREADS ($OMP_WAIT_POLICY); median of steps 2..$steps"
echo "CPU flags: $(grep -o -w 'avx2\|avx512f\|avx512_bf16\|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
$py - "$results" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'latents':<10} {'ours ms':>9} {'torch ms':>9} {'time x':>7} {'ours MiB':>9} {'torch MiB':>9} {'RSS x':>6}")
for cached in (False, True):
    o = next(r for r in rows if r["impl"] == "ours" and r["cached"] == cached)
    t = next(r for r in rows if r["impl"] == "diffusers" and r["cached"] == cached)
    print(f"{'cached' if cached else 'encoded':<10} {o['ms']:>9.0f} {t['ms']:>9.0f} {o['ms'] / t['ms']:>7.2f} "
          f"{o['peak_rss_mib']:>9} {t['peak_rss_mib']:>9} {o['peak_rss_mib'] / t['peak_rss_mib']:>6.2f}")
EOF
