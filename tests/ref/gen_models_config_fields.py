#!/usr/bin/python3
"""gen_models_config_fields.py — parity fixtures for the config fields we honour with a
non-default value (docs/config-fields.md), computed by the real upstream code: diffusers v0.21.4
and transformers v4.33.3 through the oracle (`oracle.py`, its README).

Each case is a tiny component folder tests/fixtures/models/<case>/:
  config.json                             the config (diffusers / transformers field names)
  diffusion_pytorch_model.safetensors     random weights drawn by the oracle (seed 0, perturbed
    or model.safetensors (CLIP)           so that norm affines and zero inits are non-trivial)
  inputs.safetensors                      the model inputs and the probes (loss = sum of
                                          sum(output * probe) over the probed outputs)
  outputs.safetensors                     upstream outputs, loss, grad.input.*, grad.param.*
tests/nn/test_models.c compares ours to them. Several non-default fields share one config to
keep the fixtures few and small; widths (4, 12, ...) are not all multiples of 8 or 16.

Run from the repository root (the oracle lives outside the repository; its folder is the first
argument, by default ../shared/oracle):
    /usr/bin/python3 tests/ref/gen_models_config_fields.py [ORACLE_DIR] [CASE ...]
    /usr/bin/python3 tests/ref/gen_models_config_fields.py [ORACLE_DIR] --verify [OLDER ...]
The second form reruns upstream on the older fixtures (OLDER below) and prints how far their
stored outputs and gradients are from it.
"""
import json
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import st  # noqa: E402

OUT = os.path.join(HERE, "..", "fixtures", "models")

# case name -> (oracle model kind, config, input maker)
CASES = {}


def case(name, kind, config):
    def register(make_inputs):
        CASES[name] = (kind, config, make_inputs)
        return make_inputs
    return register


def randn(g, *shape):
    return torch.randn(*shape, generator=g)


@case("unet2d_fields_a", "unet2d", {
    "_class_name": "UNet2DModel",
    "sample_size": [8, 16],               # the [height, width] form
    "in_channels": 2, "out_channels": 5,
    "center_input_sample": True,
    "flip_sin_to_cos": False, "freq_shift": 1,
    "down_block_types": ["AttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D"],
    "block_out_channels": [12, 8],
    "layers_per_block": 1,
    "mid_block_scale_factor": 1.4142135623730951,
    "downsample_padding": 0,
    "act_fn": "swish",
    "attention_head_dim": None,           # one head of the block width
    "norm_num_groups": 4, "norm_eps": 1e-6,
    "resnet_time_scale_shift": "scale_shift",  # mid-block attention without group_norm
})
def unet2d_a(g):
    return {"sample": randn(g, 2, 2, 8, 16), "timestep": torch.tensor([3, 917]),
            "probe": randn(g, 2, 5, 8, 16)}


@case("unet2d_fields_b", "unet2d", {
    "_class_name": "UNet2DModel",
    "sample_size": 8,
    "in_channels": 3, "out_channels": 3,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [12, 12, 12],
    "layers_per_block": 0,                # blocks without resnets (up blocks keep one)
    "attention_head_dim": 5,              # heads = width // 5: inner width 10 != 12
    "norm_num_groups": 2,                 # not one channel a group: biases keep a gradient
    "add_attention": False,               # no mid-block attention
})
def unet2d_b(g):
    return {"sample": randn(g, 1, 3, 8, 8), "timestep": torch.tensor(41), "probe": randn(g, 1, 3, 8, 8)}


@case("unet2dcond_fields_a", "unet2dcond", {
    "_class_name": "UNet2DConditionModel",
    "sample_size": [9, 7],
    "in_channels": 3, "out_channels": 5,
    "center_input_sample": True,
    "flip_sin_to_cos": False, "freq_shift": 2,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "mid_block_type": None,               # no mid block
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "only_cross_attention": [True, False],
    "block_out_channels": [12, 8],
    "layers_per_block": [1, 2],
    "downsample_padding": 0,
    "act_fn": "swish",
    "norm_num_groups": 4, "norm_eps": 1e-6,
    "cross_attention_dim": [6, 6],
    "transformer_layers_per_block": [2, 1],
    "attention_head_dim": [3, 2],         # the number of heads in v0.21
    "use_linear_projection": True,
    "resnet_time_scale_shift": "scale_shift",
    "time_embedding_dim": 20,
    "time_embedding_act_fn": "silu",
    "timestep_post_act": "silu",
    "conv_in_kernel": 5, "conv_out_kernel": 1,
})
def unet2dcond_a(g):  # 9 x 7: not a multiple of 2, the upsample_size path
    return {"sample": randn(g, 2, 3, 9, 7), "timestep": torch.tensor([11, 600]),
            "encoder_hidden_states": randn(g, 2, 5, 6), "probe": randn(g, 2, 5, 9, 7)}


