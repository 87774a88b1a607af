"""Fromage: Frobenius matched gradient descent (Bernstein et al., NeurIPS 2020, Algorithm 1)."""
from __future__ import annotations

import math
from typing import Any

import torch

from reltrust.optim import _native
from reltrust.optim import _ratio as tr
from reltrust.optim._base import (
    Bucket, LayerwiseOptimizer, cache_blocks, check_float, check_lr, fused_choice, layer_ratios, native_split, ops,
    per_tensor, scalar_arg, scalar_state, state_zeros, weight_norm_cache,
)


class Fromage(LayerwiseOptimizer):
    r"""Fromage: every layer moves by the same relative amount η per step.

    For each parameter tensor W with gradient g (‖·‖: Frobenius norm of the whole tensor)::

        u ← g                                    (momentum = 0)
        u ← m ← β·m + (1−β)·g                    (momentum = β > 0; m starts at 0)
        r ← ‖W‖/‖u‖,  and r = 1 if ‖W‖ = 0 or ‖u‖ = 0      (zero-initialised biases, zero gradients)
                        and r = NaN if ‖W‖ or ‖u‖ is NaN or inf
        W ← (W − η·r·u) / √(1 + η²)              (W unchanged if u = 0 exactly)
        if p_bound:  W ← W · min(1, p_bound·‖W₀‖/‖W‖)      (‖W₀‖: norm when W first got a gradient)

    A tensor whose direction u is exactly zero — a gradient kept at zero by
    ``zero_grad(set_to_none=False)``, a frozen part of a model — takes no step: the paper's division
    by √(1+η²) undoes the growth a step would cause, and without a step it would shrink the tensor by
    that factor every step (to 0.95 of its norm in 1,000 steps at η = 0.01), so it is skipped, as a
    parameter without a gradient is. (With ``trust_ratio=False`` no norms are taken and the division
    applies every step, as in the paper's rule.)

    A NaN or inf in W or g thus makes the tensor's whole step NaN, on every path (native kernels,
    foreach, per-tensor loop), so that divergence is seen, as torch's optimisers let a NaN through;
    the other tensors step as usual. (A group with ``trust_ratio=False`` takes no norms: there a
    NaN stays in the entries it reaches, as in SGD.)

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
            A number or a one-element tensor, as in torch's optimisers (a compiled step then follows
            its changes without recompiling; the native kernels read its value).
        trust_budget: τ > 0, the depth-aware Fromage, instead of ``lr`` (giving both is an error).
            Every step picks η = (1+τ)^(1/L) − 1, L the number of tensors that step updates with a
            trust ratio (parameters with a gradient in groups with ``trust_ratio=True``, over all
            groups), so that the step's deep relative trust Π_l(1+η) − 1 is exactly τ (each layer's
            relative change is η/√(1+η²) ≈ η, see above). τ = 0.1 at L = 50 gives η ≈ 0.0019. The
            groups then hold ``lr=None``: schedule ``trust_budget`` instead of ``lr`` (torch's LR
            schedulers need a numeric lr). A tensor whose direction is zero still counts in L.
        p_bound: if set (> 0), after every step rescale any tensor whose norm exceeds
            p_bound × its norm at its first step back to that bound. Off by default; the paper's
            authors found p_bound = 1 best against overfitting on CIFAR-10 and Wikitext-2.
        momentum: β in [0, 1). The paper's remedy for the instability at small batch size: the rule is
            applied to the exponential moving average m of the gradient instead of g. Its scale is
            irrelevant (r normalises it); β sets how many steps' gradients it averages (≈ 1/(1−β)).
        foreach: multi-tensor ``torch._foreach_*`` kernels (True) or a per-tensor loop (False); both
            give the same result.
        maximize: ascend instead of descend.
        fused: the native CPU kernels (`reltrust.optim._native`): None (default) uses them for the
            contiguous CPU float32/16-bit tensors when they are built and ``foreach`` is not set
            (the group's other tensors, e.g. a channels_last weight, take the torch path in the
            same step), True requires them for all (but float64 tensors, which they do not take:
            those run the torch path, as torch's fused CPU optimisers take float64), False never uses them. A norm pass and an
            update pass (20 bytes per float32 element, like SGD with momentum); for tensors or
            groups of tensors that fit in cache, the update pass reads W and g from cache (12 bytes from memory). They agree
            with the torch path to float32 rounding (bit for bit but for the norms' last bits).
        cache_weight_norm: native path only (tensors of a device and dtype that all take it), off
            by default. The update pass also takes ‖W‖ of the new weights, and the next step
            uses it instead of reading W again for its norm
            (Fromage then moves 16 bytes per element, below SGD-momentum's 20). The cached norms
            are used only while the weights' storage and version counters are those the step
            left — any in-place op on W or a view of it, a model's ``load_state_dict``,
            ``p.data = …`` drop them — but writes that bypass the
            version counter (through ``p.data``, ``.numpy()``, DLPack) go unseen: enable it only
            where nothing writes weights that way. 16-bit parameters do not use it.

    Parameters without a gradient are left untouched; sparse gradients raise an error. For DTensor
    (FSDP2) parameters every norm is of the whole logical tensor: one all-reduce of the per-tensor
    squared norms per step (two with ``p_bound``).
    """

    STATE_KEYS = (frozenset({"momentum_buffer"}), frozenset({"initial_norm"}))

    def __init__(
        self,
        params,
        lr: float | None = None,
        p_bound: float | None = None,
        momentum: float = 0.0,
        *,
        trust_budget: float | None = None,
        foreach: bool | None = None,
        maximize: bool = False,
        fused: bool | None = None,
        cache_weight_norm: bool = False,
    ) -> None:
        if lr is None and trust_budget is None:
            lr = 0.01
        defaults = dict(
            lr=lr, trust_budget=trust_budget, p_bound=p_bound, momentum=momentum, foreach=foreach, maximize=maximize, fused=fused,
            cache_weight_norm=cache_weight_norm,
        )
        super().__init__(params, defaults)

    @staticmethod
    def _check_hyperparameters(group: dict[str, Any]) -> None:
        budget = group.get("trust_budget")
        if budget is not None:
            check_float("trust_budget", budget, 0.0, low_open=True)
            if group["lr"] is not None:
                raise ValueError(f"Invalid lr: {group['lr']!r}; lr and trust_budget are exclusive (trust_budget={budget!r} "
                                 "chooses η = (1+τ)^(1/L) − 1): give one of them")
        elif group["lr"] is None:
            raise ValueError("Invalid lr: None; give lr (≥ 0) or trust_budget (> 0)")
        else:
            check_lr(group["lr"])
        if group["p_bound"] is not None:
            check_float("p_bound", group["p_bound"], 0.0, low_open=True)
        check_float("momentum", group["momentum"], 0.0, 1.0)

    def _init_state(self, group: dict[str, Any], p: torch.Tensor, state: dict[str, Any]) -> None:
        if group["momentum"] > 0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = state_zeros(p)
        if group["p_bound"] is not None and "initial_norm" not in state:
            state["initial_norm"] = scalar_state(p, math.nan)  # NaN: "not recorded yet"

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # L for the depth-aware rule: the tensors this step moves by a trust ratio (host-side count,
        # after the closure has made the gradients)
        if self._budgeted():
            self._budget_layers = max(1, sum(
                1 for g in self.param_groups if g["trust_ratio"] for p in g["params"] if p.grad is not None))
        super().step()
        return loss

    def _budgeted(self) -> bool:
        """Whether some group's η comes from a trust budget (then `step` counts L)."""
        return any(g.get("trust_budget") is not None for g in self.param_groups)

    def _budget_eta(self, budget: float | torch.Tensor) -> float | torch.Tensor:
        """η = (1+τ)^(1/L) − 1, L as counted by this step."""
        return (1.0 + budget) ** (1.0 / self.__dict__.get("_budget_layers", 1)) - 1.0

    def budget_lr(self, group: dict[str, Any]) -> float | torch.Tensor:
        """η of a group at this step: its lr, or (1+τ)^(1/L) − 1 for a group with a trust_budget τ
        (L counted at the start of `step`)."""
        budget = group.get("trust_budget")
        if budget is None:
            return group["lr"]
        return self._budget_eta(float(budget))

    def _update(self, group: dict[str, Any], b: Bucket, foreach: bool) -> None:
        p_bound = group["p_bound"]
        b.weight_norm_out = fromage_update(
            b.params,
            b.grads,
            b.state_list("momentum_buffer") if group["momentum"] > 0 else None,
            b.state_list("initial_norm") if p_bound is not None else None,
            lr=scalar_arg(self.budget_lr(group), b.params[0]),  # a Python float, or a 0-dim tensor (no host read)
            momentum=float(group["momentum"]),
            p_bound=None if p_bound is None else float(p_bound),
            trust_ratio=group["trust_ratio"],
            maximize=group["maximize"],
            foreach=foreach,
            like=b.like,
            fused=fused_choice(group),
            **b.norm_cache_args(),
        )


