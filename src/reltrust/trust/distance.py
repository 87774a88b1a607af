"""Deep relative trust between two networks, layer by layer (Bernstein et al. 2020, Definition 2).

For layers l = 1..L with weights W_l (before) and W_l + ΔW_l (after):

    relative change   r_l  = ‖ΔW_l‖_F / ‖W_l‖_F
    deep relative trust    = Π_l (1 + r_l) − 1
    surrogate              = (1/L) Σ_l [(1 + r_l)^L − 1]

`before` and `after` may each be an `nn.Module`, a state dict (name → tensor), or a path to a
checkpoint saved with `torch.save` (a bare state dict, or a dict holding one under a key such as
``model`` or ``state_dict``). Every norm is computed in float64 (on the tensors' device; on the CPU
for MPS tensors).

Which tensors count as layers (the same rule everywhere in `reltrust.trust`):

- floating-point tensors with at least 2 dimensions (weight matrices, convolution kernels,
  embeddings); with ``include_biases=True`` also 1-d ones (biases, normalisation scales);
- if ``include`` is given, only names matching one of its regular expressions (``re.search``);
- minus names matching any ``exclude`` regular expression.

A module contributes its ``state_dict()`` (so a module and its saved checkpoint give the same
answer); tensors that alias one another (tied weights) are counted once, under their first name.
A leading ``module.`` (DistributedDataParallel) or ``_orig_mod.`` (torch.compile) prefix shared by
every name is dropped. DTensor values are gathered with ``full_tensor()``.

Errors are `ValueError`s that name the offending layer: a layer present on one side only, a shape
mismatch, a non-finite value, or a zero-norm layer (r_l undefined; pass ``on_zero="skip"`` to leave
such layers out, reported in `DistanceReport.skipped`).
"""
from __future__ import annotations

import math
import os
import pickle
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Union

import torch
from torch import nn

from reltrust._dtensor import full

StateLike = Union[nn.Module, Mapping[str, Any], str, os.PathLike]
Patterns = Union[str, re.Pattern, Sequence[Union[str, re.Pattern]], None]

# Keys under which training scripts commonly keep the model's state dict, in the order tried.
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "model_state", "net", "network", "module")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


# ----------------------------------------------------------------------------------------------
# turning a module / state dict / checkpoint path into an ordered name → tensor mapping


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a checkpoint file and return the model state dict inside it (tensors on the CPU).

    Uses ``torch.load(path, weights_only=True, map_location="cpu")``. A bare state dict is returned
    as is; otherwise the first of `CHECKPOINT_KEYS` that holds a dict of tensors is used. Raises
    `FileNotFoundError` for a missing file and `ValueError` for anything that cannot be read as one.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"checkpoint {path} is a directory, not a file saved with torch.save")
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # torch raises pickle, runtime and zip errors alike for bad files
        raise ValueError(f"cannot load checkpoint {path} with torch.load(weights_only=True): {_load_error(e)} "
                         "(expected a file written by torch.save holding a state dict)") from None
    return _find_state_dict(obj, source=path)


def _load_error(e: Exception) -> str:
    """The informative part of torch.load's (long, multi-paragraph) error message."""
    if isinstance(e, EOFError):
        return "the file is empty or ends too early"
    if not isinstance(e, (pickle.UnpicklingError, RuntimeError)):
        # torch's legacy loader tripping over bytes that are no pickle (a text file): its error says nothing
        return f"the file is neither a zip archive nor a pickle ({type(e).__name__}: {e})"
    text = str(e)
    m = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\n\n|$)", text, re.S)
    detail = m.group(1) if m else (text.strip().splitlines() or [type(e).__name__])[0]
    detail = " ".join(detail.split()).split(". Please")[0].rstrip(".")
    return detail[:300] or type(e).__name__


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and any(isinstance(v, torch.Tensor) for v in obj.values())


