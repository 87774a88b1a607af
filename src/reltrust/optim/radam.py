"""RAdam that skips the step while the variance of the adaptive learning rate is intractable
(Liu et al., ICLR 2020, with the rule of the authors' current code).

`torch.optim.RAdam` (registered as ``"radam"``) falls back to SGD with momentum while ρ_t ≤ 5; this
one (``"radam_skip"``) leaves the weights where they are instead, and only updates the moments. Once
ρ_t is past the threshold the two take the same steps. `sma_length` and `rectification` are the
formula's ρ_t and r_t, for anyone who needs them outside an optimiser (the variance study does).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from reltrust.optim._base import check_float


def sma_length(t, beta2: float):
    """ρ_t = ρ∞ − 2tβ₂ᵗ/(1−β₂ᵗ) with ρ∞ = 2/(1−β₂) − 1: the length of the simple moving average that
    Adam's exponential one approximates after t ≥ 1 steps (a number, or elementwise for an array)."""
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    decay = beta2**t
    return rho_inf - 2.0 * t * decay / (1.0 - decay)


def rectification(rho_t, beta2: float):
    """r_t = √((ρ_t−4)(ρ_t−2)ρ∞ / ((ρ∞−4)(ρ∞−2)ρ_t)), defined for ρ_t > 4 (elementwise for an array).
    Under the paper's first-order approximation Var[ψ] ∝ ρ/((ρ−2)(ρ−4)), so r_t² = Var[ψ_∞]/Var[ψ_t]."""
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    return ((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)) ** 0.5


