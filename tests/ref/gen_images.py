"""gen_images.py — fixtures for tests/datasets: small PNG and JPEG files of every kind the
decoder handles, Pillow's decoded pixels for each, Pillow's resizes, and broken files.

Run with Debian's Python (python3-pil):  /usr/bin/python3 tests/ref/gen_images.py
Writes tests/fixtures/images/. Deterministic (fixed seeds, no timestamps).

PNGs are written by the small encoder below (not Pillow) so that every colour type, bit depth,
palette/tRNS combination and Adam7 interlacing is covered; Pillow only decodes them. Expected
pixels are "Pillow's": Image.open(f).convert("RGB"), with alpha composited by
Image.alpha_composite onto an opaque background. One documented difference: Pillow opens
16-bit grey PNGs as mode "I" (32-bit integers holding the 16-bit values), and its I -> L conversion
clips at 255; we keep the high byte, as Pillow does for every other 16-bit PNG, so the expected
values for those files are Pillow's 16-bit values >> 8.

Expected pixel files (*.bin): b"DFPX", then uint32 LE height, width, channels, then the bytes
(H, W, C) row-major.
"""
import os
import struct
import zlib

import numpy as np
from PIL import Image

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "images")
BG_ALT = (10, 200, 30)


def chunk(tag, data):
    c = struct.pack(">I", len(data)) + tag + data
    return c + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def pack_rows(a, depth):
    """a: (h, w, c) integer samples -> list of packed scanlines (bytes)."""
    h, w, c = a.shape
    rows = []
    for y in range(h):
        s = a[y].reshape(-1)
        if depth == 16:
            rows.append(s.astype(">u2").tobytes())
        elif depth == 8:
            rows.append(s.astype(np.uint8).tobytes())
        else:
            per = 8 // depth
            n = (len(s) + per - 1) // per
            out = bytearray(n)
            for i, v in enumerate(s):
                out[i // per] |= int(v) << (8 - depth * (i % per + 1))
            rows.append(bytes(out))
    return rows


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def write_png(path, a, ctype, depth, interlace=False, palette=None, trns=None):
    h, w = a.shape[:2]
    if a.ndim == 2:
        a = a[:, :, None]
    raw = b""
    if interlace:
        for x0, y0, dx, dy in ADAM7:
            sub = a[y0::dy, x0::dx]
            if sub.shape[0] == 0 or sub.shape[1] == 0:
                continue
            raw += b"".join(b"\x00" + r for r in pack_rows(sub, depth))
    else:
        raw = b"".join(b"\x00" + r for r in pack_rows(a, depth))
    png = b"\x89PNG\r\n\x1a\n"
    png += chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 1 if interlace else 0))
    if palette is not None:
        png += chunk(b"PLTE", bytes(np.asarray(palette, np.uint8).reshape(-1)))
    if trns is not None:
        png += chunk(b"tRNS", trns)
    png += chunk(b"IDAT", zlib.compress(raw, 9))
    png += chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


