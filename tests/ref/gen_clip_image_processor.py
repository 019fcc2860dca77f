#!/usr/bin/python3
"""gen_clip_image_processor.py — parity fixtures for infer/clip_image_processor.c: transformers
v4.33.3's CLIPImageProcessor (the safety checker's feature extractor) on real images.

Writes tests/fixtures/images/clip_processor/:
  emoji_*.png        three 64 x 64 RGBA emoji of data/emoji-google (Noto Emoji, Apache-2.0;
                     transparent pixels keep their stored colour: convert("RGB") drops alpha)
  photo.png          a 300 x 200 photo-like RGB image (smooth light, textures, edges, noise)
  tall.png           a 40 x 150 grey (mode L) image: portrait, grey replicated to RGB
  legacy.json        a processor config in SD 1.x's legacy form (int size and crop_size)
  dict.json          the current form (size {"shortest_edge"}, crop {"height", "width"}),
                     bilinear, its own mean / std
  up.json            the defaults but size 72 / crop 64: every image upsampled
  expected.safetensors  "<config>.<image>": the processor's pixel_values (1, 3, h, w)

Run from the repository root:
    /usr/bin/python3 tests/ref/gen_clip_image_processor.py [ORACLE_DIR] [EMOJI_DIR]
(defaults ../shared/oracle and data/emoji-google).
"""
import json
import os
import shutil
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "images", "clip_processor")
ORACLE = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "../shared/oracle")
EMOJI = sys.argv[2] if len(sys.argv) > 2 else "data/emoji-google"
sys.path.insert(0, ORACLE)
import oracle  # noqa: E402,F401  (puts the upstream transformers first on sys.path)
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import CLIPImageProcessor  # noqa: E402

EMOJI_FILES = ["1f600.png", "1f47b.png", "2764-fe0f.png"]  # grinning face, ghost, red heart

CONFIGS = {
    "legacy": {"crop_size": 32, "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True,
               "do_resize": True, "feature_extractor_type": "CLIPFeatureExtractor",
               "image_mean": [0.48145466, 0.4578275, 0.40821073],
               "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 40},
    "dict": {"crop_size": {"height": 30, "width": 34}, "do_center_crop": True, "do_convert_rgb": True,
             "do_normalize": True, "do_rescale": True, "rescale_factor": 0.00392156862745098,
             "do_resize": True, "image_processor_type": "CLIPImageProcessor",
             "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3], "resample": 2,
             "size": {"shortest_edge": 37}},
    "up": {"size": 72, "crop_size": 64},  # upsampling: every image's shorter side is below 72
}


def photo():
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:200, 0:300].astype(np.float64)
    sky = np.stack([120 + 60 * y / 200, 160 + 40 * y / 200, 230 - 50 * y / 200], -1)
    ground = np.stack([70 + 30 * np.sin(x / 9) * np.cos(y / 7), 110 + 20 * np.sin(x / 5), 50 + 0 * x], -1)
    img = np.where((y > 120 + 10 * np.sin(x / 30))[..., None], ground, sky)
    img += rng.normal(0, 6, img.shape)
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(im)
    d.ellipse((200, 20, 250, 70), fill=(250, 240, 200))
    d.rectangle((40, 90, 110, 160), fill=(140, 60, 40))
    d.polygon([(30, 95), (75, 55), (120, 95)], fill=(90, 30, 30))
    return im.filter(ImageFilter.GaussianBlur(0.8))


def tall():
    y, x = np.mgrid[0:150, 0:40]
    v = (128 + 100 * np.sin(y / 11.0) * np.cos(x / 5.0)).astype(np.uint8)
    return Image.fromarray(v, "L")


def main():
    os.makedirs(OUT, exist_ok=True)
    names = []
    for f in EMOJI_FILES:
        dst = "emoji_" + f
        shutil.copyfile(os.path.join(EMOJI, f), os.path.join(OUT, dst))
        names.append(dst)
    photo().save(os.path.join(OUT, "photo.png"))
    tall().save(os.path.join(OUT, "tall.png"))
    names += ["photo.png", "tall.png"]
    expected = {}
    for cname, cfg in CONFIGS.items():
        with open(os.path.join(OUT, cname + ".json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
            f.write("\n")
        proc = CLIPImageProcessor(**cfg)
        for n in names:
            im = Image.open(os.path.join(OUT, n))
            pv = proc(im, return_tensors="pt")["pixel_values"]
            expected[f"{cname}.{n}"] = pv.to(torch.float32).contiguous()
            print(cname, n, im.mode, im.size, tuple(pv.shape))
    save_file(expected, os.path.join(OUT, "expected.safetensors"),
              metadata={"transformers": oracle.TRANSFORMERS_TAG})


if __name__ == "__main__":
    main()