def fromage_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    momentum_buffers: list[torch.Tensor] | None,
    initial_norms: list[torch.Tensor] | None,
    *,
    lr: float | torch.Tensor,
    momentum: float = 0.0,
    p_bound: float | None = None,
    trust_ratio: bool = True,
    maximize: bool = False,
    foreach: bool = True,
    like: list[torch.Tensor] | None = None,
    fused: bool | None = None,
    _weight_norm: torch.Tensor | None = None,
    _return_weight_norm: bool = False,
    **deprecated: Any,
) -> torch.Tensor | None:
    """Functional Fromage step over same-device, same-dtype tensors (see `Fromage` for the rule).

    Reads p and u for the norms, then updates p in place: p += (∓η·r)·u, p *= 1/√(1+η²). No host
    synchronisation and no full-size temporaries. `fused`: as in `Fromage` (None: native kernels
    for the tensors they take, the torch path for the others). `lr` may be a 0-dim tensor: the torch
    path then reads it only on the device (the native kernels take its value).

    `_weight_norm` and `_return_weight_norm` are the plumbing of `Fromage`'s weight-norm cache
    (``cache_weight_norm``), private to the optimisers: on the native path for all tensors, the norms
    of the (local) `params` as the previous call left them, and whether to return the new ones
    (taken in the update pass); otherwise ignored and None returned (see `_base.weight_norm_cache`).
    """
    weight_norm, return_weight_norm = weight_norm_cache("fromage_update", _weight_norm, _return_weight_norm, deprecated)
    like = like if like is not None else params
    if momentum > 0 and momentum_buffers is None:
        raise ValueError("fromage_update: momentum > 0 needs momentum_buffers")
    if p_bound is not None and initial_norms is None:
        raise ValueError("fromage_update: p_bound needs initial_norms")
    bufs = momentum_buffers if momentum > 0 else None
    mine, rest = native_split(fused, [params, grads, bufs, initial_norms, like], params, grads, bufs)
    if mine is not None:
        rule = dict(lr=float(lr), momentum=momentum, p_bound=p_bound, trust_ratio=trust_ratio, maximize=maximize)
        if rest is None:
            return _fromage_native(*mine[:4], like=mine[4], weight_norm=weight_norm,
                                   return_weight_norm=return_weight_norm, **rule)
        _fromage_native(*mine[:4], like=mine[4], **rule)  # the others below, on the torch path (no weight-norm cache)
    params, grads, bufs, initial_norms, like = rest
    if bufs is not None:
        ops.lerp_(bufs, grads, 1.0 - momentum, foreach)  # m ← β·m + (1−β)·g
    direction = bufs if bufs is not None else grads
    weight_norm, direction_norm, ratio = layer_ratios(params, direction, like, foreach, trust_ratio)
    if weight_norm is None and p_bound is not None:
        weight_norm = tr.norms(params, like=like, foreach=foreach)
    if isinstance(lr, torch.Tensor):
        c = (1.0 + lr * lr).rsqrt()
    else:
        c = 1.0 / math.sqrt(1.0 + lr * lr)
        if torch.compiler.is_compiling():
            # under torch.compile (of this function or of a step calling it), torch 2.13's inductor
            # fuses addcmul_ and mul_ by a float that dynamo made dynamic (a changing lr) into a
            # kernel that keeps the first value; a 0-dim tensor c is compiled right
            c = torch.tensor(c, dtype=params[0].dtype, device=params[0].device)
    if trust_ratio:
        # a tensor whose direction is exactly zero takes no step: not even the division by √(1+η²)
        c = per_tensor(torch.where(direction_norm == 0, torch.ones_like(direction_norm), c))
    _scaled_update(params, direction, per_tensor(ratio.mul_(lr if maximize else -lr)), c, foreach)
    if p_bound is not None:
        scale = _bound_scale(initial_norms, p_bound, weight_norm, tr.norms(params, like=like, foreach=foreach), foreach)
        ops.mul_(params, list(per_tensor(scale)), foreach)
    return None


