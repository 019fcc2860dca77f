"""gen_sd_pipelines.py — tiny Stable Diffusion pipeline folders and the runs of the real diffusers
v0.21.4 pipelines on them (StableDiffusionPipeline, StableDiffusionImg2ImgPipeline,
StableDiffusionInpaintPipeline), the parity fixtures of infer/sd_*.c.

Run from the repository root with Debian's torch: /usr/bin/python3 tests/ref/gen_sd_pipelines.py
It needs the oracle next to the repository (../shared/oracle: pipeline.py builds the random
components with the upstream classes).

Writes tests/fixtures/pipelines/ (the runs named on the command line only, when any):
- sd1/: `pipeline.py build --variant sd1 --seed 0` (epsilon, PNDM, quick_gelu CLIP, pad
  <|endoftext|>), every weight file saved as the `fp16` variant (`*.fp16.safetensors`, F16 values;
  there is no plain file, so it loads only with variant "fp16");
- sd2/: `--variant sd2 --seed 1` (v_prediction, DDIM, linear projection, gelu CLIP, pad "!"),
  plain file names, the text encoder stored in F16, the rest F32;
- sd1_inpaint/: sd1 with a 9-channel UNet (fresh random weights, seed 2, fp16 variant); the
  other components are symlinks to sd1's;
- every tokenizer/ holds its two config files; vocab.json and merges.txt are symlinks to the
  shipped models/clip-tokenizer/.
Values stored in F16 are what the upstream runs use (upcast to float32, as from_pretrained does).
- images/: init.png (RGB 32x32), odd.png (RGB 37x45: diffusers resizes it to 32x40 with
  Lanczos), mask.png (L 32x32, a rectangle with soft edges: binarised at 0.5).
- runs/<case>.safetensors: `latents` (final, before the VAE), `image` (N, 3, H, W decoded, in
  [0, 1], before 8-bit rounding), `input_ids` / `negative_ids` (the upstream tokenizer's), and
  `prompt_embeds` (the upstream encode_prompt result, [negative; positive] with CFG); the
  arguments are in the metadata (`args`, JSON). The noise comes from the pipeline's own
  torch.Generator().manual_seed(seed) (latents, VAE posterior samples, scheduler noise).
"""
import json
import os
import shutil
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

OUT = os.path.join(REPO, "tests", "fixtures", "pipelines")
VOCAB = os.path.join(REPO, "models", "clip-tokenizer")


def to_f16_folder(src, dst, variant, text_f16):
    """Copies a built folder, weights rounded to F16 (all of them when variant, else the text
    encoder's only when text_f16), tokenizer vocab as symlinks."""
    shutil.copytree(src, dst)
    for comp, stem in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                       ("text_encoder", "model")):
        path = os.path.join(dst, comp, stem + ".safetensors")
        tensors, _ = st.load(path)
        half = variant or (comp == "text_encoder" and text_f16)
        if half:
            tensors = {k: v.half() for k, v in tensors.items()}
        os.remove(path)
        name = stem + (".fp16" if variant else "") + ".safetensors"
        st.save(tensors, os.path.join(dst, comp, name), metadata={"format": "pt"})
    link_vocab(os.path.join(dst, "tokenizer"))


def link_vocab(tok_dir):
    for f in ("vocab.json", "merges.txt"):
        p = os.path.join(tok_dir, f)
        if os.path.lexists(p):
            os.remove(p)
        os.symlink(os.path.relpath(os.path.join(VOCAB, f), tok_dir), p)


def make_inpaint_folder(sd1):
    import diffusers

    dst = os.path.join(OUT, "sd1_inpaint")
    os.makedirs(os.path.join(dst, "unet"))
    for comp in ("vae", "text_encoder", "tokenizer", "scheduler"):
        os.symlink(os.path.join("..", "sd1", comp), os.path.join(dst, comp))
    shutil.copy(os.path.join(sd1, "model_index.json"), dst)
    cfg = json.load(open(os.path.join(sd1, "unet", "config.json")))
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    cfg["in_channels"] = 9
    torch.manual_seed(2)
    unet = diffusers.UNet2DConditionModel(**cfg)
    oracle_pipeline.perturb(unet, 22)
    unet.save_config(os.path.join(dst, "unet"))
    sd = {k: v.detach().half() for k, v in unet.state_dict().items()}
    st.save(sd, os.path.join(dst, "unet", "diffusion_pytorch_model.fp16.safetensors"),
            metadata={"format": "pt"})


