#!/usr/bin/python3
"""gen_single_file.py — fixtures for single-file Stable Diffusion checkpoints (nn/sd_single_file.c).

For each case (sd1, sd2, sd1_inpaint) it
  1. builds a tiny diffusers pipeline (UNet2DConditionModel, AutoencoderKL, CLIPTextModel) whose
     configs satisfy the assumptions of diffusers' converters: SD1 8 heads, SD2 head width 64 and
     linear projection, GroupNorm 32, layers_per_block 2 and a 4-block VAE (the diffusers ->
     original script hard-codes those), cross-attention on the first block only;
  2. turns its state dicts into the original CompVis layout with the REAL
     `scripts/convert_diffusers_to_original_stable_diffusion.py` functions (convert_unet_state_dict,
     convert_vae_state_dict, convert_text_enc_state_dict[_v20]); the sd2 case then gets what a
     Stability OpenCLIP export also carries and diffusers drops: one more (unused) resblock and
     `text_projection`;
  3. replaces every value by a synthetic float16 pattern that the C test regenerates from the name
     (so the fixture is the key list, not megabytes of weights; see `synth` below);
  4. converts that state dict back with the REAL `download_from_original_stable_diffusion_ckpt`
     (diffusers v0.21.4, convert_from_ckpt.py), given a local original yaml written here (the one
     for SD 1.x `v1-inference.yaml` / SD 2.x `v2-inference-v.yaml`, at the tiny widths);
  5. writes tests/fixtures/single_file/<case>.json: the single file's keys (name, shape) and, for
     each converted component, every tensor's shape and checksum (`checksum` below, over its
     float16 bytes) and the config, plus the scheduler config and the pipeline class.

Offline stand-ins (the converter would download): omegaconf is absent, so OmegaConf.load is a
tiny yaml -> attribute-dict loader; the SD1 text encoder and tokenizer are passed in (the
converter's own arguments); for SD2, `CLIPTextConfig.from_pretrained("stabilityai/stable-
diffusion-2")` returns the tiny config, and since upstream drops the unused last resblock and
text_projection only for the literal 23-layer SD2 config, the same rule is applied by a wrapper
around `convert_open_clip_checkpoint` (the last block removed, the model built with its
projection so that the q/k/v split width comes from text_projection as upstream, the projection
then dropped).

Run from the repository root:
    /usr/bin/python3 tests/ref/gen_single_file.py [ORACLE_DIR]     (default ../shared/oracle)
"""
import json
import os
import sys
import tempfile
import types

import numpy as np

ORACLE = sys.argv[1] if len(sys.argv) > 1 else os.path.join("..", "shared", "oracle")
sys.path.insert(0, os.path.abspath(ORACLE))
import pipeline as oracle_pipeline  # noqa: E402  (puts upstream diffusers/transformers on sys.path)

import torch  # noqa: E402
import yaml  # noqa: E402

OUT = os.path.join("tests", "fixtures", "single_file")
M64 = (1 << 64) - 1


# ------------------------------------------------------------------ omegaconf stand-in
class _Cfg(dict):
    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError:
            raise AttributeError(k)


def _wrap(x):
    if isinstance(x, dict):
        return _Cfg({k: _wrap(v) for k, v in x.items()})
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


omegaconf = types.ModuleType("omegaconf")
omegaconf.OmegaConf = types.SimpleNamespace(load=lambda p: _wrap(yaml.safe_load(open(p))))
import diffusers  # noqa: E402
import diffusers.utils.import_utils as iu  # noqa: E402
import transformers  # noqa: E402

iu._omegaconf_available = True
sys.modules["omegaconf"] = omegaconf  # after diffusers probed for the real one
import diffusers.pipelines.stable_diffusion.convert_from_ckpt as cfc  # noqa: E402

sys.path.insert(0, os.path.join(os.path.abspath(ORACLE), "upstream", "diffusers-v0.21.4", "scripts"))
import convert_diffusers_to_original_stable_diffusion as d2o  # noqa: E402


