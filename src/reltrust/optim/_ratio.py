"""The per-tensor trust ratio: the one idea that Fromage, LARS and LAMB share.

For a list of tensors this module computes the Frobenius norm of every *whole logical* tensor in one
multi-tensor call, and turns pairs of norms into ratios with the zero-norm rule:

    ratio_i = κ·‖W_i‖ / (‖u_i‖ + λ·‖W_i‖ + ε),   1 where ‖W_i‖ = 0 or ‖u_i‖ = 0,
              and NaN where either norm is not finite

The zero-norm rule is for zero norms only: a NaN or inf anywhere in W_i or u_i makes the ratio NaN,
so the whole tensor's step is NaN (as a NaN gradient makes torch's optimisers' steps NaN) and the
training loop's divergence check sees it, instead of the other entries taking an unscaled step.

Fromage: κ=1, λ=0, ε=0, u=g.  LAMB: κ=1, λ=0 (u already holds λW), u=Adam direction.  LARS: κ=trust
coefficient, λ=weight decay, u=g.

DTensor (FSDP2) parameters: the norm is taken of the local shard, squared, and summed across the
mesh dimensions the tensor is sharded over by one all-reduce per (mesh, sharded dims) — a vector of N
floats for N tensors, never a gather of a parameter or gradient. Arithmetic elsewhere runs on the local
shards (`reltrust._dtensor.local`), which avoids DTensor ops without a sharding strategy (e.g. `aten._foreach_copy_`).

The ratios come back as one vector (N,) on the tensors' device; `.unbind()` gives the 0-dim tensors that
`torch._foreach_addcmul_` / `_foreach_mul_` take, so no value ever goes to the host.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from reltrust._dtensor import is_dtensor, local, reduce_norms, sharded_indices  # noqa: F401 (used via tr.*)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Norms and update arithmetic run in float32 for 16-bit tensors, in the tensor's dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def norms(
    tensors: Sequence[torch.Tensor],
    *,
    like: Sequence[torch.Tensor] | None = None,
    foreach: bool = True,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Frobenius norms of whole logical tensors, as one vector (N,).

    `tensors` may be DTensors or plain (local) tensors; `like`, when given, holds the tensors whose
    DTensor placements say how each entry of `tensors` is sharded (used when `tensors` are already
    local views or float32 work copies). Norms of 16-bit tensors are accumulated in float32, or in
    `dtype` when given.
    """
    if not tensors:
        raise ValueError("norms: empty tensor list")
    shards = [local(t) for t in tensors]
    dtype = dtype or compute_dtype(shards[0].dtype)
    if foreach:
        per_tensor = torch._foreach_norm(shards, 2, dtype=dtype)
    else:
        per_tensor = [torch.linalg.vector_norm(t, 2, dtype=dtype) for t in shards]
    return reduce_norms(torch.stack(per_tensor), like if like is not None else tensors)


def trust_ratio(
    weight_norm: torch.Tensor,
    update_norm: torch.Tensor,
    *,
    coefficient: float = 1.0,
    weight_decay: float = 0.0,
    eps: float = 0.0,
) -> torch.Tensor:
    """κ‖W‖ / (‖u‖ + λ‖W‖ + ε) elementwise, exactly 1 where ‖W‖ = 0 or ‖u‖ = 0, and NaN where
    ‖W‖ or ‖u‖ is NaN or inf (a non-finite norm must not become an unscaled step)."""
    denominator = update_norm + weight_decay * weight_norm + eps if (weight_decay or eps) else update_norm
    ratio = coefficient * weight_norm / denominator if coefficient != 1.0 else weight_norm / denominator
    ratio = torch.where((weight_norm == 0) | (update_norm == 0), 1.0, ratio)
    return torch.where(weight_norm.isfinite() & update_norm.isfinite(), ratio, math.nan)
