"""gen_tensor.py — PyTorch reference values for the tensor core (autograd/tensor.c, dtype.c):
dtype conversions on edge values and arange with non-integer steps.

Writes tests/fixtures/tensor/tensor.safetensors:
  f32_edge (F32)            edge values: ties, subnormals, overflow, +-0, +-inf
  f32_edge_bf16 (BF16)      torch f32_edge.to(torch.bfloat16)
  f32_edge_f16 (F16)        torch f32_edge.half()
  bf16_all (BF16) + bf16_all_f32   every finite/inf bf16 pattern of a sampled set, widened
  f16_all (F16) + f16_all_f32      every subnormal f16, the top binade, inf, random others
  f32_int (F32) + f32_int_i32 / f32_int_i64   truncation toward zero
  i64_vals (I64) + i64_vals_f32 / i64_vals_i32
  arange_<k> (F32 / I64)     torch.arange cases; their (start, end, step) in the metadata
NaN is checked by class (stays NaN), not by bit pattern: torch's scalar and vectorised paths
disagree on the NaN payload themselves.

Run: /usr/bin/python3 tests/ref/gen_tensor.py (from the repository root).
"""
import os
import struct
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "tensor")


def f32(bits):
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def main():
    torch.manual_seed(7)
    edge = [0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"),
            # bf16 ties: exactly half way between neighbours (round to even, both parities)
            f32(0x3F808000), f32(0x3F818000), f32(0xBF808000), f32(0x3F808001), f32(0x3F807FFF),
            # bf16 overflow: rounds to inf above the largest finite bf16 + half ulp
            f32(0x7F7F8000), f32(0x7F7F7FFF), f32(0x7F7FFFFF),
            # f32 subnormals
            f32(0x00000001), f32(0x00008000), f32(0x00018000), f32(0x807FFFFF),
            # f16: max, ties at overflow, subnormals and their ties, underflow
            65504.0, 65519.0, 65520.0, 65536.0, 1e5, -70000.0,
            2.0 ** -14, 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -25, 5 * 2.0 ** -26, 1e-8, 2.0 ** -26,
            6.0e-5, 1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, 1.0 + 2.0 ** -11 + 2.0 ** -20,
            0.1, -0.3, 3.14159265, 1e-3, 123.456]
    x = torch.tensor(edge, dtype=torch.float32)
    x = torch.cat([x, torch.randn(64) * 100])
    t = {"f32_edge": x, "f32_edge_bf16": x.to(torch.bfloat16), "f32_edge_f16": x.half()}
    bf = torch.randint(0, 65536, (2048,), dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    bf = bf[~torch.isnan(bf.float())]
    t["bf16_all"], t["bf16_all_f32"] = bf, bf.float()
    hb = torch.cat([torch.arange(0, 1100), torch.arange(0x8000, 0x8000 + 1100),  # subnormals
                    torch.arange(0x7B00, 0x7C01), torch.randint(0, 65536, (4000,))])
    h = hb.to(torch.int32).to(torch.int16).view(torch.float16)
    h = h[~torch.isnan(h.float())]
    t["f16_all"], t["f16_all_f32"] = h, h.float()
    fi = torch.tensor([0.0, 0.5, -0.5, 1.9, -1.9, 2.5, -2.7, 1e6 + 0.75, -123456.9, 2147483520.0])
    t["f32_int"], t["f32_int_i32"], t["f32_int_i64"] = fi, fi.to(torch.int32), fi.to(torch.int64)
    iv = torch.tensor([0, 1, -1, 2 ** 24 + 1, -(2 ** 31), 2 ** 31 - 1, 123456789], dtype=torch.int64)
    t["i64_vals"], t["i64_vals_f32"], t["i64_vals_i32"] = iv, iv.float(), iv.to(torch.int32)
    meta = {}
    aranges = [(0.0, 1.0, 0.1, torch.float32), (-1.0, 1.05, 0.35, torch.float32),
               (5.0, 0.0, -1.5, torch.float32), (0, 10, 3, torch.int64), (0.0, 3.0, 1.0, torch.float32),
               (-2.5, 40.0, 0.7, torch.float32)]
    for k, (a, b, s, dt) in enumerate(aranges):
        t[f"arange_{k}"] = torch.arange(a, b, s, dtype=dt)
        meta[f"arange_{k}"] = f"{a} {b} {s}"
    meta["generator"] = "tests/ref/gen_tensor.py"
    meta["torch"] = torch.__version__
    os.makedirs(OUT, exist_ok=True)
    st.save(t, os.path.join(OUT, "tensor.safetensors"), meta)


if __name__ == "__main__":
    main()
