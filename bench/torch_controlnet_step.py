"""torch_controlnet_step.py — the PyTorch peer of bench/bench_controlnet.c: one step of diffusers
v0.21.4's examples/controlnet/train_controlnet.py past its frozen encoders, with diffusers' own
classes: a UNet2DConditionModel of CONFIG.json (torch's default init, seed 0; requires_grad off,
as the script's unet.requires_grad_(False)), ControlNetModel.from_unet(unet) trained
(controlnet.train()), torch.optim.AdamW (the script's defaults: lr 5e-6, betas (0.9, 0.999),
weight decay 1e-2, eps 1e-8); batch 1, SIDE x SIDE latents, an 8 SIDE conditioning image, a
77 x cross_attention_dim context; the step as the script's: down, mid = controlnet(noisy, t,
ctx, controlnet_cond=image, return_dict=False); pred = unet(noisy, t, ctx,
down_block_additional_residuals=down, mid_block_additional_residual=mid).sample;
F.mse_loss(pred, target); backward; optimizer.step(); zero_grad. The VAE encode and the text
encoder (frozen, forward only) are left out, as in ours.

The diffusers and transformers sources come from DF_DIFFUSERS_PATH (folders, os.pathsep-
separated, put first on sys.path: the oracle's shim/, upstream/diffusers-v0.21.4/src and
upstream/transformers-v4.33.3/src); it must be set (Debian ships no diffusers).

Usage: OMP_NUM_THREADS=2 /usr/bin/python3 bench/torch_controlnet_step.py CONFIG.json [STEPS [SIDE]]
Prints one JSON line: {"impl": "diffusers", "ms" (the last step), "peak_rss_mib", "trainable",
"frozen", "threads"}.
"""
import json
import os
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    paths = os.environ.get("DF_DIFFUSERS_PATH")
    if not paths:
        raise SystemExit("torch_controlnet_step.py: set DF_DIFFUSERS_PATH to the folders holding diffusers "
                         "v0.21.4, transformers v4.33.3 and a safetensors/huggingface_hub shim (os.pathsep-separated)")
    for p in reversed(paths.split(os.pathsep)):
        sys.path.insert(0, p)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import torch
    import torch.nn.functional as F
    from peer_blas import require_fast_blas
    require_fast_blas()
    import diffusers

    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    side = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    torch.manual_seed(0)
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    unet = diffusers.UNet2DConditionModel.from_config(cfg)
    controlnet = diffusers.ControlNetModel.from_unet(unet)
    unet.requires_grad_(False)
    unet.train()  # as the script leaves it (dropout 0)
    controlnet.train()
    opt = torch.optim.AdamW(controlnet.parameters(), lr=5e-6, betas=(0.9, 0.999), weight_decay=1e-2,
                            eps=1e-8)
    g = torch.Generator().manual_seed(1)
    cross = cfg.get("cross_attention_dim", 1280)
    ms = 0.0
    for _ in range(steps):
        x = torch.randn((1, unet.config.in_channels, side, side), generator=g)
        target = torch.randn(x.shape, generator=g)
        cond = torch.randn((1, 3, 8 * side, 8 * side), generator=g)
        ctx = torch.randn((1, 77, cross), generator=g)
        t = torch.tensor([500])
        t0 = time.perf_counter()
        down, mid = controlnet(x, t, encoder_hidden_states=ctx, controlnet_cond=cond, return_dict=False)
        pred = unet(x, t, encoder_hidden_states=ctx, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample
        loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ms = (time.perf_counter() - t0) * 1e3
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"impl": "diffusers", "ms": round(ms), "peak_rss_mib": round(rss),
                      "trainable": sum(p.numel() for p in controlnet.parameters()),
                      "frozen": sum(p.numel() for p in unet.parameters()),
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