class RAdamSkip(torch.optim.Optimizer):
    r"""RAdam with the skip rule: no step at all while ρ_t ≤ threshold.

    For each parameter tensor W with gradient g, at its step t = 1, 2, …::

        g ← g + λ·W                              (weight_decay λ, unless decoupled)
        m ← β₁·m + (1−β₁)·g          v ← β₂·v + (1−β₂)·g²
        ρ_t = ρ∞ − 2tβ₂ᵗ/(1−β₂ᵗ),    ρ∞ = 2/(1−β₂) − 1
        if ρ_t > threshold:
            W ← W·(1 − η·λ)                      (decoupled_weight_decay only)
            r_t = √((ρ_t−4)(ρ_t−2)ρ∞ / ((ρ∞−4)(ρ∞−2)ρ_t))
            W ← W − η · r_t · √(1−β₂ᵗ)/(1−β₁ᵗ) · m/(√v + ε)
        else:
            W unchanged (the moments are updated)

    `torch.optim.RAdam` differs only in the else branch, where it takes W ← W − η·m/(1−β₁ᵗ) (SGD
    with momentum): from the first rectified step on, both move the weights by the same amount (to
    float rounding) given the same gradients. With β₂ = 0.999 and the default threshold 5, the first
    five steps are skipped (ρ₅ ≈ 4.996, ρ₆ ≈ 5.994); the paper's threshold of 4 skips four.

    Args:
        lr: η ≥ 0.   betas: (β₁, β₂), each in [0, 1), and ρ∞ > threshold (else it never steps:
            β₂ > 2/3 for the default threshold).   eps: ε ≥ 0.   weight_decay: λ ≥ 0.
        decoupled_weight_decay: AdamW-style decay of the weights (RAdamW), applied only on steps
            that move the weights; by default λ·W is added to the gradient, as in torch's RAdam.
        threshold: ρ_t must exceed it for a step, ≥ 4 (r_t is undefined below 4). 5 by default, as
            in torch's RAdam and the authors' code; the paper writes 4.
        foreach: multi-tensor ``torch._foreach_*`` kernels (True, the default) or a per-tensor
            loop (False); both give the same result.   maximize: ascend instead of descend.

    The step count is a Python int per parameter (``state["step"]``): ρ_t, r_t and the decision to
    step are worked out on the host from it, so a step never reads a tensor back from the device.
    Optimiser state and arithmetic are in the parameter's dtype, as in `torch.optim.RAdam`, whose
    state dicts load into this optimiser (and this one's into it). Parameters without a gradient are
    left untouched; sparse gradients and complex parameters raise an error.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        threshold: float = 5.0,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
    ) -> None:
        check_float("lr", lr, 0.0)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"Invalid betas: {betas!r}; expected a pair (beta1, beta2)")
        check_float("betas[0]", betas[0], 0.0, 1.0)
        check_float("betas[1]", betas[1], 0.0, 1.0)
        check_float("eps", eps, 0.0)
        check_float("weight_decay", weight_decay, 0.0)
        check_float("threshold", threshold, 4.0)
        if 2.0 / (1.0 - betas[1]) - 1.0 <= threshold:
            lowest = 1.0 - 2.0 / (threshold + 1.0)
            raise ValueError(f"Invalid betas[1]: {betas[1]!r}; RAdamSkip steps only where ρ_t > threshold = "
                             f"{threshold:g} and ρ_t < ρ∞ = 2/(1−β₂)−1, so β₂ must exceed {lowest:.6g}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        decoupled_weight_decay=decoupled_weight_decay, threshold=threshold, foreach=foreach,
                        maximize=maximize)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if any(p.is_complex() for p in group["params"]):
                raise ValueError("RAdamSkip does not support complex parameters; pass torch.view_as_real(p) views instead")

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Also on `load_state_dict`: a tensor step count (from `torch.optim.RAdam`) becomes an int."""
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        for p_state in self.state.values():
            if torch.is_tensor(p_state.get("step")):
                p_state["step"] = int(p_state["step"])

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            check_float("lr", group["lr"], 0.0)
            foreach = group["foreach"]
            foreach = True if foreach is None else bool(foreach)
            # tensors at the same step on the same device and dtype take one call
            buckets: dict[tuple, tuple[list, list, list, list, list]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("RAdamSkip does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                bucket = buckets.setdefault((p.device, p.dtype, state["step"]), ([], [], [], [], []))
                for lst, t in zip(bucket, (p, p.grad, state["exp_avg"], state["exp_avg_sq"], state)):
                    lst.append(t)
            beta1, beta2 = group["betas"]
            for (_, _, step), (params, grads, exp_avgs, exp_avg_sqs, states) in buckets.items():
                for state in states:
                    state["step"] = step + 1
                radam_skip_update(
                    params, grads, exp_avgs, exp_avg_sqs, step=step + 1, lr=group["lr"], beta1=beta1,
                    beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                    decoupled_weight_decay=group["decoupled_weight_decay"], threshold=group["threshold"],
                    maximize=group["maximize"], foreach=foreach,
                )
        return loss


def radam_skip_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    *,
    step: int,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    threshold: float = 5.0,
    maximize: bool = False,
    foreach: bool = True,
) -> None:
    """Functional RAdamSkip step over same-device, same-dtype tensors that all take their step
    number `step` (≥ 1) now (see `RAdamSkip` for the rule). `grads` are not modified."""
    rho_t = sma_length(step, beta2)
    moves = rho_t > threshold
    if maximize:
        grads = torch._foreach_neg(grads) if foreach else [torch.neg(g) for g in grads]
    if weight_decay and decoupled_weight_decay and moves:
        if foreach:
            torch._foreach_mul_(params, 1.0 - lr * weight_decay)
        else:
            for p in params:
                p.mul_(1.0 - lr * weight_decay)
    elif weight_decay and not decoupled_weight_decay:
        if foreach:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
        else:
            grads = [torch.add(g, p, alpha=weight_decay) for g, p in zip(grads, params)]
    if foreach:
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    else:
        for m, v, g in zip(exp_avgs, exp_avg_sqs, grads):
            m.lerp_(g, 1.0 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
    if not moves:
        return
    step_size = lr * rectification(rho_t, beta2) * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)
    if foreach:
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denom, value=-step_size)
    else:
        for p, m, v in zip(params, exp_avgs, exp_avg_sqs):
            p.addcdiv_(m, v.sqrt().add_(eps), value=-step_size)
