"""A training monitor: per step and layer, how far the optimiser moved each weight, relative to its size.

    monitor = TrustMonitor(optimizer, model, every=50)    # attaches step hooks
    for x, y in loader: ...; optimizer.step()              # recorded automatically
    monitor.detach(); monitor.to_csv("trust.csv")

For every optimiser step s and selected layer l (the pre-hook snapshots W_l, the post-hook measures):

    relative_update[s, l] = ‖W_l^after − W_l^before‖_F / ‖W_l^before‖_F
    update_norm[s, l]     = ‖W_l^after − W_l^before‖_F
    norm[s, l]            = ‖W_l^after‖_F            (norm_before: ‖W_l^before‖_F)

and after step 1 and every `every`-th step the top singular value σ_1 of each layer (as a matrix,
kernels reshaped to (out, in·k·k)): by default a few power iterations warm-started from the previous
right singular vector (an estimate from below that tightens as training moves slowly), or exactly
with ``spectral="exact"``, or not at all with ``every=0``.

Cost: only the selected layers are snapshotted; norms come from a few ``torch._foreach_norm`` calls
per step (in float32, or float64 for float64 parameters); per-step results stay tensors on the
parameters' device and are moved to the host `flush_every` steps at a time. ‖W‖ = 0 gives inf or
nan relative updates (IEEE division), which the exports keep. The monitor uses its own random
generator for power iteration, so it never changes the training's random stream.

Layers: the optimiser's parameters that count as layers under the rule of `reltrust.trust.distance`
(floating, ≥ 2-d unless `include_biases`, `include`/`exclude` regular expressions on the names).
Names come from `model.named_parameters()` when `model` is given, else from the optimiser's
``param_names`` (torch ≥ 2.6 with named parameters), else ``"group{g}.param{i}"``. Parameter groups
added after the monitor is attached are not monitored. Parameters on several devices are gathered
to the first one's device for bookkeeping.
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Any

import torch
from torch import nn

from reltrust.trust.distance import Patterns, _compile, _selected

_SPECTRAL = ("power", "exact")


class TrustMonitor:
    """Records relative updates, norms and top singular values of an optimiser's layers per step.

    Args:
        optimizer: any `torch.optim.Optimizer`; hooks are registered with
            ``register_step_pre_hook``/``register_step_post_hook`` at construction.
        model: optional module, used only to name the parameters.
        every: measure σ_1 after step 1 and every `every`-th step (``0`` turns it off; ≥ 0).
        spectral: ``"power"`` (warm-started power iteration) or ``"exact"`` (``matrix_norm(ord=2)``).
        power_iterations: iterations per measurement once warm (≥ 1); the first uses
            ``warmup_iterations`` (≥ 1) from a random start.
        include_biases, include, exclude: the layer selection (see module docstring).
        flush_every: how many steps of results to keep as device tensors before moving them to the
            host in one transfer (≥ 1).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model: nn.Module | None = None,
        *,
        every: int = 50,
        spectral: str = "power",
        power_iterations: int = 3,
        warmup_iterations: int = 30,
        include_biases: bool = False,
        include: Patterns = None,
        exclude: Patterns = None,
        flush_every: int = 256,
        seed: int = 0,
    ):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module or None, got {type(model).__name__}")
        for arg, value, low in (("every", every, 0), ("power_iterations", power_iterations, 1),
                                ("warmup_iterations", warmup_iterations, 1), ("flush_every", flush_every, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{arg} must be an integer >= {low}, got {value!r}")
        if spectral not in _SPECTRAL:
            raise ValueError(f"spectral must be one of {', '.join(map(repr, _SPECTRAL))}, got {spectral!r}")

        self.every, self.spectral = every, spectral
        self.power_iterations, self.warmup_iterations = power_iterations, warmup_iterations
        self.flush_every = flush_every

        names = {id(p): n for n, p in model.named_parameters()} if model is not None else {}
        inc, exc = _compile(include, "include"), _compile(exclude, "exclude")
        self._params: list[torch.Tensor] = []
        self.layers: list[str] = []
        seen = set()
        for g, group in enumerate(optimizer.param_groups):
            pnames = group.get("param_names")
            for i, p in enumerate(group["params"]):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                name = names.get(id(p)) or (pnames[i] if pnames else None) or f"group{g}.param{i}"
                if _selected(name, p, include_biases, inc, exc):
                    self._params.append(p)
                    self.layers.append(name)
        if not self._params:
            raise ValueError("no layers selected: the optimiser has no floating parameter matching the selection")
        self.shapes = [tuple(p.shape) for p in self._params]

        self._device = self._params[0].device
        self._one_device = all(p.device == self._device for p in self._params)
        wide = any(p.dtype == torch.float64 for p in self._params)
        self._norm_dtype = torch.float64 if wide else torch.float32
        self._snap = [torch.empty_like(p, memory_format=torch.preserve_format).detach() for p in self._params]
        self._gen = torch.Generator().manual_seed(seed)  # CPU; start vectors are moved to each layer
        self._vectors: list[torch.Tensor | None] = [None] * len(self._params)

        self._step = 0
        self._steps: list[int] = []
        self._pending: list[torch.Tensor] = []
        self._chunks: list[torch.Tensor] = []
        self._spectral_steps: list[int] = []
        self._spectral_pending: list[torch.Tensor] = []
        self._spectral_chunks: list[torch.Tensor] = []
        self._snapshotted = False
        self._handles = [optimizer.register_step_pre_hook(self._pre_hook),
                         optimizer.register_step_post_hook(self._post_hook)]

    # ------------------------------------------------------------------ hooks

    @torch.no_grad()
    def _pre_hook(self, optimizer, args, kwargs) -> None:
        torch._foreach_copy_(self._snap, self._params)
        self._snapshotted = True

    @torch.no_grad()
    def _post_hook(self, optimizer, args, kwargs) -> None:
        if not self._snapshotted:  # attached between a pre- and a post-hook: nothing to compare
            return
        self._snapshotted = False
        params = self._params
        before = torch._foreach_norm(self._snap, 2, dtype=self._norm_dtype)
        torch._foreach_sub_(self._snap, params)  # the snapshot now holds −ΔW
        delta = torch._foreach_norm(self._snap, 2, dtype=self._norm_dtype)
        after = torch._foreach_norm(params, 2, dtype=self._norm_dtype)
        row = before + delta + after
        if not self._one_device:
            row = [t.to(self._device) for t in row]
        self._step += 1
        self._steps.append(self._step)
        self._pending.append(torch.stack(row))
        if self.every and (self._step == 1 or self._step % self.every == 0):
            self._spectral_steps.append(self._step)
            self._spectral_pending.append(self._top_singular_values(params))
        if len(self._pending) >= self.flush_every:
            self._flush()

    def _top_singular_values(self, params: list[torch.Tensor]) -> torch.Tensor:
        out = []
        for i, p in enumerate(params):
            w = p.reshape(p.shape[0], -1)
            if w.dtype not in (torch.float32, torch.float64):
                w = w.float()
            if self.spectral == "exact":
                out.append(torch.linalg.matrix_norm(w, ord=2).to(self._device, self._norm_dtype))
                continue
            v = self._vectors[i]
            iters = self.power_iterations
            if v is None:
                v = torch.randn(w.shape[1], generator=self._gen, dtype=w.dtype).to(w.device)
                iters = self.warmup_iterations
            sigma = w.new_zeros(())
            for _ in range(iters):
                u = w @ v
                u = u / u.norm().clamp_min(torch.finfo(w.dtype).tiny)
                v = w.T @ u
                sigma = v.norm()  # = ‖Wᵀu‖ ≤ σ_1, and → σ_1 as v converges
                v = v / sigma.clamp_min(torch.finfo(w.dtype).tiny)
            self._vectors[i] = v
            out.append(sigma.to(self._device, self._norm_dtype))
        return torch.stack(out)

    def _flush(self) -> None:
        if self._pending:
            self._chunks.append(torch.stack(self._pending).to("cpu", torch.float64))
            self._pending = []
        if self._spectral_pending:
            self._spectral_chunks.append(torch.stack(self._spectral_pending).to("cpu", torch.float64))
            self._spectral_pending = []

    # ------------------------------------------------------------------ attach / detach

    def detach(self) -> None:
        """Remove the hooks (idempotent) and move pending results to the host."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._flush()

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> TrustMonitor:
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    def __len__(self) -> int:
        return len(self._steps)

    def __repr__(self) -> str:
        return f"TrustMonitor({len(self.layers)} layers, {len(self)} steps, every={self.every}, attached={self.attached})"

    # ------------------------------------------------------------------ results (CPU float64 tensors)

    def _table(self) -> torch.Tensor:
        self._flush()
        n = len(self.layers)
        if not self._chunks:
            return torch.zeros(0, 3, n, dtype=torch.float64)
        return torch.cat(self._chunks).view(-1, 3, n)

    @property
    def steps(self) -> list[int]:
        """The step numbers recorded (1 = first step seen by this monitor)."""
        return list(self._steps)

    @property
    def norm_before(self) -> torch.Tensor:
        """‖W_l‖ before each step, shape (steps, layers)."""
        return self._table()[:, 0]

    @property
    def update_norm(self) -> torch.Tensor:
        """‖ΔW_l‖ of each step, shape (steps, layers)."""
        return self._table()[:, 1]

    @property
    def norm(self) -> torch.Tensor:
        """‖W_l‖ after each step, shape (steps, layers)."""
        return self._table()[:, 2]

    @property
    def relative_update(self) -> torch.Tensor:
        """‖ΔW_l‖/‖W_l‖ of each step (‖W_l‖ before the step), shape (steps, layers)."""
        t = self._table()
        return t[:, 1] / t[:, 0]

    @property
    def spectral_steps(self) -> list[int]:
        """The steps at which σ_1 was measured."""
        return list(self._spectral_steps)

    @property
    def top_singular_value(self) -> torch.Tensor:
        """σ_1 of each layer after each step in `spectral_steps`, shape (measurements, layers)."""
        self._flush()
        if not self._spectral_chunks:
            return torch.zeros(0, len(self.layers), dtype=torch.float64)
        return torch.cat(self._spectral_chunks)

    # ------------------------------------------------------------------ exports

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per (step, layer): step, layer, norm, update_norm, relative_update,
        top_singular_value (None where not measured)."""
        t = self._table()
        rel = t[:, 1] / t[:, 0]
        sv = dict(zip(self._spectral_steps, self.top_singular_value.tolist()))
        rows = []
        for i, s in enumerate(self._steps):
            norms, deltas, rels = t[i, 2].tolist(), t[i, 1].tolist(), rel[i].tolist()
            sig = sv.get(s)
            for j, name in enumerate(self.layers):
                rows.append({"step": s, "layer": name, "norm": norms[j], "update_norm": deltas[j],
                             "relative_update": rels[j], "top_singular_value": None if sig is None else sig[j]})
        return rows

    def to_csv(self, path: str | os.PathLike) -> None:
        """Long-format CSV: step,layer,norm,update_norm,relative_update,top_singular_value."""
        fields = ["step", "layer", "norm", "update_norm", "relative_update", "top_singular_value"]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for row in self.to_records():
                w.writerow({k: ("" if v is None else (repr(v) if isinstance(v, float) else v)) for k, v in row.items()})

    def to_dict(self) -> dict[str, Any]:
        """Wide format: layers, shapes, steps, and (steps × layers) lists of every quantity."""
        t = self._table()

        def clean(x: torch.Tensor) -> list:  # JSON has no inf/nan: write them as None
            return [[v if math.isfinite(v) else None for v in row] for row in x.tolist()]

        return {
            "layers": list(self.layers),
            "shapes": [list(s) for s in self.shapes],
            "steps": self.steps,
            "norm_before": clean(t[:, 0]),
            "update_norm": clean(t[:, 1]),
            "norm": clean(t[:, 2]),
            "relative_update": clean(t[:, 1] / t[:, 0]),
            "spectral_steps": self.spectral_steps,
            "top_singular_value": clean(self.top_singular_value),
            "spectral_method": self.spectral if self.every else None,
        }

    def to_json(self, path: str | os.PathLike) -> None:
        """`to_dict()` as JSON (non-finite values written as null)."""
        with open(path, "w") as f:
            json.dump(self.to_dict(), f)

    def to_tensorboard(self, writer: Any, prefix: str = "trust") -> None:
        """Write scalars ``{prefix}/relative_update/{layer}``, ``…/norm/…``, ``…/top_singular_value/…``.

        `writer` is a SummaryWriter-like object (with ``add_scalar``) or a log directory, in which
        case `torch.utils.tensorboard.SummaryWriter` is used: that needs the optional `tensorboard`
        package and raises `ImportError` saying so when it is absent."""
        own = False
        if not hasattr(writer, "add_scalar"):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("to_tensorboard(log_dir) needs the optional 'tensorboard' package "
                                  "(pip install tensorboard), or pass a writer with add_scalar") from e
            writer, own = SummaryWriter(os.fspath(writer)), True
        t = self._table()
        rel = t[:, 1] / t[:, 0]
        for i, s in enumerate(self._steps):
            for j, name in enumerate(self.layers):
                writer.add_scalar(f"{prefix}/relative_update/{name}", float(rel[i, j]), s)
                writer.add_scalar(f"{prefix}/norm/{name}", float(t[i, 2, j]), s)
        sv = self.top_singular_value
        for i, s in enumerate(self._spectral_steps):
            for j, name in enumerate(self.layers):
                writer.add_scalar(f"{prefix}/top_singular_value/{name}", float(sv[i, j]), s)
        if own:
            writer.close()
