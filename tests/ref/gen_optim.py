"""gen_optim.py — fixtures for tests/optim: 20-step optimizer trajectories (torch.optim SGD /
Adam / AdamW at 1.13, foreach=False, and Lion by the paper's formula), diffusers' LR schedules
(the lambdas of diffusers v0.21 optimization.py, re-implemented here: diffusers is not installed),
clip_grad_norm_ results and diffusers EMAModel trajectories (training_utils.py v0.21,
re-implemented).

Run with Debian's torch: /usr/bin/python3 tests/ref/gen_optim.py
Writes tests/fixtures/optim/optim.safetensors. Deterministic (fixed seeds).

Layout: four parameters of SHAPES in two groups (params 0, 1 and params 2, 3); every tensor
of parameter values is the concatenation of the four flattened parameters (100 elements).
  init                 F32 [100]      initial values
  grads                F32 [20, 100]  the gradient given at each step
  traj.<config>        F32 [20, 100]  values after each step
  lr.<schedule>        F64 [25]       the lr of group 0 (initial lr 1e-3) at steps 0..24
  clip.in.<k>          F32 [100]      gradients before clipping, case k
  clip.out.<k>         F32 [100]      after clip_grad_norm_(max_norm = CLIP_CASES[k])
  clip.norm.<k>        F32 [1]        the returned total norm
  ema.<config>         F32 [20, 100]  shadow values after each EMA step (params = traj.adamw_wd)
  ema_decay.<config>   F64 [20]       the decay used at each step
"""
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402

SHAPES = [(5, 6), (17,), (4, 8), (3, 7)]
STEPS = 20
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "optim")


def flat(ts):
    return torch.cat([t.detach().reshape(-1) for t in ts])


def unflat(v):
    out, o = [], 0
    for s in SHAPES:
        n = math.prod(s)
        out.append(v[o:o + n].clone().reshape(s))
        o += n
    return out