def _bound_scale(initial_norms, p_bound: float, weight_norm: torch.Tensor, new_norm: torch.Tensor, foreach: bool):
    """p_bound's rescale factors, min(1, p_bound·‖W₀‖/‖W_new‖) per tensor, after recording ‖W₀‖ = the
    weights' norm before this step for the tensors that have none yet (NaN). Norms of whole logical
    tensors; the same on the torch path and the native one."""
    recorded = torch.stack(initial_norms)
    recorded = torch.where(recorded.isnan(), weight_norm.to(recorded.dtype), recorded)
    ops.copy_(initial_norms, per_tensor(recorded), foreach)
    limit = p_bound * recorded.to(weight_norm.dtype)
    return torch.where(new_norm > limit, limit / new_norm, torch.ones_like(new_norm))


def _scaled_update(params, direction, coefs, c, foreach: bool) -> None:
    """p_i ← (p_i + coef_i·u_i)·c_i as addcmul_ then mul_, in cache-sized blocks (`cache_blocks`) so
    that mul_ finds p in cache. `c`: one number or 0-dim tensor for all, or a 0-dim tensor per tensor."""
    per = isinstance(c, (list, tuple))
    for idx, (ps, us) in cache_blocks([params, direction], foreach):
        ops.addcmul_(ps, us, [coefs[i] for i in idx], foreach)
        ops.mul_(ps, [c[i] for i in idx] if per else c, foreach)


