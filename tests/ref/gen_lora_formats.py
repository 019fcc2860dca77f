"""gen_lora_formats.py — LoRA files in the diffusers v0.21.4 and kohya layouts, loaded by the real
diffusers v0.21.4 (LoraLoaderMixin.load_lora_weights, its own kohya conversion, fuse_lora) into
the tiny SD 2 pipeline tests/fixtures/pipelines/sd2: the parity fixtures of nn/lora_file.c and
`diffusion lora merge` (tests/recipes/test_cmd_lora.c).

Run from the repository root with Debian's torch (the oracle next to the repository):
    /usr/bin/python3 tests/ref/gen_lora_formats.py            # upstream files and outputs
    /usr/bin/python3 tests/ref/gen_lora_formats.py --ours     # checks the files our writer made
The second run needs build/diffusion: it writes tests/fixtures/lora/ours_*.safetensors with
`diffusion lora convert` and asserts that upstream loads each to the outputs of the file it was
converted from (max abs difference <= 1e-5), then adds those outputs to outputs.safetensors.

Writes tests/fixtures/lora/:
- diffusers.safetensors: a random LoRA (seed 0) on every LoRACompatibleLinear / LoRACompatibleConv
  of the UNet (attention projections, proj_in / proj_out, ff, ResNet conv1 / conv2 (LoCon 3x3),
  time_emb_proj, conv_shortcut, down / up samplers; ranks 2 and 3) and every q/k/v/out_proj and
  fc1 / fc2 of the text encoder, written by diffusers' own save_lora_weights; the attention
  projections of down_blocks.0 under the attn-procs names (`attn1.processor.to_q_lora.*`, as
  train_text_to_image_lora.py saves), the rest under the LoRACompatible names (`to_q.lora.*`) and
  `lora_linear_layer` (text encoder).
- kohya.safetensors: a random kohya / LoCon file (seed 1, F16 as A1111 files usually are) on the
  modules upstream's _convert_kohya_lora_to_diffusers maps (attention, proj_in / proj_out, ff,
  ResNet conv1 / conv2 3x3, samplers; text encoder attention and mlp), `.alpha` of 1 or rank / 2,
  missing on some UNet modules (scale 1).
- inputs.safetensors: `sample` (1, 4, 8, 8), `timestep` (1,) I64, `encoder_hidden_states`
  (1, 7, 32) for the UNet; text_inputs.safetensors: `input_ids` (1, 8) for the text encoder.
- outputs.safetensors: for each file F, F.unet / F.text (after load_lora_weights),
  F.unet_fused / F.text_fused (after fuse_lora()), kohya.unet_fused_0.7 / kohya.text_fused_0.7
  (fuse_lora(lora_scale=0.7)), and base.unet / base.text without a LoRA.
"""
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
ORACLE = os.path.abspath(os.path.join(REPO, "..", "shared", "oracle"))
sys.path.insert(0, HERE)
sys.path.insert(0, ORACLE)
import pipeline as oracle_pipeline  # noqa: E402  (puts diffusers/transformers on sys.path)
import torch  # noqa: E402

import st  # noqa: E402

BASE = os.path.join(REPO, "tests", "fixtures", "pipelines", "sd2")
OUT = os.path.join(REPO, "tests", "fixtures", "lora")


def load_pipe():
    return oracle_pipeline.load_pipe(BASE, "txt2img", None)


def inputs():
    g = torch.Generator().manual_seed(7)
    unet_in = {"sample": torch.randn(1, 4, 8, 8, generator=g),
               "timestep": torch.tensor([10], dtype=torch.int64),
               "encoder_hidden_states": torch.randn(1, 7, 32, generator=g)}
    text_in = {"input_ids": torch.tensor([[49406, 320, 1125, 539, 1929, 49407, 49407, 49407]])}
    return unet_in, text_in


def outputs(pipe, unet_in, text_in):
    with torch.no_grad():
        u = pipe.unet(unet_in["sample"], unet_in["timestep"], unet_in["encoder_hidden_states"]).sample
        t = pipe.text_encoder(text_in["input_ids"])[0]
    return u.contiguous(), t.contiguous()


def lora_modules(unet):
    from diffusers.models.lora import LoRACompatibleConv, LoRACompatibleLinear
    return [(n, m) for n, m in unet.named_modules() if isinstance(m, (LoRACompatibleLinear, LoRACompatibleConv))]


def pair(g, m, rank, dtype=torch.float32):
    if isinstance(m, torch.nn.Conv2d):
        down = torch.randn(rank, m.in_channels, *m.kernel_size, generator=g) * 0.2
        up = torch.randn(m.out_channels, rank, 1, 1, generator=g) * 0.2
    else:
        down = torch.randn(rank, m.in_features, generator=g) * 0.2
        up = torch.randn(m.out_features, rank, generator=g) * 0.2
    return down.to(dtype), up.to(dtype)


def te_modules(text):
    for i, layer in enumerate(text.text_model.encoder.layers):
        pre = f"text_model.encoder.layers.{i}"
        for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
            yield f"{pre}.self_attn.{p}", getattr(layer.self_attn, p), i
        for p in ("fc1", "fc2"):
            yield f"{pre}.mlp.{p}", getattr(layer.mlp, p), i


