"""gen_conditioning.py — reference conditioning images for datasets/canny.c and
datasets/silhouette.c (ControlNet's conditioning generators).

OpenCV (python3-opencv) is not installed for /usr/bin/python3 here, so the Canny reference is a
numpy transcription of OpenCV 4.x's cv2.Canny (modules/imgproc/src/canny.cpp) with
apertureSize 3 and L2gradient false, written from its documented steps and independently of the
C code's structure (whole-array operations; hysteresis by repeated 8-neighbour dilation until
nothing changes):
  Sobel 3x3 per channel with BORDER_REPLICATE; per pixel the channel with the largest
  |dx| + |dy| (first on ties); magnitude zero outside the image; non-maximum suppression in
  OpenCV's integer sectors (TG22 = 13573 with CANNY_SHIFT 15: horizontal when
  |dy| << 15 < |dx| * TG22, vertical when it exceeds that plus |dx| << 16, else diagonal along
  the sign of dx * dy, with OpenCV's > / >= comparisons); edges > high, candidates > low,
  8-connected hysteresis.
With OpenCV available, `cv2.Canny(rgb, low, high)` should give the same maps (not checked here).

Run from the repository root: /usr/bin/python3 tests/ref/gen_conditioning.py
Writes tests/fixtures/images/conditioning/: rgb.png (48x40 RGB: gradients, shapes, noise from
torch.Generator seed 9), rgba.png (40x32 RGBA: a disc and a soft-edged square on transparency),
grey.png (rgb.png's red channel as L), expected.safetensors: canny_100_200, canny_50_150 (of
rgb.png), canny_grey_30_90 (of grey.png), silhouette_128, silhouette_40 (of rgba.png), all U8
(H, W, 3).
"""
import os
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import st  # noqa: E402

OUT = os.path.join(HERE, "..", "fixtures", "images", "conditioning")
TG22 = 13573


def sobel(ch):
    p = np.pad(ch.astype(np.int64), 1, mode="edge")
    h, w = ch.shape

    def at(dy, dx):
        return p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    gx = (at(-1, 1) + 2 * at(0, 1) + at(1, 1)) - (at(-1, -1) + 2 * at(0, -1) + at(1, -1))
    gy = (at(1, -1) + 2 * at(1, 0) + at(1, 1)) - (at(-1, -1) + 2 * at(-1, 0) + at(-1, 1))
    return gx, gy


def canny(img, low, high):
    if img.ndim == 2:
        img = img[:, :, None]
    h, w, c = img.shape
    best_dx = best_dy = best_m = None
    for k in range(c):
        gx, gy = sobel(img[:, :, k])
        m = np.abs(gx) + np.abs(gy)
        if best_m is None:
            best_dx, best_dy, best_m = gx, gy, m
        else:
            take = m > best_m
            best_dx = np.where(take, gx, best_dx)
            best_dy = np.where(take, gy, best_dy)
            best_m = np.where(take, m, best_m)
    dx, dy, m = best_dx, best_dy, best_m
    mp = np.pad(m, 1)  # zeros outside

    def nb(oy, ox):
        return mp[1 + oy:1 + oy + h, 1 + ox:1 + ox + w]

    xs = np.abs(dx)
    ys = np.abs(dy) << 15
    t22 = xs * TG22
    t67 = t22 + (xs << 16)
    horiz = ys < t22
    vert = ~horiz & (ys > t67)
    diag = ~horiz & ~vert
    s = np.where((dx ^ dy) < 0, -1, 1)
    left, right, up, down = nb(0, -1), nb(0, 1), nb(-1, 0), nb(1, 0)
    # diagonal neighbours: (y-1, x-s) and (y+1, x+s)
    d1 = np.where(s < 0, nb(-1, 1), nb(-1, -1))
    d2 = np.where(s < 0, nb(1, -1), nb(1, 1))
    is_max = (horiz & (m > left) & (m >= right)) | (vert & (m > up) & (m >= down)) | \
             (diag & (m > d1) & (m > d2))
    cand = is_max & (m > low)
    edge = cand & (m > high)
    while True:
        e = np.pad(edge, 1)
        grown = np.zeros_like(edge)
        for oy in (-1, 0, 1):
            for ox in (-1, 0, 1):
                grown |= e[1 + oy:1 + oy + h, 1 + ox:1 + ox + w]
        new = edge | (cand & grown)
        if (new == edge).all():
            break
        edge = new
    out = np.where(edge, 255, 0).astype(np.uint8)
    return np.repeat(out[:, :, None], 3, axis=2)


def main():
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(9)
    h, w = 40, 48
    yy = np.linspace(0, 1, h)[:, None, None]
    xx = np.linspace(0, 1, w)[None, :, None]
    base = 0.6 * yy * np.array([1.0, 0.3, 0.1]) + 0.5 * xx * np.array([0.1, 0.4, 1.0])
    base = base + 0.08 * torch.rand((h, w, 3), generator=g).numpy()
    im = Image.fromarray((np.clip(base, 0, 1) * 255).round().astype(np.uint8), "RGB")
    dr = ImageDraw.Draw(im)
    dr.ellipse((6, 5, 26, 25), fill=(240, 200, 30))
    dr.rectangle((28, 10, 44, 34), fill=(20, 90, 200))
    dr.line((2, 36, 46, 28), fill=(250, 250, 250), width=2)
    im.save(os.path.join(OUT, "rgb.png"))
    grey = Image.fromarray(np.array(im)[:, :, 0], "L")
    grey.save(os.path.join(OUT, "grey.png"))
    rgba = Image.new("RGBA", (40, 32), (0, 0, 0, 0))
    dr = ImageDraw.Draw(rgba)
    dr.ellipse((4, 4, 20, 20), fill=(255, 200, 0, 255))
    dr.rectangle((22, 8, 36, 28), fill=(30, 30, 220, 100))
    dr.rectangle((21, 7, 37, 29), outline=(30, 30, 220, 30))
    rgba.save(os.path.join(OUT, "rgba.png"))

    rgb = np.array(im)
    alpha = np.array(rgba)[:, :, 3]
    exp = {
        "canny_100_200": canny(rgb, 100, 200),
        "canny_50_150": canny(rgb, 50, 150),
        "canny_grey_30_90": canny(np.array(grey), 30, 90),
        "silhouette_128": np.repeat(np.where(alpha >= 128, 255, 0).astype(np.uint8)[:, :, None], 3, 2),
        "silhouette_40": np.repeat(np.where(alpha >= 40, 255, 0).astype(np.uint8)[:, :, None], 3, 2),
    }
    for k, v in exp.items():
        print(k, v.shape, int((v[:, :, 0] > 0).sum()), "on")
    st.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in exp.items()},
            os.path.join(OUT, "expected.safetensors"), {"generator": "tests/ref/gen_conditioning.py"})


if __name__ == "__main__":
    main()
