"""reltrust: Fromage, LARS and LAMB for PyTorch, deep relative trust, and a workbench for the papers.

    from reltrust import Fromage, deep_relative_trust, TrustMonitor

The names below are imported on first use, so that the torch-free parts (the results store, its
records and specs: `reltrust.workbench.store`) import without torch.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "optim": ("reltrust.optim", None),
    "trust": ("reltrust.trust", None),
    "Fromage": ("reltrust.optim", "Fromage"),
    "LARS": ("reltrust.optim", "LARS"),
    "LAMB": ("reltrust.optim", "LAMB"),
    "Nero": ("reltrust.optim", "Nero"),
    "TrustMonitor": ("reltrust.trust", "TrustMonitor"),
    "deep_relative_trust": ("reltrust.trust", "deep_relative_trust"),
    "perturbation_probe": ("reltrust.trust", "perturbation_probe"),
    "relative_changes": ("reltrust.trust", "relative_changes"),
    "trust_surrogate": ("reltrust.trust", "trust_surrogate"),
}

__version__ = "0.1.0"
__all__ = [
    "Fromage", "LARS", "LAMB", "Nero",
    "TrustMonitor", "deep_relative_trust", "perturbation_probe", "relative_changes", "trust_surrogate",
    "optim", "trust", "__version__",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'reltrust' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    value = value if attr is None else getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
