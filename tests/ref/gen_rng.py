"""gen_rng.py — fixtures for tests/autograd/test_rng.c: what torch 1.13's CPU generator draws,
so that df_torchgen can be checked bit for bit.

One file per seed, tests/fixtures/rng/seed_<seed>.safetensors (metadata: seed, calls):
  randn_<n>      torch.randn(n) right after torch.manual_seed(seed), n in RANDN_SIZES
                 (n < 16 is torch's scalar double path, n >= 16 the block Box-Muller path)
  randn_2x3x4x4  torch.randn(2, 3, 4, 4) after manual_seed (only numel matters)
  rand_<n>       torch.rand(n) after manual_seed, n in RAND_SIZES
  randn_f64_5    torch.randn(5, dtype=float64) after manual_seed (the scalar path unrounded)
  randperm_<n>   torch.randperm(n) after manual_seed, n in 10, 1000 (int64)
  randint_0_10_100        torch.randint(0, 10, (100,)) after manual_seed (int64)
  randint_wide_8          torch.randint(-5, 2**40, (8,)) after manual_seed (range >= 2^32)
  random_i64     torch.empty((), dtype=torch.int64).random_() after manual_seed, shape (1,)
  seq            the calls CALLS in a row on one torch.Generator seeded once, flattened and
                 concatenated (the state, including the cached normal, carries across calls)
And tests/fixtures/rng/large.safetensors: torch.randn(LARGE_N) after manual_seed(LARGE_SEED),
stored as its first and last 64 values plus the FNV-1a 64-bit hash of all its bytes (metadata
fnv1a64, hex): rare rounding differences (one element in thousands) show up only over many
elements, and the whole tensor would be too big to commit.
Run: /usr/bin/python3 tests/ref/gen_rng.py (from the repository root)."""
import os

import torch

import st

SEEDS = [0, 42, 2**32 + 5, 2**63 - 25]
RANDN_SIZES = [1, 7, 15, 16, 17, 31, 100, 1000]
RAND_SIZES = [1, 15, 16, 100, 1000]
# (function, numel) in order; chosen so the scalar path's cached normal is left over, survives
# block-path calls and rand calls, and is consumed later.
CALLS = [("randn", 7), ("randn", 100), ("randn", 3), ("rand", 5), ("randn", 16), ("randn", 1),
         ("randn", 17), ("randn", 2), ("rand", 1), ("randn", 33)]

LARGE_SEED, LARGE_N = 123, 1 << 20

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "rng")


def main():
    os.makedirs(OUT, exist_ok=True)
    for seed in SEEDS:
        t = {}
        for n in RANDN_SIZES:
            torch.manual_seed(seed)
            t[f"randn_{n}"] = torch.randn(n)
        torch.manual_seed(seed)
        t["randn_2x3x4x4"] = torch.randn(2, 3, 4, 4)
        for n in RAND_SIZES:
            torch.manual_seed(seed)
            t[f"rand_{n}"] = torch.rand(n)
        torch.manual_seed(seed)
        t["randn_f64_5"] = torch.randn(5, dtype=torch.float64)
        for n in [10, 1000]:
            torch.manual_seed(seed)
            t[f"randperm_{n}"] = torch.randperm(n)
        torch.manual_seed(seed)
        t["randint_0_10_100"] = torch.randint(0, 10, (100,))
        torch.manual_seed(seed)
        t["randint_wide_8"] = torch.randint(-5, 2**40, (8,))
        torch.manual_seed(seed)
        t["random_i64"] = torch.empty((), dtype=torch.int64).random_().reshape(1)
        g = torch.Generator().manual_seed(seed)
        fns = {"randn": torch.randn, "rand": torch.rand}
        t["seq"] = torch.cat([fns[f](n, generator=g).reshape(-1) for f, n in CALLS])
        calls = ",".join(f"{f}:{n}" for f, n in CALLS)
        st.save(t, os.path.join(OUT, f"seed_{seed}.safetensors"),
                {"seed": seed, "calls": calls, "torch": torch.__version__})

    torch.manual_seed(LARGE_SEED)
    big = torch.randn(LARGE_N)
    st.save({"head": big[:64], "tail": big[-64:]}, os.path.join(OUT, "large.safetensors"),
            {"seed": LARGE_SEED, "n": LARGE_N, "fnv1a64": f"{fnv1a64(big.numpy().tobytes()):016x}",
             "torch": torch.__version__})


def fnv1a64(data):
    """The 64-bit FNV-1a hash of a byte string."""
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xffffffffffffffff
    return h


if __name__ == "__main__":
    main()
