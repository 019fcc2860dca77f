"""bench_permute.py — the PyTorch peer of bench_permute.c: best-of-N time of
x.permute(perm).contiguous() on the same shapes. Run: /usr/bin/python3 bench/bench_permute.py [reps]
with the same OMP_NUM_THREADS as the C benchmark."""
import os
import sys
import time

import torch

from peer_blas import require_fast_blas

require_fast_blas()

CASES = [
    ("attn heads (B,T,H,D)->(B,H,T,D)", (2, 4096, 8, 40), (0, 2, 1, 3)),
    ("attn merge (B,H,T,D)->(B,T,H,D)", (2, 8, 4096, 40), (0, 2, 1, 3)),
    ("NCHW->NHWC (2,320,64,64)", (2, 320, 64, 64), (0, 2, 3, 1)),
    ("NHWC->NCHW (2,64,64,320)", (2, 64, 64, 320), (0, 3, 1, 2)),
    ("k^T (B,H,T,D)->(B,H,D,T)", (2, 8, 4096, 40), (0, 1, 3, 2)),
    ("5-D (2,16,8,32,32) perm 0,3,4,1,2", (2, 16, 8, 32, 32), (0, 3, 4, 1, 2)),
]

reps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
print(f"threads {torch.get_num_threads()}, reps {reps}")
for name, shape, perm in CASES:
    x = torch.ones(shape)
    best = 1e30
    for _ in range(reps):
        t0 = time.perf_counter()
        y = x.permute(perm).contiguous()
        best = min(best, time.perf_counter() - t0)
        del y
    gb = 2.0 * x.numel() * 4 / 1e9
    print(f"{name:38s} forward {best * 1e3:7.3f} ms ({gb / best:5.1f} GB/s)")
