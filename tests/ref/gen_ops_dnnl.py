"""gen_ops_dnnl.py — PyTorch reference values for the oneDNN-backed and normalisation ops
(conv2d, matmul, linear, layer_norm, group_norm, upsample_nearest2d, avg_pool2d).

For every case it writes the inputs, an upstream gradient gy, the output y and the gradient of
sum(y * gy) with respect to every input into tests/fixtures/ops_dnnl/<op>.safetensors, tensor
names "<case>.<name>". References are computed in float64 from the float32 inputs and stored as
float32, so they are the exact values our float32 kernels approximate. The case parameters are
repeated in each file's metadata; tests/autograd/test_ops_dnnl_parity.c holds the same table.

Run: /usr/bin/python3 tests/ref/gen_ops_dnnl.py   (Debian python3-torch 1.13, no network)
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "ops_dnnl")


def run_case(fn, inputs, seed):
    """inputs: {name: f32 tensor or None}. Returns the tensors to store for one case."""
    x64 = {k: (v.double().requires_grad_(True) if v is not None else None)
           for k, v in inputs.items()}
    y = fn(**x64)
    g = torch.Generator().manual_seed(seed + 1000)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float32)
    (y * gy.double()).sum().backward()
    out = {k: v for k, v in inputs.items() if v is not None}
    out["gy"] = gy
    out["y"] = y.detach().float()
    for k, v in x64.items():
        if v is not None:
            out["g" + k] = v.grad.float()
    return out


def randn(g, *shape):
    return torch.randn(*shape, generator=g, dtype=torch.float32)


def save(op, cases, meta):
    tensors = {}
    for name, tens in cases.items():
        for k, v in tens.items():
            tensors[f"{name}.{k}"] = v
    path = os.path.join(OUT, f"{op}.safetensors")
    st.save(tensors, path, meta)
    print(f"{path}: {len(tensors)} tensors")


def gen_conv2d():
    # name: (N, C, H, W, O, K, stride, padding, dilation, groups, bias)
    table = {
        "k3p1": (2, 4, 8, 8, 6, 3, 1, 1, 1, 1, True),
        "k3s2": (2, 4, 9, 8, 6, 3, 2, 1, 1, 1, False),
        "k3d2": (1, 3, 9, 9, 4, 3, 1, 2, 2, 1, True),
        "k3g2": (2, 4, 6, 6, 6, 3, 1, 1, 1, 2, True),
        "k1": (2, 8, 5, 5, 4, 1, 1, 0, 1, 1, True),
    }
    cases, meta = {}, {}
    for i, (name, (N, C, H, W, O, K, s, p, d, gr, bias)) in enumerate(table.items()):
        g = torch.Generator().manual_seed(100 + i)
        inputs = {"x": randn(g, N, C, H, W), "w": randn(g, O, C // gr, K, K) * 0.3,
                  "b": randn(g, O) if bias else None}

        def fn(x, w, b, s=s, p=p, d=d, gr=gr):
            return F.conv2d(x, w, b, stride=s, padding=p, dilation=d, groups=gr)
        cases[name] = run_case(fn, inputs, 100 + i)
        meta[name] = f"N={N} C={C} H={H} W={W} O={O} K={K} stride={s} padding={p} " \
                     f"dilation={d} groups={gr} bias={int(bias)}"
    save("conv2d", cases, meta)


def gen_matmul():
    # name: (a shape, b shape, trans_a, trans_b)
    table = {
        "nn": ((5, 7), (7, 3), False, False),
        "tt": ((7, 5), (3, 7), True, True),
        "batched_tn": ((2, 7, 5), (2, 7, 3), True, False),
        "bcast_nt": ((2, 1, 5, 7), (3, 4, 7), False, True),
    }
    cases, meta = {}, {}
    for i, (name, (sa, sb, ta, tb)) in enumerate(table.items()):
        g = torch.Generator().manual_seed(200 + i)
        inputs = {"a": randn(g, *sa), "b": randn(g, *sb)}

        def fn(a, b, ta=ta, tb=tb):
            return torch.matmul(a.transpose(-1, -2) if ta else a, b.transpose(-1, -2) if tb else b)
        cases[name] = run_case(fn, inputs, 200 + i)
        meta[name] = f"a={list(sa)} b={list(sb)} trans_a={int(ta)} trans_b={int(tb)}"
    save("matmul", cases, meta)


def gen_linear():
    table = {"bias": ((2, 3, 20), 12, True), "nobias": ((5, 9), 7, False)}
    cases, meta = {}, {}
    for i, (name, (sx, out, bias)) in enumerate(table.items()):
        g = torch.Generator().manual_seed(300 + i)
        inputs = {"x": randn(g, *sx), "w": randn(g, out, sx[-1]) * 0.3,
                  "b": randn(g, out) if bias else None}
        cases[name] = run_case(lambda x, w, b: F.linear(x, w, b), inputs, 300 + i)
        meta[name] = f"x={list(sx)} out={out} bias={int(bias)}"
    save("linear", cases, meta)


def gen_layer_norm():
    table = {"affine": ((3, 4, 32), True), "plain": ((6, 17), False)}
    cases, meta = {}, {}
    for i, (name, (sx, affine)) in enumerate(table.items()):
        g = torch.Generator().manual_seed(400 + i)
        D = sx[-1]
        inputs = {"x": randn(g, *sx) * 2 + 0.5, "w": randn(g, D) if affine else None,
                  "b": randn(g, D) if affine else None}
        cases[name] = run_case(lambda x, w, b: F.layer_norm(x, (x.shape[-1],), w, b, 1e-5),
                               inputs, 400 + i)
        meta[name] = f"x={list(sx)} affine={int(affine)} eps=1e-5"
    save("layer_norm", cases, meta)


def gen_group_norm():
    table = {"affine": ((2, 8, 4, 4), 4, True), "plain": ((3, 6, 5), 3, False)}
    cases, meta = {}, {}
    for i, (name, (sx, groups, affine)) in enumerate(table.items()):
        g = torch.Generator().manual_seed(500 + i)
        C = sx[1]
        inputs = {"x": randn(g, *sx) * 2 + 0.5, "w": randn(g, C) if affine else None,
                  "b": randn(g, C) if affine else None}

        def fn(x, w, b, groups=groups):
            return F.group_norm(x, groups, w, b, 1e-5)
        cases[name] = run_case(fn, inputs, 500 + i)
        meta[name] = f"x={list(sx)} groups={groups} affine={int(affine)} eps=1e-5"
    save("group_norm", cases, meta)


def gen_spatial():
    g = torch.Generator().manual_seed(600)
    cases = {
        "up2": run_case(lambda x: F.interpolate(x, scale_factor=2, mode="nearest"),
                        {"x": randn(g, 2, 3, 4, 5)}, 600),
        "pool2": run_case(lambda x: F.avg_pool2d(x, 2, 2), {"x": randn(g, 2, 3, 8, 6)}, 601),
        "pool3s1": run_case(lambda x: F.avg_pool2d(x, 3, 1), {"x": randn(g, 1, 2, 6, 7)}, 602),
    }
    save("spatial", cases, {"up2": "upsample_nearest2d scale=2",
                            "pool2": "avg_pool2d kernel=2 stride=2",
                            "pool3s1": "avg_pool2d kernel=3 stride=1"})


if __name__ == "__main__":
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    gen_conv2d()
    gen_matmul()
    gen_linear()
    gen_layer_norm()
    gen_group_norm()
    gen_spatial()