def _fromage_native(params, grads, bufs, initial_norms, *, lr, momentum, p_bound, trust_ratio, maximize, like,
                    weight_norm=None, return_weight_norm=False):
    """The same step on the native kernels (`_native.layerwise_step`): a norm pass (with the momentum
    update), the ratio, and p ← (p + r·(∓η)·u)·c, the update reading W and u from cache where they
    fit. With p_bound, a rescale of only the tensors that exceed their bound. `weight_norm`: local
    norms of `params` known from the previous step's update pass (then W is not read for them); the
    update pass returns the new ones when p_bound or the caller needs them.
    """
    kernel = _native.Kernel("fromage", [params, grads, bufs],
                            [1.0 - momentum, lr if maximize else -lr, 1.0 / math.sqrt(1.0 + lr * lr)], [params, bufs])
    if not trust_ratio and p_bound is not None and weight_norm is None:
        weight_norm = _native.norms(params)[0]
    local_weight_norm, reduced_weight_norm, new_local = _native.layerwise_step(
        kernel, like, trust_ratio=trust_ratio, bytes_per_element=12 if bufs is not None else 8, weight_norm=weight_norm,
        want_new_norm=p_bound is not None or return_weight_norm, norm_pass_writes=bufs is not None)
    if p_bound is not None:
        # ‖W‖ is reduced once per step (one all-reduce per mesh group), as on the torch path
        if reduced_weight_norm is None:
            reduced_weight_norm = tr.reduce_norms(local_weight_norm.clone(), like)
        scale = _bound_scale(initial_norms, p_bound, reduced_weight_norm, tr.reduce_norms(new_local.clone(), like), True)
        _native.scale_(params, scale)
        new_local.mul_(scale)
    return new_local if return_weight_norm else None