def load_components(d):
    """The folder's components as the upstream classes, in float32 (F16 values upcast)."""
    import diffusers
    import transformers

    def weights(comp, stem):
        for name in (stem + ".safetensors", stem + ".fp16.safetensors"):
            p = os.path.join(d, comp, name)
            if os.path.exists(p):
                return {k: v.float() for k, v in st.load(p)[0].items()}
        raise FileNotFoundError(os.path.join(d, comp))

    ucfg = diffusers.UNet2DConditionModel.load_config(os.path.join(d, "unet"))
    unet = diffusers.UNet2DConditionModel.from_config(ucfg)
    unet.load_state_dict(weights("unet", "diffusion_pytorch_model"))
    vcfg = diffusers.AutoencoderKL.load_config(os.path.join(d, "vae"))
    vae = diffusers.AutoencoderKL.from_config(vcfg)
    vae.load_state_dict(weights("vae", "diffusion_pytorch_model"))
    tcfg = transformers.CLIPTextConfig.from_json_file(os.path.join(d, "text_encoder", "config.json"))
    text = transformers.CLIPTextModel(tcfg)
    missing, _ = text.load_state_dict(weights("text_encoder", "model"), strict=False)
    assert not [m for m in missing if "position_ids" not in m], missing
    for m in (unet, vae, text):
        m.eval()
    tok = oracle_pipeline.load_tokenizer(os.path.join(d, "tokenizer"))
    return unet, vae, text, tok


def make_images():
    from PIL import Image, ImageDraw

    d = os.path.join(OUT, "images")
    os.makedirs(d, exist_ok=True)
    g = torch.Generator().manual_seed(5)
    for name, (w, h) in (("init.png", (32, 32)), ("odd.png", (37, 45))):
        base = torch.rand(h, w, 3, generator=g) * 0.3
        yy = torch.linspace(0, 1, h)[:, None, None]
        xx = torch.linspace(0, 1, w)[None, :, None]
        img = (base + 0.5 * yy * torch.tensor([1.0, 0.2, 0.0]) + 0.5 * xx * torch.tensor([0.0, 0.3, 1.0]))
        arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        im = Image.fromarray(arr, "RGB")
        ImageDraw.Draw(im).ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=(250, 200, 40))
        im.save(os.path.join(d, name))
    m = Image.new("L", (32, 32), 0)
    dr = ImageDraw.Draw(m)
    dr.rectangle((8, 6, 23, 25), fill=255)
    dr.rectangle((6, 4, 25, 5), fill=120)  # soft edge: below 0.5, binarised to 0
    dr.rectangle((6, 26, 25, 27), fill=140)  # above 0.5: 1
    m.save(os.path.join(d, "mask.png"))


def run_case(name, folder, mode, prompt, negative=None, steps=4, guidance=7.5, scheduler=None,
             sched_overrides=None, seed=0, n=1, height=None, width=None, image=None, mask=None,
             strength=None, guidance_rescale=0.0, sld=None):
    import diffusers
    from PIL import Image

    d = os.path.join(OUT, folder)
    unet, vae, text, tok = load_components(d)
    index = json.load(open(os.path.join(d, "model_index.json")))
    cls = getattr(diffusers, scheduler or index["scheduler"][1])
    scfg = cls.load_config(os.path.join(d, "scheduler"))
    sched = cls.from_config(scfg, **(sched_overrides or {}))
    pcls = {"txt2img": diffusers.StableDiffusionPipeline, "img2img": diffusers.StableDiffusionImg2ImgPipeline,
            "inpaint": diffusers.StableDiffusionInpaintPipeline,
            "safe": diffusers.StableDiffusionPipelineSafe}[mode]
    if mode == "safe":
        return run_safe(name, folder, pcls, dict(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                                 safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False),
                        dict(prompt=prompt, negative_prompt=negative, num_inference_steps=steps,
                             guidance_scale=guidance, num_images_per_prompt=n, height=height, width=width, **sld),
                        seed, dict(folder=folder, mode=mode, prompt=prompt, negative=negative, steps=steps,
                                   guidance=guidance, scheduler=scheduler, seed=seed, n=n, height=height,
                                   width=width, sld=sld))
    pipe = pcls(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None,
                feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt=prompt, negative_prompt=negative, num_inference_steps=steps, guidance_scale=guidance,
              num_images_per_prompt=n, generator=torch.Generator().manual_seed(seed), output_type="pt")
    if mode == "txt2img":
        kw.update(height=height, width=width, guidance_rescale=guidance_rescale)
    if image:
        kw["image"] = Image.open(os.path.join(OUT, "images", image)).convert("RGB")
    if strength is not None:
        kw["strength"] = strength
    if mask:
        kw["mask_image"] = Image.open(os.path.join(OUT, "images", mask))
        kw.update(height=height, width=width)
    final = {}

    def keep(i, t, latents):
        final["latents"] = latents.clone()

    with torch.no_grad():
        cfg = guidance > 1.0
        pe, ne = pipe.encode_prompt(prompt, "cpu", n, cfg, negative)
        img = pipe(callback=keep, callback_steps=1, **kw).images
    ids = tok(prompt, padding="max_length", max_length=77, truncation=True).input_ids
    out = {"latents": final["latents"].float().contiguous(), "image": img.float().contiguous(),
           "input_ids": torch.tensor([ids], dtype=torch.int64),
           "prompt_embeds": (torch.cat([ne, pe]) if cfg else pe).contiguous()}
    if cfg:
        nids = tok(negative or "", padding="max_length", max_length=77, truncation=True).input_ids
        out["negative_ids"] = torch.tensor([nids], dtype=torch.int64)
    args = dict(folder=folder, mode=mode, prompt=prompt, negative=negative, steps=steps, guidance=guidance,
                scheduler=scheduler, sched_overrides=sched_overrides or {}, seed=seed, n=n, height=height,
                width=width, image=image, mask=mask, strength=strength, guidance_rescale=guidance_rescale)
    os.makedirs(os.path.join(OUT, "runs"), exist_ok=True)
    st.save(out, os.path.join(OUT, "runs", name + ".safetensors"), metadata={"args": json.dumps(args)})
    print(name, tuple(out["latents"].shape), tuple(out["image"].shape))


