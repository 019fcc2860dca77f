"""torch_sd_pipeline.py — the PyTorch peer of `diffusion generate`: the real diffusers v0.21.4
StableDiffusionPipeline on CPU (float32, OpenBLAS-backed torch), and the builder of the random
Stable Diffusion folders the benchmark runs (bench/run-sd.sh).

The diffusers and transformers sources come from DF_DIFFUSERS_PATH (folders, os.pathsep-separated,
put first on sys.path: the oracle's shim/, upstream/diffusers-v0.21.4/src and
upstream/transformers-v4.33.3/src, or any checkout of those versions); it must be set: Debian ships
no diffusers for its torch, so this peer needs them and says so when they are missing.

  build OUT --variant sd15|sd21     a pipeline folder with random weights (torch's default init,
                                    seed 0) of the real configs (tests/fixtures/configs/<variant>),
                                    safetensors files, the shipped tokenizer (models/clip-tokenizer,
                                    pad "!" for sd21), the model's scheduler config
  run DIR --height H --width W --steps N --guidance G --seed S --prompt T
                                    loads the folder and runs the pipeline once (output_type "pil"),
                                    printing one JSON line: {"impl", "load_s", "run_s", "total_s",
                                    "peak_rss_mib", "threads"}
"""
import argparse
import json
import os
import resource
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "ref"))

SCHEDULERS = {
    "sd15": {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
             "prediction_type": "epsilon", "set_alpha_to_one": False, "skip_prk_steps": True,
             "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None},
    "sd21": {"_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
             "prediction_type": "v_prediction", "set_alpha_to_one": False, "steps_offset": 1,
             "timestep_spacing": "leading", "trained_betas": None},
}


def upstream_paths():
    paths = os.environ.get("DF_DIFFUSERS_PATH")
    if paths:
        return paths.split(os.pathsep)
    raise SystemExit("torch_sd_pipeline.py: set DF_DIFFUSERS_PATH to the folders holding diffusers v0.21.4, "
                     "transformers v4.33.3 and a safetensors/huggingface_hub shim (os.pathsep-separated)")


def import_upstream():
    for p in reversed(upstream_paths()):
        sys.path.insert(0, p)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import diffusers
    import transformers
    return diffusers, transformers


def cmd_build(a):
    import torch
    import st

    diffusers, transformers = import_upstream()
    cfgs = os.path.join(ROOT, "tests", "fixtures", "configs", a.variant)
    out = a.out
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)

    def save(model, comp, stem):
        d = os.path.join(out, comp)
        os.makedirs(d, exist_ok=True)
        with torch.no_grad():
            sd = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("position_ids")}
        st.save(sd, os.path.join(d, stem + ".safetensors"), metadata={"format": "pt"})

    ucfg = json.load(open(os.path.join(cfgs, "unet", "config.json")))
    unet = diffusers.UNet2DConditionModel.from_config(ucfg)
    save(unet, "unet", "diffusion_pytorch_model")
    shutil.copy(os.path.join(cfgs, "unet", "config.json"), os.path.join(out, "unet"))
    del unet
    vcfg = json.load(open(os.path.join(cfgs, "vae", "config.json")))
    vae = diffusers.AutoencoderKL.from_config(vcfg)
    save(vae, "vae", "diffusion_pytorch_model")
    shutil.copy(os.path.join(cfgs, "vae", "config.json"), os.path.join(out, "vae"))
    del vae
    tjson = json.load(open(os.path.join(cfgs, "text_encoder", "config.json")))
    tcfg = transformers.CLIPTextConfig(**{k: v for k, v in tjson.items() if k not in ("architectures",)})
    text = transformers.CLIPTextModel(tcfg)
    save(text, "text_encoder", "model")
    shutil.copy(os.path.join(cfgs, "text_encoder", "config.json"), os.path.join(out, "text_encoder"))
    tok = os.path.join(out, "tokenizer")
    os.makedirs(tok, exist_ok=True)
    src = os.path.join(ROOT, "models", "clip-tokenizer")
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(src, f), tok)
    pad = "!" if a.variant == "sd21" else "<|endoftext|>"
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": pad,
               "unk_token": "<|endoftext|>"}
    json.dump(special, open(os.path.join(tok, "special_tokens_map.json"), "w"), indent=2)
    json.dump(dict(special, model_max_length=77, do_lower_case=True, tokenizer_class="CLIPTokenizer"),
              open(os.path.join(tok, "tokenizer_config.json"), "w"), indent=2)
    sched = dict(SCHEDULERS[a.variant])
    os.makedirs(os.path.join(out, "scheduler"), exist_ok=True)
    json.dump(sched, open(os.path.join(out, "scheduler", "scheduler_config.json"), "w"), indent=2)
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.21.4",
             "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
             "scheduler": ["diffusers", sched["_class_name"]], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    json.dump(index, open(os.path.join(out, "model_index.json"), "w"), indent=2)
    print(f"built {out}", file=sys.stderr)


