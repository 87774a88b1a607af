"""Nero: per-neuron relative steps on a balanced unit sphere (Liu, Bernstein, Meister, Yue, "Learning by
turning: neural architecture aware optimisation", ICML 2021), written from the paper's formulas as
restated in shared/design/algorithms.md (never from the authors' code, whose licence is non-commercial).

A *neuron* is one row of a weight: a tensor with ≥ 2 dims is seen as (out, −1), so a convolution's
neuron is one output channel; each entry of a 1-D tensor (a bias, a gain) is its own neuron, and a 0-dim
tensor is one neuron of one entry.

DTensor (FSDP2, tensor parallel) parameters: every per-neuron statistic is of the row of the whole
logical tensor. A row split across ranks (a placement Shard(d) with d ≥ 1) has its partial sums — Σg²,
Σw, Σ(w−mean)² — summed by one all-reduce per mesh dimension that splits rows, over a vector of one
float per local row of all such tensors of a bucket; rows whole on every rank (FSDP2's Shard(0)) need
none. σ, a mean over all rows of a tensor, sums the local row norms across the mesh dimensions that
shard dim 0 (once, at a tensor's first step). A DTensor is never gathered.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist

from reltrust.optim._base import Bucket, LayerwiseOptimizer, check_float, check_flag, check_lr, scalar_arg, scalar_state
from reltrust._dtensor import is_dtensor, local, shards

#: σ where the mean neuron norm at the first step is 0 (zero-initialised biases), as in the paper
ZERO_SCALE = 0.01


class Nero(LayerwiseOptimizer):
    r"""Nero: every neuron turns by the same relative amount η per step, its weights kept balanced
    (zero mean) and on the unit sphere.

    For each parameter tensor W seen as rows w_i (neurons) with gradient rows g_i, at its step t = 1, 2, …::

        at t = 1, if W has ≥ 2 dims (and constraints):  w_i ← w_i − mean(w_i);  w_i ← w_i / ‖w_i‖
        at t = 1:  σ ← mean over the neurons of ‖w_i‖, or 0.01 if that is 0       (state "scale")
        v_i ← β·v_i + (1−β)·‖g_i‖²                       (v starts at 0; state "exp_avg_sq", one per neuron)
        w_i ← w_i − η · σ · g_i / √(v_i / (1−βᵗ))       (w_i unchanged where v_i = 0)
        if W has ≥ 2 dims (and constraints):  w_i ← w_i − mean(w_i);  w_i ← w_i / ‖w_i‖

    So ‖Δw_i‖ ≈ η·σ once v_i tracks ‖g_i‖² (exactly η·σ at t = 1): with σ = 1 for a projected weight,
    every neuron moves by the angle ≈ η, whatever its gradient's scale, and the projections keep each
    neuron's norm at 1 and its mean at 0, so no weight decay is needed. A 1-D tensor is not projected;
    its entries move by ≈ η·σ, σ being their mean magnitude at the first step (0.01 for a zero bias).

    A row whose projection is zero (a constant or all-zero row) stays zero rather than be divided by
    0; σ counts it as norm 0. A NaN or inf in a neuron's gradient makes that neuron's step NaN (a NaN in
    a weight, its row and, at the first step, σ and so the whole tensor), so divergence is seen.

    Args:
        params: iterable of parameters or param groups.
        lr: η, the relative step per neuron, ≥ 0; 0.01 by default (the paper's default). A number or a
            one-element tensor, as in torch's optimisers.
        beta: β in [0, 1), the averaging constant of the per-neuron squared gradient norm; 0.999.
        constraints: project every tensor with ≥ 2 dims back to zero-mean, unit-norm rows (True, the
            paper's rule); a group with ``constraints=False`` takes the same per-neuron steps (σ its
            mean row norm at its first step) without the projections, e.g. for an embedding or an
            output layer that should keep its scale.
        foreach: multi-tensor ``torch._foreach_*`` kernels (True) or a per-tensor loop (False); both
            give the same result.
        maximize: ascend instead of descend.
        fused: None or False; Nero has no native kernels (True is refused).

    The key ``trust_ratio`` that `reltrust.optim.param_groups` puts in groups is accepted and has no
    effect (Nero's per-neuron normalisation applies to every tensor). The step count is a Python int
    per parameter (``state["step"]``), so a step never reads a tensor back from the device; σ is a 0-dim
    tensor (``state["scale"]``). Parameters without a gradient are left untouched; sparse gradients
    and complex parameters raise an error. State of 16-bit parameters and all arithmetic on them are
    float32, rounded to the parameter once per step.
    """

    STATE_KEYS = (frozenset({"step", "exp_avg_sq", "scale"}),)

    def __init__(
        self,
        params,
        lr: float = 0.01,
        beta: float = 0.999,
        constraints: bool = True,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        fused: bool | None = None,
    ) -> None:
        defaults = dict(lr=lr, beta=beta, constraints=constraints, foreach=foreach, maximize=maximize, fused=fused)
        super().__init__(params, defaults)

    @staticmethod
    def _check_hyperparameters(group: dict[str, Any]) -> None:
        check_lr(group["lr"])
        check_float("beta", group["beta"], 0.0, 1.0)
        check_flag("constraints", group["constraints"])
        if group.get("fused") is True:
            raise ValueError("Invalid fused: True; Nero has no native kernels, expected None or False")

    def _check_params(self, params: list[Any]) -> None:
        for p in params:
            if isinstance(p, torch.Tensor) and p.is_complex():
                raise ValueError(f"Nero does not support complex parameters ({p.dtype}); its neurons are rows of real weights")
        super()._check_params(params)

    def _init_state(self, group: dict[str, Any], p: torch.Tensor, state: dict[str, Any]) -> None:
        if "step" not in state:
            state["step"] = 0
            state["exp_avg_sq"] = _row_state(p)
            state["scale"] = scalar_state(p, float("nan"))  # NaN: "not recorded yet"

    def _update(self, group: dict[str, Any], b: Bucket, foreach: bool) -> None:
        steps = [s["step"] + 1 for s in b.states]
        for s, t in zip(b.states, steps):
            s["step"] = t
        nero_update(
            b.params,
            b.grads,
            b.state_list("exp_avg_sq"),
            b.state_list("scale"),
            steps,
            lr=scalar_arg(group["lr"], b.params[0]),
            beta=float(group["beta"]),
            constraints=group["constraints"],
            maximize=group["maximize"],
            foreach=foreach,
            like=b.like,
        )


def _row_state(p: torch.Tensor) -> torch.Tensor:
    """Zeros, one per neuron of `p` (shape p.shape[:1]), in p's compute dtype; for a DTensor `p` a
    DTensor whose rows are placed as p's (Shard on dim 0 kept, any other placement Replicate)."""
    from reltrust.optim._ratio import compute_dtype

    shape = tuple(p.shape[:1])
    dtype = compute_dtype(p.dtype)
    if not is_dtensor(p):
        return torch.zeros(shape, dtype=dtype, device=p.device)
    from torch.distributed.tensor import DTensor, Replicate

    mine = local(p)
    placements = [pl if (pl.is_shard() and pl.dim == 0) else Replicate() for pl in p.placements]
    zeros = torch.zeros(tuple(mine.shape[:1]), dtype=dtype, device=mine.device)
    return DTensor.from_local(zeros, p.device_mesh, placements, run_check=False, shape=shape,
                              stride=(1,) * len(shape))


def _rows(t: torch.Tensor) -> torch.Tensor:
    """`t` as (neurons, entries): (out, −1) for ≥ 2 dims, (n, 1) for 1-D, (1, 1) for 0-dim. A view
    (the update writes through it); `nero_update` makes non-contiguous tensors contiguous first."""
    if t.ndim == 0:
        return t.view(1, 1)
    return t.view(t.shape[0], math.prod(t.shape[1:]))  # not -1: an empty shard has 0 rows


def _mesh_dims(like: torch.Tensor, rows_split: bool) -> list[int]:
    """Mesh dimensions of a DTensor over which its rows are split (rows_split: a Shard(d), d ≥ 1, of a
    ≥ 2-dim tensor: partial row sums to add up) or over which its neurons are spread (Shard(0))."""
    if not is_dtensor(like):
        return []
    return [d for d, placement in shards(like, "Nero takes per-neuron norms of whole tensors")
            if (placement.dim >= 1) == rows_split and (like.ndim >= 2 or not rows_split)]


def _all_reduce(vectors: list[torch.Tensor], like: list[torch.Tensor], rows_split: bool) -> list[torch.Tensor]:
    """Sum each vector across the mesh dimensions named by `_mesh_dims(like[i], rows_split)`: one
    all-reduce per (mesh, mesh dim) over the concatenation of the vectors that need it. In place."""
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(like):
        for d in _mesh_dims(t, rows_split):
            groups.setdefault((t.device_mesh, d), []).append(i)
    for (mesh, d), idx in groups.items():
        flat = torch.cat([vectors[i].reshape(-1) for i in idx])
        dist.all_reduce(flat, group=mesh.get_group(d))
        for i, part in zip(idx, flat.split([vectors[i].numel() for i in idx])):
            vectors[i].copy_(part.view_as(vectors[i]))
    return vectors


def _row_sums(rows: list[torch.Tensor], like: list[torch.Tensor], square: bool) -> list[torch.Tensor]:
    """Σ_j x_ij (or Σ_j x_ij²) of every row of the whole logical tensors, as (neurons,) vectors."""
    sums = [(r * r if square else r).sum(dim=1) for r in rows]
    return _all_reduce(sums, like, rows_split=True)


def _project(rows: list[torch.Tensor], like: list[torch.Tensor], foreach: bool) -> list[torch.Tensor]:
    """w_i ← w_i − mean(w_i); w_i ← w_i / ‖w_i‖ in place (a zero row stays zero); returns the norms
    ‖w_i‖ after the projection (1, or 0 for a zero row; NaN for a row with a NaN or inf)."""
    columns = [t.numel() // max(t.shape[0], 1) if t.ndim else 1 for t in like]
    means = [(s / c).unsqueeze(1) for s, c in zip(_row_sums(rows, like, square=False), columns)]
    if foreach:
        torch._foreach_sub_(rows, means)
    else:
        for r, m in zip(rows, means):
            r.sub_(m)
    norms = [s.sqrt() for s in _row_sums(rows, like, square=True)]
    divisors = [torch.where(n == 0, torch.ones_like(n), n).unsqueeze(1) for n in norms]
    if foreach:
        torch._foreach_div_(rows, divisors)
    else:
        for r, q in zip(rows, divisors):
            r.div_(q)
    return [n / q.squeeze(1) for n, q in zip(norms, divisors)]  # 1 (x/x), 0 for a zero row, NaN stays NaN


def _scale(norms: list[torch.Tensor], like: list[torch.Tensor]) -> list[torch.Tensor]:
    """σ of each tensor: the mean of its neurons' norms over the whole logical tensor, ZERO_SCALE where 0."""
    totals = _all_reduce([n.sum().reshape(1) for n in norms], like, rows_split=False)
    means = [total / max(t.shape[0] if t.ndim else 1, 1) for total, t in zip(totals, like)]
    return [torch.where(m == 0, torch.full_like(m, ZERO_SCALE), m).reshape(()) for m in means]


def nero_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    scales: list[torch.Tensor],
    steps: list[int],
    *,
    lr: float | torch.Tensor,
    beta: float = 0.999,
    constraints: bool = True,
    maximize: bool = False,
    foreach: bool = True,
    like: list[torch.Tensor] | None = None,
) -> None:
    """Functional Nero step over same-device, same-dtype (local) tensors (see `Nero` for the rule).

    `steps`: each tensor's step number t ≥ 1 of this step (Python ints; t = 1 projects the tensor and
    records σ in `scales`, 0-dim tensors). `exp_avg_sqs`: per-neuron v, shape p.shape[:1]. `like`: the
    original parameters, whose DTensor placements say which row sums to all-reduce. No host
    synchronisation; `grads` are not modified.
    """
    like = like if like is not None else params
    work = [p if p.is_contiguous() else p.contiguous() for p in params]
    rows = [_rows(p) for p in work]
    g_rows = [_rows(g if g.is_contiguous() else g.contiguous()) for g in grads]
    v = [s.view(-1) for s in exp_avg_sqs]
    projected = [constraints and t.ndim >= 2 for t in like]

    first = [i for i, t in enumerate(steps) if t == 1]
    if first:
        sub_like = [like[i] for i in first]
        norms = [None] * len(first)
        proj = [k for k, i in enumerate(first) if projected[i]]
        if proj:
            got = _project([rows[first[k]] for k in proj], [sub_like[k] for k in proj], foreach)
            for k, n in zip(proj, got):
                norms[k] = n
        rest = [k for k in range(len(first)) if norms[k] is None]
        if rest:
            got = _row_sums([rows[first[k]] for k in rest], [sub_like[k] for k in rest], square=True)
            for k, s in zip(rest, got):
                norms[k] = s.sqrt()
        for i, sigma in zip(first, _scale(norms, sub_like)):
            scales[i].copy_(sigma)

    # v_i ← β·v_i + (1−β)·‖g_i‖²
    squares = _row_sums(g_rows, like, square=True)
    if foreach:
        torch._foreach_lerp_(v, squares, 1.0 - beta)
    else:
        for a, s in zip(v, squares):
            a.lerp_(s, 1.0 - beta)
    # coefficient of g_i: ∓η·σ / √(v_i / (1−βᵗ)), 0 where v_i = 0
    corrections = [1.0 - beta**t for t in steps]
    if foreach:
        denominators = torch._foreach_div(v, corrections)
        torch._foreach_sqrt_(denominators)
    else:
        denominators = [(a / c).sqrt_() for a, c in zip(v, corrections)]
    signed = lr if maximize else -lr
    coefs = [
        torch.where(a == 0, torch.zeros_like(a), (signed * s) / d).unsqueeze(1)
        for a, s, d in zip(v, scales, denominators)
    ]
    if foreach:
        torch._foreach_addcmul_(rows, g_rows, coefs)
    else:
        for r, g, c in zip(rows, g_rows, coefs):
            r.addcmul_(g, c)

    proj = [i for i in range(len(rows)) if projected[i]]
    if proj:
        _project([rows[i] for i in proj], [like[i] for i in proj], foreach)
    for p, w in zip(params, work):
        if w is not p:
            p.copy_(w)