def run_safe(name, folder, pcls, components, kw, seed, args):
    """StableDiffusionPipelineSafe (Safe Latent Diffusion) with its default safety concept; also
    checks that SLD changed the result (the same run with sld_guidance_scale 0)."""
    pipe = pcls(**components)
    pipe.set_progress_bar_config(disable=True)
    final = {}

    def keep(i, t, latents):
        final["latents"] = latents.clone()

    outs = []
    for sld_scale in (kw["sld_guidance_scale"], 0):
        with torch.no_grad():
            img = pipe(callback=keep, callback_steps=1, generator=torch.Generator().manual_seed(seed),
                       output_type="np", **dict(kw, sld_guidance_scale=sld_scale)).images
        outs.append((final["latents"].float().contiguous(), torch.from_numpy(img).permute(0, 3, 1, 2)))
    delta = (outs[0][0] - outs[1][0]).abs().max().item()
    assert delta > 1e-2, f"{name}: SLD changed the latents by only {delta}"
    out = {"latents": outs[0][0], "image": outs[0][1].float().contiguous(), "latents_without_sld": outs[1][0]}
    os.makedirs(os.path.join(OUT, "runs"), exist_ok=True)
    st.save(out, os.path.join(OUT, "runs", name + ".safetensors"),
            metadata={"args": json.dumps(args), "safety_concept": pipe.safety_concept})
    print(name, tuple(out["latents"].shape), "SLD moved the latents by", delta)


