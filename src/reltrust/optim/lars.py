"""LARS: layer-wise adaptive rate scaling (You, Gitman and Ginsburg, 2017)."""
from __future__ import annotations

from typing import Any

import torch

from reltrust.optim import _native
from reltrust.optim._base import (
    Bucket, LayerwiseOptimizer, cache_blocks, check_flag, check_float, check_lr, fused_choice, layer_ratios,
    native_split, ops, per_tensor, scalar_arg, state_zeros, weight_norm_cache,
)


class LARS(LayerwiseOptimizer):
    r"""LARS: SGD with momentum whose step for each tensor is scaled by a layerwise trust ratio.

    For each parameter tensor W with gradient g (‖·‖: Frobenius norm of the whole tensor)::

        r ← κ‖W‖ / (‖g‖ + λ‖W‖ + ε),  and r = 1 if ‖W‖ = 0 or ‖g‖ = 0,
                                         r = NaN if ‖W‖ or ‖g‖ is NaN or inf
        v ← μ·v + η·r·(g + λW)                       (v starts at 0)
        W ← W − v                                     (nesterov=False)
        W ← W − η·r·(g + λW) − μ·v                    (nesterov=True, with the new v)

    With momentum = 0 there is no buffer and W ← W − η·r·(g + λW). A param group with
    ``trust_ratio=False`` uses r = 1: plain SGD with momentum and L2 weight decay (the usual treatment
    of biases and norm layers, see `reltrust.optim.param_groups`). A NaN or inf in W or g makes the
    tensor's whole step (and its buffer) NaN, so that divergence is seen, as in `Fromage`.

    Args:
        lr: η (≥ 0), the global learning rate, 1 by default (so that with κ = 0.001 and μ = 0.9 each
            layer moves by about 1 % of its norm per step, Fromage's default); typical values are
            1–20 for large batches. A default, as torch's SGD has, lets every param group set its own.
            A number or a one-element tensor (see `Fromage`).
        momentum: μ in [0, 1).
        weight_decay: λ ≥ 0, added to the direction and to the ratio's denominator.
        trust_coefficient: κ > 0.
        eps: ε ≥ 0 in the ratio's denominator.
        nesterov: Nesterov momentum (needs momentum > 0).
        foreach, maximize: as in torch.optim.
        fused: the native CPU kernels: None (default) where they apply and ``foreach`` is not set,
            True required, False never (see `reltrust.optim.Fromage`). They read W and g once for
            the norms and update v and W in one more pass (28 bytes per float32 element, like Adam;
            W and g from cache where they fit: 20).
        cache_weight_norm: native path only (tensors of a device and dtype that all take it), off
            by default. The update pass also takes ‖W‖ of the new weights, and the next step
            uses it instead of reading W again for its norm
            (24 bytes per element instead of 28). The cached norms are used only while the weights' storage and
            version counters are those the step left — any in-place op on W or a view of it, a
            model's ``load_state_dict``, ``p.data = …`` drop them — but writes that bypass the
            version counter (through ``p.data``, ``.numpy()``, DLPack) go unseen: enable it only
            where nothing writes weights that way. 16-bit parameters do not use it.

    The step needs no temporaries: on the torch path the buffer is updated by three in-place ops
    (μ·v, +η·r·g, +η·r·λ·W), run on cache-sized blocks on CPU. DTensor parameters: one all-reduce of
    the per-tensor squared norms of W and g.
    """

    STATE_KEYS = (frozenset({"momentum_buffer"}),)

    def __init__(
        self,
        params,
        lr: float = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 0.0,
        nesterov: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        fused: bool | None = None,
        cache_weight_norm: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
            eps=eps, nesterov=nesterov, foreach=foreach, maximize=maximize, fused=fused,
            cache_weight_norm=cache_weight_norm,
        )
        super().__init__(params, defaults)

    @staticmethod
    def _check_hyperparameters(group: dict[str, Any]) -> None:
        check_lr(group["lr"])
        check_float("momentum", group["momentum"], 0.0, 1.0)
        check_float("weight_decay", group["weight_decay"], 0.0)
        check_float("trust_coefficient", group["trust_coefficient"], 0.0, low_open=True)
        check_float("eps", group["eps"], 0.0)
        check_flag("nesterov", group["nesterov"])
        if group["nesterov"] and group["momentum"] <= 0:
            raise ValueError("Invalid nesterov=True: Nesterov momentum requires momentum in (0, 1)")

    def _init_state(self, group: dict[str, Any], p: torch.Tensor, state: dict[str, Any]) -> None:
        if group["momentum"] > 0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = state_zeros(p)

    def _update(self, group: dict[str, Any], b: Bucket, foreach: bool) -> None:
        b.weight_norm_out = lars_update(
            b.params,
            b.grads,
            b.state_list("momentum_buffer") if group["momentum"] > 0 else None,
            lr=scalar_arg(group["lr"], b.params[0]),  # a Python float, or a 0-dim tensor (no host read)
            momentum=float(group["momentum"]),
            weight_decay=float(group["weight_decay"]),
            trust_coefficient=float(group["trust_coefficient"]),
            eps=float(group["eps"]),
            nesterov=group["nesterov"],
            trust_ratio=group["trust_ratio"],
            maximize=group["maximize"],
            foreach=foreach,
            like=b.like,
            fused=fused_choice(group),
            **b.norm_cache_args(),
        )


