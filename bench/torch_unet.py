"""torch_unet.py — the PyTorch peer of bench/bench_unet.c: diffusers v0.21.4's UNet2DModel and
UNet2DConditionModel re-implemented in plain torch (Debian ships no diffusers for its
python3-torch 1.13, and the benchmarks must run on a clean clone), with the same modules,
parameter names and arithmetic for the configs the benchmark uses:

  ResnetBlock2D ("default" time embedding norm, SiLU, no dropout), Downsample2D (3x3 stride 2
  conv), Upsample2D (nearest x2 then 3x3 conv), Attention with the classic AttnProcessor
  (baddbmm(empty, q, k^T, beta=0, alpha=scale), softmax, bmm; the UNet2DModel form carries a
  GroupNorm and a residual), Transformer2DModel (GroupNorm eps 1e-6, conv or linear projections)
  of BasicTransformerBlocks (LayerNorm, self-attention, cross-attention, GEGLU feed-forward),
  Timesteps (get_timestep_embedding) and TimestepEmbedding, the UNet's skip bookkeeping.
It follows diffusers' src/diffusers/models/{unet_2d,unet_2d_condition,unet_2d_blocks,resnet,
attention,attention_processor,transformer_2d,embeddings}.py. `--check` proves it is the same
model: (1) the models the benchmarks time (train32, the emoji-ddpm model, an SD 1.5-shaped
UNet2DConditionModel with narrower channels), forward, MSE loss and every parameter's gradient,
against diffusers v0.21.4 itself (tests/fixtures/bench/peer_parity.safetensors, written by
tests/ref/gen_bench_peer.py from the upstream source; equal to the last bit when written);
(2) the diffusers-saved fixtures tests/fixtures/models/*_tiny loaded with
load_state_dict(strict=True), outputs compared.
DF_DIFFUSERS_PATH=DIRS times diffusers' own classes instead (peer_classes below).

Usage (OMP_NUM_THREADS=2 /usr/bin/python3 bench/torch_unet.py ...; see bench/run-unet.sh):
  --check                       parity with the fixtures (exit status 1 on a mismatch)
  train32 | infer32 [WARMUP ITERS]      case (a): UNet2DModel 32x32, batch 32
  sd15 CONFIG.json [WARMUP ITERS]       case (b): SD 1.5 UNet, batch 1, 64x64 latents, 77x768
Each mode prints one JSON line: {"mode", "impl", "ms" (median per step), "peak_rss_mib",
"iters", "threads", "params"}.
"""
import json
import math
import os
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from peer_blas import require_fast_blas

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "ref"))


# ------------------------------------------------------------------------------ building blocks

def timestep_embedding(t, dim, flip_sin_to_cos, shift, max_period=10000):
    half = dim // 2
    expo = -math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / (half - shift)
    emb = t[:, None].float() * torch.exp(expo)[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1, 0, 0))
    return emb


class TimestepEmbedding(nn.Module):
    def __init__(self, cin, dim):
        super().__init__()
        self.linear_1, self.linear_2 = nn.Linear(cin, dim), nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock2D(nn.Module):
    def __init__(self, cin, cout, temb, groups, eps, output_scale_factor=1.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None
        self.output_scale_factor = output_scale_factor

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return (x + h) / self.output_scale_factor


class Downsample2D(nn.Module):
    def __init__(self, ch, padding):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=padding)

    def forward(self, x):
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x, size=None):
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


