"""What the three layerwise optimisers share around their update rule.

`LayerwiseOptimizer.step` does the bookkeeping every torch optimiser does — closure, skipping
parameters without a gradient, refusing sparse gradients, grouping tensors by device and dtype — and
hands each bucket to the subclass's `_update` as *local* tensors (DTensor shards) in the dtype the
arithmetic runs in: 16-bit parameters and gradients get float32 work copies that are written back
after the update (so norms and arithmetic are float32), optimiser state of 16-bit parameters is
float32 from the start.

`ops` runs an elementwise op over a list either as one multi-tensor (`torch._foreach_*`) call or as a
per-tensor loop. Both paths run the same arithmetic on the same operands, so they agree exactly.

A third implementation, the native CPU kernels of `reltrust.optim._native`, is chosen per tensor by
each update function from the group's `fused` setting (`fused_choice`, `_native.route`): by default it
runs wherever it applies (contiguous CPU tensors computed in float32), the bucket's other tensors
taking the torch path in the same step, unless the group names `foreach` explicitly.
"""
from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.optim.optimizer import _get_scalar_dtype

from reltrust.optim import _native
from reltrust.optim import _ratio as tr
from reltrust._dtensor import local
from reltrust.optim._ratio import compute_dtype


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


# On CPU the torch path runs a sequence of elementwise ops block by block (`cache_blocks`): pieces of
# at most CHUNK elements, BLOCK elements at a time, so each block's operands and temporaries stay in
# cache however large a tensor is.
CHUNK = 1 << 19
BLOCK = 1 << 21


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



def cache_blocks(lists: Sequence[Sequence[torch.Tensor]], foreach: bool):
    """Aligned sub-lists (with the tensor index of each entry) on which to run a sequence of
    elementwise in-place ops so that each op after the first finds its operands in cache: one
    tensor at a time (foreach=False); on CPU, blocks of about `BLOCK` elements, tensors larger
    than `CHUNK` cut into flat pieces; on other devices the whole lists at once (one
    multi-tensor kernel per op). Yields (indices, [sub-list per list]). Elementwise the arithmetic
    is the same however the lists are cut."""
    if not foreach:
        for i, group in enumerate(zip(*lists)):
            yield [i], [[t] for t in group]
        return
    if lists[0][0].device.type != "cpu":
        yield list(range(len(lists[0]))), [list(ts) for ts in lists]
        return
    for block in _blocks(_pieces([list(ts) for ts in lists])):
        yield [i for i, _ in block], [[views[j] for _, views in block] for j in range(len(lists))]


def fused_choice(group: dict[str, Any]) -> bool | None:
    """The `fused` argument a group's update passes on: the native kernels where they apply (None),
    required (True) or never (False). A group that names `foreach` explicitly asks for that torch path."""
    fused = group.get("fused")
    if fused is None and group.get("foreach") is not None:
        return False
    return fused


def native_split(fused: bool | None, lists: list, *checked: Sequence[torch.Tensor] | None) -> tuple[list | None, list | None]:
    """(the aligned `lists` restricted to the tensors the native kernels take, the lists of the others),
    None for a side without tensors; `checked`: the lists whose tensors the kernels must take (see
    `_native.route`). Every functional update dispatches through this: the kernels' share first, the
    rest on the torch path in the same step."""
    native = _native.route(fused, *checked)
    if native is None:
        return None, lists
    if len(native) == len(lists[0]):
        return lists, None
    return _native.partition(native, *lists)


def layer_ratios(params, direction, like, foreach: bool, trust_ratio: bool, *, coefficient: float = 1.0,
                 weight_decay: float = 0.0, eps: float = 0.0):
    """(‖W‖, ‖u‖, trust ratio) per tensor on the torch path, as (N,) vectors in the parameters' compute
    dtype; `direction`: the tensors u, or their norms already taken. Without a trust ratio no norm is
    taken: (None, None, ones)."""
    if not trust_ratio:
        return None, None, torch.ones(len(params), dtype=params[0].dtype, device=params[0].device)
    weight_norm = tr.norms(params, like=like, foreach=foreach)
    if not isinstance(direction, torch.Tensor):
        direction = tr.norms(direction, like=like, foreach=foreach)
    ratio = tr.trust_ratio(weight_norm, direction, coefficient=coefficient, weight_decay=weight_decay, eps=eps)
    return weight_norm, direction, ratio


#: The public names the weight-norm cache's keywords of the functional updates had before they were private.
_CACHE_KEYWORDS = ("weight_norm", "return_weight_norm")