@case("unet2dcond_fields_b", "unet2dcond", {
    "_class_name": "UNet2DConditionModel",
    "sample_size": 8,
    "in_channels": 4, "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "only_cross_attention": True,
    "block_out_channels": [4, 4, 12],
    "layers_per_block": [1, 0, 1],        # block 1: no resnet (so the width of block 0)
    "transformer_layers_per_block": [0, 1, 1],  # a Transformer2DModel without blocks
    "mid_block_scale_factor": 2.0,
    "norm_num_groups": 2,
    "cross_attention_dim": 8,
    "attention_head_dim": 2,
    "upcast_attention": True,
    # read only by blocks / embeddings we refuse: no effect upstream, none here
    "resnet_skip_time_act": True, "resnet_out_scale_factor": 2.0,
    "mid_block_only_cross_attention": True, "cross_attention_norm": "layer_norm",
    "projection_class_embeddings_input_dim": 7, "addition_time_embed_dim": 5,
    "addition_embed_type_num_heads": 3,
})
def unet2dcond_b(g):  # 11 x 5 with two upsamplers: both crop
    return {"sample": randn(g, 1, 4, 11, 5), "timestep": torch.tensor([77]),
            "encoder_hidden_states": randn(g, 1, 3, 8), "probe": randn(g, 1, 4, 11, 5)}


@case("vae_fields", "vae", {
    "_class_name": "AutoencoderKL",
    "in_channels": 2, "out_channels": 5, "latent_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [4, 8, 12],
    "layers_per_block": 2,
    "act_fn": "swish",
    "norm_num_groups": 2,
    "sample_size": [16, 8],
    "scaling_factor": 0.5,
    "force_upcast": False,
})
def vae(g):  # 9 x 7: the encoder floors, the decode is 8 x 4
    return {"sample": randn(g, 1, 2, 9, 7), "noise": randn(g, 1, 3, 2, 1),
            "probe": randn(g, 1, 5, 8, 4), "probe.latent_mean": randn(g, 1, 3, 2, 1),
            "probe.latent_logvar": randn(g, 1, 3, 2, 1), "probe.decoded_z": randn(g, 1, 5, 8, 4)}


@case("clip_text_fields", "clip_text", {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "vocab_size": 100, "hidden_size": 24, "intermediate_size": 40,
    "num_hidden_layers": 2, "num_attention_heads": 3,
    "max_position_embeddings": 10,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-6,
    "bos_token_id": 4, "eos_token_id": 5, "pad_token_id": 3,  # eos != 2: first-eos pooling
    "projection_dim": 7, "initializer_factor": 2.0, "initializer_range": 0.5,  # no effect
})
def clip(g):
    ids = torch.randint(6, 100, (2, 8), generator=g)
    ids[0, 5] = 5  # the first eos of row 0 at 5 (another later), row 1 at 2
    ids[0, 7] = 5
    ids[1, 2] = 5
    return {"input_ids": ids, "probe": randn(g, 2, 8, 24), "probe.pooler_output": randn(g, 2, 24)}


def run(oracle_dir, name):
    kind, config, make_inputs = CASES[name]
    folder = os.path.join(OUT, name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    g = torch.Generator().manual_seed(1234)
    st.save(make_inputs(g), os.path.join(folder, "inputs.safetensors"))
    weights = "model.safetensors" if kind == "clip_text" else "diffusion_pytorch_model.safetensors"
    cmd = ["/usr/bin/python3", os.path.join(oracle_dir, "oracle.py"), "--model", kind,
           "--config", os.path.join(folder, "config.json"), "--seed", "0", "--perturb", "0.05",
           "--save-weights", os.path.join(folder, weights),
           "--inputs", os.path.join(folder, "inputs.safetensors"),
           "--out", os.path.join(folder, "outputs.safetensors"), "--grad"]
    print(" ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)


# The older fixtures (written before the oracle existed): --verify reruns upstream on their own
# config, weights and inputs and prints the largest relative difference per tensor group.
OLDER = {"unet2d_tiny": "unet2d", "unet2dcond_tiny": "unet2dcond",
         "unet2dcond_tiny_linear": "unet2dcond", "vae_tiny": "vae", "clip_text_tiny": "clip_text"}


def verify(oracle_dir, name, kind):
    import tempfile
    folder = os.path.join(OUT, name)
    weights = "model.safetensors" if kind == "clip_text" else "diffusion_pytorch_model.safetensors"
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.safetensors")
        subprocess.run(["/usr/bin/python3", os.path.join(oracle_dir, "oracle.py"), "--model", kind,
                        "--config", os.path.join(folder, "config.json"),
                        "--weights", os.path.join(folder, weights),
                        "--inputs", os.path.join(folder, "inputs.safetensors"),
                        "--out", out, "--grad"], check=True, capture_output=True)
        new = st.load(out)[0]
    old = st.load(os.path.join(folder, "outputs.safetensors"))[0]
    worst = {}
    for key, want in new.items():
        if key not in old:
            print(f"{name}: {key} missing from the fixture")
            continue
        group = key.split(".")[0] if key.startswith("grad.") is False else ".".join(key.split(".")[:2])
        scale = float(want.abs().max()) or 1.0
        err = float((old[key].float() - want.float()).abs().max()) / scale
        if "to_k.bias" in key or "k_proj.bias" in key:  # exactly zero in exact arithmetic
            continue
        worst[group] = max(worst.get(group, 0.0), err)
    print(name, " ".join(f"{k}={v:.2g}" for k, v in sorted(worst.items())), flush=True)


def main():
    args = sys.argv[1:]
    oracle_dir = os.path.join(HERE, "..", "..", "..", "shared", "oracle")
    if args and os.path.isdir(args[0]):
        oracle_dir = args.pop(0)
    if args and args[0] == "--verify":
        for name in args[1:] or list(OLDER):
            verify(oracle_dir, name, OLDER[name])
        return
    for name in args or list(CASES):
        run(oracle_dir, name)


if __name__ == "__main__":
    main()
