"""gen_lora_model.py — a LoRA training step of the real diffusers v0.21.4 on the tiny SD 1.x
pipeline tests/fixtures/pipelines/sd1: the parity fixture of nn/lora.c (tests/nn/test_lora_parity.c).

LoRA layers are diffusers' own classes, attached as its v0.21.4 training scripts do:
- UNet: LoRALinearLayer(rank 4, network_alpha 2) on every attention's to_q / to_k / to_v /
  to_out.0 through LoRACompatibleLinear.set_lora_layer (train_dreambooth_lora.py; numerically
  the LoRAAttnProcessor of train_text_to_image_lora.py), and LoRAConv2dLayer (rank 2, no alpha:
  LoCon) on down_blocks.0.resnets.0.conv1 and up_blocks.1.resnets.0.conv2 through
  LoRACompatibleConv.set_lora_layer;
- text encoder: LoraLoaderMixin._modify_text_encoder(rank 2) (PatchedLoraProjection on q_proj,
  k_proj, v_proj, out_proj of every layer, as train_dreambooth_lora.py --train_text_encoder).
Every up weight is random (seed 0, std 0.1) so the adapters matter.

The step is train_text_to_image_lora.py's: encoder_hidden_states = text_encoder(input_ids)[0],
noisy = DDPMScheduler.add_noise(latents, noise, timesteps), model_pred = unet(noisy, timesteps,
encoder_hidden_states).sample, target = noise (epsilon), loss = mean over the batch of
mean((pred - target)^2 per item) * min(snr, 5) / snr; then loss.backward().

Writes tests/fixtures/lora/model_step.safetensors:
- lora.<target>.down / lora.<target>.up / lora.<target>.alpha: the adapters, <target> as
  nn/lora.h names them (unet.<module>, text_encoder.<module>); alpha the scale numerator
  (rank when upstream has no network_alpha);
- input_ids (2, 77) I64, latents (2, 4, 8, 8), noise, timesteps (2,) I64, noisy, snr_weights (2,);
- encoder_hidden_states, model_pred, loss (scalar);
- grad.<target>.down / grad.<target>.up: the gradients of every LoRA parameter.

Run from the repository root:  /usr/bin/python3 tests/ref/gen_lora_model.py
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
ORACLE = os.path.abspath(os.path.join(REPO, "..", "shared", "oracle"))
sys.path.insert(0, HERE)
sys.path.insert(0, ORACLE)
import pipeline as oracle_pipeline  # noqa: E402,F401  (puts diffusers/transformers on sys.path)
import torch  # noqa: E402

import st  # noqa: E402

BASE = os.path.join(REPO, "tests", "fixtures", "pipelines", "sd1")
OUT = os.path.join(REPO, "tests", "fixtures", "lora", "model_step.safetensors")
UNET_RANK, UNET_ALPHA, CONV_RANK, TEXT_RANK, SNR_GAMMA = 4, 2.0, 2, 2, 5.0
CONVS = ("down_blocks.0.resnets.0.conv1", "up_blocks.1.resnets.0.conv2")


def load_models():
    import diffusers
    import transformers
    unet = diffusers.UNet2DConditionModel.from_pretrained(os.path.join(BASE, "unet"), variant="fp16").float()
    tcfg = transformers.CLIPTextConfig.from_json_file(os.path.join(BASE, "text_encoder", "config.json"))
    text = transformers.CLIPTextModel(tcfg)
    sd = {k: v.float() for k, v in st.load(os.path.join(BASE, "text_encoder", "model.fp16.safetensors"))[0].items()}
    missing, _ = text.load_state_dict(sd, strict=False)
    assert not [m for m in missing if "position_ids" not in m], missing
    sched = diffusers.DDPMScheduler.from_pretrained(os.path.join(BASE, "scheduler"))
    for p in list(unet.parameters()) + list(text.parameters()):
        p.requires_grad_(False)
    return unet, text, sched


def add_lora(unet, text):
    """The adapters, {target: (lora layer, alpha)}."""
    from diffusers.loaders import LoraLoaderMixin
    from diffusers.models.lora import LoRAConv2dLayer, LoRALinearLayer
    layers = {}
    for name, m in unet.named_modules():
        if name.endswith((".to_q", ".to_k", ".to_v", ".to_out.0")) and ".attn" in name:
            lora = LoRALinearLayer(m.in_features, m.out_features, rank=UNET_RANK, network_alpha=UNET_ALPHA)
            m.set_lora_layer(lora)
            layers["unet." + name] = (lora, UNET_ALPHA)
        elif name in CONVS:
            lora = LoRAConv2dLayer(m.in_channels, m.out_channels, rank=CONV_RANK, kernel_size=m.kernel_size,
                                   stride=m.stride, padding=m.padding)
            m.set_lora_layer(lora)
            layers["unet." + name] = (lora, float(CONV_RANK))
    LoraLoaderMixin._modify_text_encoder(text, dtype=torch.float32, rank=TEXT_RANK)
    for i, layer in enumerate(text.text_model.encoder.layers):
        for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
            patched = getattr(layer.self_attn, p)
            layers[f"text_encoder.text_model.encoder.layers.{i}.self_attn.{p}"] = (
                patched.lora_linear_layer, float(TEXT_RANK))
    g = torch.Generator().manual_seed(0)
    for target in sorted(layers):
        lora = layers[target][0]
        with torch.no_grad():
            lora.up.weight.copy_(torch.randn(lora.up.weight.shape, generator=g) * 0.1)
        lora.down.weight.requires_grad_(True)
        lora.up.weight.requires_grad_(True)
    return layers


def main():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    unet, text, sched = load_models()
    layers = add_lora(unet, text)
    g = torch.Generator().manual_seed(1)
    ids = torch.full((2, 77), 49407, dtype=torch.int64)
    ids[0, :6] = torch.tensor([49406, 320, 1125, 539, 1929, 49407])
    ids[1, :4] = torch.tensor([49406, 736, 2368, 49407])
    latents = torch.randn(2, 4, 8, 8, generator=g)
    noise = torch.randn(2, 4, 8, 8, generator=g)
    timesteps = torch.tensor([37, 612], dtype=torch.int64)
    noisy = sched.add_noise(latents, noise, timesteps)
    hidden = text(ids)[0]
    pred = unet(noisy, timesteps, hidden).sample
    ac = sched.alphas_cumprod[timesteps].float()
    snr = ac / (1 - ac)
    weights = torch.stack([snr, SNR_GAMMA * torch.ones_like(snr)], dim=1).min(dim=1)[0] / snr
    loss = torch.nn.functional.mse_loss(pred.float(), noise.float(), reduction="none")
    loss = (loss.mean(dim=list(range(1, loss.ndim))) * weights).mean()
    loss.backward()
    out = {"input_ids": ids, "latents": latents, "noise": noise, "timesteps": timesteps,
           "noisy": noisy, "snr_weights": weights, "encoder_hidden_states": hidden.detach(),
           "model_pred": pred.detach(), "loss": loss.detach()}
    for target, (lora, alpha) in layers.items():
        out[f"lora.{target}.down"] = lora.down.weight.detach()
        out[f"lora.{target}.up"] = lora.up.weight.detach()
        out[f"lora.{target}.alpha"] = torch.tensor(alpha)
        out[f"grad.{target}.down"] = lora.down.weight.grad
        out[f"grad.{target}.up"] = lora.up.weight.grad
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    st.save(out, OUT)
    print(f"{OUT}: {len(layers)} adapters, loss {loss.item():.6f}")


if __name__ == "__main__":
    main()
