"""What the three layerwise optimisers share around their update rule.

`LayerwiseOptimizer.step` does the bookkeeping every torch optimiser does — closure, skipping
parameters without a gradient, refusing sparse gradients, grouping tensors by device and dtype — and
hands each bucket to the subclass's `_update` as *local* tensors (DTensor shards) in the dtype the
arithmetic runs in: 16-bit parameters and gradients get float32 work copies that are written back
after the update (so norms and arithmetic are float32), optimiser state of 16-bit parameters is
float32 from the start.

`ops` runs an elementwise op over a list either as one multi-tensor (`torch._foreach_*`) call or as a
per-tensor loop. Both paths run the same arithmetic on the same operands, so they agree exactly.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from reltrust.optim.trust_ratio import compute_dtype, local


class ops:
    """Elementwise in-place list ops: `foreach=True` → one `torch._foreach_*` call, else a loop."""

    @staticmethod
    def addcmul_(out, t1, scalars, foreach: bool) -> None:
        """out_i += t1_i · scalars_i  (scalars_i: 0-dim tensors)."""
        if foreach:
            torch._foreach_addcmul_(out, t1, scalars)
        else:
            for o, a, s in zip(out, t1, scalars):
                o.addcmul_(a, s)

    @staticmethod
    def mul_(out, scalars, foreach: bool) -> None:
        """out_i *= scalars_i (a list of 0-dim tensors) or *= scalars (one Python number)."""
        if foreach:
            torch._foreach_mul_(out, scalars)
        elif isinstance(scalars, (list, tuple)):
            for o, s in zip(out, scalars):
                o.mul_(s)
        else:
            for o in out:
                o.mul_(scalars)

    @staticmethod
    def add_(out, other, alpha: float, foreach: bool) -> None:
        """out_i += alpha · other_i."""
        if foreach:
            torch._foreach_add_(out, other, alpha=alpha)
        else:
            for o, a in zip(out, other):
                o.add_(a, alpha=alpha)

    @staticmethod
    def lerp_(out, end, weight: float, foreach: bool) -> None:
        """out_i += weight · (end_i − out_i)."""
        if foreach:
            torch._foreach_lerp_(out, end, weight)
        else:
            for o, e in zip(out, end):
                o.lerp_(e, weight)

    @staticmethod
    def copy_(out, src, foreach: bool) -> None:
        if foreach:
            torch._foreach_copy_(out, src)
        else:
            for o, s in zip(out, src):
                o.copy_(s)


def check_float(name: str, value: Any, low: float, high: float | None = None, *, low_open=False, high_open=True) -> None:
    """Raise ValueError naming `name` unless low ≤ value ≤ high (brackets per the *_open flags)."""
    if isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a Python float, not a Tensor")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if ok:
        ok = (value > low) if low_open else (value >= low)
        if ok and high is not None:
            ok = (value < high) if high_open else (value <= high)
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if (high is None or high_open) else "]"
        raise ValueError(f"Invalid {name}: {value!r}; allowed range {lo}{low}, {'inf' if high is None else high}{hi}")


class LayerwiseOptimizer(torch.optim.Optimizer):
    """Base class: subclasses define `_init_state(group, p, state)` and `_update(group, bucket, foreach)`."""

    def __init__(self, params, defaults: dict[str, Any]) -> None:
        defaults.setdefault("trust_ratio", True)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.is_complex():
                    raise ValueError(
                        f"{type(self).__name__} does not support complex parameters (its trust ratio is "
                        "defined for real tensors); pass torch.view_as_real(p) views instead"
                    )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    def _init_state(self, group: dict[str, Any], p: torch.Tensor, state: dict[str, Any]) -> None:  # pragma: no cover
        raise NotImplementedError

    def _update(self, group: dict[str, Any], bucket: "Bucket", foreach: bool) -> None:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        name = type(self).__name__
        for group in self.param_groups:
            check_float("lr", group["lr"], 0.0)
            foreach = group.get("foreach")
            foreach = True if foreach is None else bool(foreach)
            buckets: dict[tuple, Bucket] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{name} does not support sparse gradients")
                state = self.state[p]
                self._init_state(group, p, state)  # adds what this group's settings need and is missing
                key = (p.device, compute_dtype(p.dtype))
                buckets.setdefault(key, Bucket()).add(p, state)
            for bucket in buckets.values():
                bucket.run(lambda b: self._update(group, b, foreach), foreach)
        return loss


class Bucket:
    """Same-device, same-compute-dtype tensors of one param group, as local (shard) tensors.

    `params`/`grads` are what the update rule reads and writes: the local shards themselves, or
    float32 copies for 16-bit tensors that `run` writes back. `like` keeps the original parameters,
    whose DTensor placements tell `trust_ratio.norms` what to reduce. `states` are the per-parameter
    state dicts, whose tensors the update reads through `local`.
    """

    def __init__(self) -> None:
        self.like: list[torch.Tensor] = []
        self.params: list[torch.Tensor] = []
        self.grads: list[torch.Tensor] = []
        self.states: list[dict[str, Any]] = []
        self._writeback: list[tuple[torch.Tensor, torch.Tensor]] = []

    def add(self, p: torch.Tensor, state: dict[str, Any]) -> None:
        p_local, g_local = local(p), local(p.grad)
        work = compute_dtype(p.dtype)
        if p_local.dtype != work:
            p_work = p_local.to(work)
            self._writeback.append((p_local, p_work))
            p_local, g_local = p_work, g_local.to(work)
        self.like.append(p)
        self.params.append(p_local)
        self.grads.append(g_local)
        self.states.append(state)

    def state_list(self, key: str) -> list[torch.Tensor]:
        return [local(s[key]) for s in self.states]

    def run(self, update: Callable[["Bucket"], None], foreach: bool) -> None:
        update(self)
        if self._writeback:
            ops.copy_([d for d, _ in self._writeback], [s for _, s in self._writeback], foreach)


def state_zeros(p: torch.Tensor) -> torch.Tensor:
    """A zero state tensor like `p` (a DTensor for a DTensor `p`), float32 for 16-bit parameters."""
    return torch.zeros_like(p, dtype=compute_dtype(p.dtype), memory_format=torch.preserve_format)


def scalar_state(p: torch.Tensor, value: float) -> torch.Tensor:
    """A 0-dim state tensor in `p`'s compute dtype on its device (a plain tensor even for DTensor `p`)."""
    return torch.full((), value, dtype=compute_dtype(p.dtype), device=local(p).device)


def per_tensor(vector: torch.Tensor) -> Sequence[torch.Tensor]:
    """A (N,) vector as N 0-dim tensors (views), the form `torch._foreach_*` scalar lists take."""
    return vector.unbind(0)