# ------------------------------------------------------------------ Lion (torch has none)
class Lion(torch.optim.Optimizer):
    """Chen et al. 2023 Alg. 2, in the op order of lucidrains' lion-pytorch update_fn."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:
                    state["exp_avg"] = torch.zeros_like(p)
                exp_avg = state["exp_avg"]
                p.mul_(1 - lr * wd)
                update = exp_avg.clone().mul_(beta1).add(p.grad, alpha=1 - beta1).sign_()
                p.add_(update, alpha=-lr)
                exp_avg.mul_(beta2).add_(p.grad, alpha=1 - beta2)


# ------------------------------------------------------------------ diffusers v0.21 lambdas
def warm(step, w):
    return float(step) / float(max(1, w))


def sched_lambda(name, w, t, num_cycles=None, power=1.0, lr_end=1e-7, lr_init=1e-3):
    if name == "constant":
        return lambda s: 1
    if name == "constant_with_warmup":
        return lambda s: warm(s, w) if s < w else 1.0
    if name == "linear":
        return lambda s: warm(s, w) if s < w else max(
            0.0, float(t - s) / float(max(1, t - w)))
    if name == "cosine":
        nc = 0.5 if num_cycles is None else num_cycles

        def f(s):
            if s < w:
                return warm(s, w)
            progress = float(s - w) / float(max(1, t - w))
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(nc) * 2.0 * progress)))
        return f
    if name == "cosine_with_restarts":
        nc = 1 if num_cycles is None else num_cycles

        def f(s):
            if s < w:
                return warm(s, w)
            progress = float(s - w) / float(max(1, t - w))
            if progress >= 1.0:
                return 0.0
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(nc) * progress) % 1.0))))
        return f
    if name == "polynomial":
        if not (lr_init > lr_end):
            raise ValueError("lr_end must be smaller than initial lr")

        def f(s):
            if s < w:
                return warm(s, w)
            elif s > t:
                return lr_end / lr_init
            lr_range = lr_init - lr_end
            decay_steps = t - w
            pct_remaining = 1 - (s - w) / decay_steps
            decay = lr_range * pct_remaining ** power + lr_end
            return decay / lr_init
        return f
    raise ValueError(name)


# name: (kind, warmup, training, num_cycles, power, lr_end); the C test holds the same table
SCHEDULES = {
    "constant": ("constant", 0, 20, None, 1.0, 1e-7),
    "constant_with_warmup": ("constant_with_warmup", 5, 20, None, 1.0, 1e-7),
    "linear": ("linear", 5, 20, None, 1.0, 1e-7),
    "linear_nowarmup": ("linear", 0, 20, None, 1.0, 1e-7),
    "cosine": ("cosine", 5, 20, None, 1.0, 1e-7),
    "cosine_cycles": ("cosine", 3, 20, 1.5, 1.0, 1e-7),
    "cosine_with_restarts": ("cosine_with_restarts", 5, 20, None, 1.0, 1e-7),
    "cosine_with_restarts_3": ("cosine_with_restarts", 2, 20, 3, 1.0, 1e-7),
    "polynomial": ("polynomial", 5, 20, None, 1.0, 1e-7),
    "polynomial_pow2": ("polynomial", 4, 20, None, 2.0, 1e-4),
}


# ------------------------------------------------------------------ diffusers v0.21 EMAModel
class EMA:
    def __init__(self, params, decay=0.9999, min_decay=0.0, update_after_step=0,
                 use_ema_warmup=False, inv_gamma=1.0, power=2 / 3):
        self.shadow_params = [p.clone().detach() for p in params]
        self.decay, self.min_decay = decay, min_decay
        self.update_after_step, self.use_ema_warmup = update_after_step, use_ema_warmup
        self.inv_gamma, self.power = inv_gamma, power
        self.optimization_step = 0

    def get_decay(self, optimization_step):
        step = max(0, optimization_step - self.update_after_step - 1)
        if step <= 0:
            return 0.0
        if self.use_ema_warmup:
            cur = 1 - (1 + step / self.inv_gamma) ** -self.power
        else:
            cur = (1 + step) / (10 + step)
        cur = min(cur, self.decay)
        cur = max(cur, self.min_decay)
        return cur

    @torch.no_grad()
    def step(self, params):
        self.optimization_step += 1
        decay = self.get_decay(self.optimization_step)
        one_minus_decay = 1 - decay
        for s_param, param in zip(self.shadow_params, params):
            if param.requires_grad:
                s_param.sub_(one_minus_decay * (s_param - param))
            else:
                s_param.copy_(param)
        return decay


# name: kwargs; params 1 is frozen (requires_grad False) in "frozen"
EMA_CONFIGS = {
    "default": dict(),
    "warmup": dict(use_ema_warmup=True, inv_gamma=1.0, power=2 / 3, decay=0.999),
    "after3": dict(update_after_step=3, min_decay=0.5, decay=0.9),
    "frozen": dict(use_ema_warmup=True, inv_gamma=2.0, power=0.75, decay=0.99),
}

CLIP_CASES = [1.0, 100.0, 0.25, 5.0]


def optim_configs():
    """name: (ctor, [group0 kwargs, group1 kwargs], schedule or None)."""
    sgd, adam, adamw = torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW
    c = {}
    for wd_name, wd in (("", (0.0, 0.0)), ("_wd", (0.01, 0.1))):
        c["sgd" + wd_name] = (sgd, [dict(lr=0.02, weight_decay=wd[0]),
                                    dict(lr=0.01, weight_decay=wd[1])], None)
        c["sgd_momentum" + wd_name] = (sgd, [
            dict(lr=0.02, momentum=0.9, dampening=0.1, weight_decay=wd[0]),
            dict(lr=0.01, momentum=0.5, dampening=0.0, weight_decay=wd[1])], None)
        c["sgd_nesterov" + wd_name] = (sgd, [
            dict(lr=0.02, momentum=0.9, nesterov=True, weight_decay=wd[0]),
            dict(lr=0.01, momentum=0.8, nesterov=True, weight_decay=wd[1])], None)
        for ams in (False, True):
            a = "_amsgrad" if ams else ""
            c["adam" + a + wd_name] = (adam, [
                dict(lr=1e-2, weight_decay=wd[0], amsgrad=ams),
                dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=wd[1], amsgrad=ams)],
                None)
            c["adamw" + a + wd_name] = (adamw, [
                dict(lr=1e-2, weight_decay=wd[0], amsgrad=ams),
                dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=wd[1], amsgrad=ams)],
                None)
        c["lion" + wd_name] = (Lion, [dict(lr=1e-3, weight_decay=10 * wd[0]),
                                      dict(lr=3e-4, betas=(0.95, 0.98), weight_decay=10 * wd[1])],
                               None)
    c["adamw_cosine"] = (adamw, [dict(lr=1e-2, weight_decay=0.01),
                                 dict(lr=3e-3, weight_decay=0.1)], "cosine")
    return c


def main():
    torch.manual_seed(0)
    init = torch.randn(100)
    grads = torch.randn(STEPS, 100) * torch.linspace(0.1, 3.0, 100)
    grads[3, 7] = 0.0  # exact zeros reach Lion's sign(0) and Adam's v = 0 path
    out = {"init": init, "grads": grads}
    for name, (ctor, groups, sched) in optim_configs().items():
        params = [p.requires_grad_() for p in unflat(init)]
        pg = [dict(params=params[0:2], **groups[0]), dict(params=params[2:4], **groups[1])]
        kw = {} if ctor is Lion else dict(foreach=False)
        opt = ctor(pg, **kw)
        lr_sched = None
        if sched:
            k, w, t, nc, pw, le = SCHEDULES[sched]
            lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, sched_lambda(k, w, t, nc, pw, le))
        rows = []
        for s in range(STEPS):
            for p, g in zip(params, unflat(grads[s])):
                p.grad = g.clone()
            opt.step()
            if lr_sched:
                lr_sched.step()
            rows.append(flat(params))
        out["traj." + name] = torch.stack(rows)
    for name, (k, w, t, nc, pw, le) in SCHEDULES.items():
        p = torch.zeros(1, requires_grad=True)
        opt = torch.optim.SGD([p], lr=1e-3)
        ls = torch.optim.lr_scheduler.LambdaLR(opt, sched_lambda(k, w, t, nc, pw, le, 1e-3))
        lrs = []
        for s in range(25):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            ls.step()
        out["lr." + name] = torch.tensor(lrs, dtype=torch.float64)
    for k, max_norm in enumerate(CLIP_CASES):
        g = torch.randn(100) * (0.5 + k)
        params = [torch.zeros(s, requires_grad=True) for s in SHAPES]
        for p, gg in zip(params, unflat(g)):
            p.grad = gg.clone()
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        out["clip.in.%d" % k] = g
        out["clip.out.%d" % k] = flat([p.grad for p in params])
        out["clip.norm.%d" % k] = norm.reshape(1).float()
    traj = out["traj.adamw_wd"]
    for name, kw in EMA_CONFIGS.items():
        params = unflat(init)
        for i, p in enumerate(params):
            p.requires_grad_(not (name == "frozen" and i == 1))
        ema = EMA(params, **kw)
        rows, decays = [], []
        for s in range(STEPS):
            with torch.no_grad():
                for p, v in zip(params, unflat(traj[s])):
                    p.copy_(v)
            decays.append(ema.step(params))
            rows.append(flat(ema.shadow_params))
        out["ema." + name] = torch.stack(rows)
        out["ema_decay." + name] = torch.tensor(decays, dtype=torch.float64)
    os.makedirs(OUT, exist_ok=True)
    st.save(out, os.path.join(OUT, "optim.safetensors"),
            {"generator": "tests/ref/gen_optim.py", "torch": torch.__version__})


if __name__ == "__main__":
    main()
