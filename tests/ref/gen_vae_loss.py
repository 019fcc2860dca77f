"""gen_vae_loss.py — fixtures for tests/train/test_vae_loss.c: the `vae` recipe's loss on a fixed
batch, from the outputs of diffusers' own AutoencoderKL (v0.21.4) as the oracle computes them.

Run with Debian's torch: /usr/bin/python3 tests/ref/gen_vae_loss.py
Writes tests/fixtures/train/vae_loss/: config.json, diffusion_pytorch_model.safetensors (random
init, seed 0, perturbed 0.05), inputs.safetensors (sample F32 [2, 3, 16, 16] in [-1, 1], noise
F32 [2, 4, 4, 4]), outputs.safetensors (the oracle's: latent_mean, latent_logvar, kl, z,
decoded_z, ...) and losses.safetensors. The oracle run is

  /usr/bin/python3 ../shared/oracle/oracle.py --model vae --config tests/fixtures/train/vae_loss/config.json \
      --seed 0 --perturb 0.05 --save-weights tests/fixtures/train/vae_loss/diffusion_pytorch_model.safetensors \
      --inputs tests/fixtures/train/vae_loss/inputs.safetensors --out tests/fixtures/train/vae_loss/outputs.safetensors

The loss (recipes/recipe_vae.c, train/vae_loss.c), from those outputs:
  z      = mean + std * noise                        (DiagonalGaussianDistribution.sample)
  recon  = mean(|decode(z) - x|)  (l1)  or  mean((decode(z) - x)^2)  (mse), over every element
  kl     = mean over the batch of posterior.kl()     (0.5 * sum(mean^2 + var - 1 - logvar) per item)
  loss   = recon + kl_weight * kl
losses.safetensors: l1.loss, mse.loss, l1.recon, mse.recon, kl (F32 [1]) for kl_weight 0.01.
"""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ORACLE = os.path.join(HERE, "..", "..", "..", "shared", "oracle", "oracle.py")
OUT = os.path.join(HERE, "..", "fixtures", "train", "vae_loss")
sys.path.insert(0, HERE)

import torch  # noqa: E402

import st  # noqa: E402

KL_WEIGHT = 0.01
CONFIG = {
    "_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3, "latent_channels": 4,
    "block_out_channels": [8, 16, 16], "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3, "layers_per_block": 1, "norm_num_groups": 4,
    "sample_size": 16,
}


def main():
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)
    g = torch.Generator().manual_seed(5)
    sample = torch.rand((2, 3, 16, 16), generator=g) * 2 - 1
    noise = torch.randn((2, 4, 4, 4), generator=g)
    st.save({"sample": sample, "noise": noise}, os.path.join(OUT, "inputs.safetensors"))
    subprocess.run([sys.executable, ORACLE, "--model", "vae", "--config", os.path.join(OUT, "config.json"),
                    "--seed", "0", "--perturb", "0.05",
                    "--save-weights", os.path.join(OUT, "diffusion_pytorch_model.safetensors"),
                    "--inputs", os.path.join(OUT, "inputs.safetensors"),
                    "--out", os.path.join(OUT, "outputs.safetensors")], check=True)
    out, _ = st.load(os.path.join(OUT, "outputs.safetensors"))
    z = out["latent_mean"] + out["latent_std"] * noise
    assert torch.allclose(z, out["z"])
    diff = out["decoded_z"].double() - sample.double()
    kl = out["kl"].double().mean()
    losses = {"kl": kl}
    for name, rec in (("l1", diff.abs().mean()), ("mse", (diff * diff).mean())):
        losses[f"{name}.recon"] = rec
        losses[f"{name}.loss"] = rec + KL_WEIGHT * kl
    for k, v in losses.items():
        print(f"{k}: {v.item():.8f}")
    st.save({k: v.float().reshape(1) for k, v in losses.items()}, os.path.join(OUT, "losses.safetensors"),
            {"generator": "tests/ref/gen_vae_loss.py", "kl_weight": str(KL_WEIGHT)})


if __name__ == "__main__":
    main()