def weight_norm_cache(fn: str, weight_norm: torch.Tensor | None, return_weight_norm: bool,
                      deprecated: dict[str, Any]) -> tuple[torch.Tensor | None, bool]:
    """(known local ‖W‖ or None, whether to return the new ones): the private keywords
    `_weight_norm`, `_return_weight_norm` an optimiser's step passes to its functional update
    (`Bucket.norm_cache_args`), or the public names they had before (`weight_norm=`,
    `return_weight_norm=`: still taken, with a DeprecationWarning). Any other keyword is a
    TypeError, as Python's own."""
    for key, value in deprecated.items():
        if key not in _CACHE_KEYWORDS:
            raise TypeError(f"{fn}() got an unexpected keyword argument {key!r}")
        warnings.warn(f"{fn}: {key}= is the optimisers' internal weight-norm cache (use the optimiser's "
                      "cache_weight_norm=True); it will be removed", DeprecationWarning, stacklevel=3)
        if key == "weight_norm":
            weight_norm = value
        else:
            return_weight_norm = value
    return weight_norm, bool(return_weight_norm)


def check_float(name: str, value: Any, low: float, high: float | None = None, *, low_open=False, high_open=True,
                shown: Any = None) -> None:
    """Raise ValueError naming `name` unless `value` is a finite real number (int, float, a NumPy
    scalar: any `numbers.Real` but bool) with low ≤ value ≤ high (brackets per the *_open flags).
    `shown`: what the message names as the value, if not `value` itself."""
    ok = type(value) is float  # the common case first: it runs on every group at every step
    if not ok:
        if isinstance(value, torch.Tensor):
            raise ValueError(f"{name} must be a real number (float, int or NumPy scalar), not a Tensor")
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    if ok:
        ok = (value > low) if low_open else (value >= low)
        if ok and high is not None:
            ok = (value < high) if high_open else (value <= high)
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if (high is None or high_open) else "]"
        shown = value if shown is None else shown
        raise ValueError(f"Invalid {name}: {shown!r}; allowed range {lo}{low}, {'inf' if high is None else high}{hi}")


def check_lr(value: Any, high: float | None = None) -> None:
    """`check_float("lr", …)`, but a learning rate may also be a one-element real floating tensor, as
    in torch's optimisers (a compiled step then follows its changes without recompiling). Its value is
    range-checked where reading it costs no device synchronisation (a CPU tensor); on an accelerator
    only its shape and dtype are."""
    if not isinstance(value, torch.Tensor):
        check_float("lr", value, 0.0, high)
        return
    if value.numel() != 1 or not value.is_floating_point():
        raise ValueError(
            f"Invalid lr: a Tensor lr must be a one-element real floating tensor; got shape "
            f"{tuple(value.shape)}, dtype {value.dtype}"
        )
    if value.device.type == "cpu":
        check_float("lr", float(value), 0.0, high, shown=value)


def scalar_arg(value: float | torch.Tensor, ref: torch.Tensor) -> float | torch.Tensor:
    """A hyperparameter for the torch path: a number as a Python float, a one-element tensor as a
    0-dim tensor in `ref`'s dtype on its device (no host read)."""
    if isinstance(value, torch.Tensor):
        return value.detach().reshape(()).to(device=ref.device, dtype=ref.dtype)
    return float(value)


def check_flag(name: str, value: Any, *, none: bool = False) -> None:
    """Raise ValueError naming `name` unless `value` is True or False (or None, where `none`)."""
    if value is True or value is False or (none and value is None):
        return
    raise ValueError(f"Invalid {name}: {value!r}; expected {'None, True or False' if none else 'True or False'}")


#: Param-group keys a saved state may hold that this optimiser's groups need not have: torch's
#: bookkeeping and what torch's LR schedulers add to groups.
TORCH_GROUP_KEYS = frozenset({
    "foreach", "maximize", "differentiable", "capturable", "fused", "param_names",
    "initial_lr", "max_lr", "min_lr", "base_momentum", "max_momentum", "swa_lr",
})
#: Switches a state saved before they existed may lack; the defaults fill them in (`__setstate__`).
SWITCHES = frozenset({"foreach", "maximize", "fused", "trust_ratio", "cache_weight_norm", "trust_budget"})


