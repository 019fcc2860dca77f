"""torch_t2i_step.py — the PyTorch peer of a `text_to_image` training step (bench/run-t2i.sh):
the step of diffusers v0.21.4's examples/text_to_image/train_text_to_image.py on CPU (float32,
OpenBLAS-backed torch), with its classes and formulas, on a pipeline folder (the random SD
1.5-sized one bench/torch_sd_pipeline.py builds):

    latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
                                                  (once before the loop with --cached-latents)
    noise, timesteps ~ randint(0, num_train_timesteps), noisy = DDPMScheduler.add_noise(...)
    hidden = text_encoder(input_ids)[0]           (frozen: requires_grad_(False))
    loss = mse(unet(noisy, t, hidden).sample, noise); backward
    clip_grad_norm_(unet.parameters(), 1.0); AdamW(lr 1e-5, weight decay 1e-2).step(); zero_grad

--gradient-checkpointing calls unet.enable_gradient_checkpointing() (the script's flag). The
pixels are one image decoded and normalised as the script's transforms do (resize with
bilinear, center crop, [-1, 1]); the caption is tokenized once.

  python3 torch_t2i_step.py DIR IMAGE CAPTION --resolution 512 --steps 4 [--cached-latents]
                            [--gradient-checkpointing]
prints one JSON line: {"impl", "ms" (median step after the first), "steps_ms", "peak_rss_mib",
"threads"}. DF_DIFFUSERS_PATH as bench/torch_sd_pipeline.py.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "ref"))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir")
    p.add_argument("image")
    p.add_argument("caption")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--cached-latents", action="store_true")
    p.add_argument("--gradient-checkpointing", action="store_true")
    a = p.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from peer_blas import require_fast_blas
    from torch_sd_pipeline import import_upstream, load_tokenizer

    require_fast_blas()
    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    torch.set_num_threads(threads)
    diffusers, transformers = import_upstream()
    import st

    torch.manual_seed(0)
    d = a.dir
    unet = diffusers.UNet2DConditionModel.from_pretrained(os.path.join(d, "unet"))
    vae = diffusers.AutoencoderKL.from_pretrained(os.path.join(d, "vae"))
    text = transformers.CLIPTextModel(
        transformers.CLIPTextConfig.from_json_file(os.path.join(d, "text_encoder", "config.json")))
    sd, _ = st.load(os.path.join(d, "text_encoder", "model.safetensors"))
    text.load_state_dict(sd, strict=False)
    del sd
    tok = load_tokenizer(os.path.join(d, "tokenizer"), transformers)
    sched = diffusers.DDPMScheduler.from_pretrained(os.path.join(d, "scheduler"))
    vae.requires_grad_(False)
    text.requires_grad_(False)
    unet.train()
    if a.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-5, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)

    r = a.resolution
    img = Image.open(a.image).convert("RGBA")
    bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
    img = Image.alpha_composite(bg, img).convert("RGB")
    w, h = img.size
    s = r / min(w, h)
    img = img.resize((max(r, round(w * s)), max(r, round(h * s))), Image.BILINEAR)
    left, top = (img.size[0] - r) // 2, (img.size[1] - r) // 2
    img = img.crop((left, top, left + r, top + r))
    pixels = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    ids = tok(a.caption, max_length=tok.model_max_length, padding="max_length", truncation=True,
              return_tensors="pt").input_ids

    def encode():
        return vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor

    cached = encode() if a.cached_latents else None
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        latents = cached if cached is not None else encode()
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],)).long()
        noisy = sched.add_noise(latents, noise, timesteps)
        hidden = text(ids)[0]
        pred = unet(noisy, timesteps, hidden).sample
        loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        times.append((time.perf_counter() - t0) * 1000)
        print(f"torch step {len(times)}: {times[-1]:.0f} ms loss {loss.item():.4f}", file=sys.stderr)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"impl": "diffusers", "ms": round(statistics.median(times[1:] or times), 1),
                      "steps_ms": [round(t) for t in times], "peak_rss_mib": round(rss),
                      "threads": threads}))


if __name__ == "__main__":
    main()
