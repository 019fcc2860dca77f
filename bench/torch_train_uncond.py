"""torch_train_uncond.py — the PyTorch peer of `diffusion train recipes/configs/emoji-ddpm.yaml`:
the same UNet2DModel (bench/torch_unet.py's re-implementation, proven equal to diffusers v0.21.4
forward and backward by its --check; DF_DIFFUSERS_PATH: diffusers' own class, see peer_classes)
trained with diffusers' train_unconditional.py step: DDPM linear-beta noise at uniform random
timesteps, MSE on epsilon, loss.backward(), clip_grad_norm_(1.0), AdamW (lr 5e-4, betas
(0.95, 0.999), weight decay 1e-6, eps 1e-8), and an EMA update of every parameter (diffusers'
EMAModel step with warm-up, power 0.75). Images are random tensors in [-1, 1] (no decoding cost,
which favours PyTorch: ours decodes real PNGs on worker threads in the same two cores).

Usage: /usr/bin/python3 bench/torch_train_uncond.py [WARMUP STEPS [RUN_DIR]]  (2 threads)
RUN_DIR: a folder exported by `diffusion train` (bench/run-train.sh passes its run): the model is
built from its unet/config.json and the target follows its scheduler's prediction_type
(epsilon: noise; v_prediction: sqrt(abar) noise - sqrt(1 - abar) x0), so the peer always trains
what the recipe trains. Without it, CONFIG below (epsilon).
Prints one JSON line: median ms per step, peak RSS (MiB)."""
import json
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_blas import require_fast_blas  # noqa: E402
from torch_unet import peer_classes  # noqa: E402

CONFIG = dict(sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
              block_out_channels=[32, 64, 64], norm_num_groups=16, attention_head_dim=8,
              down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
              up_block_types=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"])


def main():
    require_fast_blas()
    warmup = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    config, prediction = CONFIG, "epsilon"
    if len(sys.argv) > 3:
        with open(os.path.join(sys.argv[3], "unet", "config.json")) as f:
            config = json.load(f)
        with open(os.path.join(sys.argv[3], "scheduler", "scheduler_config.json")) as f:
            prediction = json.load(f).get("prediction_type", "epsilon")
    torch.manual_seed(0)
    unet, _, peer = peer_classes()
    model = unet(**config)
    ema = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, betas=(0.95, 0.999), weight_decay=1e-6,
                            eps=1e-8)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32)
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    times = []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        clean = torch.rand(16, 3, 32, 32) * 2 - 1
        noise = torch.randn(clean.shape)
        t = torch.randint(0, 1000, (16,))
        a = alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
        s = (1 - alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
        noisy = a * clean + s * noise
        target = a * noise - s * clean if prediction == "v_prediction" else noise
        loss = torch.nn.functional.mse_loss(model(noisy, t), target)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(0.9999, max(0.0, 1 - (1 + step) ** -0.75))
        with torch.no_grad():
            for e, p in zip(ema, model.parameters()):
                e.sub_((1 - decay) * (e - p))
        if step >= warmup:
            times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    print(json.dumps({"mode": "emoji-ddpm", "impl": "torch", "peer": peer, "ms": round(times[len(times) // 2], 2),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "steps": steps}))


if __name__ == "__main__":
    main()