class LayerwiseOptimizer(torch.optim.Optimizer):
    """Base class: subclasses define `_check_hyperparameters(group)`, `_init_state(group, p, state)`,
    `_update(group, bucket, foreach)` and `STATE_KEYS`, the sets of per-parameter state entries
    `_init_state` creates together.

    Hyperparameters are validated by one function per optimiser (`_check_group`) wherever a step
    could meet them: the defaults and every group at construction, a group given to
    `add_param_group`, and every group at the start of each `step` (values set later in
    `param_groups`, e.g. by hand; Python scalars only, no tensor is read), with the same messages.
    """

    STATE_KEYS: tuple[frozenset[str], ...] = ()

    def __init__(self, params, defaults: dict[str, Any]) -> None:
        defaults.setdefault("trust_ratio", True)
        defaults.setdefault("fused", None)
        self._check_group(defaults)
        super().__init__(params, defaults)

    @staticmethod
    def _check_hyperparameters(group: dict[str, Any]) -> None:  # pragma: no cover
        raise NotImplementedError

    def _check_group(self, group: dict[str, Any]) -> None:
        """ValueError naming the first invalid setting of a param group (or of the defaults): the
        optimiser's own hyperparameters, then the switches all three have."""
        self._check_hyperparameters(group)
        check_flag("maximize", group["maximize"])
        check_flag("trust_ratio", group["trust_ratio"])
        check_flag("cache_weight_norm", group.get("cache_weight_norm", False))
        check_flag("foreach", group["foreach"], none=True)
        check_flag("fused", group["fused"], none=True)
        if group["fused"] and group["foreach"]:
            raise ValueError("fused=True and foreach=True cannot both be set; pick one implementation")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As torch's (which also runs it for every group at construction), but refuses what a step
        would get wrong: invalid hyperparameters (`_check_group`), complex parameters, and a
        parameter listed twice — in the group (torch only warns; the native, foreach and per-tensor
        paths would each update it differently) or already in another group. Complex parameters
        (complex64, complex128) are updated as their real views, as torch's optimisers do; their
        Frobenius norms are the same either way."""
        if isinstance(param_group, dict) and "params" in param_group:
            params = param_group["params"]
            if not isinstance(params, (torch.Tensor, set)):
                param_group["params"] = params = list(params)  # an iterator is read once; torch lists it too
                self._check_params([p[1] if isinstance(p, tuple) else p for p in params])
            elif isinstance(params, torch.Tensor):
                self._check_params([params])
            self._check_group({**self.defaults, **param_group})
        super().add_param_group(param_group)

    def _check_params(self, params: list[Any]) -> None:
        """ValueError for a complex32 parameter or one already listed, in the group being added
        (number len(self.param_groups)) or in an earlier one."""
        name, new = type(self).__name__, len(self.param_groups)
        listed = {id(p): (k, i) for k, group in enumerate(self.param_groups) for i, p in enumerate(group["params"])}
        for i, p in enumerate(params):
            if not isinstance(p, torch.Tensor):
                continue  # torch's add_param_group refuses it
            if p.is_complex() and p.dtype not in _REAL:
                raise ValueError(
                    f"{name} does not support {p.dtype} parameters (complex64 and complex128 are "
                    "updated as their real views, torch.view_as_real(p))"
                )
            k, j = listed.setdefault(id(p), (new, i))
            if (k, j) == (new, i):
                continue
            where = "earlier in the same group" if k == new else f"in param group {k}"
            raise ValueError(
                f"{name}: parameter {i} of param group {new} (shape {tuple(p.shape)}) is already listed "
                f"{where} (as parameter {j}); list each parameter once, in one group"
            )

    def __setstate__(self, state: dict[str, Any]) -> None:
        # torch's __setstate__ (also run by load_state_dict) adds "differentiable" to the defaults,
        # which the loop below would copy into every group: a reloaded optimiser would no longer
        # serialise as it did. These optimisers have no differentiable mode; keep the key out.
        defaults = state.get("defaults", self.__dict__.get("defaults", {}))
        torch_adds = "differentiable" not in defaults
        super().__setstate__(state)
        if torch_adds:
            self.defaults.pop("differentiable", None)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's, but refuses another optimiser's state (`_check_loaded`), and state of 16-bit
        parameters stays float32 (torch casts it to the param dtype).

        Keys of ``state_dict["state"]`` may be indices or, from
        `torch.distributed.checkpoint.state_dict.set_state_dict`, parameter names; either way they
        follow the order of ``state_dict["param_groups"]``, which torch pairs with this optimiser's.
        """
        self._check_loaded(state_dict)
        self.__dict__.pop("_weight_norm_cache", None)  # see _norm_cache_get
        saved = state_dict["state"]
        keys = [k for g in state_dict["param_groups"] for k in g["params"]]
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for key, p in zip(keys, params):
            work = compute_dtype(p.dtype)
            if work == p.dtype or key not in saved:
                continue
            state = self.state[p]
            for name, value in saved[key].items():
                if torch.is_tensor(value) and value.is_floating_point() and name in state:
                    state[name] = value.to(device=state[name].device, dtype=work)

    def _check_loaded(self, state_dict: dict[str, Any]) -> None:
        """ValueError naming what differs unless `state_dict` is this optimiser's kind of state
        (torch's load would take any optimiser's and replace the hyperparameters with its own).

        Each saved param group must hold this optimiser's hyperparameters (the `SWITCHES` may be
        missing: older states lack some) and no other key but torch's (`TORCH_GROUP_KEYS`) and those
        the group here has (a user's own keys); each parameter's state only this optimiser's
        entries, each set in `STATE_KEYS` whole or not at all.
        """
        name = type(self).__name__

        def differ(where: str, extra: set[str], missing: set[str]) -> None:
            if extra or missing:
                parts = [f"has keys {sorted(extra)} that {name} does not use"] if extra else []
                parts += [f"missing {sorted(missing)}"] if missing else []
                raise ValueError(f"{name}.load_state_dict: {where} {'; '.join(parts)} (another optimiser's state?)")

        required = set(self.defaults) - SWITCHES
        for i, (group, saved) in enumerate(zip(self.param_groups, state_dict["param_groups"])):
            differ(f"param group {i}", set(saved) - set(group) - TORCH_GROUP_KEYS, required - set(saved))
        known = set().union(*self.STATE_KEYS)
        for key, saved in state_dict["state"].items():
            present = set(saved)
            differ(f"state of parameter {key!r}", present - known,
                   set().union(*(keys - present for keys in self.STATE_KEYS if keys & present)))

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
            self._check_group(group)  # all groups before any update
        for group in self.param_groups:
            foreach = group.get("foreach")
            foreach = True if foreach is None else bool(foreach)
            buckets: dict[tuple, Bucket] = {}
            init_state, states = self._init_state, self.state
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise RuntimeError(f"{name} does not support sparse gradients")
                state = states[p]
                init_state(group, p, state)  # adds what this group's settings need and is missing
                key = (p.device, p.dtype)  # buckets of one compute dtype are merged below
                bucket = buckets.get(key)
                if bucket is None:
                    bucket = buckets[key] = Bucket()
                bucket.add(p, grad, state)
            if len(buckets) > 1:
                buckets = Bucket.merge(buckets)
            caching = bool(group.get("cache_weight_norm"))
            for key, bucket in buckets.items():
                if caching and not bucket._writeback:
                    bucket.want_weight_norm = True
                    bucket.weight_norm_in = self._norm_cache_get(group, key, bucket)
                bucket.run(lambda b: self._update(group, b, foreach), foreach)
                if bucket.want_weight_norm:
                    self._norm_cache_put(group, key, bucket)
        return loss

    # The weight-norm cache (option cache_weight_norm): per (param group, bucket), the local norms
    # of the weights as the last update pass left them, valid while every weight of the bucket has
    # the same identity, storage and version counter as then. Not part of state_dict; dropped by
    # pickling/deepcopy (torch.optim.Optimizer.__getstate__) and by load_state_dict (above).

    @staticmethod
    def _norm_signature(bucket: "Bucket") -> tuple:
        return tuple((id(p), t.data_ptr(), t._version) for p, t in zip(bucket.like, bucket.params))

    def _norm_cache_get(self, group: dict[str, Any], key: tuple, bucket: "Bucket") -> torch.Tensor | None:
        cache = self.__dict__.get("_weight_norm_cache")
        hit = cache.get((id(group), key)) if cache else None
        if hit is None or hit[0] != self._norm_signature(bucket):
            return None
        return hit[1]

    def _norm_cache_put(self, group: dict[str, Any], key: tuple, bucket: "Bucket") -> None:
        cache = self.__dict__.setdefault("_weight_norm_cache", {})
        if bucket.weight_norm_out is None:
            cache.pop((id(group), key), None)
        else:
            cache[(id(group), key)] = (self._norm_signature(bucket), bucket.weight_norm_out)


