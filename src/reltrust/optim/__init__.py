"""reltrust's optimisers and the registry that also serves torch's own."""
from reltrust.optim.registry import available, create, get, param_groups, register

__all__ = ["available", "create", "get", "param_groups", "register"]