def _find_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        if _is_state_dict(obj) and all(isinstance(k, str) for k in obj):
            return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        for key in CHECKPOINT_KEYS:
            inner = obj.get(key)
            if _is_state_dict(inner):
                return {k: v for k, v in inner.items() if isinstance(v, torch.Tensor)}
        keys = ", ".join(repr(k) for k in list(obj)[:8])
        raise ValueError(
            f"{source}: no model state dict found (looked for a dict of tensors at the top level or under "
            f"{', '.join(CHECKPOINT_KEYS)}; top-level keys: {keys or 'none'})"
        )
    raise ValueError(f"{source}: expected a state dict or a checkpoint dict, got {type(obj).__name__}")


def named_tensors(obj: StateLike, arg: str = "model") -> dict[str, torch.Tensor]:
    """An ordered name → tensor mapping (detached) from a module, a state dict or a checkpoint path.

    Aliased tensors (tied weights) appear once, under their first name; a ``module.`` or
    ``_orig_mod.`` prefix shared by every name is removed; DTensors are gathered to full tensors.
    """
    tensors, aliases = _named_tensors(obj, arg)
    return {k: v for k, v in tensors.items() if k not in aliases}


def _named_tensors(obj: StateLike, arg: str) -> tuple[dict[str, torch.Tensor], set[str]]:
    """All tensors by name, and the set of names that alias a tensor listed earlier."""
    if isinstance(obj, nn.Module):
        raw: Mapping[str, Any] = obj.state_dict(keep_vars=True)
    elif isinstance(obj, (str, os.PathLike)):
        raw = load_state_dict(obj)
    elif isinstance(obj, Mapping):
        raw = obj
    else:
        raise TypeError(f"{arg} must be an nn.Module, a state dict or a checkpoint path, got {type(obj).__name__}")

    out: dict[str, torch.Tensor] = {}
    aliases: set[str] = set()
    seen: set[tuple] = set()
    for name, t in raw.items():
        if not isinstance(t, torch.Tensor):
            continue  # e.g. `_extra_state` entries
        if not isinstance(name, str):
            raise TypeError(f"{arg}: state dict keys must be strings, got {name!r}")
        t = full(t.detach())
        if t.numel() > 0 and t.layout == torch.strided and t.device.type != "meta":
            key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
            if key in seen:
                aliases.add(name)
            seen.add(key)
        out[name] = t
    for prefix in _WRAPPER_PREFIXES:
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items()}
            aliases = {k[len(prefix):] for k in aliases}
    return out, aliases


# ----------------------------------------------------------------------------------------------
# layer selection


def _compile(patterns: Patterns, arg: str) -> list[re.Pattern]:
    if patterns is None:
        return []
    if isinstance(patterns, (str, re.Pattern)):
        patterns = [patterns]
    out = []
    for p in patterns:
        if isinstance(p, re.Pattern):
            out.append(p)
        elif isinstance(p, str):
            try:
                out.append(re.compile(p))
            except re.error as e:
                raise ValueError(f"{arg}: invalid regular expression {p!r}: {e}") from None
        else:
            raise TypeError(f"{arg} must be a regular expression string or a sequence of them, got {p!r}")
    return out


def is_layer(
    name: str,
    tensor: torch.Tensor,
    *,
    include_biases: bool = False,
    include: Patterns = None,
    exclude: Patterns = None,
) -> bool:
    """The default layer rule: floating point, ≥ 2-d (≥ 1-d with `include_biases`), then the
    `include`/`exclude` regular expressions (``re.search`` on the name)."""
    inc, exc = _compile(include, "include"), _compile(exclude, "exclude")
    return _selected(name, tensor, include_biases, inc, exc)


def _selected(name: str, t: torch.Tensor, include_biases: bool, inc: list, exc: list) -> bool:
    if not t.is_floating_point():
        return False
    if t.ndim < (1 if include_biases else 2):
        return False
    if inc and not any(p.search(name) for p in inc):
        return False
    return not any(p.search(name) for p in exc)


def select_layers(
    tensors: Mapping[str, torch.Tensor],
    *,
    include_biases: bool = False,
    include: Patterns = None,
    exclude: Patterns = None,
) -> list[str]:
    """Names of the tensors in `tensors` that count as layers, in order (see the module docstring)."""
    inc, exc = _compile(include, "include"), _compile(exclude, "exclude")
    return [n for n, t in tensors.items() if _selected(n, t, include_biases, inc, exc)]


