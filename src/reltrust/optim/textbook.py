"""Two textbook optimisers torch does not ship, for the practice study's ablations.

- `AdamNoBiasCorrection` (``"adam_nobc"``): Adam as the lecture notes write it, *without* the bias
  correction: Δ_t = β₁Δ_{t−1} + (1−β₁)g_t, V_t = β₂V_{t−1} + (1−β₂)g_t² (Δ₀ = V₀ = 0), and
  θ_t = θ_{t−1} − α Δ_t / (√V_t + ε). With the correction (torch's Adam) Δ_t and V_t are divided by
  1 − β₁ᵗ and 1 − β₂ᵗ. `weight_decay` is coupled (added to the gradient), as in torch's Adam.
- `SGDW` (``"sgdw"``): SGD with *decoupled* weight decay (Loshchilov & Hutter 2019): θ ← θ(1 − αλ)
  then torch's SGD step on the loss gradient alone (momentum buffer b ← μb + (1 − dampening)g, the
  first step b = g; `nesterov` as torch). Without momentum it equals SGD with L2 (coupled) decay, the
  lecture's "replacing θ_{t−1} with θ_{t−1}(1 − λα_t)"; with momentum the two differ.
"""
from __future__ import annotations

import math

import torch


def _check(name: str, value: float, lo: float, hi: float | None = None, closed_hi: bool = False) -> float:
    ok = value >= lo and (hi is None or (value <= hi if closed_hi else value < hi)) and math.isfinite(value)
    if not ok:
        rng = f"[{lo}, {hi}{']' if closed_hi else ')'}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be in {rng}, got {value!r}")
    return float(value)


class AdamNoBiasCorrection(torch.optim.Optimizer):
    """Adam without bias correction (see the module doc)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        _check("lr", lr, 0.0)
        _check("betas[0]", betas[0], 0.0, 1.0)
        _check("betas[1]", betas[1], 0.0, 1.0)
        _check("eps", eps, 0.0)
        _check("weight_decay", weight_decay, 0.0)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                p.addcdiv_(m, v.sqrt().add_(group["eps"]), value=-group["lr"])
        return loss


class SGDW(torch.optim.SGD):
    """SGD with decoupled weight decay (see the module doc): the group's `weight_decay` λ shrinks the
    weights by the factor 1 − lr·λ before torch's SGD step, which sees no decay."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        _check("weight_decay", weight_decay, 0.0)
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov)

    @torch.no_grad()
    def step(self, closure=None):
        decays = []
        for group in self.param_groups:
            decays.append(group["weight_decay"])
            for p in group["params"]:
                if p.grad is not None and group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
            group["weight_decay"] = 0.0
        try:
            return super().step(closure)
        finally:
            for group, wd in zip(self.param_groups, decays):
                group["weight_decay"] = wd
