"""torch_ops.py — the PyTorch peer of bench/bench_ops.c: the same shapes, passes and output
format (shape, op, median ms, GFLOP/s at the median, minimum ms; tab-separated), timed the same
way (warm-up, then DF_BENCH_ITERS iterations; DF_BENCH_CLOCK=cpu for process CPU time).

PyTorch computes fp32 CPU convolutions through mkldnn (oneDNN) on plain NCHW tensors; the
backward passes are timed separately with torch.ops.aten.convolution_backward and an
output_mask selecting the input gradient (bwd-data) or the weight and bias gradients
(bwd-weights), as our bench times df_backward with only x or only w, b requiring a gradient.

Run with 2 threads: OMP_NUM_THREADS=2 /usr/bin/python3 bench/torch_ops.py (bench/run-ops.sh).
"""
import os
import time

import torch
import torch.nn.functional as F

from peer_blas import require_fast_blas

ITERS = max(1, int(os.environ.get("DF_BENCH_ITERS", "10")))
WARMUP = max(0, int(os.environ.get("DF_BENCH_WARMUP", "2")))
N = int(os.environ.get("DF_BENCH_BATCH", "32"))
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
# DF_BENCH_CLOCK=cpu: process CPU time instead of wall time, as bench_ops.c
CLOCK = time.process_time if os.environ.get("DF_BENCH_CLOCK") == "cpu" else time.perf_counter


def median_ms(fn):
    ts = []
    for i in range(WARMUP + ITERS):
        t0 = CLOCK()
        fn()
        t1 = CLOCK()
        if i >= WARMUP:
            ts.append((t1 - t0) * 1e3)
    ts.sort()
    return ts[len(ts) // 2], ts[0]


def main():
    require_fast_blas()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for C, H in ((64, 32), (128, 16), (256, 8)):
            for k in (3, 1):
                p = k // 2
                x = torch.randn(N, C, H, H, generator=g)
                w = torch.randn(C, C, k, k, generator=g) * 0.05
                b = torch.randn(C, generator=g) * 0.1
                gy = torch.randn(N, C, H, H, generator=g)
                flops = 2.0 * N * C * H * H * C * k * k

                def bwd(mask):
                    return lambda: torch.ops.aten.convolution_backward(
                        gy, x, w, [C], [1, 1], [p, p], [1, 1], False, [0, 0], 1, mask)
                passes = {
                    "conv_fwd": lambda: F.conv2d(x, w, b, padding=p),
                    "conv_bwd_data": bwd([True, False, False]),
                    "conv_bwd_weights": bwd([False, True, True]),
                }
                for name, fn in passes.items():
                    ms, lo = median_ms(fn)
                    print(f"{N}x{C}x{H}x{H} k{k}\t{name}\t{ms:.3f}\t{flops / ms * 1e-6:.1f}"
                          f"\t{lo:.3f}", flush=True)
            M = N * H * H
            a = torch.randn(M, C, generator=g)
            bm = torch.randn(C, C, generator=g) * 0.05
            ms, lo = median_ms(lambda: torch.matmul(a, bm))
            print(f"{M}x{C} * {C}x{C}\tmatmul\t{ms:.3f}\t{2.0 * M * C * C / ms * 1e-6:.1f}"
                  f"\t{lo:.3f}", flush=True)


if __name__ == "__main__":
    main()
