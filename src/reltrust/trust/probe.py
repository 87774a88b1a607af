"""The perturbation probe: how loss, function and gradient break down along a slice (paper Figs. 1-2).

From weights W_l and a direction d_l per selected layer (default d_l = −g_l, the negative gradient of
the loss on `batch` at W), move every layer by relative size η:

    W_l(η) = W_l + η · ‖W_l‖_F · d_l / ‖d_l‖_F        so that  ‖W_l(η) − W_l‖ / ‖W_l‖ = |η|

and record, for each η of the grid,

    loss(η)                       = loss_fn(f_η(x), y)
    relative function change      = ‖f_η(x) − f_0(x)‖ / ‖f_0(x)‖
    relative gradient change      = ‖g(η) − g(0)‖ / ‖g(0)‖     over all selected layers concatenated
                                    and per layer ‖g_l(η) − g_l(0)‖ / ‖g_l(0)‖
    deep relative trust           = Π_l (1 + ‖ΔW_l‖/‖W_l‖) − 1  of the move actually made

The paper predicts quasi-exponential growth in η for deep MLPs and mild growth for shallow ones.
Everything runs on a deep copy of the model; the model passed in is never changed (parameters,
``.grad``, train/eval mode, buffers), nor is the global random-number state: each evaluation replays
the same RNG state, so dropout masks (in ``mode="train"``) are the same for every η.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from reltrust.trust.distance import drt_from_changes
from reltrust.trust.function_space import _MODES, RngReplay, _rel, layer_gradients, model_mode, parameter_layers


@dataclass
class ProbeResult:
    """One row per η. Lists are aligned with `etas`; per-layer dicts map layer name → list over η."""

    etas: list[float]
    loss: list[float]
    relative_function_change: list[float]
    relative_gradient_change: list[float]
    relative_gradient_change_per_layer: dict[str, list[float]] = field(default_factory=dict)
    relative_parameter_change_per_layer: dict[str, list[float]] = field(default_factory=dict)
    deep_relative_trust: list[float] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of plain lists and floats."""
        return asdict(self)


def _check_etas(etas: Sequence[float]) -> list[float]:
    if isinstance(etas, torch.Tensor):
        etas = etas.tolist()
    if isinstance(etas, (str, bytes)) or not isinstance(etas, Sequence):
        try:
            etas = list(etas)  # numpy arrays, generators
        except TypeError:
            raise TypeError(f"etas must be a sequence of floats, got {type(etas).__name__}") from None
    out = []
    for e in etas:
        try:
            v = float(e)
        except (TypeError, ValueError):
            raise TypeError(f"etas must hold real numbers, got {e!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"etas must be finite real numbers (relative perturbation sizes, e.g. 0 to 0.1), got {e!r}")
        out.append(v)
    if not out:
        raise ValueError("etas must hold at least one value")
    return out


def perturbation_probe(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    batch: Sequence[Any],
    etas: Sequence[float],
    *,
    direction: Mapping[str, torch.Tensor] | None = None,
    layers: Sequence[str] | None = None,
    mode: str = "eval",
    output_fn: Callable[[Any], torch.Tensor] | None = None,
) -> ProbeResult:
    """Move every selected layer by relative size η along −‖W‖g/‖g‖ (or `direction`) for each η.

    ΔW_l(η) = η · ‖W_l‖ · d_l/‖d_l‖ with d_l = −∂loss/∂W_l at the model's weights on `batch`, or
    d_l = direction[l] (normalised per layer the same way), so ‖ΔW_l‖/‖W_l‖ = |η| for every layer.
    Negative η move the other way along the slice.

    Args:
        model: any module; it is deep-copied and never changed.
        loss_fn: ``loss_fn(outputs, targets) -> scalar tensor``.
        batch: ``(inputs, targets)``; inputs as for `reltrust.trust.call_model`.
        etas: finite real numbers (relative perturbation sizes; the paper uses 0 to 0.1).
        direction: optional name → tensor for every selected layer (extra keys naming other
            parameters are ignored; names that are not parameters are an error).
        layers: parameter names to move; None selects like `relative_changes` (trainable floating
            parameters with ≥ 2 dimensions).
        mode: "eval" (default), "train" or "keep": the mode the copy is evaluated in.
        output_fn: picks the output tensor from the model's output (see `output_tensor`).

    Memory: a deep copy of the model plus float64 copies of the selected layers' weights and
    directions. Cost: one forward and backward pass per η (and one for the reference).

    Returns:
        `ProbeResult` with loss, relative function change, relative gradient change (aggregate and
        per layer), the realised relative change per layer and its deep relative trust, per η.
    """
    etas = _check_etas(etas)
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, _MODES))}, got {mode!r}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(outputs, targets), got {type(loss_fn).__name__}")
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError("batch must be a pair (inputs, targets)")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")

    net = _detached_copy(model)
    params = parameter_layers(net, layers)
    names = list(params)
    replay = RngReplay(params.values())

    with model_mode([net], mode):
        # η = 0: reference output and gradients, and the direction
        f0, _, g0 = _evaluate(net, loss_fn, batch, params, output_fn, replay)
        w0 = {n: p.detach().to(torch.float64, copy=True) for n, p in params.items()}
        d = _directions(names, w0, g0, direction, dict(net.named_parameters()))
        g0_64 = {n: g.to(torch.float64) for n, g in g0.items()}
        g0_norm = {n: float(torch.linalg.vector_norm(g)) for n, g in g0_64.items()}
        g0_total = math.sqrt(math.fsum(v * v for v in g0_norm.values()))
        f0_64 = f0.to(torch.float64)
        f0_norm = float(torch.linalg.vector_norm(f0_64))
        w0_norm = {n: float(torch.linalg.vector_norm(w)) for n, w in w0.items()}

        res = ProbeResult(etas=etas, loss=[], relative_function_change=[], relative_gradient_change=[],
                          relative_gradient_change_per_layer={n: [] for n in names},
                          relative_parameter_change_per_layer={n: [] for n in names},
                          deep_relative_trust=[], layers=names)
        for eta in etas:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(w0[n] + eta * d[n])  # in float64, rounded once to the parameter's dtype
            f, loss, g = _evaluate(net, loss_fn, batch, params, output_fn, replay)
            res.loss.append(float(loss))
            res.relative_function_change.append(
                _rel(float(torch.linalg.vector_norm(f.to(torch.float64) - f0_64)), f0_norm))
            sq = []
            for n in names:
                diff = float(torch.linalg.vector_norm(g[n].to(torch.float64) - g0_64[n]))
                sq.append(diff * diff)
                res.relative_gradient_change_per_layer[n].append(_rel(diff, g0_norm[n]))
            res.relative_gradient_change.append(_rel(math.sqrt(math.fsum(sq)), g0_total))
            moved = []
            for n, p in params.items():
                r = float(torch.linalg.vector_norm(p.detach().to(torch.float64) - w0[n])) / w0_norm[n]
                res.relative_parameter_change_per_layer[n].append(r)
                moved.append(r)
            res.deep_relative_trust.append(drt_from_changes(moved))
    return res