def make_diffusers(pipe, path):
    g = torch.Generator().manual_seed(0)
    unet_sd, te_sd = {}, {}
    procs = {"to_q": "to_q_lora", "to_k": "to_k_lora", "to_v": "to_v_lora", "to_out.0": "to_out_lora"}
    for k, (name, m) in enumerate(lora_modules(pipe.unet)):
        down, up = pair(g, m, 2 + k % 2)
        attn_leaf = name.split(".attn", 1)[-1].split(".", 1)[-1] if ".attn" in name else None
        if name.startswith("down_blocks.0.") and attn_leaf in procs:
            attn = name[: -len(attn_leaf) - 1]
            stem = f"{attn}.processor.{procs[attn_leaf]}"
        else:
            stem = f"{name}.lora"
        unet_sd[f"{stem}.down.weight"], unet_sd[f"{stem}.up.weight"] = down, up
    for name, m, i in te_modules(pipe.text_encoder):
        # upstream takes one rank per layer's attention (from out_proj) and one per fc
        down, up = pair(g, m, 2 if (i == 0 or ".mlp." in name) else 3)
        te_sd[f"{name}.lora_linear_layer.down.weight"] = down
        te_sd[f"{name}.lora_linear_layer.up.weight"] = up
    d = tempfile.mkdtemp()
    pipe.save_lora_weights(d, unet_lora_layers=unet_sd, text_encoder_lora_layers=te_sd)
    shutil.copy(os.path.join(d, "pytorch_lora_weights.safetensors"), path)
    shutil.rmtree(d)


def make_kohya(pipe, path):
    g = torch.Generator().manual_seed(1)
    sd = {}
    for k, (name, m) in enumerate(lora_modules(pipe.unet)):
        leaf = name.rsplit(".", 1)[-1]
        ok = ".attn" in name or leaf in ("proj_in", "proj_out", "conv1", "conv2") or \
            ".ff.net." in name or "samplers" in name
        if not ok:
            continue  # time_emb_proj, conv_shortcut: upstream's kohya conversion misnames them
        rank = 2 + k % 2
        down, up = pair(g, m, rank, torch.float16)
        key = "lora_unet_" + name.replace(".", "_")
        sd[key + ".lora_down.weight"], sd[key + ".lora_up.weight"] = down, up
        if k % 3 != 2:
            sd[key + ".alpha"] = torch.tensor(1.0 if k % 3 == 0 else rank / 2, dtype=torch.float16)
    for name, m, i in te_modules(pipe.text_encoder):
        rank = 2 if ".mlp." in name else 4
        down, up = pair(g, m, rank, torch.float16)
        key = "lora_te_" + name.replace(".", "_")
        sd[key + ".lora_down.weight"], sd[key + ".lora_up.weight"] = down, up
        sd[key + ".alpha"] = torch.tensor(rank / 2 if i == 0 else 1.0, dtype=torch.float16)
    st.save(sd, path)


def run_file(path, unet_in, text_in, scales=(1.0,)):
    """Outputs after load_lora_weights, then after fuse_lora(scale) for each scale (fresh pipes)."""
    res = {}
    for s in scales:
        pipe = load_pipe()
        pipe.load_lora_weights(st.load(path)[0], low_cpu_mem_usage=False)
        if s == 1.0:
            res["unet"], res["text"] = outputs(pipe, unet_in, text_in)
        pipe.fuse_lora(lora_scale=s)
        sfx = "_fused" if s == 1.0 else f"_fused_{s}"
        res["unet" + sfx], res["text" + sfx] = outputs(pipe, unet_in, text_in)
    return res


def main():
    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)
    unet_in, text_in = inputs()
    ours = "--ours" in sys.argv[1:]
    outs_path = os.path.join(OUT, "outputs.safetensors")
    if not ours:
        st.save(unet_in, os.path.join(OUT, "inputs.safetensors"))
        st.save(text_in, os.path.join(OUT, "text_inputs.safetensors"))
        pipe = load_pipe()
        res = {}
        res["base.unet"], res["base.text"] = outputs(pipe, unet_in, text_in)
        make_diffusers(pipe, os.path.join(OUT, "diffusers.safetensors"))
        make_kohya(pipe, os.path.join(OUT, "kohya.safetensors"))
        for name, scales in (("diffusers", (1.0,)), ("kohya", (1.0, 0.7))):
            for k, v in run_file(os.path.join(OUT, name + ".safetensors"), unet_in, text_in, scales).items():
                res[f"{name}.{k}"] = v
        for k in ("unet", "text"):
            for name in ("diffusers", "kohya"):
                d = (res[f"{name}.{k}"] - res[f"base.{k}"]).abs().max().item()
                f = (res[f"{name}.{k}_fused"] - res[f"{name}.{k}"]).abs().max().item()
                print(f"{name}.{k}: LoRA changes the output by {d:.3g}; fused vs not {f:.3g}")
        st.save(res, outs_path, {"generator": "tests/ref/gen_lora_formats.py"})
        return
    exe = os.path.join(REPO, "build", "diffusion")
    res, meta = st.load(outs_path)
    for out, src, fmt in (("ours_diffusers", "kohya", "diffusers"), ("ours_kohya", "kohya", "kohya"),
                          ("ours_diffusers_rt", "diffusers", "diffusers")):
        path = os.path.join(OUT, out + ".safetensors")
        if os.path.exists(path):
            os.remove(path)
        subprocess.run([exe, "lora", "convert", os.path.join(OUT, src + ".safetensors"), path,
                        "--format", fmt], check=True)
        got = run_file(path, unet_in, text_in)
        for k, v in got.items():
            d = (v - res[f"{src}.{k}"]).abs().max().item()
            print(f"{out}.{k} vs {src}.{k}: max abs diff {d:.3g}")
            assert d <= 1e-5, (out, k, d)
            res[f"{out}.{k}"] = v
    st.save(res, outs_path, meta)


if __name__ == "__main__":
    main()
