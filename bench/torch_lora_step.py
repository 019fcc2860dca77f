"""torch_lora_step.py — the PyTorch peer of bench/bench_lora.c: one LoRA training step of the real
diffusers v0.21.4 UNet2DConditionModel on CPU (float32, OpenBLAS-backed torch), as
examples/text_to_image/train_text_to_image_lora.py sets it up: random weights (torch's default
init, seed 0) from a config.json, requires_grad off, a LoRAAttnProcessor of rank 4 on every
attention (to_q, to_k, to_v, to_out.0), AttnProcsLayers' parameters in torch.optim.AdamW (lr
1e-4); batch 1 of SIDE x SIDE latents with a 77 x cross_attention_dim context,
loss = mse(unet(noisy, t, context).sample, noise), backward, step.

The diffusers and transformers sources come from DF_DIFFUSERS_PATH (folders, os.pathsep-separated,
put first on sys.path: the oracle's shim/, upstream/diffusers-v0.21.4/src and
upstream/transformers-v4.33.3/src, or any checkout of those versions), as bench/torch_sd_pipeline.py.

  torch_lora_step.py CONFIG.json [--steps N] [--side S]
prints one JSON line: {"impl": "diffusers", "ms" (best step after the first), "first_ms",
"peak_rss_mib" (ru_maxrss), "trainable", "frozen", "threads"}.
"""
import argparse
import json
import os
import resource
import sys
import time


def import_diffusers():
    paths = os.environ.get("DF_DIFFUSERS_PATH")
    if not paths:
        raise SystemExit("torch_lora_step.py: set DF_DIFFUSERS_PATH to the folders holding diffusers v0.21.4, "
                         "transformers v4.33.3 and a safetensors/huggingface_hub shim (os.pathsep-separated)")
    for p in reversed(paths.split(os.pathsep)):
        sys.path.insert(0, p)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import diffusers
    return diffusers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--side", type=int, default=64)
    a = ap.parse_args()
    import torch
    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    torch.set_num_threads(threads)
    diffusers = import_diffusers()
    from diffusers.loaders import AttnProcsLayers
    from diffusers.models.attention_processor import LoRAAttnProcessor

    torch.manual_seed(0)
    cfg = json.load(open(a.config))
    unet = diffusers.UNet2DConditionModel.from_config(cfg)
    unet.requires_grad_(False)
    procs = {}
    for name in unet.attn_processors.keys():
        cross = None if name.endswith("attn1.processor") else unet.config.cross_attention_dim
        if name.startswith("mid_block"):
            hidden = unet.config.block_out_channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(unet.config.block_out_channels))[int(name[len("up_blocks.")])]
        else:
            hidden = unet.config.block_out_channels[int(name[len("down_blocks.")])]
        procs[name] = LoRAAttnProcessor(hidden_size=hidden, cross_attention_dim=cross, rank=4)
    unet.set_attn_processor(procs)
    layers = AttnProcsLayers(unet.attn_processors)
    opt = torch.optim.AdamW(layers.parameters(), lr=1e-4)
    unet.train()
    g = torch.Generator().manual_seed(1)
    ctx_dim = unet.config.cross_attention_dim
    best, first = None, None
    for i in range(a.steps):
        x = torch.randn(1, unet.config.in_channels, a.side, a.side, generator=g)
        noise = torch.randn(x.shape, generator=g)
        ctx = torch.randn(1, 77, ctx_dim, generator=g)
        t = torch.tensor([500])
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(unet(x, t, ctx).sample.float(), noise.float(), reduction="mean")
        loss.backward()
        opt.step()
        ms = (time.perf_counter() - t0) * 1e3
        if i == 0:
            first = ms
        elif best is None or ms < best:
            best = ms
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"impl": "diffusers", "ms": round(best if best is not None else first),
                      "first_ms": round(first), "peak_rss_mib": round(rss),
                      "trainable": sum(p.numel() for p in layers.parameters()),
                      "frozen": sum(p.numel() for p in unet.parameters() if not p.requires_grad),
                      "threads": threads}))


if __name__ == "__main__":
    main()
