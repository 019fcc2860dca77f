"""gen_ops_shapes.py — PyTorch reference values for the shape and lookup ops (torch.cat,
torch.narrow, torch.chunk, torch.permute, torch.transpose, F.embedding).

Writes tests/fixtures/ops_shapes/{concat,slice,permute,embedding}.safetensors. Each case <c> holds
its inputs (<c>.in<i>, F32 unless ids), the output (<c>.out), the upstream gradient
(<c>.gout, torch.randn) and the gradient of every input that requires one (<c>.grad<i>), i.e.
d sum(out * gout) / d in<i>. Case parameters are in the file metadata (<c>.dim, <c>.perm, ...);
"cases" lists the case names. Deterministic: torch.manual_seed per file.

Run: /usr/bin/python3 tests/ref/gen_ops_shapes.py   (from the repository root)
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "ops_shapes")


def leaf(shape, rg=True):
    return torch.randn(*shape, dtype=torch.float32).requires_grad_(rg)


def record(tensors, meta, name, inputs, out, params):
    """Backpropagates gout through out and stores everything under `name`."""
    gout = torch.randn(out.shape, dtype=torch.float32)
    out.backward(gout)
    for i, t in enumerate(inputs):
        tensors[f"{name}.in{i}"] = t.detach()
        if t.requires_grad:
            tensors[f"{name}.grad{i}"] = t.grad
    tensors[f"{name}.out"] = out.detach()
    tensors[f"{name}.gout"] = gout
    for k, v in params.items():
        meta[f"{name}.{k}"] = v
    meta["cases"] = (meta["cases"] + "," + name) if meta.get("cases") else name


def gen_concat():
    torch.manual_seed(1)
    t, m = {}, {}
    ins = [leaf((2, 3, 4)), leaf((2, 1, 4), False), leaf((2, 2, 4))]
    record(t, m, "three_dim1_some_grad", ins, torch.cat(ins, 1), {"dim": "1"})
    ins = [leaf((2, 1, 3, 2, 2)), leaf((2, 1, 3, 2, 3))]
    record(t, m, "5d_dim_neg1", ins, torch.cat(ins, -1), {"dim": "-1"})
    ins = [leaf((3,)), leaf((1,)), leaf((5,))]
    record(t, m, "1d", ins, torch.cat(ins, 0), {"dim": "0"})
    ins = [leaf((2, 4, 3)), leaf((1, 4, 3), False), leaf((3, 4, 3))]
    record(t, m, "dim_neg3", ins, torch.cat(ins, -3), {"dim": "-3"})
    st.save(t, os.path.join(OUT, "concat.safetensors"), m)


def gen_slice():
    torch.manual_seed(2)
    t, m = {}, {}
    for name, shape, dim, start, length in [
        ("mid_dim1", (2, 5, 3), 1, 1, 3),
        ("neg_dim_neg_start", (2, 5, 3), -2, -3, 2),
        ("1d", (7,), 0, 2, 4),
        ("5d", (2, 3, 1, 4, 2), 3, 1, 2),
    ]:
        a = leaf(shape)
        record(t, m, name, [a], torch.narrow(a, dim, start, length).contiguous(),
               {"dim": str(dim), "start": str(start), "len": str(length)})
    # chunk: the output is the chunks concatenated in the order given by "order"
    a = leaf((2, 6, 3))
    c = torch.chunk(a, 3, -2)
    record(t, m, "chunk3", [a], torch.cat([c[2], c[0]], -1),
           {"n": "3", "dim": "-2", "order": "2,0"})
    st.save(t, os.path.join(OUT, "slice.safetensors"), m)


def gen_permute():
    torch.manual_seed(3)
    t, m = {}, {}
    for name, shape, perm in [
        ("5d_neg", (2, 3, 1, 2, 3), (-1, 0, 2, -2, 1)),
        ("heads_btdh", (2, 5, 4, 3), (0, 2, 1, 3)),
        ("nchw_nhwc", (2, 5, 3, 4), (0, 2, 3, 1)),
        ("nhwc_nchw", (2, 3, 4, 5), (0, 3, 1, 2)),
        ("matrix", (37, 45), (1, 0)),
        ("1d", (6,), (0,)),
    ]:
        a = leaf(shape)
        record(t, m, name, [a], a.permute(*perm).contiguous(),
               {"perm": ",".join(map(str, perm))})
    a = leaf((2, 3, 4, 5))
    record(t, m, "transpose_neg", [a], a.transpose(-1, -3).contiguous(), {"d0": "-1", "d1": "-3"})
    st.save(t, os.path.join(OUT, "permute.safetensors"), m)


def gen_embedding():
    torch.manual_seed(4)
    t, m = {}, {}
    table = leaf((7, 4))
    ids = torch.tensor([[1, 6, 1], [0, 1, 6]], dtype=torch.int64)
    tensors = [ids, table]
    record(t, m, "i64_repeated", tensors, F.embedding(ids, table), {})
    table = leaf((5, 3))
    ids = torch.tensor([3, 3, 2, 3, 0], dtype=torch.int32)
    record(t, m, "i32_repeated", [ids, table], F.embedding(ids.long(), table), {})
    st.save(t, os.path.join(OUT, "embedding.safetensors"), m)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    gen_concat()
    gen_slice()
    gen_permute()
    gen_embedding()
