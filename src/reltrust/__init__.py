"""reltrust: Fromage, LARS and LAMB for PyTorch, deep relative trust, and a workbench for the papers.

    from reltrust import Fromage, deep_relative_trust, TrustMonitor
"""
from reltrust import optim, trust
from reltrust.optim import LAMB, LARS, Fromage
from reltrust.trust import (
    TrustMonitor,
    deep_relative_trust,
    perturbation_probe,
    relative_changes,
    trust_surrogate,
)

__version__ = "0.1.0"
__all__ = [
    "Fromage", "LARS", "LAMB",
    "TrustMonitor", "deep_relative_trust", "perturbation_probe", "relative_changes", "trust_surrogate",
    "optim", "trust", "__version__",
]
