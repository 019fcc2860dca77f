"""gen_bench_peer.py — a fixture that proves bench/torch_unet.py (the PyTorch peer of the UNet and
training benchmarks, a plain-torch re-implementation) computes what the real diffusers v0.21.4
classes compute, forward and backward, for the models the benchmarks time. The numbers are
written by the upstream code itself, imported from the oracle's diffusers source:

  /usr/bin/python3 tests/ref/gen_bench_peer.py [ORACLE_DIR]
      ORACLE_DIR: the oracle folder (shim/, upstream/diffusers-v0.21.4/src); default
      $DF_ORACLE_DIR, else ../shared/oracle next to the repository

writes tests/fixtures/bench/peer_parity.safetensors. `bench/torch_unet.py --check` builds the same
models from the same configs, fills them with the same weights (fill_weights: a function of each
parameter's name and shape, so no weights are stored), runs the same inputs and compares; it
runs at the start of bench/run-unet.sh.

Per case C: C.sample (model output), C.loss (mse_loss(sample, target), the benchmarks' loss),
C.grad.sample (gradient of the loss by the input), C.grad.norm and C.grad.proj (per parameter,
in sorted name order: the gradient's 2-norm and its dot product with a fixed random unit-scale
vector, grad_probe(name, n): any wrong gradient element changes it), C.inputs.* (sample,
timestep, target, [encoder_hidden_states]); metadata C.config (the diffusers config, JSON) and
C.params (the sorted parameter names, JSON).

Cases (configs exactly the benchmarks' except where said):
  train32  bench_unet train32 / infer32: UNet2DModel, Down / AttnDown / Down, block_out_channels
           64, 128, 128, 2 resnets per block; batch 2 (the benchmark: 32), 32x32
  emoji    bench/run-train.sh: the UNet2DModel `diffusion train recipes/configs/emoji-ddpm.yaml`
           exports; batch 2 (the benchmark: 16), 32x32
  sd15     bench_unet sd15: the SD 1.5 UNet2DConditionModel config with block_out_channels cut to
           32, 32, 64, 64 and cross_attention_dim to 32 (860 M parameters would not fit a test),
           16x16 latents, 7 context tokens
"""
import json
import math
import os
import sys
import zlib

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import st  # noqa: E402

FIXTURE = os.path.join(ROOT, "tests", "fixtures", "bench", "peer_parity.safetensors")

