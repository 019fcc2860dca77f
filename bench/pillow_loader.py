"""pillow_loader.py — the Pillow peer of bench/bench_loader.c: the same work in one Python
process (what a torch DataLoader with num_workers=0 does per sample in diffusers'
train_text_to_image): open + decode, alpha composited on white, resize of the shorter side
(bilinear), random crop, random horizontal flip, to a float32 (C, H, W) array in [-1, 1],
stacked into batches.

  pillow_loader.py PATH RESOLUTION [BATCH] [SECONDS]
PATH: a folder with metadata.jsonl, or an HDF5 pack (needs python3-h5py). Prints
"images_per_s=<x> images=<n> seconds=<t>".
"""
import json
import os
import random
import sys
import time

import numpy as np
from PIL import Image


def transform(im, res, rng):
    w, h = im.size
    if min(w, h) != res:
        if w <= h:
            im = im.resize((res, int(res * h / w)), Image.BILINEAR)
        else:
            im = im.resize((int(res * w / h), res), Image.BILINEAR)
    w, h = im.size
    top, left = rng.randint(0, h - res), rng.randint(0, w - res)
    im = im.crop((left, top, left + res, top + res))
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    return (np.asarray(im, np.float32) / 127.5 - 1.0).transpose(2, 0, 1)


def folder_source(path):
    files = []
    with open(os.path.join(path, "metadata.jsonl")) as f:
        for line in f:
            if line.strip():
                files.append(os.path.join(path, json.loads(line)["file_name"]))

    def load(i):
        im = Image.open(files[i])
        if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            rgba = im.convert("RGBA")
            return Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), rgba).convert("RGB")
        return im.convert("RGB")

    return len(files), load


def hdf5_source(path):
    import h5py

    f = h5py.File(path, "r")
    images = f["images"]
    return images.shape[0], lambda i: Image.fromarray(images[i])


def main():
    path, res = sys.argv[1], int(sys.argv[2])
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 32
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 5.0
    n, load = hdf5_source(path) if os.path.isfile(path) else folder_source(path)
    rng = random.Random(1)
    t0 = time.perf_counter()
    images = 0
    while True:
        order = list(range(n))
        rng.shuffle(order)
        for b in range(0, n, batch):
            x = np.stack([transform(load(i), res, rng) for i in order[b:b + batch]])
            images += x.shape[0]
        t = time.perf_counter() - t0
        if t >= seconds:
            break
    print(f"images_per_s={images / t:.1f} images={images} seconds={t:.2f}")


if __name__ == "__main__":
    main()
