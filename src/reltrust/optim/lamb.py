"""LAMB: layer-wise adaptive moments for batch training (You et al., ICLR 2020; v5, bias-corrected)."""
from __future__ import annotations

from typing import Any

import torch

from reltrust.optim import _native
from reltrust.optim import _ratio as tr
from reltrust.optim._base import (
    Bucket, LayerwiseOptimizer, cache_blocks, check_float, check_lr, fused_choice, layer_ratios, native_split, ops,
    per_tensor, scalar_arg, state_zeros, step_state,
)

# Torch path on CPU: the Adam direction u is built for pieces of at most _base.CHUNK elements, BLOCK
# elements at a time, so each block's temporaries stay in cache however large a tensor is. A step
# whose u takes at most KEEP_BYTES keeps every block's u from the norm pass to the update; a larger
# one computes it twice (once for ‖u‖, once for the update) rather than allocate and page in a
# model-sized buffer. On other devices u is built once for all tensors (one multi-tensor kernel per
# op, as `cache_blocks` does there; transient memory like torch's foreach Adam's, two copies of the
# bucket).
KEEP_BYTES = 64 << 20


class LAMB(LayerwiseOptimizer):
    r"""LAMB: Adam's bias-corrected direction, scaled per tensor by a trust ratio.

    For each parameter tensor W with gradient g, at its step t (‖·‖: Frobenius norm of the whole
    tensor)::

        m ← β₁·m + (1−β₁)·g            v ← β₂·v + (1−β₂)·g²
        u ← (m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε) + λ·W
        r ← ‖W‖/‖u‖,  and r = 1 if ‖W‖ = 0 or ‖u‖ = 0,  r = NaN if either is NaN or inf
        W ← W − η·r·u

    Weight decay is inside u, before the ratio. A param group with ``trust_ratio=False`` uses r = 1
    (AdamW-like with coupled-into-u decay) — the usual treatment of biases and norm layers, whose
    group also has λ = 0 (see `reltrust.optim.param_groups`). A NaN or inf in W or g makes the
    tensor's whole step NaN, so that divergence is seen, as in `Fromage`. ``p.grad`` is never
    modified. Gradient clipping, if wanted, is a separate step before ``step()`` (``torch.nn.utils.clip_grad_norm_``).

    Args:
        lr: η ≥ 0, a number or a one-element tensor (see `Fromage`).   betas: (β₁, β₂), each in [0, 1).   eps: ε ≥ 0.   weight_decay: λ ≥ 0.
        foreach, maximize: as in torch.optim.
        fused: the native CPU kernels: None (default) where they apply and ``foreach`` is not set,
            True required, False never (see `reltrust.optim.Fromage`). Pass 1 updates m and v and
            takes the norms of W and u; pass 2 updates W (40 bytes per float32 element). For
            tensors or groups that fit in cache, pass 2 reads W from cache and takes u from a
            group-sized buffer (28 bytes from memory, like Adam); otherwise it recomputes u.

    DTensor parameters: one all-reduce each for the squared norms of W and of u.
    """

    STATE_KEYS = (frozenset({"step", "exp_avg", "exp_avg_sq"}),)

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        fused: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, eps=eps, weight_decay=weight_decay,
            foreach=foreach, maximize=maximize, fused=fused,
        )
        super().__init__(params, defaults)

    @staticmethod
    def _check_hyperparameters(group: dict[str, Any]) -> None:
        check_lr(group["lr"])
        betas = group["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"Invalid betas: {betas!r}; expected a pair (beta1, beta2)")
        check_float("betas[0]", betas[0], 0.0, 1.0)
        check_float("betas[1]", betas[1], 0.0, 1.0)
        check_float("eps", group["eps"], 0.0)
        check_float("weight_decay", group["weight_decay"], 0.0)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # a step count saved as a plain number (older or hand-edited checkpoints) becomes the 0-dim
        # tensor counter the step adds to, as torch's Adam converts it
        for p, s in self.state.items():
            if "step" in s and not torch.is_tensor(s["step"]):
                s["step"] = step_state(p, s["step"])

    def _init_state(self, group: dict[str, Any], p: torch.Tensor, state: dict[str, Any]) -> None:
        if "step" not in state:
            state["step"] = step_state(p)
            state["exp_avg"] = state_zeros(p)
            state["exp_avg_sq"] = state_zeros(p)

    def _update(self, group: dict[str, Any], b: Bucket, foreach: bool) -> None:
        beta1, beta2 = map(float, group["betas"])  # any real number type (check_float) as Python floats
        lamb_update(
            b.params,
            b.grads,
            b.state_list("exp_avg"),
            b.state_list("exp_avg_sq"),
            [s["step"] for s in b.states],
            lr=scalar_arg(group["lr"], b.params[0]),  # a Python float, or a 0-dim tensor (no host read)
            beta1=beta1,
            beta2=beta2,
            eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]),
            trust_ratio=group["trust_ratio"],
            maximize=group["maximize"],
            foreach=foreach,
            like=b.like,
            fused=fused_choice(group),
        )


def _direction(params, exp_avgs, exp_avg_sqs, bias1, bias2_sqrt, *, eps, weight_decay, maximize, foreach):
    """u = (m/bc₁)/(√v/√bc₂ + ε) (± for maximize) + λW, as new tensors (one block's worth)."""
    if foreach:
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, bias2_sqrt)
        torch._foreach_add_(denom, eps)
        torch._foreach_mul_(denom, bias1)
        u = torch._foreach_div(exp_avgs, denom)
        if maximize:
            torch._foreach_neg_(u)
        if weight_decay:
            torch._foreach_add_(u, params, alpha=weight_decay)
        return u
    u = []
    for p, m, v, b1, b2 in zip(params, exp_avgs, exp_avg_sqs, bias1, bias2_sqrt):
        d = v.sqrt().div_(b2).add_(eps).mul_(b1)
        d = torch.div(m, d)
        if maximize:
            d.neg_()
        if weight_decay:
            d.add_(p, alpha=weight_decay)
        u.append(d)
    return u


