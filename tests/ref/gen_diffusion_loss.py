"""gen_diffusion_loss.py — fixtures for tests/train/test_diffusion_loss.c: the diffusion training
loss of diffusers' scripts, computed with diffusers' own DDPMScheduler (add_noise, get_velocity,
alphas_cumprod) from the upstream source in ../shared/oracle/upstream (diffusers v0.21.4).

Run with Debian's torch: /usr/bin/python3 tests/ref/gen_diffusion_loss.py
Writes tests/fixtures/train/diffusion_loss.safetensors. Deterministic (fixed seeds).

Formulas, per case (examples/text_to_image/train_text_to_image.py and
examples/unconditional_image_generation/train_unconditional.py at v0.21.4):
  noisy   = scheduler.add_noise(x0, noise (+ input_perturbation * perturb), t)
  target  = noise | scheduler.get_velocity(x0, noise, t) | x0
  loss    = F.mse_loss(out, target)                                   no weighting
          = mean_i(w_i * mean(mse_i))  w = min(snr, gamma) / snr       epsilon + min-SNR
                                       w = min(snr, gamma) / (snr + 1) v_prediction + min-SNR
                                         (the paper's v weighting, diffusers' scripts after
                                          v0.21.4; v0.21.4 itself divided by snr)
                                       w = snr (alpha_t / (1 - alpha_t)) sample (unconditional)
  masked  = mean_i(sum(m (out - target)^2) / sum(m broadcast over C))
  weights = mean_i(item_w_i * mean(mse_i))
snr is the scripts' compute_snr: (sqrt(alphas_cumprod[t]) / sqrt(1 - alphas_cumprod[t]))^2.

Tensors: x0, noise, perturb, out F32 [4, 3, 5, 6]; t I64 [4]; mask F32 [4, 1, 5, 6];
item_weights F32 [4]; per case <case>.noisy, <case>.target, <case>.loss (F32 [1]).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ORACLE = os.path.join(HERE, "..", "..", "..", "shared", "oracle")
sys.path.insert(0, os.path.join(ORACLE, "upstream", "diffusers-v0.21.4", "src"))
sys.path.insert(0, os.path.join(ORACLE, "shim"))
sys.path.insert(0, HERE)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers import DDPMScheduler  # noqa: E402

import st  # noqa: E402

OUT = os.path.join(HERE, "..", "fixtures", "train")
SHAPE = (4, 3, 5, 6)
GAMMA = 5.0
PERTURB = 0.1


def compute_snr(sched, t):
    ac = sched.alphas_cumprod
    alpha = (ac ** 0.5)[t].float()
    sigma = ((1.0 - ac) ** 0.5)[t].float()
    return (alpha / sigma) ** 2


def main():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(SHAPE, generator=g)
    noise = torch.randn(SHAPE, generator=g)
    perturb = torch.randn(SHAPE, generator=g)
    out = torch.randn(SHAPE, generator=g)
    t = torch.tensor([0, 17, 500, 999], dtype=torch.int64)
    mask = (torch.rand((SHAPE[0], 1) + SHAPE[2:], generator=g) > 0.4).float()
    item_w = torch.tensor([1.0, 1.0, 0.5, 0.5])
    tensors = {"x0": x0, "noise": noise, "perturb": perturb, "out": out, "t": t, "mask": mask,
               "item_weights": item_w}
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")

    def case(name, prediction, gamma=0.0, input_perturbation=0.0, weights=None, masked=False):
        sched.register_to_config(prediction_type=prediction)
        new_noise = noise + input_perturbation * perturb if input_perturbation else noise
        noisy = sched.add_noise(x0, new_noise, t)
        target = {"epsilon": noise, "v_prediction": sched.get_velocity(x0, noise, t),
                  "sample": x0}[prediction]
        sq = F.mse_loss(out, target, reduction="none")
        if masked:
            per = (sq * mask).sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) * SHAPE[1])
        else:
            per = sq.mean(dim=(1, 2, 3))
        w = None
        if gamma > 0:
            snr = compute_snr(sched, t)
            m = torch.stack([snr, gamma * torch.ones_like(snr)], dim=1).min(dim=1)[0]
            w = {"epsilon": m / snr, "v_prediction": m / (snr + 1), "sample": m}[prediction]
        elif prediction == "sample":
            w = compute_snr(sched, t)
        if weights is not None:
            w = weights if w is None else w * weights
        if w is None and not masked:
            loss = F.mse_loss(out, target, reduction="mean")
        else:
            loss = (per * w).mean() if w is not None else per.mean()
        tensors[f"{name}.noisy"] = noisy
        tensors[f"{name}.target"] = target
        tensors[f"{name}.loss"] = loss.reshape(1)

    case("epsilon", "epsilon")
    case("epsilon_snr", "epsilon", gamma=GAMMA)
    case("v", "v_prediction")
    case("v_snr", "v_prediction", gamma=GAMMA)
    case("sample", "sample")
    case("perturbed", "epsilon", input_perturbation=PERTURB)
    case("masked", "epsilon", masked=True)
    case("weighted_v_snr", "v_prediction", gamma=GAMMA, weights=item_w)
    os.makedirs(OUT, exist_ok=True)
    st.save(tensors, os.path.join(OUT, "diffusion_loss.safetensors"),
            {"generator": "tests/ref/gen_diffusion_loss.py", "diffusers": "v0.21.4"})


if __name__ == "__main__":
    main()
