"""reltrust's optimisers (Fromage, LARS, LAMB, Nero) and the registry that also serves torch's own.

    from reltrust.optim import create, param_groups
    opt = create("lamb", param_groups(model, weight_decay=0.01), lr=1e-3)
"""
from reltrust.optim.fromage import Fromage, fromage_update
from reltrust.optim.fromage_budget import FromageBudget
from reltrust.optim.lamb import LAMB, lamb_update
from reltrust.optim.lars import LARS, lars_update
from reltrust.optim.muon import MuonAdamW
from reltrust.optim.nero import Nero, nero_update
from reltrust.optim.radam import RAdamSkip, radam_skip_update
from reltrust.optim.textbook import SGDW, AdamNoBiasCorrection
from reltrust.optim.registry import available, create, get, param_groups, register
from reltrust.optim._ratio import norms, trust_ratio

register("fromage", Fromage)
register("fromage_budget", FromageBudget)
register("lars", LARS)
register("lamb", LAMB)
register("nero", Nero)
register("muon", MuonAdamW)
register("radam_skip", RAdamSkip)
register("adam_nobc", AdamNoBiasCorrection)  # the practice study's ablations
register("sgdw", SGDW)

__all__ = [
    "Fromage", "FromageBudget", "LARS", "LAMB", "Nero", "MuonAdamW", "RAdamSkip", "AdamNoBiasCorrection", "SGDW",
    "fromage_update", "lars_update", "lamb_update", "nero_update", "radam_skip_update",
    "norms", "trust_ratio",
    "available", "create", "get", "param_groups", "register",
]
