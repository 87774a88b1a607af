"""One registry and factory for reltrust's optimisers and torch's own, and the parameter-group helper.

    opt = create("fromage", model, lr=0.01)
    opt = create("adamw", param_groups(model, weight_decay=0.05), lr=1e-3)
    opt = create("mypackage.optim:MyOptimizer", model, lr=0.01)   # any importable Optimizer subclass

`param_groups` puts biases and normalisation-layer weights in a group with `weight_decay=0` and
`trust_ratio=False` (ratio 1: LARS/LAMB/Fromage treat them as plain SGD/Adam-style tensors, the
usual convention). torch's optimisers ignore the extra `trust_ratio` key.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

_REGISTRY: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "radam": torch.optim.RAdam,  # SGD with momentum while rho_t <= 5; "radam_skip" (RAdamSkip) skips instead
    "nadam": torch.optim.NAdam,
}


def register(name: str, cls: type[torch.optim.Optimizer] | None = None) -> Callable:
    """Register an optimiser class under `name` (lower case). Usable as a decorator."""

    def add(c: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
        if not (isinstance(c, type) and issubclass(c, torch.optim.Optimizer)):
            raise TypeError(f"register: {c!r} is not a torch.optim.Optimizer subclass")
        _REGISTRY[name.lower()] = c
        return c

    return add(cls) if cls is not None else add


def available() -> list[str]:
    """The registered names, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> type[torch.optim.Optimizer]:
    """The class registered under `name` (any case), or, for an import path ``"package.module:Class"``,
    that class imported: a `RunSpec` can name a user's own optimiser, and every worker process that
    builds it imports it afresh."""
    if isinstance(name, str) and ":" in name:
        return _import(name)
    try:
        return _REGISTRY[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(available())}, "
                         "or an import path 'package.module:Class'") from None


def _import(path: str) -> type[torch.optim.Optimizer]:
    module, _, attr = path.partition(":")
    if not module or not attr.isidentifier():
        raise ValueError(f"optimizer {path!r}: an import path is 'package.module:Class'")
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - ImportError, or whatever the module's own code raised
        raise ValueError(f"optimizer {path!r}: importing {module!r} failed: {type(e).__name__}: {e}") from e
    cls = getattr(mod, attr, None)
    if cls is None:
        raise ValueError(f"optimizer {path!r}: module {module!r} has no attribute {attr!r}")
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise TypeError(f"optimizer {path!r}: {cls!r} is not a torch.optim.Optimizer subclass")
    return cls


_NORM_TYPES = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def param_groups(
    model: nn.Module,
    weight_decay: float = 0.0,
    no_decay: Callable[[str, nn.Parameter, nn.Module], bool] | Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """Split `model`'s trainable parameters into a decayed group and an excluded one.

    Excluded (``weight_decay=0, trust_ratio=False``): tensors with fewer than 2 dimensions (biases,
    norm scales), every parameter of a normalisation layer, and whatever `no_decay` selects — either a
    predicate ``(name, param, module) -> bool`` or an iterable of name substrings. Empty groups are
    dropped. Parameters shared between modules are listed once.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if no_decay is None:
        extra = lambda name, p, m: False  # noqa: E731
    elif callable(no_decay):
        extra = no_decay
    else:
        patterns = [no_decay] if isinstance(no_decay, str) else list(no_decay)
        extra = lambda name, p, m: any(s in name for s in patterns)  # noqa: E731

    decay, excluded, seen = [], [], set()
    for module_name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            name = f"{module_name}.{pname}" if module_name else pname
            if p.ndim < 2 or isinstance(module, _NORM_TYPES) or extra(name, p, module):
                excluded.append(p)
            else:
                decay.append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": excluded, "weight_decay": 0.0, "trust_ratio": False},
    ]
    return [g for g in groups if g["params"]]


def create(
    name_or_class: str | type[torch.optim.Optimizer],
    model_or_params: nn.Module | Iterable,
    **hyperparameters: Any,
) -> torch.optim.Optimizer:
    """Build an optimiser by registered name (or class) over a model or an iterable of params/groups.

    A module is turned into ``model.parameters()`` (only those that require grad), except for a class
    with ``routes_modules = True`` (MuonAdamW), which is given the module itself; to exclude biases
    and norm layers from decay and trust-ratio adaptation pass ``param_groups(model, wd)`` instead.
    """
    cls = get(name_or_class) if isinstance(name_or_class, str) else name_or_class
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise TypeError(f"create: expected a registered name or an Optimizer class, got {name_or_class!r}")
    if isinstance(model_or_params, nn.Module) and getattr(cls, "routes_modules", False):
        params: Any = model_or_params  # it routes by module type ("muon": hidden Linear weights vs the rest)
    elif isinstance(model_or_params, nn.Module):
        params = [p for p in model_or_params.parameters() if p.requires_grad]
    else:
        params = model_or_params
    return cls(params, **hyperparameters)