class Bucket:
    """Same-device, same-compute-dtype tensors of one param group, as local (shard) tensors.

    `params`/`grads` are what the update rule reads and writes: the local shards themselves, or
    float32 copies for 16-bit tensors that `run` writes back. `like` keeps the original parameters,
    whose DTensor placements tell `_ratio.norms` what to reduce. `states` are the per-parameter
    state dicts, whose tensors the update reads through `local`.
    """

    def __init__(self) -> None:
        self.like: list[torch.Tensor] = []
        self.params: list[torch.Tensor] = []
        self.grads: list[torch.Tensor] = []
        self.states: list[dict[str, Any]] = []
        self._writeback: list[tuple[torch.Tensor, torch.Tensor]] = []
        # the weight-norm cache (LayerwiseOptimizer.step): local norms of `params` known from the
        # previous step, whether the update should return the new ones, and what it returned
        self.weight_norm_in: torch.Tensor | None = None
        self.want_weight_norm = False
        self.weight_norm_out: torch.Tensor | None = None

    @staticmethod
    def merge(buckets: dict[tuple, "Bucket"]) -> dict[tuple, "Bucket"]:
        """Buckets keyed by (device, dtype) → by (device, compute dtype), in first-seen order."""
        merged: dict[tuple, Bucket] = {}
        for (device, dtype), b in buckets.items():
            key = (device, compute_dtype(dtype))
            if key not in merged:
                merged[key] = b
                continue
            into = merged[key]
            for name in ("like", "params", "grads", "states", "_writeback"):
                getattr(into, name).extend(getattr(b, name))
        return merged

    def add(self, p: torch.Tensor, grad: torch.Tensor, state: dict[str, Any]) -> None:
        p_local, g_local = local(p), local(grad)
        if p_local.is_complex():  # as torch's optimisers do: the real view (same Frobenius norm)
            p_local, g_local = torch.view_as_real(p_local), torch.view_as_real(g_local)
        work = compute_dtype(p_local.dtype)
        if p_local.dtype != work:
            p_work = p_local.to(work)
            self._writeback.append((p_local, p_work))
            p_local, g_local = p_work, g_local.to(work)
        self.like.append(p)
        self.params.append(p_local)
        self.grads.append(g_local)
        self.states.append(state)

    def state_list(self, key: str) -> list[torch.Tensor]:
        """The local state tensors `key` of the bucket's parameters (real views of complex ones)."""
        out = [local(s[key]) for s in self.states]
        return [torch.view_as_real(t) if t.is_complex() else t for t in out]

    def norm_cache_args(self) -> dict[str, Any]:
        """The weight-norm cache's private keywords of the functional updates (`weight_norm_cache`)."""
        return {"_weight_norm": self.weight_norm_in, "_return_weight_norm": self.want_weight_norm}

    def run(self, update: Callable[["Bucket"], None], foreach: bool) -> None:
        update(self)
        if self._writeback:
            ops.copy_([d for d, _ in self._writeback], [s for _, s in self._writeback], foreach)


_REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64}


def state_zeros(p: torch.Tensor) -> torch.Tensor:
    """A zero state tensor like `p` (a DTensor for a DTensor `p`), float32 for 16-bit parameters
    (complex for complex ones, as in torch's optimisers, and updated through its real view);
    on a CPU, a large one in huge pages (`_native.advise_huge_pages`), advised before it is zeroed."""
    dtype = p.dtype if p.is_complex() else compute_dtype(p.dtype)  # complex state is viewed as real
    x = torch.empty_like(p, dtype=dtype, memory_format=torch.preserve_format)
    _native.advise_huge_pages(local(x))
    return x.zero_()


def scalar_state(p: torch.Tensor, value: float) -> torch.Tensor:
    """A 0-dim real state tensor in `p`'s compute dtype on its device (a plain tensor even for
    DTensor `p`; float32/float64 for complex64/complex128 `p`)."""
    dtype = _REAL.get(p.dtype, p.dtype)
    return torch.full((), value, dtype=compute_dtype(dtype), device=local(p).device)


def step_state(p: torch.Tensor, value: float = 0.0) -> torch.Tensor:
    """A 0-dim step counter on `p`'s device in torch's dtype for step counters (float32, as in
    torch's Adam, whatever the parameters' dtype; float64 where torch's default dtype is)."""
    return torch.full((), float(value), dtype=_get_scalar_dtype(), device=local(p).device)


def per_tensor(vector: torch.Tensor) -> Sequence[torch.Tensor]:
    """A (N,) vector as N 0-dim tensors (views), the form `torch._foreach_*` scalar lists take."""
    return vector.unbind(0)
