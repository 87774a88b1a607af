"""LARS: layer-wise adaptive rate scaling (You, Gitman and Ginsburg, 2017)."""
from __future__ import annotations

from typing import Any

import torch

from reltrust.optim import trust_ratio as tr
from reltrust.optim._base import Bucket, LayerwiseOptimizer, check_float, ops, per_tensor, state_zeros


class LARS(LayerwiseOptimizer):
    r"""LARS: SGD with momentum whose step for each tensor is scaled by a layerwise trust ratio.

    For each parameter tensor W with gradient g (‖·‖: Frobenius norm of the whole tensor)::

        r ← κ‖W‖ / (‖g‖ + λ‖W‖ + ε),  and r = 1 if ‖W‖ = 0 or ‖g‖ = 0
        v ← μ·v + η·r·(g + λW)                       (v starts at 0)
        W ← W − v                                     (nesterov=False)
        W ← W − η·r·(g + λW) − μ·v                    (nesterov=True, with the new v)

    With momentum = 0 there is no buffer and W ← W − η·r·(g + λW). A param group with
    ``trust_ratio=False`` uses r = 1: plain SGD with momentum and L2 weight decay (the usual treatment
    of biases and norm layers, see `reltrust.optim.param_groups`).

    Args:
        lr: η (≥ 0), the global learning rate; with κ = 0.001 typical values are 1–20 for large batches.
        momentum: μ in [0, 1).
        weight_decay: λ ≥ 0, added to the direction and to the ratio's denominator.
        trust_coefficient: κ > 0.
        eps: ε ≥ 0 in the ratio's denominator.
        nesterov: Nesterov momentum (needs momentum > 0).
        foreach, maximize: as in torch.optim.

    The step needs no temporaries: the buffer is updated by three in-place passes (μ·v, +η·r·g,
    +η·r·λ·W). DTensor parameters: one all-reduce of the per-tensor squared norms of W and g.
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 0.0,
        nesterov: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
    ) -> None:
        check_float("lr", lr, 0.0)
        check_float("momentum", momentum, 0.0, 1.0)
        check_float("weight_decay", weight_decay, 0.0)
        check_float("trust_coefficient", trust_coefficient, 0.0, low_open=True)
        check_float("eps", eps, 0.0)
        if nesterov and momentum <= 0:
            raise ValueError("Invalid nesterov=True: Nesterov momentum requires momentum in (0, 1)")
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
            eps=eps, nesterov=nesterov, foreach=foreach, maximize=maximize,
        )
        super().__init__(params, defaults)

    def _init_state(self, group: dict[str, Any], p: torch.Tensor, state: dict[str, Any]) -> None:
        if group["momentum"] > 0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = state_zeros(p)

    def _update(self, group: dict[str, Any], b: Bucket, foreach: bool) -> None:
        lars_update(
            b.params,
            b.grads,
            b.state_list("momentum_buffer") if group["momentum"] > 0 else None,
            lr=group["lr"],
            momentum=group["momentum"],
            weight_decay=group["weight_decay"],
            trust_coefficient=group["trust_coefficient"],
            eps=group["eps"],
            nesterov=group["nesterov"],
            trust_ratio=group["trust_ratio"],
            maximize=group["maximize"],
            foreach=foreach,
            like=b.like,
        )


def lars_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    momentum_buffers: list[torch.Tensor] | None,
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    trust_coefficient: float = 0.001,
    eps: float = 0.0,
    nesterov: bool = False,
    trust_ratio: bool = True,
    maximize: bool = False,
    foreach: bool = True,
    like: list[torch.Tensor] | None = None,
) -> None:
    """Functional LARS step over same-device, same-dtype tensors (see `LARS` for the rule)."""
    like = like if like is not None else params
    if trust_ratio:
        weight_norm = tr.norms(params, like=like, foreach=foreach)
        grad_norm = tr.norms(grads, like=like, foreach=foreach)
        step = tr.trust_ratio(
            weight_norm, grad_norm, coefficient=trust_coefficient, weight_decay=weight_decay, eps=eps
        ).mul_(lr)
    else:
        step = torch.full((len(params),), lr, dtype=params[0].dtype, device=params[0].device)
    grad_step = -step if maximize else step  # η·r·(±1), the coefficient of g in the direction
    shrink = list(per_tensor(1.0 - step * weight_decay)) if weight_decay else None  # 1 − η·r·λ

    if momentum == 0:  # W ← W − η·r·(±g + λW) = (1 − η·r·λ)·W ∓ η·r·g
        if shrink is not None:
            ops.mul_(params, shrink, foreach)
        ops.addcmul_(params, grads, per_tensor(-grad_step), foreach)
        return
    if momentum_buffers is None:
        raise ValueError("lars_update: momentum > 0 needs momentum_buffers")
    # v ← μ·v + η·r·(±g + λW), with W the weights before this step
    ops.mul_(momentum_buffers, momentum, foreach)
    ops.addcmul_(momentum_buffers, grads, per_tensor(grad_step), foreach)
    if weight_decay:
        ops.addcmul_(momentum_buffers, params, per_tensor(step * weight_decay), foreach)
    if nesterov:  # W ← W − η·r·(±g + λW) − μ·v = (1 − η·r·λ)·W ∓ η·r·g − μ·v
        if shrink is not None:
            ops.mul_(params, shrink, foreach)
        ops.addcmul_(params, grads, per_tensor(-grad_step), foreach)
        ops.add_(params, momentum_buffers, -momentum, foreach)
    else:  # W ← W − v
        ops.add_(params, momentum_buffers, -1.0, foreach)