# ------------------------------------------------------------------ synthetic values and checksums
def fnv1a64(s):
    h = 0xCBF29CE484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def splitmix(x):
    """splitmix64 finaliser on a uint64 numpy array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def synth(name, shape):
    """Element j of tensor `name`: u = splitmix64(fnv1a64(name) + j); float16 bits
    (u >> 63) << 15 | (u >> 32) % 0x3C00 (a finite value of magnitude < 1)."""
    n = int(np.prod(shape)) if len(shape) else 1
    with np.errstate(over="ignore"):
        u = splitmix(np.uint64(fnv1a64(name)) + np.arange(n, dtype=np.uint64))
    bits = ((u >> np.uint64(63)) << np.uint64(15)) | ((u >> np.uint64(32)) % np.uint64(0x3C00))
    return torch.from_numpy(bits.astype(np.uint16).view(np.float16).copy()).reshape(shape)


def checksum(t):
    """sum_j bits[j] * (j * 0x9E3779B97F4A7C15 + 1) mod 2^64 over the float16 bits, as a hex
    string (position-sensitive: a permutation or a wrong slice changes it)."""
    b = t.detach().to(torch.float16).contiguous().reshape(-1).numpy().view(np.uint16).astype(np.uint64)
    with np.errstate(over="ignore"):
        w = np.arange(b.size, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(1)
        return "%016x" % int(np.sum(b * w, dtype=np.uint64))


# ------------------------------------------------------------------ the tiny models
def build(case, seed):
    torch.manual_seed(seed)
    sd2 = case == "sd2"
    ch = (64, 64) if sd2 else (32, 64)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=9 if case == "sd1_inpaint" else 4, out_channels=4, layers_per_block=2,
        block_out_channels=ch, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=64,
        attention_head_dim=[c // 64 for c in ch] if sd2 else 8, use_linear_projection=sd2)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32, 32, 32), layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    tcfg = transformers.CLIPTextConfig(
        vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=1,
        max_position_embeddings=77, hidden_act="gelu" if sd2 else "quick_gelu", projection_dim=64)
    text = transformers.CLIPTextModel(tcfg)
    return unet, vae, text, tcfg


def yaml_text(case, unet, vae):
    sd2 = case == "sd2"
    uc = unet.config
    mult = [c // uc.block_out_channels[0] for c in uc.block_out_channels]
    up = {"image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": uc.block_out_channels[0],
          "attention_resolutions": [1], "num_res_blocks": 2, "channel_mult": mult, "use_spatial_transformer": True,
          "transformer_depth": 1, "context_dim": 64, "use_checkpoint": True, "legacy": False}
    if sd2:
        up.update(num_head_channels=64, use_linear_in_transformer=True)
    else:
        up.update(num_heads=8)
    cfg = {"model": {"base_learning_rate": 1e-4, "target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": {
        "linear_start": 0.00085, "linear_end": 0.012, "num_timesteps_cond": 1, "log_every_t": 200,
        "timesteps": 1000, "first_stage_key": "jpg", "cond_stage_key": "txt", "image_size": 64, "channels": 4,
        "cond_stage_trainable": False, "conditioning_key": "crossattn", "monitor": "val/loss_simple_ema",
        "scale_factor": 0.18215, "use_ema": False,
        "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": up},
        "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
            "embed_dim": 4, "monitor": "val/rec_loss",
            "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                         "ch": 32, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 2, "attn_resolutions": [],
                         "dropout": 0.0},
            "lossconfig": {"target": "torch.nn.Identity"}}},
        "cond_stage_config": {"target": "ldm.modules.encoders.modules." +
                              ("FrozenOpenCLIPEmbedder" if sd2 else "FrozenCLIPEmbedder")}}}}
    if sd2:
        cfg["model"]["params"]["parameterization"] = "v"
        cfg["model"]["params"]["cond_stage_config"]["params"] = {"freeze": True, "layer": "penultimate"}
    return yaml.safe_dump(cfg)


def to_original(case, unet, vae, text):
    """The single file's state dict, by the real diffusers -> original script's functions."""
    u = {"model.diffusion_model." + k: v for k, v in d2o.convert_unet_state_dict(unet.state_dict()).items()}
    # v0.21.4's script still expects the VAE attention's legacy diffusers names (query, key, value,
    # proj_attn; with today's to_q ... it writes `mid.attn_1.to_q.weight`, which its own reverse
    # converter cannot read): give it those names, as later diffusers versions map directly
    legacy = {"to_q.": "query.", "to_k.": "key.", "to_v.": "value.", "to_out.0.": "proj_attn."}
    vs = {}
    for k, t in vae.state_dict().items():
        if ".attentions." in k:
            for a, b in legacy.items():
                k = k.replace(a, b)
        vs[k] = t
    v = {"first_stage_model." + k: t for k, t in d2o.convert_vae_state_dict(vs).items()}
    td = {k: t for k, t in text.state_dict().items() if not k.endswith("position_ids")}
    if case == "sd2":
        td = d2o.convert_text_enc_state_dict_v20({"transformer." + k: t for k, t in td.items()})
        t = {"cond_stage_model.model." + k: x for k, x in td.items()}
        # what an OpenCLIP export also holds: the unused last block and the projection
        last = max(int(k.split(".")[4]) for k in t if ".resblocks." in k)
        pre = "cond_stage_model.model.transformer.resblocks."
        for k in list(t):
            if k.startswith(f"{pre}{last}."):
                t[k.replace(f"{pre}{last}.", f"{pre}{last + 1}.")] = t[k]
        t["cond_stage_model.model.text_projection"] = torch.zeros(64, 64)
    else:
        t = {"cond_stage_model.transformer." + k: x for k, x in d2o.convert_text_enc_state_dict(td).items()}
    return {**u, **v, **t}


def run_case(case, seed, tmp):
    unet, vae, text, tcfg = build(case, seed)
    sd = to_original(case, unet, vae, text)
    keys = sorted(sd)
    single = {k: synth(k, list(sd[k].shape)) for k in keys}
    ypath = os.path.join(tmp, case + ".yaml")
    with open(ypath, "w") as f:
        f.write(yaml_text(case, unet, vae))
    tokdir = os.path.join(tmp, "tok_" + case)
    oracle_pipeline.tokenizer_files(tokdir, "!" if case == "sd2" else "<|endoftext|>")
    tok = oracle_pipeline.load_tokenizer(tokdir)

    orig_open_clip = cfc.convert_open_clip_checkpoint

    class TinyTextConfig:
        @staticmethod
        def from_pretrained(*a, **k):
            return transformers.CLIPTextConfig(**dict(tcfg.to_dict(), projection_dim=64))

    def open_clip(checkpoint, config_name, prefix="cond_stage_model.model.", has_projection=False, **kw):
        pre = prefix + "transformer.resblocks."
        last = max(int(k[len(pre):].split(".")[0]) for k in checkpoint if k.startswith(pre))
        ck = {k: v for k, v in checkpoint.items() if not k.startswith(f"{pre}{last}.")}
        m = orig_open_clip(ck, config_name, prefix=prefix, has_projection=True, **kw)
        plain = transformers.CLIPTextModel(m.config)
        sdm = {k: v for k, v in m.state_dict().items() if not k.startswith("text_projection")}
        plain.load_state_dict(sdm, strict=False)
        return plain

    class Tok:
        @staticmethod
        def from_pretrained(*a, **k):
            return tok

    cfc.convert_open_clip_checkpoint, saved_cfg, saved_tok = open_clip, cfc.CLIPTextConfig, cfc.CLIPTokenizer
    cfc.CLIPTextConfig, cfc.CLIPTokenizer = TinyTextConfig, Tok
    try:
        kw = dict(original_config_file=ypath, load_safety_checker=False, tokenizer=tok,
                  scheduler_type="ddim" if case == "sd2" else "pndm")
        if case != "sd2":
            kw["text_encoder"] = transformers.CLIPTextModel(tcfg)
        if case == "sd1_inpaint":
            kw["pipeline_class"] = diffusers.StableDiffusionInpaintPipeline
        pipe = cfc.download_from_original_stable_diffusion_ckpt(dict(single), **kw)
    finally:
        cfc.convert_open_clip_checkpoint, cfc.CLIPTextConfig, cfc.CLIPTokenizer = orig_open_clip, saved_cfg, saved_tok

    def comp(model, cfg):
        st = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
        return {"config": cfg, "tensors": {k: [list(v.shape), checksum(v)] for k, v in sorted(st.items())}}

    out = {
        "generator": "tests/ref/gen_single_file.py (diffusers v0.21.4 convert_from_ckpt.py + "
                     "scripts/convert_diffusers_to_original_stable_diffusion.py)",
        "synth": "float16 bits of element j of tensor NAME: u = splitmix64(fnv1a64(NAME) + j); "
                 "(u >> 63) << 15 | (u >> 32) % 0x3C00",
        "checksum": "sum_j bits16[j] * (j * 0x9E3779B97F4A7C15 + 1) mod 2^64",
        "pipeline_class": type(pipe).__name__,
        "single_file": [[k, list(single[k].shape), checksum(single[k])] for k in keys],
        "unet": comp(pipe.unet, {k: v for k, v in dict(pipe.unet.config).items() if not k.startswith("_")}),
        "vae": comp(pipe.vae, {k: v for k, v in dict(pipe.vae.config).items() if not k.startswith("_")}),
        "text_encoder": comp(pipe.text_encoder, pipe.text_encoder.config.to_diff_dict()),
        "scheduler": dict({k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")},
                          _class_name=type(pipe.scheduler).__name__),
    }
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for seed, case in enumerate(("sd1", "sd2", "sd1_inpaint")):
            out = run_case(case, seed, tmp)
            path = os.path.join(OUT, case + ".json")
            with open(path, "w") as f:
                json.dump(out, f, indent=1, sort_keys=True, default=list)
                f.write("\n")
            print(path, len(out["single_file"]), "keys")


if __name__ == "__main__":
    main()
