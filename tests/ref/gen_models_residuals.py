"""gen_models_residuals.py — the parity fixture of a UNet2DConditionModel run with a ControlNet's
residuals (diffusers' down_block_additional_residuals and mid_block_additional_residual), from
the real diffusers v0.21.4 through the oracle (../shared/oracle/oracle.py, mode unet2dcond).

Run from the repository root with Debian's torch: /usr/bin/python3 tests/ref/gen_models_residuals.py
Writes tests/fixtures/models/unet2dcond_tiny_residuals/ (the model is unet2dcond_tiny's folder,
not copied): unet2dcond_tiny's inputs plus down_block_additional_residuals.0..3 (the shapes of the four skip
connections: conv_in's output, the first block's resnet and downsampler, the second block's
resnet) and mid_block_additional_residual, all N(0, 0.5^2) from torch.Generator seed 77; then
the oracle's outputs, loss and gradients (--grad), the residuals' gradients included.
"""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import torch  # noqa: E402

import st  # noqa: E402

FIX = os.path.join(HERE, "..", "fixtures", "models")
SRC = os.path.join(FIX, "unet2dcond_tiny")
OUT = os.path.join(FIX, "unet2dcond_tiny_residuals")
ORACLE = os.path.join(HERE, "..", "..", "..", "shared", "oracle", "oracle.py")
WEIGHTS = "diffusion_pytorch_model.safetensors"
# (N, C, H, W) of the skips of unet2dcond_tiny (block_out_channels [32, 64], one layer a block,
# 8x8 input) and of the mid block's output
SKIPS = [(2, 32, 8, 8), (2, 32, 8, 8), (2, 32, 4, 4), (2, 64, 4, 4)]
MID = (2, 64, 4, 4)


def main():
    os.makedirs(OUT, exist_ok=True)
    inputs, _ = st.load(os.path.join(SRC, "inputs.safetensors"))
    g = torch.Generator().manual_seed(77)
    for i, shape in enumerate(SKIPS):
        inputs[f"down_block_additional_residuals.{i}"] = 0.5 * torch.randn(shape, generator=g)
    inputs["mid_block_additional_residual"] = 0.5 * torch.randn(MID, generator=g)
    st.save(inputs, os.path.join(OUT, "inputs.safetensors"),
            {"generator": "tests/ref/gen_models_residuals.py"})
    subprocess.run([sys.executable, ORACLE, "--model", "unet2dcond",
                    "--config", os.path.join(SRC, "config.json"),
                    "--weights", os.path.join(SRC, WEIGHTS),
                    "--inputs", os.path.join(OUT, "inputs.safetensors"),
                    "--out", os.path.join(OUT, "outputs.safetensors"), "--grad"], check=True)


if __name__ == "__main__":
    main()
