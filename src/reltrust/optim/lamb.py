"""LAMB: layer-wise adaptive moments for batch training (You et al., ICLR 2020; v5, bias-corrected)."""
from __future__ import annotations

from typing import Any

import torch

from reltrust.optim import trust_ratio as tr
from reltrust.optim._base import Bucket, LayerwiseOptimizer, check_float, ops, per_tensor, scalar_state, state_zeros

# The Adam direction u is never materialised for a whole model at once: it is built for pieces of at
# most CHUNK elements, BLOCK elements at a time, so the temporaries stay small (and in cache) however
# large a tensor is. A step whose direction fits in one block computes it once; otherwise twice (once
# for ‖u‖, once for the update) — cheaper on a CPU than allocating and paging in a model-sized buffer.
CHUNK = 1 << 19
BLOCK = 1 << 21


class LAMB(LayerwiseOptimizer):
    r"""LAMB: Adam's bias-corrected direction, scaled per tensor by a trust ratio.

    For each parameter tensor W with gradient g, at its step t (‖·‖: Frobenius norm of the whole
    tensor)::

        m ← β₁·m + (1−β₁)·g            v ← β₂·v + (1−β₂)·g²
        u ← (m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε) + λ·W
        r ← ‖W‖/‖u‖,  and r = 1 if ‖W‖ = 0 or ‖u‖ = 0
        W ← W − η·r·u

    Weight decay is inside u, before the ratio. A param group with ``trust_ratio=False`` uses r = 1
    (AdamW-like with coupled-into-u decay) — the usual treatment of biases and norm layers, whose
    group also has λ = 0 (see `reltrust.optim.param_groups`). ``p.grad`` is never modified. Gradient
    clipping, if wanted, is a separate step before ``step()`` (``torch.nn.utils.clip_grad_norm_``).

    Args:
        lr: η ≥ 0.   betas: (β₁, β₂), each in [0, 1).   eps: ε ≥ 0.   weight_decay: λ ≥ 0.
        foreach, maximize: as in torch.optim.

    DTensor parameters: one all-reduce each for the squared norms of W and of u.
    """

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
    ) -> None:
        check_float("lr", lr, 0.0)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"Invalid betas: {betas!r}; expected a pair (beta1, beta2)")
        check_float("betas[0]", betas[0], 0.0, 1.0)
        check_float("betas[1]", betas[1], 0.0, 1.0)
        check_float("eps", eps, 0.0)
        check_float("weight_decay", weight_decay, 0.0)
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, foreach=foreach, maximize=maximize
        )
        super().__init__(params, defaults)

    def _init_state(self, group: dict[str, Any], p: torch.Tensor, state: dict[str, Any]) -> None:
        if "step" not in state:
            state["step"] = scalar_state(p, 0.0)
            state["exp_avg"] = state_zeros(p)
            state["exp_avg_sq"] = state_zeros(p)

    def _update(self, group: dict[str, Any], b: Bucket, foreach: bool) -> None:
        beta1, beta2 = group["betas"]
        lamb_update(
            b.params,
            b.grads,
            b.state_list("exp_avg"),
            b.state_list("exp_avg_sq"),
            [s["step"] for s in b.states],
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            trust_ratio=group["trust_ratio"],
            maximize=group["maximize"],
            foreach=foreach,
            like=b.like,
        )


def _pieces(tensor_lists: list[list[torch.Tensor]]) -> list[tuple[int, list[torch.Tensor]]]:
    """Split tensor i of every list into aligned flat pieces of ≤ CHUNK elements: (i, [views…]).

    Tensors that are not all contiguous stay whole (elementwise ops handle their strides)."""
    pieces = []
    for i, group in enumerate(zip(*tensor_lists)):
        n = group[0].numel()
        if n <= CHUNK or not all(t.is_contiguous() for t in group):
            pieces.append((i, list(group)))
            continue
        flat = [t.view(-1) for t in group]
        for start in range(0, n, CHUNK):
            pieces.append((i, [f[start : start + CHUNK] for f in flat]))
    return pieces


def _blocks(pieces):
    """Consecutive runs of pieces holding about BLOCK elements each."""
    block, size = [], 0
    for piece in pieces:
        block.append(piece)
        size += piece[1][0].numel()
        if size >= BLOCK:
            yield block
            block, size = [], 0
    if block:
        yield block


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
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    trust_ratio: bool = True,
    maximize: bool = False,
    foreach: bool = True,
    like: list[torch.Tensor] | None = None,
) -> None:
    """Functional LAMB step over same-device, same-dtype tensors (see `LAMB` for the rule)."""
    like = like if like is not None else params
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
    pieces = _pieces([params, exp_avgs, exp_avg_sqs])
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

    blocks = list(_blocks(pieces))
    starts = [0]
    for block in blocks[:-1]:
        starts.append(starts[-1] + len(block))
    cached = None
    if trust_ratio:
        # ‖u‖² per tensor = Σ over its pieces of ‖u_piece‖²
        piece_sq = []
        for start, block in zip(starts, blocks):
            u = directions(start, block)
            piece_norms = torch._foreach_norm(u, 2) if foreach else [torch.linalg.vector_norm(x) for x in u]
            piece_sq.append(torch.stack(piece_norms).square_())
            if len(blocks) == 1:
                cached = u
        update_sq = torch.zeros_like(t).index_add_(0, owner, torch.cat(piece_sq))
        update_norm = tr.reduce_norms(update_sq.sqrt_(), like)
        ratio = tr.trust_ratio(tr.norms(params, like=like, foreach=foreach), update_norm)
        coef = ratio.mul_(-lr)
    else:
        coef = torch.full_like(t, -lr)
    piece_coef = per_tensor(coef.index_select(0, owner))
    for start, block in zip(starts, blocks):
        u = cached if cached is not None else directions(start, block)
        ops.addcmul_([v[0] for _, v in block], u, piece_coef[start : start + len(block)], foreach)
