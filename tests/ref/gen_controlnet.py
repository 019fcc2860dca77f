"""gen_controlnet.py — the parity fixtures of ControlNetModel (nn/controlnet.c), from the real
diffusers v0.21.4: ControlNetModel.from_unet and the oracle's `controlnet` mode.

Run from the repository root with Debian's torch: /usr/bin/python3 tests/ref/gen_controlnet.py
It needs the oracle next to the repository (../shared/oracle).

Writes tests/fixtures/models/:
- controlnet_from_unet.json: the config.json diffusers' save_pretrained writes for
  ControlNetModel.from_unet(unet2dcond_tiny, conditioning_embedding_out_channels=(8, 16)) (the
  config our from_unet must write, field for field);
- controlnet_tiny/: that ControlNet with every parameter perturbed by N(0, 0.02^2) (so the zero
  convolutions and the conditioning embedding's conv_out are not zero), saved by diffusers'
  save_pretrained (config.json, diffusion_pytorch_model.safetensors); inputs.safetensors: sample
  (2, 4, 8, 8), timestep [2], encoder_hidden_states (2, 5, 32), controlnet_cond (2, 3, 16, 16)
  in [0, 1], conditioning_scale 0.8 and one probe per output; outputs.safetensors: the oracle's
  outputs (down_block_res_samples.0..3, mid_block_res_sample), loss and gradients (--grad);
- controlnet_tiny_guess/: the same model and inputs with --guess-mode (logspace scales); its
  inputs add `guess_mode` (I64 1), the input name our component reads;
- controlnet_tiny_bgr/: a copy of the model whose config says
  controlnet_conditioning_channel_order "bgr" (the channels of controlnet_cond are flipped), with
  the same inputs; its weights file is a symlink to controlnet_tiny's.
"""
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
ORACLE_DIR = os.path.abspath(os.path.join(REPO, "..", "shared", "oracle"))
sys.path.insert(0, HERE)
sys.path.insert(0, ORACLE_DIR)
import pipeline as oracle_pipeline  # noqa: E402,F401  (puts diffusers/transformers on sys.path)
import torch  # noqa: E402

import st  # noqa: E402

FIX = os.path.join(REPO, "tests", "fixtures", "models")
UNET = os.path.join(FIX, "unet2dcond_tiny")
ORACLE = os.path.join(ORACLE_DIR, "oracle.py")
WEIGHTS = "diffusion_pytorch_model.safetensors"


def oracle(model_dir, case_dir, extra=(), inputs=None):
    subprocess.run([sys.executable, ORACLE, "--model", "controlnet",
                    "--config", os.path.join(model_dir, "config.json"),
                    "--weights", os.path.join(model_dir, WEIGHTS),
                    "--inputs", inputs or os.path.join(case_dir, "inputs.safetensors"),
                    "--out", os.path.join(case_dir, "outputs.safetensors"), "--grad", *extra],
                   check=True)


def main():
    import diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel.from_pretrained(UNET)
    cn = diffusers.ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16))
    tmp = os.path.join(FIX, "controlnet_tiny")
    if os.path.isdir(tmp):
        shutil.rmtree(tmp)
    cn.save_pretrained(tmp)
    shutil.copy(os.path.join(tmp, "config.json"), os.path.join(FIX, "controlnet_from_unet.json"))

    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in cn.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    shutil.rmtree(tmp)
    cn.save_pretrained(tmp)

    g = torch.Generator().manual_seed(6)
    inputs = {
        "sample": torch.randn((2, 4, 8, 8), generator=g),
        "timestep": torch.tensor([10.0, 700.0]),
        "encoder_hidden_states": torch.randn((2, 5, 32), generator=g),
        "controlnet_cond": torch.rand((2, 3, 16, 16), generator=g),
        "conditioning_scale": torch.tensor(0.8),
    }
    shapes = [(2, 32, 8, 8), (2, 32, 8, 8), (2, 32, 4, 4), (2, 64, 4, 4)]
    for i, s in enumerate(shapes):
        inputs[f"probe.down_block_res_samples.{i}"] = torch.randn(s, generator=g)
    inputs["probe.mid_block_res_sample"] = torch.randn((2, 64, 4, 4), generator=g)
    meta = {"generator": "tests/ref/gen_controlnet.py"}
    st.save(inputs, os.path.join(tmp, "inputs.safetensors"), meta)
    oracle(tmp, tmp)

    guess = os.path.join(FIX, "controlnet_tiny_guess")
    os.makedirs(guess, exist_ok=True)
    # the oracle takes --guess-mode; our component reads the input `guess_mode`
    oracle(tmp, guess, ["--guess-mode"], os.path.join(tmp, "inputs.safetensors"))
    st.save(dict(inputs, guess_mode=torch.tensor(1)), os.path.join(guess, "inputs.safetensors"),
            meta)

    bgr = os.path.join(FIX, "controlnet_tiny_bgr")
    os.makedirs(bgr, exist_ok=True)
    with open(os.path.join(tmp, "config.json")) as f:
        cfg = json.load(f)
    cfg["controlnet_conditioning_channel_order"] = "bgr"
    with open(os.path.join(bgr, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    link = os.path.join(bgr, WEIGHTS)
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(os.path.join("..", "controlnet_tiny", WEIGHTS), link)
    st.save(inputs, os.path.join(bgr, "inputs.safetensors"), meta)
    oracle(bgr, bgr)


if __name__ == "__main__":
    main()