def load_tokenizer(d, transformers):
    from transformers.tokenization_utils_base import AddedToken as _AddedToken

    class AddedToken(_AddedToken):  # no `tokenizers` package: give the fallback a __str__
        def __str__(self):
            return self.content

    sp = json.load(open(os.path.join(d, "special_tokens_map.json")))
    special = {k: AddedToken(v, lstrip=False, rstrip=False) for k, v in sp.items()}
    return transformers.CLIPTokenizer(vocab_file=os.path.join(d, "vocab.json"),
                                      merges_file=os.path.join(d, "merges.txt"), model_max_length=77, **special)


def cmd_run(a):
    import torch
    from peer_blas import require_fast_blas

    require_fast_blas()
    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    torch.set_num_threads(threads)
    diffusers, transformers = import_upstream()
    t0 = time.perf_counter()
    d = a.dir
    unet = diffusers.UNet2DConditionModel.from_pretrained(os.path.join(d, "unet"))
    vae = diffusers.AutoencoderKL.from_pretrained(os.path.join(d, "vae"))
    tcfg = transformers.CLIPTextConfig.from_json_file(os.path.join(d, "text_encoder", "config.json"))
    text = transformers.CLIPTextModel(tcfg)
    import st
    sd, _ = st.load(os.path.join(d, "text_encoder", "model.safetensors"))
    text.load_state_dict(sd, strict=False)
    del sd
    index = json.load(open(os.path.join(d, "model_index.json")))
    sched = getattr(diffusers, index["scheduler"][1]).from_pretrained(os.path.join(d, "scheduler"))
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=load_tokenizer(
        os.path.join(d, "tokenizer"), transformers), unet=unet, scheduler=sched, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    t1 = time.perf_counter()
    with torch.no_grad():
        img = pipe(prompt=a.prompt, height=a.height, width=a.width, num_inference_steps=a.steps,
                   guidance_scale=a.guidance, generator=torch.Generator().manual_seed(a.seed)).images[0]
    t2 = time.perf_counter()
    if a.out:
        img.save(a.out)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"impl": "diffusers", "load_s": round(t1 - t0, 2), "run_s": round(t2 - t1, 2),
                      "total_s": round(t2 - t0, 2), "peak_rss_mib": round(rss), "threads": threads}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("out")
    b.add_argument("--variant", choices=("sd15", "sd21"), default="sd15")
    r = sub.add_parser("run")
    r.add_argument("dir")
    r.add_argument("--height", type=int, default=512)
    r.add_argument("--width", type=int, default=512)
    r.add_argument("--steps", type=int, default=20)
    r.add_argument("--guidance", type=float, default=7.5)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--prompt", default="a photo of an astronaut riding a horse on mars")
    r.add_argument("--out")
    a = p.parse_args()
    {"build": cmd_build, "run": cmd_run}[a.cmd](a)


if __name__ == "__main__":
    main()