class Attention(nn.Module):
    """diffusers Attention + AttnProcessor (no mask, no dropout at p = 0)."""

    def __init__(self, query_dim, heads, dim_head, cross_dim=None, bias=False, norm_groups=None,
                 eps=1e-5, residual=False, rescale=1.0):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.scale = heads, dim_head ** -0.5
        self.residual, self.rescale = residual, rescale
        self.group_norm = nn.GroupNorm(norm_groups, query_dim, eps=eps) if norm_groups else None
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(cross_dim or query_dim, inner, bias=bias)
        self.to_v = nn.Linear(cross_dim or query_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim), nn.Dropout(0.0)])

    def head_to_batch(self, t):
        b, s, d = t.shape
        h = self.heads
        return t.reshape(b, s, h, d // h).permute(0, 2, 1, 3).reshape(b * h, s, d // h)

    def batch_to_head(self, t):
        bh, s, d = t.shape
        h = self.heads
        return t.reshape(bh // h, h, s, d).permute(0, 2, 1, 3).reshape(bh // h, s, d * h)

    def forward(self, x, context=None):
        residual = x
        spatial = x.ndim == 4
        if spatial:
            b, c, hh, ww = x.shape
            x = x.view(b, c, hh * ww).transpose(1, 2)
        if self.group_norm is not None:
            x = self.group_norm(x.transpose(1, 2)).transpose(1, 2)
        q = self.to_q(x)
        ctx = x if context is None else context
        k, v = self.to_k(ctx), self.to_v(ctx)
        q, k, v = self.head_to_batch(q), self.head_to_batch(k), self.head_to_batch(v)
        base = torch.empty(q.shape[0], q.shape[1], k.shape[1], dtype=q.dtype)
        scores = torch.baddbmm(base, q, k.transpose(-1, -2), beta=0, alpha=self.scale)
        del base
        probs = scores.softmax(dim=-1)
        out = self.batch_to_head(torch.bmm(probs, v))
        out = self.to_out[1](self.to_out[0](out))
        if spatial:
            out = out.transpose(-1, -2).reshape(b, c, hh, ww)
        if self.residual:
            out = out + residual
        return out / self.rescale


class GEGLU(nn.Module):
    def __init__(self, din, dout):
        super().__init__()
        self.proj = nn.Linear(din, dout * 2)

    def forward(self, x):
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim, mult=4):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(0.0),
                                  nn.Linear(dim * mult, dim)])

    def forward(self, x):
        for m in self.net:
            x = m(x)
        return x


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, heads, dim_head, cross_dim, only_cross=False):
        super().__init__()
        self.only_cross = only_cross
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dim_head, cross_dim=cross_dim if only_cross else None)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, dim_head, cross_dim=cross_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x, context):
        x = self.attn1(self.norm1(x), context if self.only_cross else None) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nn.Module):
    def __init__(self, heads, dim_head, cin, layers, cross_dim, groups, linear, only_cross):
        super().__init__()
        inner = heads * dim_head
        self.linear = linear
        self.norm = nn.GroupNorm(groups, cin, eps=1e-6)
        self.proj_in = nn.Linear(cin, inner) if linear else nn.Conv2d(cin, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, dim_head, cross_dim, only_cross)
             for _ in range(layers)])
        self.proj_out = nn.Linear(inner, cin) if linear else nn.Conv2d(inner, cin, 1)

    def forward(self, x, context):
        b, _, hh, ww = x.shape
        residual = x
        h = self.norm(x)
        if not self.linear:
            h = self.proj_in(h)
        inner = h.shape[1]
        h = h.permute(0, 2, 3, 1).reshape(b, hh * ww, inner)
        if self.linear:
            h = self.proj_in(h)
        for blk in self.transformer_blocks:
            h = blk(h, context)
        if self.linear:
            h = self.proj_out(h)
        h = h.reshape(b, hh, ww, -1).permute(0, 3, 1, 2).contiguous()
        if not self.linear:
            h = self.proj_out(h)
        return h + residual


class Block(nn.Module):
    """Down / up / mid blocks: resnets, optional attentions (spatial Attention or
    Transformer2DModel, `make_attn(channels)`), optional down/upsampler."""

    def __init__(self, resnets, make_attn, sampler):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        if make_attn is not None:
            self.attentions = nn.ModuleList([make_attn(r.conv2.out_channels) for r in resnets])
        else:
            self.attentions = None
        if isinstance(sampler, Downsample2D):
            self.downsamplers = nn.ModuleList([sampler])
        elif isinstance(sampler, Upsample2D):
            self.upsamplers = nn.ModuleList([sampler])

    def attend(self, i, h, context):
        if self.attentions is None:
            return h
        a = self.attentions[i]
        return a(h, context) if isinstance(a, Transformer2DModel) else a(h)

    def down(self, h, temb, context):
        outs = ()
        for i, r in enumerate(self.resnets):
            h = self.attend(i, r(h, temb), context)
            outs += (h,)
        if hasattr(self, "downsamplers"):
            h = self.downsamplers[0](h)
            outs += (h,)
        return h, outs

    def up(self, h, skips, temb, context, size=None):
        for i, r in enumerate(self.resnets):
            h = torch.cat([h, skips[-1]], dim=1)
            skips = skips[:-1]
            h = self.attend(i, r(h, temb), context)
        if hasattr(self, "upsamplers"):
            h = self.upsamplers[0](h, size)
        return h

    def mid(self, h, temb, context):
        h = self.resnets[0](h, temb)
        for a, r in zip(self.attentions, self.resnets[1:]):
            h = r(a(h, context) if isinstance(a, Transformer2DModel) else a(h), temb)
        return h


