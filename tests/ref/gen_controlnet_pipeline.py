"""gen_controlnet_pipeline.py — runs of the real diffusers v0.21.4 StableDiffusionControlNetPipeline
(one ControlNetModel, and a MultiControlNetModel of two) on the tiny sd1 pipeline folder of
tests/ref/gen_sd_pipelines.py: the parity fixtures of infer/sd_control.c.

Run from the repository root with Debian's torch: /usr/bin/python3 tests/ref/gen_controlnet_pipeline.py
It needs the oracle next to the repository (../shared/oracle) and tests/fixtures/pipelines/sd1.

Writes tests/fixtures/pipelines/:
- controlnet_a/, controlnet_b/: ControlNetModel.from_unet(sd1's UNet,
  conditioning_embedding_out_channels=(4, 8, 8, 16)) with every parameter perturbed by
  N(0, 0.05^2) (torch.Generator seeds 11 and 12; so the zero convolutions are not zero),
  saved by diffusers' save_pretrained;
- runs/cn_<case>.safetensors: `latents` (final), `image` (decoded, in [0, 1]), `prompt_embeds`;
  the arguments in the metadata (`args`, JSON). Control images are images/init.png (32x32) and
  images/odd.png (37x45, resized by the pipeline's VaeImageProcessor (Lanczos) to the output
  size).
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_sd_pipelines as sdp  # noqa: E402  (puts diffusers/transformers on sys.path)
import torch  # noqa: E402

import st  # noqa: E402

OUT = sdp.OUT
COND = (4, 8, 8, 16)

# name: (scheduler or None, kwargs); images / scales / starts / ends are per ControlNet
CASES = {
    "cn_single_pndm": (None, dict(prompt="a red apple", negative="blurry", nets=["a"], images=["init.png"],
                                  scale=[0.9], steps=4, guidance=7.5)),
    "cn_guess_ddim": ("DDIMScheduler", dict(prompt="a red apple", nets=["a"], images=["init.png"], scale=[1.0],
                                            guess=True, steps=4, guidance=5.0)),
    "cn_multi_euler": ("EulerDiscreteScheduler",
                       dict(prompt="grinning face", nets=["a", "b"], images=["init.png", "odd.png"],
                            scale=[0.7, 1.2], start=[0.0, 0.5], end=[0.3, 1.0], steps=5, guidance=7.5,
                            height=32, width=32)),
    "cn_nocfg_euler": ("EulerDiscreteScheduler", dict(prompt="rocket", nets=["b"], images=["odd.png"],
                                                      scale=[1.0], steps=3, guidance=1.0, n=2)),
}


def make_controlnets(unet):
    import diffusers

    for name, seed in (("a", 11), ("b", 12)):
        torch.manual_seed(seed)
        cn = diffusers.ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=COND)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in cn.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        cn.save_pretrained(os.path.join(OUT, "controlnet_" + name))


def load_controlnet(name):
    import diffusers

    d = os.path.join(OUT, "controlnet_" + name)
    cn = diffusers.ControlNetModel.from_config(diffusers.ControlNetModel.load_config(d))
    cn.load_state_dict(st.load(os.path.join(d, "diffusion_pytorch_model.safetensors"))[0])
    return cn.eval()


def run(name, scheduler, a):
    import diffusers
    from PIL import Image

    d = os.path.join(OUT, "sd1")
    unet, vae, text, tok = sdp.load_components(d)
    index = json.load(open(os.path.join(d, "model_index.json")))
    cls = getattr(diffusers, scheduler or index["scheduler"][1])
    sched = cls.from_config(cls.load_config(os.path.join(d, "scheduler")))
    nets = [load_controlnet(n) for n in a["nets"]]
    multi = len(nets) > 1
    controlnet = diffusers.pipelines.controlnet.MultiControlNetModel(nets) if multi else nets[0]
    pipe = diffusers.StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=text, tokenizer=tok, unet=unet, controlnet=controlnet, scheduler=sched,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    images = [Image.open(os.path.join(OUT, "images", f)) for f in a["images"]]
    guidance = a["guidance"]
    kw = dict(prompt=a["prompt"], negative_prompt=a.get("negative"), num_inference_steps=a["steps"],
              guidance_scale=guidance, num_images_per_prompt=a.get("n", 1),
              generator=torch.Generator().manual_seed(a.get("seed", 0)), output_type="pt",
              image=images if multi else images[0],
              controlnet_conditioning_scale=a["scale"] if multi else a["scale"][0],
              guess_mode=a.get("guess", False), height=a.get("height"), width=a.get("width"))
    if "start" in a:
        kw.update(control_guidance_start=a["start"], control_guidance_end=a["end"])
    final = {}

    def keep(i, t, latents):
        final["latents"] = latents.clone()

    with torch.no_grad():
        cfg = guidance > 1.0
        pe, ne = pipe.encode_prompt(a["prompt"], "cpu", a.get("n", 1), cfg, a.get("negative"))
        img = pipe(callback=keep, callback_steps=1, **kw).images
    out = {"latents": final["latents"].float().contiguous(), "image": img.float().contiguous(),
           "prompt_embeds": (torch.cat([ne, pe]) if cfg else pe).contiguous()}
    args = dict(a, scheduler=scheduler)
    st.save(out, os.path.join(OUT, "runs", name + ".safetensors"), metadata={"args": json.dumps(args)})
    print(name, tuple(out["latents"].shape), tuple(out["image"].shape))


def main():
    unet, _, _, _ = sdp.load_components(os.path.join(OUT, "sd1"))
    make_controlnets(unet)
    for name, (sched, a) in CASES.items():
        run(name, sched, a)


if __name__ == "__main__":
    main()