def _detached_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` without its ``.grad``s (the original keeps its own)."""
    net = copy.deepcopy(model)
    for p in net.parameters():
        p.grad = None
    return net


def _evaluate(net, loss_fn, batch, params, output_fn, replay):
    """One forward/backward with the RNG state replayed and the caller's RNG left as it was."""
    with replay():
        return layer_gradients(net, loss_fn, batch, params, output_fn)


def _directions(names, w0, g0, direction, all_params) -> dict[str, torch.Tensor]:
    """Per layer ‖W_l‖ · d_l/‖d_l‖ (the move for η = 1) in float64; `w0` holds float64 weights."""
    if direction is not None:
        if not isinstance(direction, Mapping):
            raise TypeError(f"direction must be a mapping layer name → tensor, got {type(direction).__name__}")
        for k in direction:
            if k not in all_params:
                raise ValueError(f"direction: {k!r} is not a parameter of the model")
        missing = [n for n in names if n not in direction]
        if missing:
            raise ValueError(f"direction has no entry for selected layer(s): {', '.join(missing)}")
    for n in names:  # the weights first: a zero-norm layer is the more basic problem
        if not torch.isfinite(w0[n]).all():
            raise ValueError(f"layer {n!r}: the weights are not finite (nan or inf)")
        if not torch.linalg.vector_norm(w0[n]) > 0:
            raise ValueError(f"layer {n!r} has zero norm, so a relative perturbation is undefined (leave it out with layers=)")
    out = {}
    for n in names:
        w = w0[n]
        if direction is None:
            dv = -g0[n].to(torch.float64)
            what = "gradient"
        else:
            dv = direction[n]
            if not isinstance(dv, torch.Tensor):
                raise TypeError(f"direction[{n!r}] must be a tensor, got {type(dv).__name__}")
            if dv.shape != w.shape:
                raise ValueError(f"direction[{n!r}] has shape {tuple(dv.shape)}, the layer has {tuple(w.shape)}")
            dv = dv.detach().to(device=w.device, dtype=torch.float64)
            what = "direction"
        if not torch.isfinite(dv).all():
            raise ValueError(f"layer {n!r}: the {what} is not finite (nan or inf)")
        dn = torch.linalg.vector_norm(dv)
        if dn == 0:
            raise ValueError(f"layer {n!r} has a zero {what}, so it cannot be normalised (leave it out with layers=)")
        out[n] = dv * (torch.linalg.vector_norm(w) / dn)
    return out
