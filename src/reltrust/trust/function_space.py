"""Distances in function space: the quantities the paper's Theorems 1 and 2 bound by deep relative trust.

    relative function change  = ‖f_b(x) − f_a(x)‖_F / ‖f_a(x)‖_F          (Theorem 1; whole batch)
    relative gradient change  = ‖g_l^b − g_l^a‖_F / ‖g_l^a‖_F  per layer l  (Theorem 2)

where f(x) is the model output on a batch and g_l = ∂ loss / ∂ W_l. Both are computed in float64 from
the models' outputs and gradients. The caller's models are left as found: gradients are taken with
`torch.autograd.grad` (nothing is written to ``.grad``) and the train/eval mode of every submodule is
restored afterwards; both models are run under the same replayed RNG state (the caller's random
stream is untouched), so in training mode they see the same dropout masks. By default both models are evaluated in eval mode (``mode="eval"``), so dropout
and batch-norm statistics do not make the comparison random; ``mode="train"`` evaluates in training
mode (batch-norm running statistics are then updated, as in any training-mode forward pass) and
``mode="keep"`` uses the modes the models are in.

Inputs: a tensor (``model(x)``), a tuple/list (``model(*x)``) or a dict (``model(**x)``). Outputs: a
tensor, a tuple/list (its first element) or a mapping with a ``"logits"`` entry; pass ``output_fn``
to pick the tensor otherwise.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from reltrust.trust.distance import Patterns, _compile, _selected

_MODES = ("eval", "train", "keep")


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(x)`` for a tensor, ``model(*x)`` for a tuple/list, ``model(**x)`` for a dict."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def output_tensor(out: Any, output_fn: Callable[[Any], torch.Tensor] | None = None) -> torch.Tensor:
    """The tensor to compare from a model's output (see the module docstring)."""
    if output_fn is not None:
        out = output_fn(out)
    elif isinstance(out, Mapping) and "logits" in out:
        out = out["logits"]
    elif isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"model output must be a tensor (pass output_fn to pick one), got {type(out).__name__}")
    return out


@contextlib.contextmanager
def model_mode(models: Sequence[nn.Module], mode: str) -> Iterator[None]:
    """Put `models` in ``mode`` ("eval", "train" or "keep") and restore every submodule's flag after."""
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, _MODES))}, got {mode!r}")
    saved = [(m, m.training) for model in models for m in model.modules()]
    try:
        for model in models:
            if mode == "eval":
                model.eval()
            elif mode == "train":
                model.train()
        yield
    finally:
        for m, flag in saved:
            m.training = flag


class RngReplay:
    """Run blocks under one saved RNG state, leaving the caller's global RNG as it was.

    ``with replay():`` forks the CPU (and the models' CUDA) generators, resets them to the state
    captured at construction, and restores the caller's state on exit, so two forward passes in
    training mode draw the same dropout masks and the training's random stream is not consumed."""

    def __init__(self, tensors):
        self.devices = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(i) for i in self.devices]

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu)
            for i, state in zip(self.devices, self.cuda):
                torch.cuda.set_rng_state(state, i)
            yield


def parameter_layers(
    model: nn.Module,
    layers: Sequence[str] | None = None,
    *,
    include_biases: bool = False,
    include: Patterns = None,
    exclude: Patterns = None,
    arg: str = "layers",
) -> dict[str, nn.Parameter]:
    """The parameters that count as layers: by default those that require grad and pass the rule of
    `reltrust.trust.distance` (floating, ≥ 2-d, include/exclude); or exactly the names in `layers`."""
    params = dict(model.named_parameters())  # shared parameters once, under their first name
    if layers is None:
        inc, exc = _compile(include, "include"), _compile(exclude, "exclude")
        chosen = {n: p for n, p in params.items() if p.requires_grad and _selected(n, p, include_biases, inc, exc)}
        if not chosen:
            raise ValueError("no layers selected: the model has no trainable floating parameter matching the selection")
        return chosen
    if isinstance(layers, str):
        raise TypeError(f"{arg} must be a sequence of parameter names, not a single string ({layers!r})")
    chosen = {}
    for n in layers:
        if n not in params:
            known = ", ".join(list(params)[:6])
            raise ValueError(f"{arg}: {n!r} is not a parameter of the model (parameters: {known}, ...)")
        p = params[n]
        if not p.is_floating_point() or not p.requires_grad:
            raise ValueError(f"{arg}: parameter {n!r} must be floating point and require grad")
        chosen[n] = p
    if not chosen:
        raise ValueError(f"{arg} must name at least one parameter")
    return chosen