def lars_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    momentum_buffers: list[torch.Tensor] | None,
    *,
    lr: float | torch.Tensor,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    trust_coefficient: float = 0.001,
    eps: float = 0.0,
    nesterov: bool = False,
    trust_ratio: bool = True,
    maximize: bool = False,
    foreach: bool = True,
    like: list[torch.Tensor] | None = None,
    fused: bool | None = None,
    _weight_norm: torch.Tensor | None = None,
    _return_weight_norm: bool = False,
    **deprecated: Any,
) -> torch.Tensor | None:
    """Functional LARS step over same-device, same-dtype tensors (see `LARS` for the rule).

    `fused`, `lr`, and the weight-norm cache's private `_weight_norm`, `_return_weight_norm`: as in
    `fromage_update`."""
    weight_norm, return_weight_norm = weight_norm_cache("lars_update", _weight_norm, _return_weight_norm, deprecated)
    like = like if like is not None else params
    if momentum != 0 and momentum_buffers is None:
        raise ValueError("lars_update: momentum > 0 needs momentum_buffers")
    bufs = momentum_buffers if momentum != 0 else None
    mine, rest = native_split(fused, [params, grads, bufs, like], params, grads, bufs)
    if mine is not None:
        rule = dict(lr=float(lr), momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient, eps=eps,
                    nesterov=nesterov, trust_ratio=trust_ratio, maximize=maximize)
        if rest is None:
            return _lars_native(*mine[:3], like=mine[3], weight_norm=weight_norm, return_weight_norm=return_weight_norm,
                                **rule)
        _lars_native(*mine[:3], like=mine[3], **rule)  # the others below, on the torch path (no weight-norm cache)
    params, grads, momentum_buffers, like = rest
    ratio = layer_ratios(params, grads, like, foreach, trust_ratio, coefficient=trust_coefficient,
                         weight_decay=weight_decay, eps=eps)[2]
    step = ratio.mul_(lr)
    grad_step = -step if maximize else step  # η·r·(±1), the coefficient of g in the direction
    neg_grad_step = per_tensor(-grad_step)
    shrink = per_tensor(1.0 - step * weight_decay) if weight_decay else None  # 1 − η·r·λ
    decay_step = per_tensor(step * weight_decay) if weight_decay else None  # η·r·λ
    grad_step = per_tensor(grad_step)
    lists = [params, grads] if momentum == 0 else [params, grads, momentum_buffers]
    # the ops below run on cache-sized blocks: each op after the first finds its operands in cache
    for idx, (ps, gs, *vs) in cache_blocks(lists, foreach):
        def pick(scalars):
            return [scalars[i] for i in idx]

        if momentum == 0:  # W ← W − η·r·(±g + λW) = (1 − η·r·λ)·W ∓ η·r·g
            if shrink is not None:
                ops.mul_(ps, pick(shrink), foreach)
            ops.addcmul_(ps, gs, pick(neg_grad_step), foreach)
            continue
        vs = vs[0]
        # v ← μ·v + η·r·(±g + λW), with W the weights before this step
        ops.mul_(vs, momentum, foreach)
        ops.addcmul_(vs, gs, pick(grad_step), foreach)
        if weight_decay:
            ops.addcmul_(vs, ps, pick(decay_step), foreach)
        if nesterov:  # W ← W − η·r·(±g + λW) − μ·v = (1 − η·r·λ)·W ∓ η·r·g − μ·v
            if shrink is not None:
                ops.mul_(ps, pick(shrink), foreach)
            ops.addcmul_(ps, gs, pick(neg_grad_step), foreach)
            ops.add_(ps, vs, -momentum, foreach)
        else:  # W ← W − v
            ops.add_(ps, vs, -1.0, foreach)
    return None


def _lars_native(params, grads, bufs, *, lr, momentum, weight_decay, trust_coefficient, eps, nesterov, trust_ratio,
                 maximize, like, weight_norm=None, return_weight_norm=False):
    """The same step on the native kernels (`_native.layerwise_step`): a norm pass, the ratio, and
    one pass for v ← μ·v + (±η·r)·g + η·r·λ·W, W ← W − v (or the Nesterov form), the update
    reading W and g from cache where they fit."""
    kernel = _native.Kernel("lars", [params, grads, bufs],
                            [lr, trust_coefficient, weight_decay, eps, int(maximize), momentum, int(nesterov)],
                            [params, bufs])
    return _native.layerwise_step(
        kernel, like, trust_ratio=trust_ratio, bytes_per_element=12 if bufs is not None else 8,
        ratio_hp=dict(coefficient=trust_coefficient, weight_decay=weight_decay, eps=eps), weight_norm=weight_norm,
        want_new_norm=return_weight_norm)[2]