def lamb_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    steps: list[torch.Tensor],
    *,
    lr: float | torch.Tensor,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    trust_ratio: bool = True,
    maximize: bool = False,
    foreach: bool = True,
    like: list[torch.Tensor] | None = None,
    fused: bool | None = None,
) -> None:
    """Functional LAMB step over same-device, same-dtype tensors (see `LAMB` for the rule). `fused`:
    as in `LAMB` (None: native kernels for the tensors they take, the torch path for the others);
    `lr`: as in `fromage_update`."""
    like = like if like is not None else params
    mine, rest = native_split(fused, [params, grads, exp_avgs, exp_avg_sqs, steps, like], params, grads, exp_avgs,
                              exp_avg_sqs)
    if mine is not None:
        _lamb_native(*mine[:5], like=mine[5], lr=float(lr), beta1=beta1, beta2=beta2, eps=eps,
                     weight_decay=weight_decay, trust_ratio=trust_ratio, maximize=maximize)
        if rest is None:
            return
    params, grads, exp_avgs, exp_avg_sqs, steps, like = rest
    if foreach:
        torch._foreach_add_(steps, 1.0)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    else:
        for s, v, g in zip(steps, exp_avg_sqs, grads):
            s.add_(1.0)
            v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
    ops.lerp_(exp_avgs, grads, 1.0 - beta1, foreach)

    t = torch.stack(steps).to(device=params[0].device, dtype=params[0].dtype)
    bias1 = 1.0 - torch.pow(beta1, t)
    bias2_sqrt = (1.0 - torch.pow(beta2, t)).sqrt_()
    # (tensor index, [W, m, v] piece) per block: cache-sized blocks on CPU, one block elsewhere
    blocks = [list(zip(idx, map(list, zip(*lists)))) for idx, lists in
              cache_blocks([params, exp_avgs, exp_avg_sqs], foreach=True)]
    pieces = [piece for block in blocks for piece in block]
    owner = torch.tensor([i for i, _ in pieces], device=t.device)
    piece_bias1 = per_tensor(bias1.index_select(0, owner))
    piece_bias2 = per_tensor(bias2_sqrt.index_select(0, owner))

    def directions(block_start: int, block):
        n = len(block)
        return _direction(
            [v[0] for _, v in block], [v[1] for _, v in block], [v[2] for _, v in block],
            piece_bias1[block_start : block_start + n], piece_bias2[block_start : block_start + n],
            eps=eps, weight_decay=weight_decay, maximize=maximize, foreach=foreach,
        )

    starts = [0]
    for block in blocks[:-1]:
        starts.append(starts[-1] + len(block))
    keep = len(blocks) == 1 or sum(map(torch.Tensor.numel, params)) * params[0].element_size() <= KEEP_BYTES
    kept = []
    if trust_ratio:
        # ‖u‖² per tensor = Σ over its pieces of ‖u_piece‖²
        piece_sq = []
        for start, block in zip(starts, blocks):
            u = directions(start, block)
            piece_norms = torch._foreach_norm(u, 2) if foreach else [torch.linalg.vector_norm(x) for x in u]
            piece_sq.append(torch.stack(piece_norms).square_())
            if keep:
                kept.append(u)
        update_sq = torch.zeros_like(t).index_add_(0, owner, torch.cat(piece_sq))
        update_norm = tr.reduce_norms(update_sq.sqrt_(), like)
    else:
        update_norm = None
    coef = layer_ratios(params, update_norm, like, foreach, trust_ratio)[2].mul_(-lr)
    piece_coef = per_tensor(coef.index_select(0, owner))
    for j, (start, block) in enumerate(zip(starts, blocks)):
        u = kept[j] if kept else directions(start, block)
        ops.addcmul_([v[0] for _, v in block], u, piece_coef[start : start + len(block)], foreach)


def _lamb_native(params, grads, exp_avgs, exp_avg_sqs, steps, *, lr, beta1, beta2, eps, weight_decay, trust_ratio,
                 maximize, like) -> None:
    """The same step on the native kernels (`_native.layerwise_step`): the norm pass updates m and v
    and takes ‖W‖ and ‖u‖, the update pass W ← W + r·(−η)·u, with u kept from the norm pass where the
    tensor or its group fits in cache (28 bytes per element from memory), else recomputed from m and
    v (40 bytes)."""
    t = _native.count_steps(steps)
    if t is None:
        torch._foreach_add_(steps, 1.0)
        t = torch.stack(steps).to(device=params[0].device, dtype=torch.float32)
    bias1 = 1.0 - torch.pow(beta1, t)
    bias2_sqrt = (1.0 - torch.pow(beta2, t)).sqrt_()
    kernel = _native.Kernel(
        "lamb", [params, grads, exp_avgs, exp_avg_sqs],
        [bias1.contiguous(), bias2_sqrt.contiguous(), 1.0 - beta1, beta2, 1.0 - beta2, eps, weight_decay, int(maximize),
         -lr], [params, exp_avgs, exp_avg_sqs])
    _native.layerwise_step(kernel, like, trust_ratio=trust_ratio, bytes_per_element=16, group_bytes_per_element=8,
                           norm_pass_writes=True)