TRAIN32 = dict(sample_size=32, block_out_channels=[64, 128, 128], layers_per_block=2,
               down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
               up_block_types=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"])
# recipes/configs/emoji-ddpm.yaml's exported unet/config.json, the fields that differ from
# UNet2DModel's defaults
EMOJI = dict(sample_size=32, layers_per_block=1, block_out_channels=[32, 64, 64],
             norm_num_groups=16, attention_head_dim=8,
             down_block_types=["DownBlock2D", "DownBlock2D", "DownBlock2D"],
             up_block_types=["UpBlock2D", "UpBlock2D", "UpBlock2D"])


def sd15_tiny():
    with open(os.path.join(ROOT, "tests", "fixtures", "configs", "sd15", "unet", "config.json")) as f:
        cfg = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    cfg.update(block_out_channels=[32, 32, 64, 64], cross_attention_dim=32, sample_size=16)
    return cfg


# name: (class, config, sample shape, encoder_hidden_states shape or None)
CASES = {
    "train32": ("UNet2DModel", TRAIN32, (2, 3, 32, 32), None),
    "emoji": ("UNet2DModel", EMOJI, (2, 3, 32, 32), None),
    "sd15": ("UNet2DConditionModel", sd15_tiny(), (1, 4, 16, 16), (1, 7, 32)),
}


def _gen(name, salt):
    return torch.Generator().manual_seed(zlib.crc32(name.encode()) * 4 + salt)


def fill_weights(model):
    """Sets every parameter from its name and shape alone: weights of rank >= 2 N(0, 1/fan_in),
    norm scales 1 + N(0, 0.1²), every other vector N(0, 0.1²)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=_gen(name, 0), dtype=torch.float32)
            if p.dim() >= 2:
                p.copy_(r / math.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * r)
            else:
                p.copy_(0.1 * r)


def grad_probe(name, n):
    """The fixed vector a parameter's gradient is projected on (N(0, 1/n), n elements)."""
    return torch.randn(n, generator=_gen(name, 1), dtype=torch.float32) / math.sqrt(n)


def make_inputs(name, shape, ctx):
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    x = {"sample": torch.randn(shape, generator=g),
         "timestep": torch.randint(0, 1000, (shape[0],), generator=g),
         "target": torch.randn(shape, generator=g)}
    if ctx is not None:
        x["encoder_hidden_states"] = torch.randn(ctx, generator=g)
    return x


def run_case(model, inputs, call):
    """Train-mode forward (dropout is 0), MSE against the target, backward: {sample, loss,
    grad.sample, grad.norm, grad.proj} and the sorted parameter names."""
    model.train()
    model.zero_grad(set_to_none=True)
    x = inputs["sample"].clone().requires_grad_(True)
    out = call(model, x, inputs)
    loss = F.mse_loss(out, inputs["target"])
    loss.backward()
    names = sorted(n for n, _ in model.named_parameters())
    params = dict(model.named_parameters())
    norms, projs = [], []
    for n in names:
        g = params[n].grad
        g = torch.zeros_like(params[n]) if g is None else g
        norms.append(g.norm())
        projs.append(torch.dot(g.reshape(-1), grad_probe(n, g.numel())))
    return {"sample": out.detach(), "loss": loss.detach().reshape(1), "grad.sample": x.grad,
            "grad.norm": torch.stack(norms), "grad.proj": torch.stack(projs)}, names


def _setup_upstream(oracle):
    dsrc = os.path.join(oracle, "upstream", "diffusers-v0.21.4", "src")
    if not os.path.isdir(os.path.join(dsrc, "diffusers")):
        sys.exit(f"gen_bench_peer.py: no diffusers source under {oracle} (give the oracle folder)")
    for p in reversed([os.path.join(oracle, "shim"), dsrc,
                       os.path.join(oracle, "upstream", "transformers-v4.33.3", "src")]):
        sys.path.insert(0, p)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def main():
    oracle = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "DF_ORACLE_DIR", os.path.join(ROOT, "..", "shared", "oracle"))
    _setup_upstream(oracle)
    import diffusers
    assert diffusers.__version__ == "0.21.4", diffusers.__version__
    torch.set_num_threads(2)
    out, meta = {}, {"generator": "tests/ref/gen_bench_peer.py", "upstream": "diffusers v0.21.4"}
    for case, (cls, cfg, shape, ctx) in CASES.items():
        model = getattr(diffusers, cls)(**cfg)
        fill_weights(model)
        inputs = make_inputs(case, shape, ctx)

        def call(m, x, inp):
            args = (x, inp["timestep"]) + ((inp["encoder_hidden_states"],) if ctx else ())
            return m(*args, return_dict=False)[0]

        got, names = run_case(model, inputs, call)
        for k, v in inputs.items():
            out[f"{case}.inputs.{k}"] = v
        for k, v in got.items():
            out[f"{case}.{k}"] = v
        meta[f"{case}.config"] = json.dumps(cfg, sort_keys=True)
        meta[f"{case}.params"] = json.dumps(names)
        print(f"{case}: {sum(p.numel() for p in model.parameters())} params, "
              f"loss {got['loss'].item():.6f}, |d sample| {got['grad.sample'].norm().item():.3e}")
    os.makedirs(os.path.dirname(FIXTURE), exist_ok=True)
    st.save(out, FIXTURE, metadata=meta)


if __name__ == "__main__":
    main()