def make_attention_factory(kind, eps, groups, head_dim=None, heads=None, layers=1, cross_dim=None,
                           linear=False, only_cross=False):
    """kind 'spatial': UNet2DModel attention (head width head_dim); 'transformer':
    Transformer2DModel with `heads` heads; None: no attention."""
    if kind == "spatial":
        return lambda ch: Attention(ch, ch // head_dim, head_dim, bias=True, norm_groups=groups,
                                    eps=eps, residual=True)
    if kind == "transformer":
        return lambda ch: Transformer2DModel(heads, ch // heads, ch, layers, cross_dim, groups,
                                             linear, only_cross)
    return None


def block_kind(name):
    if name in ("DownBlock2D", "UpBlock2D"):
        return None
    if name in ("AttnDownBlock2D", "AttnUpBlock2D"):
        return "spatial"
    if name in ("CrossAttnDownBlock2D", "CrossAttnUpBlock2D"):
        return "transformer"
    raise ValueError(f"unsupported block type {name}")


def down_block(n, cin, cout, temb, groups, eps, pad, last, attn):
    res = [ResnetBlock2D(cin if i == 0 else cout, cout, temb, groups, eps) for i in range(n)]
    return Block(res, attn, None if last else Downsample2D(cout, pad))


def up_block(n, cin, prev, cout, temb, groups, eps, last, attn):
    res = [ResnetBlock2D((prev if i == 0 else cout) + (cin if i == n - 1 else cout), cout, temb,
                         groups, eps) for i in range(n)]
    return Block(res, attn, None if last else Upsample2D(cout))


def as_list(v, n):
    return list(v) if isinstance(v, (list, tuple)) else [v] * n


# ------------------------------------------------------------------------------ models