# ----------------------------------------------------------------------------------------------
# the distance itself


@dataclass(frozen=True)
class LayerDistance:
    """One layer's numbers: ‖W‖, ‖ΔW‖ and r = ‖ΔW‖/‖W‖ (Frobenius norms in float64)."""

    name: str
    shape: tuple[int, ...]
    norm: float
    delta_norm: float
    relative: float


@dataclass
class DistanceReport:
    """Per-layer distances plus deep relative trust and its surrogate over the same layers."""

    layers: list[LayerDistance]
    deep_relative_trust: float
    trust_surrogate: float
    skipped: list[str] = field(default_factory=list)  # zero-norm layers left out with on_zero="skip"

    @property
    def relative_changes(self) -> dict[str, float]:
        return {layer.name: layer.relative for layer in self.layers}

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [{**asdict(layer), "shape": list(layer.shape)} for layer in self.layers],
            "num_layers": len(self.layers),
            "deep_relative_trust": self.deep_relative_trust,
            "trust_surrogate": self.trust_surrogate,
            "skipped": list(self.skipped),
        }


def to_float64(t: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """`t` in float64 on `device` (default: its own; the CPU for MPS, which has no float64)."""
    if device is None:
        device = t.device if t.device.type not in ("mps", "meta") else torch.device("cpu")
    return t.to(device=device, dtype=torch.float64)


def _check_finite(name: str, side: str, t64: torch.Tensor) -> None:
    if not bool(torch.isfinite(t64).all()):
        bad = int((~torch.isfinite(t64)).sum())
        raise ValueError(f"layer {name!r} in {side} has {bad} non-finite value(s) (nan or inf)")


def layer_distances(
    before: StateLike,
    after: StateLike,
    *,
    include_biases: bool = False,
    include: Patterns = None,
    exclude: Patterns = None,
    on_zero: str = "raise",
) -> list[LayerDistance]:
    """Per-layer ‖W_l‖, ‖ΔW_l‖ = ‖W_l^after − W_l^before‖ and r_l = ‖ΔW_l‖/‖W_l‖ (float64), in the
    order of `before`. ``on_zero``: ``"raise"`` (default) or ``"skip"`` for layers with ‖W_l‖ = 0."""
    return _distances(before, after, include_biases, include, exclude, on_zero)[0]


def _distances(before, after, include_biases, include, exclude, on_zero) -> tuple[list[LayerDistance], list[str]]:
    if on_zero not in ("raise", "skip"):
        raise ValueError(f"on_zero must be 'raise' or 'skip', got {on_zero!r}")
    a, aliases = _named_tensors(before, "before")
    b, _ = _named_tensors(after, "after")
    sel = dict(include_biases=include_biases, include=include, exclude=exclude)
    names_a, names_b = select_layers(a, **sel), select_layers(b, **sel)
    set_a, set_b = set(names_a), set(names_b)
    for name in names_a + names_b:
        if name not in b or name not in a:
            side, other = ("before", "after") if name in a else ("after", "before")
            raise ValueError(f"layer {name!r} is in {side} but not in {other} (the checkpoints do not match)")
        if a[name].shape != b[name].shape:
            raise ValueError(
                f"layer {name!r} has shape {tuple(a[name].shape)} in before but {tuple(b[name].shape)} in after"
            )
    if set_a != set_b:  # same name, but a layer on one side only (e.g. float vs int dtype)
        name = sorted(set_a ^ set_b)[0]
        raise ValueError(f"layer {name!r} counts as a layer in one checkpoint only (dtype {a[name].dtype} vs {b[name].dtype})")
    if not names_a:
        raise ValueError("no layers selected: no floating tensor matches the selection (check include/exclude)")

    out, skipped = [], []
    for name in names_a:
        if name in aliases:
            continue  # a tied weight, already counted under its first name
        w = to_float64(a[name])
        w2 = to_float64(b[name], w.device)
        _check_finite(name, "before", w)
        _check_finite(name, "after", w2)
        norm = float(torch.linalg.vector_norm(w))
        delta = float(torch.linalg.vector_norm(w2 - w))
        if norm == 0.0:
            if on_zero == "skip":
                skipped.append(name)
                continue
            raise ValueError(
                f"layer {name!r} has zero norm in before, so |dW|/|W| is undefined "
                f"(exclude it, or skip zero-norm layers: on_zero='skip', --skip-zero-norm)"
            )
        out.append(LayerDistance(name, tuple(a[name].shape), norm, delta, delta / norm))
    if not out:
        raise ValueError(f"every selected layer has zero norm: {', '.join(skipped)}")
    return out, skipped


def relative_changes(
    before: StateLike,
    after: StateLike,
    *,
    include_biases: bool = False,
    include: Patterns = None,
    exclude: Patterns = None,
    on_zero: str = "raise",
) -> dict[str, float]:
    """Ordered mapping layer name → r_l = ‖W_l^after − W_l^before‖_F / ‖W_l^before‖_F (float64).

    Layer order is that of `before`. See the module docstring for inputs, selection and errors.
    """
    return {d.name: d.relative for d in layer_distances(
        before, after, include_biases=include_biases, include=include, exclude=exclude, on_zero=on_zero)}


def _as_changes(changes: Mapping[str, float] | Iterable[float]) -> list[float]:
    values = list(changes.values()) if isinstance(changes, Mapping) else list(changes)
    if not values:
        raise ValueError("changes must hold at least one relative change")
    for v in values:
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"relative changes must be finite and >= 0, got {v!r}")
    return [float(v) for v in values]