DDIM, EULER, DPM = "DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler"
CASES = [
    # txt2img, SD 1-like: the folder's PNDM, CFG with a negative prompt, two images a prompt
    ("sd1_txt2img_pndm", "sd1", "txt2img", dict(prompt="a red apple on a table", negative="blurry", n=2, steps=6,
                                                height=32, width=32)),
    ("sd1_txt2img_ddim", "sd1", "txt2img", dict(prompt="grinning face", scheduler=DDIM, height=32, width=32)),
    ("sd1_txt2img_euler", "sd1", "txt2img", dict(prompt="grinning face", scheduler=EULER, height=32, width=48)),
    ("sd1_txt2img_dpm", "sd1", "txt2img", dict(prompt="dog face", scheduler=DPM, height=32, width=32, seed=3)),
    ("sd1_txt2img_nocfg_euler", "sd1", "txt2img", dict(prompt="rocket", scheduler=EULER, guidance=1.0,
                                                       height=32, width=32)),
    ("sd1_txt2img_nocfg_dpm", "sd1", "txt2img", dict(prompt="rocket", scheduler=DPM, guidance=1.0,
                                                     height=32, width=32)),
    # SD 2-like: v-prediction, DDIM from the folder
    ("sd2_txt2img_ddim", "sd2", "txt2img", dict(prompt="crescent moon", negative="ugly", height=32, width=32)),
    ("sd2_txt2img_euler", "sd2", "txt2img", dict(prompt="crescent moon", scheduler=EULER, height=32, width=32)),
    ("sd2_txt2img_dpm", "sd2", "txt2img", dict(prompt="red heart", scheduler=DPM, height=32, width=32)),
    ("sd2_txt2img_nocfg_ddim", "sd2", "txt2img", dict(prompt="red heart", guidance=1.0, height=32, width=32)),
    # zero-terminal-SNR + trailing spacing + guidance_rescale (the "brightness" settings)
    ("sd2_txt2img_zsnr_rescale", "sd2", "txt2img", dict(prompt="a bright sun", height=32, width=32,
                                                        sched_overrides={"rescale_betas_zero_snr": True,
                                                                         "timestep_spacing": "trailing"},
                                                        guidance_rescale=0.7)),
    # img2img
    ("sd1_img2img_ddim", "sd1", "img2img", dict(prompt="a yellow circle", image="init.png", strength=0.6,
                                                scheduler=DDIM)),
    ("sd1_img2img_euler", "sd1", "img2img", dict(prompt="a yellow circle", image="init.png", strength=0.75,
                                                 scheduler=EULER, steps=5)),
    ("sd1_img2img_dpm_odd", "sd1", "img2img", dict(prompt="a yellow circle", image="odd.png", strength=0.8,
                                                   scheduler=DPM, n=2)),
    ("sd2_img2img_ddim_nocfg", "sd2", "img2img", dict(prompt="a yellow circle", image="init.png",
                                                      strength=0.5, guidance=1.0)),
    # inpainting: 9-channel UNet, and a 4-channel UNet with per-step latent blending; the first at
    # the UNet's default size (64x64: the 32x32 image and mask are resized with Lanczos)
    ("sd1_inpaint9_dpm", "sd1_inpaint", "inpaint", dict(prompt="a cat face", image="init.png", mask="mask.png",
                                                        scheduler=DPM)),
    ("sd1_inpaint9_ddim_half", "sd1_inpaint", "inpaint", dict(prompt="a cat face", image="init.png",
                                                              mask="mask.png", scheduler=DDIM, strength=0.7,
                                                              height=32, width=32)),
    ("sd1_inpaint9_euler", "sd1_inpaint", "inpaint", dict(prompt="a cat face", image="init.png", mask="mask.png",
                                                          scheduler=EULER, guidance=1.0, height=32, width=32)),
    ("sd1_inpaint4_euler", "sd1", "inpaint", dict(prompt="a cat face", image="init.png", mask="mask.png",
                                                  scheduler=EULER, strength=0.75, steps=5, height=32, width=32)),
    ("sd1_inpaint4_ddim", "sd1", "inpaint", dict(prompt="a cat face", image="init.png", mask="mask.png",
                                                 scheduler=DDIM, height=32, width=32)),
    ("sd2_inpaint4_dpm", "sd2", "inpaint", dict(prompt="a cat face", image="init.png", mask="mask.png",
                                                scheduler=DPM, strength=0.9, n=2, height=32, width=32)),
    # Safe Latent Diffusion (StableDiffusionPipelineSafe): medium's values with a 2-step warm-up (so
    # that it acts within 6 steps), two images; the max preset (no warm-up) with DDIM
    ("sd1_safe_pndm", "sd1", "safe", dict(prompt="a red apple on a table", negative="blurry", n=2, steps=6,
                                          height=32, width=32,
                                          sld=dict(sld_guidance_scale=1000, sld_warmup_steps=2, sld_threshold=0.01,
                                                   sld_momentum_scale=0.3, sld_mom_beta=0.4))),
    ("sd1_safe_max_ddim", "sd1", "safe", dict(prompt="grinning face", scheduler=DDIM, steps=4, height=32, width=32,
                                              sld=dict(sld_guidance_scale=5000, sld_warmup_steps=0, sld_threshold=1.0,
                                                       sld_momentum_scale=0.5, sld_mom_beta=0.7))),
]


def main():
    only = sys.argv[1:]
    if not only:
        if os.path.exists(OUT):
            shutil.rmtree(OUT)
        os.makedirs(OUT)
        with tempfile.TemporaryDirectory() as tmp:
            for variant, seed in (("sd1", 0), ("sd2", 1)):
                src = os.path.join(tmp, variant)
                oracle_pipeline.cmd_build(type("A", (), {"out_dir": src, "variant": variant, "seed": seed}))
                to_f16_folder(src, os.path.join(OUT, variant), variant == "sd1", variant == "sd2")
        make_inpaint_folder(os.path.join(OUT, "sd1"))
        make_images()
    torch.set_num_threads(2)
    for name, folder, mode, kw in CASES:
        if not only or name in only:
            run_case(name, folder, mode, **kw)


if __name__ == "__main__":
    main()
