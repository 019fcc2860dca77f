"""gen_dreambooth.py — fixtures for tests/recipes/test_recipe_dreambooth.c: the loss of one
training step of diffusers' examples/dreambooth/train_dreambooth.py (v0.21.4, from
../shared/oracle/upstream) with prior preservation, on the tiny components of
tests/fixtures/train/t2i_loss/ (tests/ref/gen_t2i_loss.py), run by diffusers' and transformers'
own classes.

Run with Debian's torch: /usr/bin/python3 tests/ref/gen_dreambooth.py
Writes tests/fixtures/train/dreambooth_loss/dreambooth_loss.safetensors. Deterministic.

The batch, as the script's collate_fn makes it with_prior_preservation: the 2 instance items,
then the 2 class items (pixel values and input ids concatenated). The step after the VAE
(latents given, already scaled):
  noise       = randn_like(latents)
  noisy       = scheduler.add_noise(latents, noise, t)
  hidden      = text_encoder(input_ids)[0]
  pred        = unet(noisy, t, hidden).sample
  target      = noise (epsilon) | scheduler.get_velocity(latents, noise, t) (v_prediction)
  pred, pred_prior = chunk(pred, 2); target, target_prior = chunk(target, 2)
  loss        = mse(pred, target) + prior_loss_weight * mse(pred_prior, target_prior)
Tensors: latents F32 [4, 4, 8, 8], noise F32 [4, 4, 8, 8], timesteps I64 [4], input_ids I64
[4, 8], and <case>.loss F32 [1] for the cases epsilon and v (prior_loss_weight 0.7), and
epsilon_w1 (prior_loss_weight 1).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ORACLE = os.path.join(HERE, "..", "..", "..", "shared", "oracle")
sys.path.insert(0, os.path.join(ORACLE, "upstream", "transformers-v4.33.3", "src"))
sys.path.insert(0, os.path.join(ORACLE, "upstream", "diffusers-v0.21.4", "src"))
sys.path.insert(0, os.path.join(ORACLE, "shim"))
sys.path.insert(0, HERE)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import diffusers  # noqa: E402
import transformers  # noqa: E402

import st  # noqa: E402

FIX = os.path.join(HERE, "..", "fixtures", "train")
OUT = os.path.join(FIX, "dreambooth_loss")
WEIGHT = 0.7


def main():
    comp = os.path.join(FIX, "t2i_loss")
    unet = diffusers.UNet2DConditionModel.from_pretrained(os.path.join(comp, "unet"))
    text = transformers.CLIPTextModel.from_pretrained(os.path.join(comp, "text_encoder"))
    sched = diffusers.DDPMScheduler.from_pretrained(os.path.join(comp, "scheduler"))
    unet.eval()
    text.eval()

    g = torch.Generator().manual_seed(19)
    latents = torch.randn((4, 4, 8, 8), generator=g)
    noise = torch.randn((4, 4, 8, 8), generator=g)
    timesteps = torch.tensor([15, 420, 760, 999], dtype=torch.int64)
    instance = [0, 11, 42, 7, 2, 1, 1, 1]  # "a photo of sks thing"
    klass = [0, 11, 42, 2, 1, 1, 1, 1]  # "a photo of thing"
    input_ids = torch.tensor([instance, instance, klass, klass], dtype=torch.int64)
    tensors = {"latents": latents, "noise": noise, "timesteps": timesteps, "input_ids": input_ids}

    def case(name, prediction, weight):
        with torch.no_grad():
            sched.register_to_config(prediction_type=prediction)
            noisy = sched.add_noise(latents, noise, timesteps)
            hidden = text(input_ids)[0]
            model_pred = unet(noisy, timesteps, hidden).sample
            if sched.config.prediction_type == "epsilon":
                target = noise
            else:
                target = sched.get_velocity(latents, noise, timesteps)
            model_pred, model_pred_prior = torch.chunk(model_pred, 2, dim=0)
            target, target_prior = torch.chunk(target, 2, dim=0)
            loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
            prior_loss = F.mse_loss(model_pred_prior.float(), target_prior.float(), reduction="mean")
            loss = loss + weight * prior_loss
        tensors[f"{name}.loss"] = loss.reshape(1)
        print(f"{name}: {loss.item():.7f}")

    case("epsilon", "epsilon", WEIGHT)
    case("v", "v_prediction", WEIGHT)
    case("epsilon_w1", "epsilon", 1.0)
    os.makedirs(OUT, exist_ok=True)
    st.save(tensors, os.path.join(OUT, "dreambooth_loss.safetensors"),
            {"generator": "tests/ref/gen_dreambooth.py", "diffusers": "v0.21.4", "transformers": "v4.33.3",
             "prior_loss_weight": str(WEIGHT)})


if __name__ == "__main__":
    main()
