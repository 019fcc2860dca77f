"""torch_adamw.py — the PyTorch peer of bench/bench_adamw.c: median time of one
torch.optim.AdamW step over N float32 parameters split into T tensors, with the default
(single-tensor, foreach=False in torch 1.13) and the foreach implementations, after one warm-up
step each. Prints "torch_default_ms=<median>" and "torch_foreach_ms=<median>".

usage: /usr/bin/python3 bench/torch_adamw.py [--params N] [--tensors T] [--steps S] [--threads K]
"""
import argparse
import statistics
import time

import torch

from peer_blas import require_fast_blas


def bench(foreach, n, n_tensors, steps):
    per = n // n_tensors
    sizes = [per] * (n_tensors - 1) + [n - per * (n_tensors - 1)]
    params = []
    for s in sizes:
        p = torch.empty(s).uniform_(-0.5, 0.5).requires_grad_()
        p.grad = torch.empty(s).uniform_(-0.005, 0.005)
        params.append(p)
    opt = torch.optim.AdamW(params, foreach=foreach)
    opt.step()  # warm-up: state allocation
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.step()
        times.append((time.perf_counter() - t0) * 1e3)
    del opt, params
    return statistics.median(times)


def main():
    require_fast_blas()
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=int, default=100_000_000)
    ap.add_argument("--tensors", type=int, default=100)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with torch.no_grad():
        print("torch_default_ms=%.2f" % bench(False, a.params, a.tensors, a.steps), flush=True)
        print("torch_foreach_ms=%.2f" % bench(True, a.params, a.tensors, a.steps), flush=True)


if __name__ == "__main__":
    main()