def save_bin(path, a):
    a = np.asarray(a, np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    with open(path, "wb") as f:
        f.write(b"DFPX" + struct.pack("<III", *a.shape) + a.tobytes())


def pillow_rgb(path, bg=(255, 255, 255)):
    im = Image.open(path)
    im.load()
    if im.mode == "I" or im.mode.startswith("I;16"):
        v = (np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8)
        return np.stack([v, v, v], -1)
    has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", im.size, tuple(bg) + (255,))
        return np.asarray(Image.alpha_composite(base, rgba).convert("RGB"))
    return np.asarray(im.convert("RGB"))


def pattern(rng, h, w, c, maxv):
    """A smooth gradient plus noise, so resampling and subsampling see real structure."""
    y, x = np.mgrid[0:h, 0:w]
    out = np.zeros((h, w, c), np.float64)
    for ch in range(c):
        out[:, :, ch] = (np.sin(x / (3.0 + ch) + y / 5.0) * 0.4 + 0.5 + 0.1 * x / w) * maxv
    out += rng.uniform(-0.08, 0.08, out.shape) * maxv
    return np.clip(np.rint(out), 0, maxv).astype(np.int64)


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(1234)
    H, W = 23, 37
    cases = []  # (name, file) of images whose decode is checked

    def png(name, a, ctype, depth, **kw):
        p = os.path.join(OUT, name + ".png")
        write_png(p, a, ctype, depth, **kw)
        cases.append(p)

    png("gray1", pattern(rng, H, W, 1, 1), 0, 1)
    png("gray2", pattern(rng, H, W, 1, 3), 0, 2)
    png("gray4", pattern(rng, H, W, 1, 15), 0, 4)
    png("gray8", pattern(rng, H, W, 1, 255), 0, 8)
    png("gray16", pattern(rng, H, W, 1, 65535), 0, 16)
    png("gray8_trns", pattern(rng, H, W, 1, 255) // 16 * 16, 0, 8, trns=struct.pack(">H", 128))
    png("gray_alpha8", pattern(rng, H, W, 2, 255), 4, 8)
    png("gray_alpha16", pattern(rng, H, W, 2, 65535), 4, 16)
    pal = rng.integers(0, 256, (16, 3))
    png("palette4", pattern(rng, H, W, 1, 15), 3, 4, palette=pal)
    png("palette8", pattern(rng, H, W, 1, 15), 3, 8, palette=pal)
    png("palette8_trns", pattern(rng, H, W, 1, 15), 3, 8, palette=pal,
        trns=bytes(rng.integers(0, 256, 12).astype(np.uint8)))
    png("rgb8", pattern(rng, H, W, 3, 255), 2, 8)
    png("rgb16", pattern(rng, H, W, 3, 65535), 2, 16)
    png("rgba8", pattern(rng, H, W, 4, 255), 6, 8)
    png("rgba16", pattern(rng, H, W, 4, 65535), 6, 16)
    png("rgb8_interlaced", pattern(rng, H, W, 3, 255), 2, 8, interlace=True)
    png("rgba8_interlaced", pattern(rng, H, W, 4, 255), 6, 8, interlace=True)
    png("gray2_interlaced", pattern(rng, H, W, 1, 3), 0, 2, interlace=True)
    png("palette8_interlaced", pattern(rng, H, W, 1, 15), 3, 8, palette=pal, interlace=True)

    src = Image.fromarray(pattern(rng, H, W, 3, 255).astype(np.uint8), "RGB")

    def jpg(name, im, **kw):
        p = os.path.join(OUT, name + ".jpg")
        im.save(p, "JPEG", **kw)
        cases.append(p)

    jpg("jpeg_baseline", src, quality=90)
    jpg("jpeg_444", src, quality=95, subsampling=0)
    jpg("jpeg_progressive", src, quality=85, progressive=True)
    jpg("jpeg_gray", src.convert("L"), quality=90)
    jpg("jpeg_cmyk", src.convert("CMYK"), quality=90)

    for p in cases:
        base = os.path.splitext(p)[0]
        save_bin(base + ".rgb.bin", pillow_rgb(p))
        save_bin(base + ".l.bin", Image.fromarray(pillow_rgb(p)).convert("L"))
        im = Image.open(p)
        if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            save_bin(base + ".bg.bin", pillow_rgb(p, BG_ALT))

    # resize parity: Pillow's Image.resize on an RGB and an L source
    rsrc = Image.fromarray(pattern(rng, 47, 61, 3, 255).astype(np.uint8), "RGB")
    save_bin(os.path.join(OUT, "resize_src.bin"), np.asarray(rsrc))
    save_bin(os.path.join(OUT, "resize_src_l.bin"), np.asarray(rsrc.convert("L")))
    filters = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "area": Image.BOX,
               "lanczos": Image.LANCZOS}
    sizes = [(17, 23), (70, 90), (80, 30), (47, 20), (13, 61), (8, 8)]  # (h, w)
    for fname, f in filters.items():
        for h, w in sizes:
            r = rsrc.resize((w, h), f)
            save_bin(os.path.join(OUT, f"resize_{fname}_{h}x{w}.bin"), np.asarray(r))
            rl = rsrc.convert("L").resize((w, h), f)
            save_bin(os.path.join(OUT, f"resize_{fname}_{h}x{w}_l.bin"), np.asarray(rl))

    # negative files
    with open(os.path.join(OUT, "rgb8.png"), "rb") as f:
        good_png = f.read()
    with open(os.path.join(OUT, "jpeg_baseline.jpg"), "rb") as f:
        good_jpg = f.read()
    neg = os.path.join(OUT, "bad")
    os.makedirs(neg, exist_ok=True)
    with open(os.path.join(neg, "truncated.png"), "wb") as f:
        f.write(good_png[: len(good_png) // 2])
    with open(os.path.join(neg, "truncated.jpg"), "wb") as f:
        f.write(good_jpg[: len(good_jpg) // 2])
    with open(os.path.join(neg, "wrong_magic.png"), "wb") as f:
        f.write(b"GIF89a" + good_png[6:])
    with open(os.path.join(neg, "text.png"), "wb") as f:
        f.write(b"this is a text file, not an image\n")
    with open(os.path.join(neg, "empty.jpg"), "wb") as f:
        pass
    # absurd dimensions: a valid IHDR (CRC correct) claiming 100000 x 100000
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0))
    with open(os.path.join(neg, "absurd.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    # 20000 x 20000 in a JPEG SOF0 (patch the first SOF of a real file)
    j = bytearray(good_jpg)
    i = j.index(b"\xff\xc0")
    struct.pack_into(">HH", j, i + 5, 20000, 20000)
    with open(os.path.join(neg, "absurd.jpg"), "wb") as f:
        f.write(bytes(j))
    # a PNG claiming 16000 x 16000 RGBA (within the pixel limit) with a few bytes of data
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 16000, 16000, 8, 6, 0, 0, 0))
    with open(os.path.join(neg, "bomb.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IDAT", zlib.compress(b"\x00" * 4096)) + chunk(b"IEND", b""))
    # a progressive JPEG claiming 16000 x 16000 (within the pixel limit): a decompression bomb
    with open(os.path.join(OUT, "jpeg_progressive.jpg"), "rb") as f:
        j = bytearray(f.read())
    i = j.index(b"\xff\xc2")
    struct.pack_into(">HH", j, i + 5, 16000, 16000)
    with open(os.path.join(neg, "bomb_progressive.jpg"), "wb") as f:
        f.write(bytes(j))
    # a PNG whose IDAT is corrupt (bad CRC)
    b = bytearray(good_png)
    k = b.index(b"IDAT") + 10
    b[k] ^= 0xFF
    with open(os.path.join(neg, "bad_crc.png"), "wb") as f:
        f.write(bytes(b))


if __name__ == "__main__":
    main()
