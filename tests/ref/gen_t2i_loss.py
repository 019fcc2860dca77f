"""gen_t2i_loss.py — fixtures for tests/train/test_t2i_loss.c: the loss of one training step of
diffusers' examples/text_to_image/train_text_to_image.py (v0.21.4, from ../shared/oracle/upstream),
run by diffusers' and transformers' own classes on tiny random components.

Run with Debian's torch: /usr/bin/python3 tests/ref/gen_t2i_loss.py
Writes tests/fixtures/train/t2i_loss/: unet/ (UNet2DConditionModel), text_encoder/ (CLIPTextModel),
scheduler/scheduler_config.json (SD's DDPMScheduler) and t2i_loss.safetensors. Deterministic.

The step, as the script does it after the VAE (latents are given, already scaled):
  noise   = randn_like(latents) (+ noise_offset * randn(N, C, 1, 1))
  t       = given timesteps
  noisy   = scheduler.add_noise(latents, noise, t)
  hidden  = text_encoder(input_ids)[0]
  target  = noise (epsilon) | scheduler.get_velocity(latents, noise, t) (v_prediction)
  pred    = unet(noisy, t, hidden).sample
  loss    = F.mse_loss(pred, target)                                   without snr_gamma
          = mean_i(mean(mse_i) * min(snr, gamma) / snr)                 with snr_gamma: v0.21.4
                                                                        divides by snr for both
                                                                        prediction types
Tensors: latents F32 [2, 4, 8, 8], noise F32 [2, 4, 8, 8], offset_noise F32 [2, 4, 1, 1],
timesteps I64 [2], input_ids I64 [2, 8], encoder_hidden_states F32 [2, 8, 16], and per case
<case>.loss F32 [1] (cases: epsilon, epsilon_snr, v, v_snr, epsilon_offset, v_snr_offset).
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
from safetensors.torch import save_file  # noqa: E402  (the oracle's shim)

import st  # noqa: E402

OUT = os.path.join(HERE, "..", "fixtures", "train", "t2i_loss")
GAMMA = 5.0
OFFSET = 0.1


def perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def compute_snr(sched, timesteps):
    """The script's compute_snr (1-d timesteps)."""
    ac = sched.alphas_cumprod
    alpha = (ac ** 0.5)[timesteps].float()
    sigma = ((1.0 - ac) ** 0.5)[timesteps].float()
    return (alpha / sigma) ** 2


def main():
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
        attention_head_dim=(2, 4), norm_num_groups=8)
    tcfg = transformers.CLIPTextConfig(
        vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=8, hidden_act="quick_gelu", projection_dim=16, bos_token_id=0,
        eos_token_id=2, pad_token_id=1)
    text = transformers.CLIPTextModel(tcfg)
    perturb(unet, 1)
    perturb(text, 2)
    unet.eval()
    text.eval()
    sched = diffusers.DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                    num_train_timesteps=1000)

    g = torch.Generator().manual_seed(17)
    latents = torch.randn((2, 4, 8, 8), generator=g)
    noise0 = torch.randn((2, 4, 8, 8), generator=g)
    offset_noise = torch.randn((2, 4, 1, 1), generator=g)
    timesteps = torch.tensor([10, 700], dtype=torch.int64)
    input_ids = torch.tensor([[0, 11, 42, 7, 2, 1, 1, 1], [0, 99, 3, 58, 64, 23, 5, 2]], dtype=torch.int64)
    tensors = {"latents": latents, "noise": noise0, "offset_noise": offset_noise, "timesteps": timesteps,
               "input_ids": input_ids}

    with torch.no_grad():
        encoder_hidden_states = text(input_ids)[0]
    tensors["encoder_hidden_states"] = encoder_hidden_states

    def case(name, prediction, snr_gamma=None, noise_offset=0.0):
        with torch.no_grad():
            noise = noise0.clone()
            if noise_offset:
                noise += noise_offset * offset_noise
            noisy_latents = sched.add_noise(latents, noise, timesteps)
            hidden = text(input_ids)[0]
            sched.register_to_config(prediction_type=prediction)
            if sched.config.prediction_type == "epsilon":
                target = noise
            else:
                target = sched.get_velocity(latents, noise, timesteps)
            model_pred = unet(noisy_latents, timesteps, hidden).sample
            if snr_gamma is None:
                loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
            else:
                snr = compute_snr(sched, timesteps)
                w = torch.stack([snr, snr_gamma * torch.ones_like(timesteps)], dim=1).min(dim=1)[0] / snr
                loss = F.mse_loss(model_pred.float(), target.float(), reduction="none")
                loss = loss.mean(dim=list(range(1, len(loss.shape)))) * w
                loss = loss.mean()
        tensors[f"{name}.loss"] = loss.reshape(1)
        print(f"{name}: {loss.item():.7f}")

    case("epsilon", "epsilon")
    case("epsilon_snr", "epsilon", snr_gamma=GAMMA)
    case("v", "v_prediction")
    case("v_snr", "v_prediction", snr_gamma=GAMMA)
    case("epsilon_offset", "epsilon", noise_offset=OFFSET)
    case("v_snr_offset", "v_prediction", snr_gamma=GAMMA, noise_offset=OFFSET)

    os.makedirs(OUT, exist_ok=True)
    unet.save_pretrained(os.path.join(OUT, "unet"))
    td = os.path.join(OUT, "text_encoder")
    os.makedirs(td, exist_ok=True)
    tcfg.architectures = ["CLIPTextModel"]
    tcfg.to_json_file(os.path.join(td, "config.json"))
    sd = {k: v.contiguous() for k, v in text.state_dict().items() if not k.endswith("position_ids")}
    save_file(sd, os.path.join(td, "model.safetensors"), metadata={"format": "pt"})
    sched.register_to_config(prediction_type="epsilon")
    sched.save_pretrained(os.path.join(OUT, "scheduler"))
    st.save(tensors, os.path.join(OUT, "t2i_loss.safetensors"),
            {"generator": "tests/ref/gen_t2i_loss.py", "diffusers": "v0.21.4", "transformers": "v4.33.3",
             "snr_gamma": str(GAMMA), "noise_offset": str(OFFSET)})


if __name__ == "__main__":
    main()
