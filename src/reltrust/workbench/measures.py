"""Measurements at a fixed point of a model, for the practice study (the classification task's probes).

- `gradient_variance`: how far a minibatch gradient is from the full-batch gradient, E‖g_B − g‖², for
  several batch sizes |B|, two ways:
  - *measured*: the mean over `draws` minibatches B drawn without replacement (each a real backward
    pass of the minibatch's mean loss);
  - *exact*: from the per-example gradients g_i (`torch.func`), for B drawn uniformly without
    replacement from n examples, E‖g_B − g‖² = tr Σ / |B| · (n − |B|)/(n − 1), where
    tr Σ = (1/n) Σ_i ‖g_i − g‖² is the trace of the per-example gradients' covariance (the
    finite-population correction (n − |B|)/(n − 1) makes it 0 at |B| = n).
- `activation_variances`: the variance (over a batch and the units) of every Linear layer's output,
  the pre-activations, in eval mode.

Both leave the model, its gradients and its mode as they were.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn


def _flat_grad(model: nn.Module, params: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])


def gradient_variance(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    batch_sizes: Sequence[int],
    draws: int,
    generator: torch.Generator,
    chunk: int = 256,
) -> dict[str, Any]:
    """E‖g_B − g‖² measured over `draws` minibatches per batch size and exactly (see the module doc).
    `loss_fn(out, y)` is the mean loss of a batch. Returns ``batch_sizes``, ``measured``, ``exact``,
    ``trace_sigma``, ``grad_norm2`` (‖g‖²) and ``n``."""
    n = len(x)
    sizes = [int(b) for b in batch_sizes]
    if not sizes or any(b < 1 or b > n for b in sizes):
        raise ValueError(f"batch_sizes must be ints in [1, {n}] (the number of examples), got {list(batch_sizes)}")
    if int(draws) < 1:
        raise ValueError(f"draws must be an int >= 1, got {draws}")
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    saved = [None if p.grad is None else p.grad.clone() for p in params]
    model.eval()
    try:
        def grad_of(idx: torch.Tensor | None) -> torch.Tensor:
            for p in params:
                p.grad = None
            xb, yb = (x, y) if idx is None else (x[idx], y[idx])
            loss_fn(model(xb), yb).backward()
            return _flat_grad(model, params)

        g = grad_of(None)
        measured = []
        for b in sizes:
            total = 0.0
            for _ in range(int(draws)):
                idx = torch.randperm(n, generator=generator)[:b].to(x.device)
                total += float(((grad_of(idx) - g) ** 2).sum())
            measured.append(total / int(draws))

        # per-example gradients: tr Σ = mean_i ‖g_i‖² − ‖g‖²
        names = [name for name, p in model.named_parameters() if p.requires_grad]
        frozen = {k: v.detach() for k, v in model.named_parameters() if not v.requires_grad}
        buffers = dict(model.named_buffers())

        def one_loss(theta: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            out = torch.func.functional_call(model, {**theta, **frozen, **buffers}, (xi[None],))
            return loss_fn(out, yi[None])

        per_example = torch.func.vmap(torch.func.grad(one_loss), in_dims=(None, 0, 0))
        theta = {k: p.detach() for k, p in zip(names, params)}
        sq = 0.0
        for i in range(0, n, chunk):
            grads = per_example(theta, x[i : i + chunk], y[i : i + chunk])
            sq += float(sum((gk.reshape(gk.shape[0], -1) ** 2).sum() for gk in grads.values()))
        g2 = float((g**2).sum())
        trace_sigma = max(sq / n - g2, 0.0)
        exact = [trace_sigma / b * (n - b) / (n - 1) if n > 1 else 0.0 for b in sizes]
    finally:
        for p, s in zip(params, saved):
            p.grad = s
        model.train(was_training)
    return {"batch_sizes": sizes, "measured": measured, "exact": exact, "trace_sigma": trace_sigma,
            "grad_norm2": g2, "n": n}


@torch.no_grad()
def activation_variances(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """``pre_var``: the variance of every `nn.Linear`'s output on `x` (in module order), ``pre_std``
    its square root, ``input_var`` the variance of `x`; computed in eval mode."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    seen: list[float] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(float(out.double().var()))) for m in layers]
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {"pre_var": seen, "pre_std": [v**0.5 for v in seen], "input_var": float(x.double().var())}