class UNetBase(nn.Module):
    def run(self, x, timestep, context=None):
        cfg = self.cfg
        t = timestep if timestep.ndim else timestep[None]
        t = t * torch.ones(x.shape[0], dtype=t.dtype)
        emb = self.time_embedding(timestep_embedding(t, self.c0, cfg["flip_sin_to_cos"],
                                                     cfg["freq_shift"]).to(x.dtype))
        if cfg.get("center_input_sample"):
            x = 2 * x - 1.0
        h = self.conv_in(x)
        skips = (h,)
        for b in self.down_blocks:
            h, outs = b.down(h, emb, context)
            skips += outs
        h = self.mid_block.mid(h, emb, context)
        factor = 2 ** (len(self.up_blocks) - 1)
        odd = any(s % factor != 0 for s in x.shape[-2:])
        for i, b in enumerate(self.up_blocks):
            n = len(b.resnets)
            res, skips = skips[-n:], skips[:-n]
            size = skips[-1].shape[2:] if odd and i < len(self.up_blocks) - 1 else None
            h = b.up(h, res, emb, context, size)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class UNet2DModel(UNetBase):
    DEFAULTS = dict(sample_size=None, in_channels=3, out_channels=3, center_input_sample=False,
                    time_embedding_type="positional", freq_shift=0, flip_sin_to_cos=True,
                    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D",
                                      "AttnDownBlock2D"),
                    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                    block_out_channels=(224, 448, 672, 896), layers_per_block=2,
                    mid_block_scale_factor=1, downsample_padding=1, act_fn="silu",
                    attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5,
                    resnet_time_scale_shift="default", add_attention=True)

    def __init__(self, **config):
        super().__init__()
        cfg = dict(self.DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")})
        assert cfg["time_embedding_type"] == "positional" and cfg["act_fn"] == "silu"
        assert cfg["resnet_time_scale_shift"] == "default" and cfg["add_attention"]
        self.cfg = cfg
        boc, g, eps = cfg["block_out_channels"], cfg["norm_num_groups"], cfg["norm_eps"]
        lpb, nb = cfg["layers_per_block"], len(boc)
        self.c0 = boc[0]
        temb = 4 * boc[0]
        self.conv_in = nn.Conv2d(cfg["in_channels"], boc[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(boc[0], temb)

        def attn(name, ch):
            hd = cfg["attention_head_dim"] or ch
            return make_attention_factory(block_kind(name), eps, g, head_dim=hd)
        self.down_blocks = nn.ModuleList()
        cout = boc[0]
        for i, name in enumerate(cfg["down_block_types"]):
            cin, cout = cout, boc[i]
            self.down_blocks.append(down_block(lpb, cin, cout, temb, g, eps,
                                               cfg["downsample_padding"], i == nb - 1,
                                               attn(name, cout)))
        mid_hd = cfg["attention_head_dim"] or boc[-1]
        self.mid_block = Block(
            [ResnetBlock2D(boc[-1], boc[-1], temb, g, eps, cfg["mid_block_scale_factor"])
             for _ in range(2)], None, None)
        self.mid_block.attentions = nn.ModuleList([Attention(
            boc[-1], boc[-1] // mid_hd, mid_hd, bias=True, norm_groups=g, eps=eps, residual=True,
            rescale=cfg["mid_block_scale_factor"])])
        rev = list(reversed(boc))
        self.up_blocks = nn.ModuleList()
        cout = rev[0]
        for i, name in enumerate(cfg["up_block_types"]):
            prev, cout, cin = cout, rev[i], rev[min(i + 1, nb - 1)]
            self.up_blocks.append(up_block(lpb + 1, cin, prev, cout, temb, g, eps, i == nb - 1,
                                           attn(name, cout)))
        self.conv_norm_out = nn.GroupNorm(g, boc[0], eps=eps)
        self.conv_out = nn.Conv2d(boc[0], cfg["out_channels"], 3, padding=1)

    def forward(self, sample, timestep):
        return self.run(sample, timestep)


class UNet2DConditionModel(UNetBase):
    DEFAULTS = dict(sample_size=None, in_channels=4, out_channels=4, center_input_sample=False,
                    flip_sin_to_cos=True, freq_shift=0,
                    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                      "CrossAttnDownBlock2D", "DownBlock2D"),
                    mid_block_type="UNetMidBlock2DCrossAttn",
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                    "CrossAttnUpBlock2D"),
                    only_cross_attention=False, block_out_channels=(320, 640, 1280, 1280),
                    layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
                    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=1280,
                    transformer_layers_per_block=1, attention_head_dim=8,
                    num_attention_heads=None, use_linear_projection=False,
                    resnet_time_scale_shift="default", conv_in_kernel=3, conv_out_kernel=3)

    def __init__(self, **config):
        super().__init__()
        cfg = dict(self.DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")})
        assert cfg["mid_block_type"] == "UNetMidBlock2DCrossAttn" and cfg["act_fn"] == "silu"
        for k in ("class_embed_type", "addition_embed_type", "encoder_hid_dim",
                  "time_cond_proj_dim", "time_embedding_dim", "timestep_post_act"):
            assert cfg.get(k) is None, k
        assert cfg.get("time_embedding_type", "positional") == "positional"
        assert not cfg.get("dual_cross_attention")  # upcast_attention is a no-op in float32
        self.cfg = cfg
        boc, g, eps, nb = cfg["block_out_channels"], cfg["norm_num_groups"], cfg["norm_eps"], \
            len(cfg["block_out_channels"])
        # diffusers' naming quirk: attention_head_dim is the number of heads here
        heads = as_list(cfg["num_attention_heads"] or cfg["attention_head_dim"], nb)
        lpb = as_list(cfg["layers_per_block"], nb)
        xdim = as_list(cfg["cross_attention_dim"], nb)
        tlpb = as_list(cfg["transformer_layers_per_block"], nb)
        only = as_list(cfg["only_cross_attention"], nb)
        lin = cfg["use_linear_projection"]
        self.c0 = boc[0]
        temb = 4 * boc[0]
        kin, kout = cfg["conv_in_kernel"], cfg["conv_out_kernel"]
        self.conv_in = nn.Conv2d(cfg["in_channels"], boc[0], kin, padding=(kin - 1) // 2)
        self.time_embedding = TimestepEmbedding(boc[0], temb)

        def attn(name, i):
            return make_attention_factory(block_kind(name), eps, g, heads=heads[i],
                                          layers=tlpb[i], cross_dim=xdim[i], linear=lin,
                                          only_cross=only[i])
        self.down_blocks = nn.ModuleList()
        cout = boc[0]
        for i, name in enumerate(cfg["down_block_types"]):
            cin, cout = cout, boc[i]
            self.down_blocks.append(down_block(lpb[i], cin, cout, temb, g, eps,
                                               cfg["downsample_padding"], i == nb - 1,
                                               attn(name, i)))
        msf = cfg["mid_block_scale_factor"]
        self.mid_block = Block([ResnetBlock2D(boc[-1], boc[-1], temb, g, eps, msf)
                                for _ in range(2)], None, None)
        self.mid_block.attentions = nn.ModuleList([Transformer2DModel(
            heads[-1], boc[-1] // heads[-1], boc[-1], tlpb[-1], xdim[-1], g, lin, False)])
        rev = list(reversed(boc))
        rheads, rlpb, rxdim, rtlpb, ronly = (list(reversed(v))
                                             for v in (heads, lpb, xdim, tlpb, only))
        self.up_blocks = nn.ModuleList()
        cout = rev[0]
        for i, name in enumerate(cfg["up_block_types"]):
            prev, cout, cin = cout, rev[i], rev[min(i + 1, nb - 1)]
            a = make_attention_factory(block_kind(name), eps, g, heads=rheads[i], layers=rtlpb[i],
                                       cross_dim=rxdim[i], linear=lin, only_cross=ronly[i])
            self.up_blocks.append(up_block(rlpb[i] + 1, cin, prev, cout, temb, g, eps,
                                           i == nb - 1, a))
        self.conv_norm_out = nn.GroupNorm(g, boc[0], eps=eps)
        self.conv_out = nn.Conv2d(boc[0], cfg["out_channels"], kout, padding=(kout - 1) // 2)

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.run(sample, timestep, encoder_hidden_states)


# ------------------------------------------------------------------------------ check and bench

def check_peer_parity():
    """The models the benchmarks time, forward and backward, against diffusers v0.21.4 itself
    (tests/fixtures/bench/peer_parity.safetensors, written by tests/ref/gen_bench_peer.py)."""
    import st
    from gen_bench_peer import CASES, fill_weights, make_inputs, run_case
    want, meta = st.load(os.path.join(ROOT, "tests", "fixtures", "bench", "peer_parity.safetensors"))
    ok = True
    for case, (cls, cfg, shape, ctx) in CASES.items():
        if json.loads(meta[f"{case}.config"]) != json.loads(json.dumps(cfg)):
            print(f"check {case}: the fixture's config differs from gen_bench_peer.py's: regenerate")
            ok = False
            continue
        m = {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel}[cls](**cfg)
        fill_weights(m)
        inputs = make_inputs(case, shape, ctx)
        for k, v in inputs.items():
            if not torch.equal(v, want[f"{case}.inputs.{k}"]):
                print(f"check {case}: input {k} differs from the fixture's (torch's generator?)")
                ok = False
        got, names = run_case(m, inputs, lambda m, x, inp: m(
            x, inp["timestep"], *((inp["encoder_hidden_states"],) if ctx else ())))
        if names != json.loads(meta[f"{case}.params"]):
            print(f"check {case}: parameter names differ from diffusers'")
            ok = False
            continue
        errs = {}
        for k in ("sample", "loss", "grad.sample", "grad.norm"):
            w = want[f"{case}.{k}"]
            errs[k] = ((got[k] - w).abs().max() / w.abs().max()).item()
        # projections: relative to each gradient's norm (a projection can be near zero), floored
        # at 1e-4 of the largest: some gradients are zero up to rounding (an attention key bias
        # shifts every score of a query alike, which softmax ignores), and their rounding differs
        # with the ISA and thread count
        norm = want[f"{case}.grad.norm"]
        errs["grad.proj"] = ((got["grad.proj"] - want[f"{case}.grad.proj"]).abs()
                             / norm.clamp_min(1e-4 * norm.max().item())).max().item()
        # seen between ISAs and thread counts: up to 2.3e-6 (sample, grad.sample) and 1.8e-5
        # (grad.proj); one bias scaled by 1.001 moves grad.sample by 2.8e-5
        good = all(e < (1e-4 if k == "grad.proj" else 1e-5) for k, e in errs.items())
        ok &= good
        print(f"check {case} (diffusers v0.21.4 forward + backward): {len(names)} parameters, max "
              f"rel err " + ", ".join(f"{k} {e:.1e}" for k, e in errs.items())
              + (" ok" if good else " FAIL"))
    return ok


def check():
    import st
    ok = check_peer_parity()
    for name in ("unet2d_tiny", "unet2dcond_tiny", "unet2dcond_tiny_linear"):
        d = os.path.join(ROOT, "tests", "fixtures", "models", name)
        with open(os.path.join(d, "config.json")) as f:
            cfg = json.load(f)
        cls = {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel}[
            cfg["_class_name"]]
        m = cls(**cfg)
        weights, _ = st.load(os.path.join(d, "diffusion_pytorch_model.safetensors"))
        m.load_state_dict(weights, strict=True)
        m.eval()
        x, _ = st.load(os.path.join(d, "inputs.safetensors"))
        want, _ = st.load(os.path.join(d, "outputs.safetensors"))
        args = [x["sample"], x["timestep"]]
        if "encoder_hidden_states" in x:
            args.append(x["encoder_hidden_states"])
        with torch.no_grad():
            got = m(*args)
        err = ((got - want["sample"]).abs().max() / want["sample"].abs().max()).item()
        good = err < 1e-5
        ok &= good
        print(f"check {name}: {sum(p.numel() for p in m.parameters())} params, strict load ok, "
              f"max rel err {err:.2e} {'ok' if good else 'FAIL'}")
    return ok


def peer_classes():
    """(UNet2DModel, UNet2DConditionModel, peer name) the benchmarks time: this file's classes
    ("reimpl"), or with DF_DIFFUSERS_PATH set (folders, os.pathsep-separated, put first on sys.path:
    the one holding the `diffusers` package and what it imports, e.g. the oracle's shim/ and
    upstream/diffusers-v0.21.4/src) diffusers' own classes ("diffusers"), called so that they
    return the sample tensor as these do. --check proves the two compute the same numbers."""
    paths = os.environ.get("DF_DIFFUSERS_PATH")
    if not paths:
        return UNet2DModel, UNet2DConditionModel, "reimpl"
    for p in reversed(paths.split(os.pathsep)):
        sys.path.insert(0, p)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    try:
        import diffusers
    except ImportError as e:
        raise SystemExit(f"torch_unet.py: DF_DIFFUSERS_PATH={paths}: cannot import diffusers ({e}); "
                         "unset it to time this file's re-implementation (proven equal by --check)")

    def plain(cls):
        class Plain(cls):
            def forward(self, *args, **kwargs):
                return super().forward(*args, return_dict=False, **kwargs)[0]
        Plain.__name__ = cls.__name__
        return Plain

    print(f"torch_unet.py: peer = diffusers {diffusers.__version__} from {diffusers.__file__}",
          file=sys.stderr)
    return plain(diffusers.UNet2DModel), plain(diffusers.UNet2DConditionModel), "diffusers"


def case_a(cls):
    return cls(sample_size=32, block_out_channels=(64, 128, 128), layers_per_block=2,
               down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench(mode, argv):
    torch.manual_seed(0)
    if mode == "sd15":
        with open(argv[0]) as f:
            cfg = json.load(f)
        argv = argv[1:]
    warmup = int(argv[0]) if len(argv) > 0 else 1
    iters = int(argv[1]) if len(argv) > 1 else 3
    unet, unet_cond, peer = peer_classes()
    if mode in ("train32", "infer32"):
        m, n, shape = case_a(unet), 32, (32, 3, 32, 32)
    elif mode == "sd15":
        m, n, shape = unet_cond(**cfg), 1, (1, 4, 64, 64)
    else:
        raise SystemExit(f"torch_unet.py: unknown mode {mode}")
    x = torch.randn(*shape)
    ctx = torch.randn(1, 77, 768) if mode == "sd15" else None
    times = []
    for i in range(warmup + iters):
        t = torch.randint(0, 1000, (n,))
        if mode == "train32":
            target = torch.randn(*shape)
            t0 = time.perf_counter()
            m.zero_grad(set_to_none=False)
            loss = F.mse_loss(m(x, t), target)
            loss.backward()
            del loss
            t1 = time.perf_counter()
        else:
            with torch.no_grad():
                t0 = time.perf_counter()
                out = m(x, t) if ctx is None else m(x, t, ctx)
                del out
                t1 = time.perf_counter()
        if i >= warmup:
            times.append((t1 - t0) * 1e3)
    times.sort()
    print(json.dumps({"mode": mode, "impl": "torch", "peer": peer, "ms": round(times[len(times) // 2], 2),
                      "peak_rss_mib": round(peak_rss_mib(), 1), "iters": iters,
                      "threads": torch.get_num_threads(),
                      "params": sum(p.numel() for p in m.parameters())}), flush=True)


def main():
    require_fast_blas()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    if sys.argv[1] == "--check":
        sys.exit(0 if check() else 1)
    bench(sys.argv[1], sys.argv[2:])


if __name__ == "__main__":
    main()
