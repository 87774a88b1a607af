"""A training monitor: per step and layer, how far the optimiser moved each weight, relative to its size.

    monitor = TrustMonitor(optimizer, model, every=50)    # attaches step hooks
    for x, y in loader: ...; optimizer.step()              # recorded automatically
    monitor.detach(); monitor.to_csv("trust.csv")

For every optimiser step s and selected layer l (the pre-hook snapshots W_l, the post-hook measures):

    relative_update[s, l] = ‖W_l^after − W_l^before‖_F / ‖W_l^before‖_F
    update_norm[s, l]     = ‖W_l^after − W_l^before‖_F
    norm[s, l]            = ‖W_l^before‖_F            (the weight norm at the start of step s)

and after step 1 and every `every`-th step the top singular value σ_1 of each layer (as a matrix,
kernels reshaped to (out, in·k·k)): by default with a few steps of Golub-Kahan-Lanczos
bidiagonalisation warm-started from the previous right singular vector (a Ritz value, so an
estimate from below; relative error against the exact SVD with the default 8 steps, measured along
MLP training runs every 10 or 50 steps: median 1e-8 to 1e-6, worst 5e-3, and far better than power
iteration when the top singular values are close, as they are at random initialisation), or exactly
with ``spectral="exact"``, or not at all with ``every=0``.

Opt-in, ``update_spectral=True`` (nothing is computed when off): at the same spectral steps, the top
singular value of the step's *update* ΔW = W_after − W_before (not of the weights) and σ_1 of W_before,
giving the relative spectral change

    relative_spectral_update[m, l] = ‖ΔW_l‖_2 / ‖W_l^before‖_2

(`spectral` chooses exact SVDs or warm-started Lanczos as for σ_1). Always available, from the
Frobenius trace: the deep relative trust of every step, Π_l (1 + relative_update[s, l]) − 1
(`deep_relative_trust`).

Cost per step: a snapshot of the selected layers before the step and ‖W‖ of it, ‖W_after − snapshot‖
after it. For contiguous float32 CPU layers on the native kernels (`reltrust.optim._native`) these
are fused passes — copy-and-norm, then difference-norm without writing the difference (about 4
bytes read or written per element and pass fewer than the multi-tensor ops), one call each; and with
``reuse_snapshot`` (the default) a single pass per step, in the post-hook, which reads the new
weights and the snapshot once each and takes ‖ΔW‖, the next step's snapshot and its ‖W‖ (written
straight into the next step's row of results), so that the pre-hook only compares the weights'
version counters: on the 784-256-256-10 MLP of `benchmarks/monitor_overhead.py` (batch 128, one
thread) the whole monitor, σ_1 every 50 steps included, adds 3–4 % to a 7 ms training step.
Elsewhere a multi-tensor copy, one subtraction and two ``torch._foreach_norm`` calls (float32, or
float64 for float64 parameters). σ_1 of a contiguous float32 CPU matrix is one native call
(`rt_lanczos`, the bidiagonalisation in float64); other matrices run it in torch. No host
transfer: the results are written into a buffer on the parameters' device and moved to the host
`flush_every` steps at a time (and when read). ‖W‖ = 0 gives inf or nan relative updates (IEEE
division), which CSV keeps and JSON writes as null; a layer with a NaN or inf entry gives σ_1 = NaN.
The monitor never draws from the global random generator (its Lanczos start
vectors come from a private one), so it does not change the training's random stream.

Layers: the optimiser's parameters that count as layers under the rule of `reltrust.trust.distance`
(floating, ≥ 2-d unless `include_biases`, `include`/`exclude` regular expressions on the names).
Names come from `model.named_parameters()` when `model` is given, else from the optimiser's
``param_names`` (torch ≥ 2.6 with named parameters), else ``"group{g}.param{i}"``. Parameter groups
added after the monitor is attached are not monitored. Parameters on several devices are gathered
to the first one's device for bookkeeping.

FSDP2 (DTensor) parameters: the snapshot holds each rank's local shards and the shard norms are
combined per layer with one all-reduce per norm vector (`reltrust.optim.norms`), so every rank
records the norms of the whole tensors. σ_1 needs whole matrices: at the spectral steps each layer
is gathered (``full_tensor()``) once; use ``every=0`` to avoid that communication.
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from reltrust.optim import _native
from reltrust._dtensor import full, is_dtensor, local
from reltrust.optim._ratio import norms
from reltrust.trust.distance import Patterns, _compile, _selected

_SPECTRAL = ("lanczos", "exact")


class TrustMonitor:
    """Records relative updates, norms and top singular values of an optimiser's layers per step.

    Args:
        optimizer: any `torch.optim.Optimizer`; hooks are registered with
            ``register_step_pre_hook``/``register_step_post_hook`` at construction.
        model: optional module, used only to name the parameters.
        every: measure σ_1 after step 1 and every `every`-th step (``0`` turns it off; ≥ 0).
        spectral: ``"lanczos"`` (`lanczos_steps` Golub-Kahan-Lanczos steps per measurement,
            warm-started; 4× as many at the first one, from a fixed pseudo-random vector) or
            ``"exact"`` (``torch.linalg.matrix_norm(ord=2)``, a full SVD: slow for big layers).
        lanczos_steps: Krylov dimension of a warm-started measurement (≥ 1).
        include_biases, include, exclude: the layer selection (see module docstring).
        flush_every: how many steps of results to keep as device tensors before moving them to the
            host in one transfer (≥ 1).
        update_spectral: also measure ‖ΔW‖_2 and σ_1 of W before the step at the spectral steps
            (`relative_spectral_update`); needs ``every`` ≥ 1 and whole (non-DTensor) tensors.
        reuse_snapshot: on the fused native path, the post-hook also takes the next step's snapshot
            and ‖W‖ in the same pass as ‖ΔW‖ (while the weights the step just wrote are in cache),
            and the next pre-hook uses them when the weights' version counters show that nothing
            wrote to them in between; otherwise it snapshots as usual. The numbers are the same bits
            either way. Writes that bypass the version counter (through ``p.data``, ``.numpy()``,
            DLPack) between two steps go unseen and count towards the next step's ΔW: pass False
            where weights are written that way.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model: nn.Module | None = None,
        *,
        every: int = 50,
        spectral: str = "lanczos",
        lanczos_steps: int = 8,
        include_biases: bool = False,
        include: Patterns = None,
        exclude: Patterns = None,
        flush_every: int = 256,
        update_spectral: bool = False,
        reuse_snapshot: bool = True,
    ):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module or None, got {type(model).__name__}")
        for arg, value, low in (("every", every, 0), ("lanczos_steps", lanczos_steps, 1),
                                ("flush_every", flush_every, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{arg} must be an integer >= {low}, got {value!r}")
        if not isinstance(reuse_snapshot, bool):
            raise TypeError(f"reuse_snapshot must be True or False, got {reuse_snapshot!r}")
        if spectral not in _SPECTRAL:
            raise ValueError(f"spectral must be one of {', '.join(map(repr, _SPECTRAL))}, got {spectral!r}")

        self.every, self.spectral = every, spectral
        self.lanczos_steps = lanczos_steps
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
        self._locals = [local(p).detach() for p in self._params]  # DTensor: this rank's shard (a view)
        self._snap = [torch.empty_like(t, memory_format=torch.preserve_format) for t in self._locals]
        self._vectors: list[torch.Tensor | None] = [None] * len(self._params)
        self._gen = torch.Generator().manual_seed(0)  # private: start vectors never touch the global RNG
        # the native kernels' fused passes where they apply: one device, plain float32 CPU tensors
        self._fused = (self._device.type == "cpu" and self._one_device and not any(map(is_dtensor, self._params))
                       and _native.supported(self._locals) and _native.available())
        # per step a row (‖W‖ before, ‖ΔW‖) of this buffer, moved to the host when full; one row
        # more, for the next step's ‖W‖ when the post-hook writes it ahead and the buffer is full
        n = len(self._params)
        self._buf = torch.empty(flush_every + 1, 2, n, dtype=self._norm_dtype, device=self._device)
        self._snapped = False  # the pre-hook ran and its step's post-hook has not
        # fused path: the post-hook refreshes the snapshot for the next step and writes its ‖W‖ into
        # the next row; the pre-hook keeps them when the weights' version counters say nothing wrote
        # to them in between. The kernel call is prepared once and writes by address into _buf.
        self._reuse = reuse_snapshot and self._fused
        self._versions: list[int] | None = None  # the weights' version counters when the snapshot was refreshed
        if self._reuse:
            self._refresh = _native.refresher(self._locals, self._snap)
            self._row_bytes = 2 * n * self._buf.element_size()

        self._step = 0
        self._steps: list[int] = []
        self._pending = 0  # rows of _buf filled
        self._chunks: list[torch.Tensor] = []
        self._spectral_steps: list[int] = []
        self._spectral_pending: list[torch.Tensor] = []
        self._spectral_chunks: list[torch.Tensor] = []
        self._optimizer = optimizer
        self._handles: list = []
        self._init_update_spectral(update_spectral)
        self.attach()

    # ------------------------------------------------------------------ hooks

    # The hooks' common path (reuse_snapshot on the fused native path) is plain Python and one
    # ctypes call, without torch.no_grad (which has nothing to guard there, and whose cost shows
    # on a step of a few ms); the other paths run their tensor operations under it.

    def _pre_hook(self, optimizer, args, kwargs) -> None:
        # When the previous post-hook left the snapshot of exactly these weights (nothing has written
        # to them since: their version counters are unchanged), and their norms in this row, keep them
        if self._versions is None or self._versions != [t._version for t in self._locals]:
            self._snapshot()
        self._snapped = True

    @torch.no_grad()
    def _snapshot(self) -> None:
        row = self._buf[self._pending]
        if self._fused:
            _native.snapshot_norms(self._snap, self._locals, row[0])
        else:
            torch._foreach_copy_(self._snap, self._locals)
            # the norm right after the copy, while the snapshot is still in cache
            row[0].copy_(self._norms())

    def _post_hook(self, optimizer, args, kwargs) -> None:
        if not self._snapped:  # attached between a pre- and a post-hook: nothing to compare
            return
        step = self._step + 1
        spectral = self.every and (step == 1 or step % self.every == 0)
        if self._reuse and not (spectral and self.update_spectral):
            # ‖ΔW‖ into this row and, in the same pass, the next step's snapshot and its ‖W‖ into the next
            at = self._buf.data_ptr() + self._pending * self._row_bytes
            self._refresh(at + self._row_bytes // 2, at + self._row_bytes)
            self._versions = [t._version for t in self._locals]
        else:
            self._versions = None
            self._difference()
        self._snapped = False
        self._step = step
        self._steps.append(step)
        self._pending += 1
        if spectral:
            self._spectral_step()
        if self._pending >= self.flush_every:
            self._flush()

    @torch.no_grad()
    def _difference(self) -> None:
        if self._fused:
            _native.difference_norms(self._locals, self._snap, self._buf[self._pending, 1])
        else:
            torch._foreach_sub_(self._snap, self._locals)  # the snapshot now holds −ΔW
            self._buf[self._pending, 1].copy_(self._norms())

    @torch.no_grad()
    def _spectral_step(self) -> None:
        if self.update_spectral:
            self._update_spectral_pending.append(self._update_spectral_norms())
        self._spectral_steps.append(self._step)
        self._spectral_pending.append(self._top_singular_values())

    def _norms(self) -> torch.Tensor:
        """Norms of the snapshot tensors as whole logical tensors, one vector on the monitor's device."""
        if self._one_device:
            return norms(self._snap, like=self._params, dtype=self._norm_dtype)
        return torch.stack([torch.linalg.vector_norm(t, dtype=self._norm_dtype).to(self._device) for t in self._snap])

    def _top_singular_values(self) -> torch.Tensor:
        out = []
        for i, p in enumerate(self._params):
            p = full(p.detach())
            w = p.reshape(p.shape[0], -1)
            if w.dtype not in (torch.float32, torch.float64):
                w = w.float()
            if self.spectral == "exact":
                sigma = torch.linalg.matrix_norm(w, ord=2)
            else:
                v = self._vectors[i]
                steps = self.lanczos_steps
                if v is None:
                    v = torch.randn(w.shape[1], generator=self._gen, dtype=w.dtype).to(w.device)
                    steps *= 4
                sigma, self._vectors[i] = top_singular_value(w, v, steps)
            out.append(sigma.to(self._device, self._norm_dtype))
        return torch.stack(out)

    # ------------------------------------------------------------------ opt-in: the spectral size of a step

    def _init_update_spectral(self, update_spectral: bool) -> None:
        if not isinstance(update_spectral, bool):
            raise ValueError(f"update_spectral must be True or False, got {update_spectral!r}")
        if update_spectral and not self.every:
            raise ValueError("update_spectral=True measures at the spectral steps: every must be >= 1, got 0")
        if update_spectral and any(map(is_dtensor, self._params)):
            raise ValueError("update_spectral=True needs whole tensors: DTensor (FSDP2) parameters are not supported")
        self.update_spectral = update_spectral
        self._delta_vectors: list[torch.Tensor | None] = [None] * len(self._params)
        self._update_gen = torch.Generator().manual_seed(1)  # private, apart from σ_1's
        self._update_spectral_pending: list[torch.Tensor] = []
        self._update_spectral_chunks: list[torch.Tensor] = []

    def _sigma(self, w: torch.Tensor, v: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """σ_1 of the matrix `w`: exact, or Lanczos warm-started at `v` (cold, 4× the steps, when None)."""
        if self.spectral == "exact":
            return torch.linalg.matrix_norm(w, ord=2), None
        steps = self.lanczos_steps
        if v is None:
            v = torch.randn(w.shape[1], generator=self._update_gen, dtype=w.dtype).to(w.device)
            steps *= 4
        return top_singular_value(w, v.to(w.device, w.dtype), steps)

    def _update_spectral_norms(self) -> torch.Tensor:
        """(2, layers): ‖ΔW‖_2 of the step just taken and σ_1 of W before it, each layer as a matrix.
        Run by the post-hook at the spectral steps only. The fused native path leaves W_before in the
        snapshot; the torch path leaves −ΔW there: ΔW and W_before are formed explicitly from it."""
        out = []
        for i, (w, snap) in enumerate(zip(self._locals, self._snap)):
            if self._fused:
                before, delta = snap, w - snap
            else:
                before, delta = w + snap, -snap
            m = w.shape[0] if w.ndim else 1
            before, delta = before.reshape(m, -1), delta.reshape(m, -1)
            if delta.dtype not in (torch.float32, torch.float64):
                before, delta = before.float(), delta.float()
            d_sigma, self._delta_vectors[i] = self._sigma(delta, self._delta_vectors[i])
            b_sigma, _ = self._sigma(before, self._vectors[i])  # σ_1's warm vector, left as it was
            out.append(torch.stack([d_sigma, b_sigma]).to(self._device, self._norm_dtype))
        return torch.stack(out, dim=1)

    @property
    def update_spectral_norm(self) -> torch.Tensor:
        """‖ΔW_l‖_2 of the step at each of `spectral_steps`, shape (measurements, layers) (update_spectral)."""
        return self._update_spectral_table()[:, 0]

    @property
    def spectral_norm_before(self) -> torch.Tensor:
        """σ_1 of W_l before the step at each of `spectral_steps`, shape (measurements, layers) (update_spectral)."""
        return self._update_spectral_table()[:, 1]

    @property
    def relative_spectral_update(self) -> torch.Tensor:
        """‖ΔW_l‖_2 / ‖W_l^before‖_2 at each of `spectral_steps`, shape (measurements, layers)
        (update_spectral; empty when off)."""
        t = self._update_spectral_table()
        return t[:, 0] / t[:, 1]

    def _update_spectral_table(self) -> torch.Tensor:
        self._flush()
        if not self._update_spectral_chunks:
            return torch.zeros(0, 2, len(self.layers), dtype=torch.float64)
        return torch.cat(self._update_spectral_chunks)

    def deep_relative_trust(self) -> torch.Tensor:
        """Π_l (1 + ‖ΔW_l‖_F/‖W_l‖_F) − 1 of each step over the monitored layers, shape (steps,), float64."""
        return torch.prod(1.0 + self.relative_update, dim=1) - 1.0

    def _flush(self) -> None:
        if self._update_spectral_pending:
            self._update_spectral_chunks.append(torch.stack(self._update_spectral_pending).to("cpu", torch.float64))
            self._update_spectral_pending = []
        if self._pending:
            self._chunks.append(self._buf[: self._pending].to("cpu", torch.float64, copy=True).flatten(1))
            if self._versions is not None:  # the next step's ‖W‖, written ahead by the post-hook
                self._buf[0, 0].copy_(self._buf[self._pending, 0])
            self._pending = 0
        if self._spectral_pending:
            self._spectral_chunks.append(torch.stack(self._spectral_pending).to("cpu", torch.float64))
            self._spectral_pending = []

    # ------------------------------------------------------------------ attach / detach

    def attach(self) -> None:
        """Register the hooks again after `detach` (no-op when attached); step numbers continue."""
        if not self._handles:
            self._snapped = False
            self._versions = None
            self._handles = [self._optimizer.register_step_pre_hook(self._pre_hook),
                             self._optimizer.register_step_post_hook(self._post_hook)]

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
            return torch.zeros(0, 2, n, dtype=torch.float64)
        return torch.cat(self._chunks).view(-1, 2, n)

    @property
    def steps(self) -> list[int]:
        """The step numbers recorded (1 = first step seen by this monitor)."""
        return list(self._steps)

    @property
    def norm(self) -> torch.Tensor:
        """‖W_l‖ at the start of each step, shape (steps, layers)."""
        return self._table()[:, 0]

    @torch.no_grad()
    def current_norm(self) -> torch.Tensor:
        """‖W_l‖ of every layer now, shape (layers,), CPU float64: e.g. after the last step, which
        `norm` (taken at the start of each step) does not hold."""
        if self._one_device:
            now = norms(self._locals, like=self._params, dtype=self._norm_dtype)
        else:
            now = torch.stack([torch.linalg.vector_norm(t, dtype=self._norm_dtype).to(self._device) for t in self._locals])
        return now.to("cpu", torch.float64)

    @property
    def update_norm(self) -> torch.Tensor:
        """‖ΔW_l‖ of each step, shape (steps, layers)."""
        return self._table()[:, 1]

    @property
    def relative_update(self) -> torch.Tensor:
        """‖ΔW_l‖/‖W_l‖ of each step (‖W_l‖ at its start), shape (steps, layers)."""
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
        """One dict per (step, layer): step, layer, norm (at the start of the step), update_norm,
        relative_update, top_singular_value (after the step; None where not measured); with
        ``update_spectral`` also update_spectral_norm (‖ΔW‖₂) and relative_spectral_update (‖ΔW‖₂/‖W‖₂),
        None where not measured."""
        t = self._table()
        rel = t[:, 1] / t[:, 0]
        sv = dict(zip(self._spectral_steps, self.top_singular_value.tolist()))
        us = self._update_spectral_table()
        un = dict(zip(self._spectral_steps, us[:, 0].tolist()))
        ur = dict(zip(self._spectral_steps, (us[:, 0] / us[:, 1]).tolist()))
        rows = []
        for i, s in enumerate(self._steps):
            norms, deltas, rels = t[i, 0].tolist(), t[i, 1].tolist(), rel[i].tolist()
            sig = sv.get(s)
            for j, name in enumerate(self.layers):
                rows.append({"step": s, "layer": name, "norm": norms[j], "update_norm": deltas[j],
                             "relative_update": rels[j], "top_singular_value": None if sig is None else sig[j]})
                if self.update_spectral:
                    rows[-1]["update_spectral_norm"] = un[s][j] if s in un else None
                    rows[-1]["relative_spectral_update"] = ur[s][j] if s in ur else None
        return rows

    def to_csv(self, path: str | os.PathLike) -> None:
        """Long-format CSV: step,layer,norm,update_norm,relative_update,top_singular_value."""
        fields = ["step", "layer", "norm", "update_norm", "relative_update", "top_singular_value"]
        if self.update_spectral:
            fields += ["update_spectral_norm", "relative_spectral_update"]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            for row in self.to_records():
                w.writerow({k: ("" if v is None else (repr(v) if isinstance(v, float) else v)) for k, v in row.items()})

    def to_dict(self) -> dict[str, Any]:
        """Wide format: layers, shapes, steps, and (steps × layers) lists of every quantity; the per-step
        deep_relative_trust; with ``update_spectral`` also update_spectral_norm and relative_spectral_update
        (measurements × layers, at spectral_steps)."""
        t = self._table()

        def clean(x: torch.Tensor) -> list:  # JSON has no inf/nan: write them as None
            return [[v if math.isfinite(v) else None for v in row] for row in x.tolist()]

        return {
            "layers": list(self.layers),
            "shapes": [list(s) for s in self.shapes],
            "steps": self.steps,
            "norm": clean(t[:, 0]),
            "update_norm": clean(t[:, 1]),
            "relative_update": clean(t[:, 1] / t[:, 0]),
            "spectral_steps": self.spectral_steps,
            "top_singular_value": clean(self.top_singular_value),
            "spectral_method": self.spectral if self.every else None,
            "deep_relative_trust": [v if math.isfinite(v) else None for v in self.deep_relative_trust().tolist()],
            **({"update_spectral_norm": clean(self.update_spectral_norm),
                "relative_spectral_update": clean(self.relative_spectral_update)} if self.update_spectral else {}),
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
                writer.add_scalar(f"{prefix}/norm/{name}", float(t[i, 0, j]), s)
        sv = self.top_singular_value
        for i, s in enumerate(self._spectral_steps):
            for j, name in enumerate(self.layers):
                writer.add_scalar(f"{prefix}/top_singular_value/{name}", float(sv[i, j]), s)
        if own:
            writer.close()


@torch.no_grad()
def top_singular_value(w: torch.Tensor, v0: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """σ_1 of the matrix `w` by `steps` of Golub-Kahan-Lanczos bidiagonalisation started at `v0`.

    Builds orthonormal U_k = [u_0 … u_{k-1}], V_{k+1} = [v_0 … v_k] (fully reorthogonalised) with
    U_kᵀ W V_{k+1} = B, upper bidiagonal (α_j on the diagonal, β_j above it), and returns σ_1(B),
    which is ≤ σ_1(W) (a Ritz value of a projection) and converges fast in k, together with the
    matching unit right Ritz vector V_{k+1} ṽ to warm-start the next call. Stops early when the
    Krylov space is exhausted, in which case the value is exact. A matrix with a NaN or infinite
    entry gives NaN, and `v0` back as the vector (a later call starts afresh from it).

    Contiguous float32 CPU matrices run in one call of the native kernels (`rt_lanczos`, in
    float64); the rest in torch, in w's dtype, written for few tensor operations per step (on small
    layers their dispatch, not the arithmetic, is the cost): U and V start as zeros, so the
    reorthogonalisation runs over all of their rows (the rows not yet filled contribute exact
    zeros); α, β are Python floats. The small SVD of B is LAPACK's in float64 (numpy).
    """
    m, n = w.shape
    k = max(1, min(steps, m, n))
    native = _native.supported([w]) and _native.available()  # then numpy around one kernel call
    if native:
        v = v0.detach().to("cpu", torch.float64).numpy()
        start = float(np.linalg.norm(v))
    else:
        start = float(torch.linalg.vector_norm(v0))
    if not start > 0:
        raise ValueError("top_singular_value: the start vector is zero")
    if native:
        alpha, beta, V = _native.lanczos(w, v / start, k, float(torch.finfo(w.dtype).eps))
        alpha, beta = alpha.tolist(), beta.tolist()
    else:
        alpha, beta, V = _lanczos(w, v0 / start, k)
    n_u, n_v = len(alpha), len(beta) + 1
    if not all(map(math.isfinite, alpha + beta)):
        return w.new_full((), math.nan), v0
    if n_u == 0:  # W v0 = 0
        if not bool(torch.isfinite(w).all()):
            return w.new_full((), math.nan), v0
        return (torch.linalg.matrix_norm(w, ord=2) if w.any() else w.new_zeros(()), v0 / start)
    B = np.zeros((n_u, n_v))
    B[range(n_u), range(n_u)] = alpha
    B[range(n_v - 1), range(1, n_v)] = beta[: n_v - 1]
    _, s, vh = np.linalg.svd(B, full_matrices=False)
    sigma = torch.tensor(s[0], dtype=w.dtype, device=w.device)
    if isinstance(V, np.ndarray):
        v = vh[0] @ V[:n_v]
        return sigma, torch.from_numpy(v / np.linalg.norm(v)).to(w.dtype)
    v = torch.mv(V[:n_v].T, torch.tensor(vh[0], dtype=V.dtype, device=V.device))
    return sigma, v.div_(torch.linalg.vector_norm(v))


def _lanczos(w: torch.Tensor, v0: torch.Tensor, k: int) -> tuple[list[float], list[float], torch.Tensor]:
    """top_singular_value's bidiagonalisation in torch, from the unit vector v0: α, β and V."""
    m, n = w.shape
    V, U = w.new_zeros(k + 1, n), w.new_zeros(k, m)
    rows_v, rows_u, wt, vt, ut = V.unbind(0), U.unbind(0), w.T, V.T, U.T
    rows_v[0].copy_(v0)
    alpha: list[float] = []
    beta: list[float] = []
    tol = None
    for j in range(k):
        p = torch.mv(w, rows_v[j])
        if j:
            p.sub_(rows_u[j - 1], alpha=beta[j - 1])
            p.addmv_(ut, torch.mv(U, p), alpha=-1)  # full reorthogonalisation (k is small)
        a = float(torch.linalg.vector_norm(p))
        if tol is None:
            tol = torch.finfo(w.dtype).eps * max(a, float(torch.linalg.vector_norm(w)) * 1e-3)
        if not a > tol:  # W v_j lies in span(U): exhausted (or NaN)
            if not math.isfinite(a):
                alpha.append(a)
            break
        alpha.append(a)
        torch.div(p, a, out=rows_u[j])
        r = torch.mv(wt, rows_u[j]).sub_(rows_v[j], alpha=a)
        r.addmv_(vt, torch.mv(V, r), alpha=-1)
        b = float(torch.linalg.vector_norm(r))
        if not b > tol:
            if not math.isfinite(b):
                beta.append(b)
            break
        beta.append(b)
        torch.div(r, b, out=rows_v[j + 1])
    return alpha, beta, V
