"""gen_ops_elementwise.py — PyTorch reference values for the elementwise ops of autograd/ops/
(binary.c, unary.c, activation.c, softmax.c, reduce.c, masked_fill.c, mse_loss.c,
cross_entropy.c).

For every case it stores the inputs, the output, a probe r, and the gradients of
loss = sum(out * r) with respect to every float input, as
  <case>.in0, <case>.in1, <case>.out, <case>.probe, <case>.grad0, <case>.grad1
in tests/fixtures/ops_elementwise/<group>.safetensors; scalar parameters of a case are in the
file metadata under "<case>" as "k=v;k=v". Dropout is not here: its mask comes from our Philox
stream, which torch does not have (its test checks the mask against the stream directly).

Run: /usr/bin/python3 tests/ref/gen_ops_elementwise.py (from the repository root).
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "ops_elementwise")
torch.manual_seed(1234)


class Group:
    def __init__(self, name):
        self.name, self.tensors, self.meta = name, {}, {}

    def case(self, cname, fn, inputs, params=None, grad_mask=None):
        """inputs: list of tensors; float ones get requires_grad unless grad_mask says no."""
        leaves = []
        for i, t in enumerate(inputs):
            t = t.detach().clone()
            if t.is_floating_point() and (grad_mask is None or grad_mask[i]):
                t.requires_grad_(True)
            leaves.append(t)
            self.tensors[f"{cname}.in{i}"] = t.detach().clone()
        out = fn(*leaves)
        probe = torch.randn(out.shape)
        (out * probe).sum().backward()
        self.tensors[f"{cname}.out"] = out.detach()
        self.tensors[f"{cname}.probe"] = probe
        for i, t in enumerate(leaves):
            if t.requires_grad:
                self.tensors[f"{cname}.grad{i}"] = t.grad.detach()
        self.meta[cname] = ";".join(f"{k}={v}" for k, v in (params or {}).items())

    def save(self):
        os.makedirs(OUT, exist_ok=True)
        self.meta["cases"] = ",".join(k for k in self.meta if k != "cases")
        st.save(self.tensors, os.path.join(OUT, self.name + ".safetensors"),
                dict(self.meta, generator="tests/ref/gen_ops_elementwise.py",
                     torch=torch.__version__))


def away(shape, scale=1.0):
    t = torch.randn(shape) * scale
    return torch.where(t >= 0, t + 0.5, t - 0.5)


def binary():
    g = Group("binary")
    pairs = {"bcast_2x3x4_3x1": ((2, 3, 4), (3, 1)), "bcast_2x1x4_1x3x1": ((2, 1, 4), (1, 3, 1)),
             "same_2x3x4x5": ((2, 3, 4, 5), (2, 3, 4, 5)), "nc11_2x3x4x5": ((2, 3, 4, 5), (1, 3, 1, 1)),
             "vec_2x3x4x5_5": ((2, 3, 4, 5), (5,)), "scalar_2x3_0d": ((2, 3), ()),
             "rank5": ((2, 1, 2, 1, 3), (1, 2, 1, 2, 1))}
    ops = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}
    for oname, f in ops.items():
        for pname, (sa, sb) in pairs.items():
            g.case(f"{oname}.{pname}", f, [away(sa), away(sb)])
    x = away((3, 4, 5))
    g.case("add_scalar", lambda a: a + 2.5, [x], {"s": 2.5})
    g.case("mul_scalar", lambda a: a * -1.75, [x], {"s": -1.75})
    g.case("rsub_scalar", lambda a: 2.5 - a, [x], {"s": 2.5})
    g.case("rdiv_scalar", lambda a: -1.75 / a, [x], {"s": -1.75})
    g.save()


def unary():
    g = Group("unary")
    x = torch.randn(4, 60) * 3
    pos = torch.rand(4, 60) * 5 + 0.05
    g.case("neg", torch.neg, [x])
    g.case("exp", torch.exp, [x])
    g.case("log", torch.log, [pos])
    g.case("sqrt", torch.sqrt, [pos])
    g.case("rsqrt", torch.rsqrt, [pos])
    for e in [2.0, 3.0, 0.5, -0.5, -1.0, -2.0, 1.75, 0.0, 1.0]:
        g.case(f"pow_{e}", lambda a, e=e: torch.pow(a, e), [pos], {"e": e})
    c = x.clone()
    c[0, :4] = torch.tensor([-0.5, 0.75, -0.5, 0.75])  # exactly at the bounds: gradient passes
    g.case("clamp", lambda a: torch.clamp(a, -0.5, 0.75), [c], {"lo": -0.5, "hi": 0.75})
    g.case("sigmoid", torch.sigmoid, [x])
    g.case("tanh", torch.tanh, [x])
    g.case("silu", F.silu, [x])
    g.case("gelu", F.gelu, [x])
    g.case("gelu_tanh", lambda a: F.gelu(a, approximate="tanh"), [x])
    g.case("quick_gelu", lambda a: a * torch.sigmoid(1.702 * a), [x])
    g.save()


def softmax():
    g = Group("softmax")
    x = torch.randn(3, 4, 10) * 3
    g.case("softmax", lambda a: torch.softmax(a, -1), [x])
    g.case("log_softmax", lambda a: torch.log_softmax(a, -1), [x])
    big = torch.randn(2, 7) * 30 + 500
    g.case("softmax_large", lambda a: torch.softmax(a, -1), [big])
    g.case("log_softmax_large", lambda a: torch.log_softmax(a, -1), [big])
    g.save()


def reduce():
    g = Group("reduce")
    x = torch.randn(2, 3, 4, 5)
    cases = {"all": ([], False), "all_keep": ([], True), "d1": ([1], False), "dm1_keep": ([-1], True),
             "d0_2": ([0, 2], False), "d0_2_3_keep": ([0, 2, 3], True), "dm3_m1": ([-3, -1], False)}
    for name, (dims, keep) in cases.items():
        for op, f in (("sum", torch.sum), ("mean", torch.mean)):
            fn = (lambda a, f=f, keep=keep: f(a).reshape([1] * 4) if keep else f(a)) if not dims \
                else (lambda a, f=f, dims=dims, keep=keep: f(a, dim=dims, keepdim=keep))
            g.case(f"{op}.{name}", fn, [x],
                   {"dims": " ".join(map(str, dims)), "keepdim": int(keep)})
    g.save()


def masked_fill():
    g = Group("masked_fill")
    x = torch.randn(2, 3, 4)
    m_u8 = (torch.rand(2, 1, 4) > 0.5).to(torch.uint8)
    m_i64 = (torch.rand(4) > 0.5).to(torch.int64) * 3
    m_i32 = (torch.rand(2, 3, 4) > 0.5).to(torch.int32)
    for name, m in (("u8", m_u8), ("i64", m_i64), ("i32", m_i32)):
        g.case(f"masked_fill_{name}", lambda a, m: a.masked_fill(m != 0, -3.5), [x, m],
               {"value": -3.5})
    g.save()


def losses():
    g = Group("losses")
    a, b = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    g.case("mse_mean", lambda a, b: F.mse_loss(a, b), [a, b])
    g.case("mse_none", lambda a, b: F.mse_loss(a, b, reduction="none"), [a, b])
    logits = torch.randn(6, 10) * 3
    t = torch.randint(0, 10, (6,))
    g.case("cross_entropy_i64", lambda x, t: F.cross_entropy(x, t), [logits, t])
    g.case("cross_entropy_i32", lambda x, t: F.cross_entropy(x, t.long()), [logits, t.to(torch.int32)])
    g.save()


if __name__ == "__main__":
    binary()
    unary()
    softmax()
    reduce()
    masked_fill()
    losses()
