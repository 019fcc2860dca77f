"""gen_ops_attention.py — PyTorch reference values for df_softmax_attention (the fused
softmax(q k^T) v of autograd/ops/attention.c): torch.softmax(q @ k.mT, -1) @ v, with the causal
cases masked as transformers' CLIP does (masked_fill of finfo(float32).min above the diagonal).

Writes tests/fixtures/ops_dnnl/attention.safetensors in the layout of gen_ops_dnnl.py (inputs,
upstream gradient gy, output y and the gradients of sum(y * gy), "<case>.<name>", references in
float64 from the float32 inputs). tests/autograd/test_attention.c holds the same case table.

Run: /usr/bin/python3 tests/ref/gen_ops_attention.py   (Debian python3-torch 1.13, no network)
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_ops_dnnl import randn, run_case, save  # noqa: E402

TABLE = {
    # name: (q shape, k shape, v shape, causal)
    "self": ((2, 3, 6, 4), (2, 3, 6, 4), (2, 3, 6, 4), False),
    "cross": ((2, 2, 5, 4), (2, 2, 9, 4), (2, 2, 9, 3), False),
    "causal": ((2, 2, 7, 4), (2, 2, 7, 4), (2, 2, 7, 4), True),
    "flat": ((3, 11, 8), (3, 13, 8), (3, 13, 5), False),
}


def attention(q, k, v, causal):
    s = q @ k.transpose(-1, -2)
    if causal:
        t, n = s.shape[-2], s.shape[-1]
        mask = torch.ones(t, n, dtype=torch.bool).triu(1)
        s = s.masked_fill(mask, torch.finfo(torch.float32).min)
    return torch.softmax(s, -1) @ v


def main():
    cases, meta = {}, {}
    for i, (name, (sq, sk, sv, causal)) in enumerate(TABLE.items()):
        g = torch.Generator().manual_seed(700 + i)
        inputs = {"q": randn(g, *sq), "k": randn(g, *sk), "v": randn(g, *sv)}

        def fn(q, k, v, causal=causal):
            return attention(q, k, v, causal)
        cases[name] = run_case(fn, inputs, 700 + i)
        meta[name] = f"q={list(sq)} k={list(sk)} v={list(sv)} causal={int(causal)}"
    save("attention", cases, meta)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