def layer_gradients(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    batch: Sequence[Any],
    params: Mapping[str, torch.Tensor],
    output_fn: Callable[[Any], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Forward and backward once: (output, loss, {name: ∂loss/∂W}) without touching ``.grad``.

    Unused parameters get a zero gradient. The caller picks the mode (see `model_mode`)."""
    inputs, targets = _unpack(batch)
    with torch.enable_grad():
        out = call_model(model, inputs)
        loss = loss_fn(out, targets)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(f"loss_fn must return a scalar tensor, got {type(loss).__name__} "
                             f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ''}")
        if not loss.requires_grad:
            raise ValueError("loss_fn's result does not depend on the selected parameters (no grad)")
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    named = {n: (torch.zeros_like(p) if g is None else g) for (n, p), g in zip(params.items(), grads)}
    return output_tensor(out, output_fn).detach(), loss.detach(), named


def _unpack(batch: Sequence[Any]) -> tuple[Any, Any]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError(f"batch must be a pair (inputs, targets), got {type(batch).__name__}"
                         + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""))
    return batch[0], batch[1]


def _rel(diff_norm: float, ref_norm: float) -> float:
    """diff / ref, with nan where the reference is 0 (the ratio is undefined there)."""
    return diff_norm / ref_norm if ref_norm > 0 else float("nan")


def _norm64(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t.detach().to(torch.float64)))


def relative_function_change(
    model_a: nn.Module,
    model_b: nn.Module,
    inputs: Any,
    *,
    mode: str = "eval",
    output_fn: Callable[[Any], torch.Tensor] | None = None,
) -> float:
    """‖f_b(x) − f_a(x)‖_F / ‖f_a(x)‖_F over the whole batch `inputs`, in float64.

    Theorem 1 of the paper bounds this by a depth-dependent multiple of deep relative trust. Raises
    `ValueError` if the outputs differ in shape, are not finite, or f_a(x) is zero."""
    replay = RngReplay(list(model_a.parameters()) + list(model_b.parameters()))
    with model_mode([model_a, model_b], mode), torch.no_grad():
        with replay():
            fa = output_tensor(call_model(model_a, inputs), output_fn)
        with replay():
            fb = output_tensor(call_model(model_b, inputs), output_fn)
    if fa.shape != fb.shape:
        raise ValueError(f"the models' outputs differ in shape: {tuple(fa.shape)} vs {tuple(fb.shape)}")
    fa64, fb64 = fa.to(torch.float64), fb.to(torch.float64)
    if not (torch.isfinite(fa64).all() and torch.isfinite(fb64).all()):
        raise ValueError("a model output is not finite (nan or inf)")
    ref = float(torch.linalg.vector_norm(fa64))
    if ref == 0.0:
        raise ValueError("model_a's output is zero, so the relative function change is undefined")
    return float(torch.linalg.vector_norm(fb64 - fa64)) / ref


def relative_gradient_change(
    model_a: nn.Module,
    model_b: nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    batch: Sequence[Any],
    *,
    layers: Sequence[str] | None = None,
    include_biases: bool = False,
    include: Patterns = None,
    exclude: Patterns = None,
    mode: str = "eval",
    output_fn: Callable[[Any], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Ordered mapping layer → ‖g_l^b − g_l^a‖_F / ‖g_l^a‖_F, with g_l = ∂ loss_fn(f(x), y)/∂W_l.

    `batch` is ``(inputs, targets)``. Layers: `layers` (parameter names) or the default selection of
    `model_a`'s trainable parameters; `model_b` must have the same names and shapes. The value is nan
    for a layer whose gradient in `model_a` is zero. This is the quantity of the paper's Theorem 2.
    """
    pa = parameter_layers(model_a, layers, include_biases=include_biases, include=include, exclude=exclude)
    all_b = dict(model_b.named_parameters())
    pb = {}
    for n, p in pa.items():
        if n not in all_b:
            raise ValueError(f"layer {n!r} is a parameter of model_a but not of model_b")
        if all_b[n].shape != p.shape:
            raise ValueError(f"layer {n!r} has shape {tuple(p.shape)} in model_a but {tuple(all_b[n].shape)} in model_b")
        if not all_b[n].requires_grad:
            raise ValueError(f"layer {n!r} does not require grad in model_b")
        pb[n] = all_b[n]
    replay = RngReplay(list(pa.values()) + list(pb.values()))
    with model_mode([model_a, model_b], mode):
        with replay():
            _, _, ga = layer_gradients(model_a, loss_fn, batch, pa, output_fn)
        with replay():
            _, _, gb = layer_gradients(model_b, loss_fn, batch, pb, output_fn)
    out = {}
    for n in pa:
        a64, b64 = ga[n].to(torch.float64), gb[n].to(torch.float64)
        if not (torch.isfinite(a64).all() and torch.isfinite(b64).all()):
            raise ValueError(f"the gradient of layer {n!r} is not finite (nan or inf)")
        out[n] = _rel(float(torch.linalg.vector_norm(b64 - a64.to(b64.device))), float(torch.linalg.vector_norm(a64)))
    return out
