"""Fromage: Frobenius matched gradient descent (Bernstein et al., NeurIPS 2020, Algorithm 1)."""
from __future__ import annotations

import math
from typing import Any

import torch

from reltrust.optim import trust_ratio as tr
from reltrust.optim._base import Bucket, LayerwiseOptimizer, check_float, ops, per_tensor, scalar_state, state_zeros


class Fromage(LayerwiseOptimizer):
    r"""Fromage: every layer moves by the same relative amount η per step.

    For each parameter tensor W with gradient g (‖·‖: Frobenius norm of the whole tensor)::

        u ← g                                    (momentum = 0)
        u ← m ← β·m + (1−β)·g                    (momentum = β > 0; m starts at 0)
        r ← ‖W‖/‖u‖,  and r = 1 if ‖W‖ = 0 or ‖u‖ = 0      (zero-initialised biases, zero gradients)
        W ← (W − η·r·u) / √(1 + η²)
        if p_bound:  W ← W · min(1, p_bound·‖W₀‖/‖W‖)      (‖W₀‖: norm when W first got a gradient)

    Away from the zero-norm branch the gradient part of the step has norm exactly η‖W‖ before the
    division, so with c = 1/√(1+η²) the new weights are W_new = c·W + ΔW with ‖ΔW‖/‖W‖ = η·c =
    η/√(1+η²) exactly; the total change ‖W_new − W‖/‖W‖ is η up to O(η²) (paper eq. 5) and, by
    Mirsky's theorem, no singular value moves by more than that fraction of ‖W‖. The division by
    √(1+η²) undoes the Pythagorean growth ‖W − η·r·g‖² = (1+η²)‖W‖² (exact when g ⟂ W), keeping ‖W‖
    nearly constant.

    Args:
        params: iterable of parameters or param groups. A group may set ``trust_ratio=False`` to use
            r = 1 (plain SGD followed by the norm-preserving division).
        lr: η, the relative step per layer, ≥ 0. 0.01 by default; 0.001 is the usual fine-tuning value.
        p_bound: if set (> 0), after every step rescale any tensor whose norm exceeds
            p_bound × its norm at its first step back to that bound. Off by default; the paper's
            authors found p_bound = 1 best against overfitting on CIFAR-10 and Wikitext-2.
        momentum: β in [0, 1). The paper's remedy for the instability at small batch size: the rule is
            applied to the exponential moving average m of the gradient instead of g. Its scale is
            irrelevant (r normalises it); β sets how many steps' gradients it averages (≈ 1/(1−β)).
        foreach: multi-tensor ``torch._foreach_*`` kernels (default) or a per-tensor loop; both give
            the same result.
        maximize: ascend instead of descend.

    Parameters without a gradient are left untouched; sparse gradients raise an error. For DTensor
    (FSDP2) parameters every norm is of the whole logical tensor: one all-reduce of the per-tensor
    squared norms per step (two with ``p_bound``).
    """

    def __init__(
        self,
        params,
        lr: float = 0.01,
        p_bound: float | None = None,
        momentum: float = 0.0,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
    ) -> None:
        check_float("lr", lr, 0.0)
        if p_bound is not None:
            check_float("p_bound", p_bound, 0.0, low_open=True)
        check_float("momentum", momentum, 0.0, 1.0)
        defaults = dict(lr=lr, p_bound=p_bound, momentum=momentum, foreach=foreach, maximize=maximize)
        super().__init__(params, defaults)

    def _init_state(self, group: dict[str, Any], p: torch.Tensor, state: dict[str, Any]) -> None:
        if group["momentum"] > 0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = state_zeros(p)
        if group["p_bound"] is not None and "initial_norm" not in state:
            state["initial_norm"] = scalar_state(p, math.nan)  # NaN: "not recorded yet"

    def _update(self, group: dict[str, Any], b: Bucket, foreach: bool) -> None:
        fromage_update(
            b.params,
            b.grads,
            b.state_list("momentum_buffer") if group["momentum"] > 0 else None,
            b.state_list("initial_norm") if group["p_bound"] is not None else None,
            lr=group["lr"],
            momentum=group["momentum"],
            p_bound=group["p_bound"],
            trust_ratio=group["trust_ratio"],
            maximize=group["maximize"],
            foreach=foreach,
            like=b.like,
        )


def fromage_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    momentum_buffers: list[torch.Tensor] | None,
    initial_norms: list[torch.Tensor] | None,
    *,
    lr: float,
    momentum: float = 0.0,
    p_bound: float | None = None,
    trust_ratio: bool = True,
    maximize: bool = False,
    foreach: bool = True,
    like: list[torch.Tensor] | None = None,
) -> None:
    """Functional Fromage step over same-device, same-dtype tensors (see `Fromage` for the rule).

    Reads p and u for the norms, then updates p in place: p += (∓η·r)·u, p *= 1/√(1+η²). No host
    synchronisation and no full-size temporaries.
    """
    like = like if like is not None else params
    if momentum > 0:
        if momentum_buffers is None:
            raise ValueError("fromage_update: momentum > 0 needs momentum_buffers")
        ops.lerp_(momentum_buffers, grads, 1.0 - momentum, foreach)  # m ← β·m + (1−β)·g
        direction = momentum_buffers
    else:
        direction = grads
    weight_norm = tr.norms(params, like=like, foreach=foreach)
    if trust_ratio:
        ratio = tr.trust_ratio(weight_norm, tr.norms(direction, like=like, foreach=foreach))
        coef = ratio.mul_(lr if maximize else -lr)
    else:
        coef = torch.full_like(weight_norm, lr if maximize else -lr)
    ops.addcmul_(params, direction, per_tensor(coef), foreach)
    ops.mul_(params, 1.0 / math.sqrt(1.0 + lr * lr), foreach)

    if p_bound is not None:
        if initial_norms is None:
            raise ValueError("fromage_update: p_bound needs initial_norms")
        recorded = torch.stack(initial_norms)
        recorded = torch.where(recorded.isnan(), weight_norm.to(recorded.dtype), recorded)
        ops.copy_(initial_norms, per_tensor(recorded), foreach)
        limit = p_bound * recorded.to(weight_norm.dtype)
        new_norm = tr.norms(params, like=like, foreach=foreach)
        scale = torch.where(new_norm > limit, limit / new_norm, torch.ones_like(new_norm))
        ops.mul_(params, list(per_tensor(scale)), foreach)
