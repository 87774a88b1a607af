"""reltrust: Fromage, LARS and LAMB for PyTorch, deep relative trust, and a workbench for the papers."""
from reltrust import optim

__version__ = "0.1.0"
__all__ = ["optim", "__version__"]
