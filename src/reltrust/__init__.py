"""reltrust: Fromage, LARS and LAMB for PyTorch, deep relative trust, and a workbench for the papers."""
from reltrust import optim
from reltrust.optim import LAMB, LARS, Fromage

__version__ = "0.1.0"
__all__ = ["Fromage", "LARS", "LAMB", "optim", "__version__"]
