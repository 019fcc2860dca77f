"""bench_elementwise.py — the PyTorch peer of bench_elementwise.c: same ops, shapes and
measurement (median ms of 9 runs after 2 warm-ups). Run with /usr/bin/python3 and the same
OMP_NUM_THREADS."""
import os
import time

import torch
import torch.nn.functional as F

from peer_blas import require_fast_blas

require_fast_blas()

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
torch.manual_seed(0)
x = torch.randn(8, 128, 32, 32, requires_grad=True)
y = torch.randn(8, 128, 32, 32)
bias = torch.randn(1, 128, 1, 1, requires_grad=True)
rows = torch.randn(8, 4096, 32, requires_grad=True)
cases = [("add same (8,128,32,32)", lambda: x + y, x), ("mul by (1,128,1,1)", lambda: x * bias, x),
         ("silu", lambda: F.silu(x), x), ("gelu", lambda: F.gelu(x), x),
         ("sum over (0,2,3)", lambda: x.sum((0, 2, 3)), x), ("mean all", lambda: x.mean(), x),
         ("softmax (8,4096,32)", lambda: torch.softmax(rows, -1), rows),
         ("mse_loss mean", lambda: F.mse_loss(x, y), x)]


def run(f, leaf, backward):
    ts = []
    for r in range(11):
        leaf.grad = None
        t0 = time.perf_counter()
        out = f()
        if backward:
            out.backward(torch.ones_like(out))
        ts.append((time.perf_counter() - t0) * 1e3)
    ts = sorted(ts[2:])
    return ts[len(ts) // 2]


print("%-26s %10s %12s" % ("op", "fwd ms", "fwd+bwd ms"))
for name, f, leaf in cases:
    print("%-26s %10.3f %12.3f" % (name, run(f, leaf, False), run(f, leaf, True)))