def drt_from_changes(changes: Mapping[str, float] | Iterable[float]) -> float:
    """Deep relative trust from relative changes r_l:  Π_l (1 + r_l) − 1  (as expm1(Σ log1p r_l))."""
    return math.expm1(math.fsum(math.log1p(r) for r in _as_changes(changes)))


def surrogate_from_changes(changes: Mapping[str, float] | Iterable[float]) -> float:
    """The surrogate from relative changes r_l:  (1/L) Σ_l [(1 + r_l)^L − 1]."""
    values = _as_changes(changes)
    n = len(values)
    return math.fsum(math.expm1(n * math.log1p(r)) for r in values) / n


def deep_relative_trust(
    before: StateLike,
    after: StateLike,
    *,
    include_biases: bool = False,
    include: Patterns = None,
    exclude: Patterns = None,
    on_zero: str = "raise",
) -> float:
    """Deep relative trust  Π_l (1 + ‖ΔW_l‖/‖W_l‖) − 1  over the selected layers (0 for equal nets)."""
    return drt_from_changes(relative_changes(
        before, after, include_biases=include_biases, include=include, exclude=exclude, on_zero=on_zero))


def trust_surrogate(
    before: StateLike,
    after: StateLike,
    *,
    include_biases: bool = False,
    include: Patterns = None,
    exclude: Patterns = None,
    on_zero: str = "raise",
) -> float:
    """The decoupled surrogate  (1/L) Σ_l [(1 + ‖ΔW_l‖/‖W_l‖)^L − 1]  over the L selected layers.

    It equals deep relative trust when every layer moves by the same relative amount."""
    return surrogate_from_changes(relative_changes(
        before, after, include_biases=include_biases, include=include, exclude=exclude, on_zero=on_zero))


def distance_report(
    before: StateLike,
    after: StateLike,
    *,
    include_biases: bool = False,
    include: Patterns = None,
    exclude: Patterns = None,
    on_zero: str = "raise",
) -> DistanceReport:
    """Everything at once: per-layer `LayerDistance`s, deep relative trust and the surrogate."""
    layers, skipped = _distances(before, after, include_biases, include, exclude, on_zero)
    rel = [d.relative for d in layers]
    return DistanceReport(layers, drt_from_changes(rel), surrogate_from_changes(rel), skipped)
