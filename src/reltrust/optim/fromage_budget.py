"""The depth-aware Fromage with its budget in the lr slot ("fromage_budget"), for schedulers and RunSpecs.

    opt = create("fromage_budget", model, lr=0.3)      # τ = 0.3: every step's deep relative trust

`Fromage(params, trust_budget=τ)` leaves each group's ``lr`` at None, which torch's LR schedulers and the
workbench's `RunSpec.lr` cannot drive. This subclass is the same rule with τ read from ``lr``: every
step takes η = (1+τ)^(1/L) − 1, L the tensors it updates with a trust ratio (see `Fromage`), so a
schedule on ``lr`` schedules τ. Everything else (momentum, p_bound, the native, foreach and
per-tensor paths) is Fromage's.
"""
from __future__ import annotations

from typing import Any

import torch

from reltrust.optim.fromage import Fromage


class FromageBudget(Fromage):
    r"""Fromage whose ``lr`` is the trust budget τ > 0 of every step: η = (1+τ)^(1/L) − 1.

    Equal, step for step, to ``Fromage(params, trust_budget=τ, ...)``; see `Fromage` for the rest of the
    arguments. τ = 0.1 at L = 100 tensors gives η ≈ 0.00095.
    """

    def __init__(self, params, lr: float = 0.1, p_bound: float | None = None, momentum: float = 0.0, **kwargs: Any):
        if "trust_budget" in kwargs:
            raise ValueError("FromageBudget: give the budget τ as lr (trust_budget is what lr means here)")
        super().__init__(params, lr=lr, p_bound=p_bound, momentum=momentum, **kwargs)

    def _budgeted(self) -> bool:
        return True  # every group's lr is its τ

    def budget_lr(self, group: dict[str, Any]) -> float | torch.Tensor:
        """η = (1+τ)^(1/L) − 1 with τ this group's lr (a float, or a one-element tensor)."""
        return self._budget_eta(group["lr"])
