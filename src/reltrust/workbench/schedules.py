"""Learning-rate schedules as closed-form factors, wrapped in `torch.optim.lr_scheduler.LambdaLR`.

The learning rate at schedule time t (t = 0, 1, 2, … counts epochs or optimiser steps, as the spec's
`schedule_interval` says) is ``lr · factor(t)``:

| schedule        | factor(t)                                          | kwargs (defaults)              |
|-----------------|----------------------------------------------------|--------------------------------|
| `constant`      | 1                                                  |                                |
| `step`          | gamma ** (t // step_size)                          | step_size (1), gamma (0.1)     |
| `exponential`   | gamma ** t  (the depth study: gamma = 0.95/epoch)  | gamma (0.95)                   |
| `robbins_monro` | (b / (b + t)) ** power, i.e. lr_t = a/(b + t)^power with a = lr · b^power | b (1.0), power (1.0) |
| `warmup`        | constant after the warmup below                    | warmup (required, > 0)         |
| `cosine`        | m + (1 − m) · (1 + cos(π · t / T)) / 2             | min_factor m (0), T = total    |
| `poly`          | (1 − t / T) ** power  (LAMB's polynomial decay)    | power (1.0), T = total         |

Every schedule also takes `warmup` (default 0): for t < warmup the factor is (t + 1) / warmup (linear,
never exactly 0), after which the schedule above runs on the shifted time t − warmup (for cosine and
poly, over the remaining T − warmup units; poly reaches 0 only at t = T, one unit after the run's
last). Or `warmup_fraction` f in [0, 1) instead: warmup = ⌈f · T⌉ units, so that the warmup is the same
share of every run whatever its length (LAMB's linear warmup then polynomial decay, You et al. 2020,
is ``poly`` with a `warmup_fraction`). T is the number of units in the run (epochs, or epochs × steps
per epoch) unless `total` is given.

`robbins_monro` with power 1 (the lecture notes' a/(b + t)) meets the Robbins–Monro conditions
Σ lr_t = ∞, Σ lr_t² < ∞; with power 2 (a/(b + t)²) Σ lr_t < ∞, so the iterate can stop short of a
stationary point. power must be > 0.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import torch

from reltrust.workbench.spec import SCHEDULES

_ALLOWED = {
    "constant": set(),
    "step": {"step_size", "gamma"},
    "exponential": {"gamma"},
    "robbins_monro": {"b", "power"},
    "warmup": set(),
    "cosine": {"min_factor", "total"},
    "poly": {"power", "total"},
}


def lr_factor(schedule: str, t: int, total: int, **kwargs: Any) -> float:
    """The multiplier of the base learning rate at schedule time `t` (pure function; see module doc)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    unknown = set(kwargs) - _ALLOWED[schedule] - {"warmup", "warmup_fraction"}
    if unknown:
        raise ValueError(f"schedule {schedule!r}: unknown arguments {sorted(unknown)}")
    span_total = int(kwargs.get("total", total))
    if "warmup_fraction" in kwargs:
        if "warmup" in kwargs:
            raise ValueError(f"schedule {schedule!r}: give warmup or warmup_fraction, not both")
        fraction = float(kwargs["warmup_fraction"])
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"schedule {schedule!r}: warmup_fraction must be in [0, 1) (got {fraction})")
        warmup = math.ceil(fraction * span_total)
    else:
        warmup = int(kwargs.get("warmup", 0))
    if warmup < 0 or (schedule == "warmup" and warmup < 1):
        raise ValueError(f"schedule {schedule!r}: warmup must be >= 1 (got {warmup})")
    if t < warmup:
        return (t + 1) / warmup
    s = t - warmup
    if schedule in ("constant", "warmup"):
        return 1.0
    if schedule == "step":
        step_size = int(kwargs.get("step_size", 1))
        if step_size < 1:
            raise ValueError("schedule 'step': step_size must be >= 1")
        return float(kwargs.get("gamma", 0.1)) ** (s // step_size)
    if schedule == "exponential":
        return float(kwargs.get("gamma", 0.95)) ** s
    if schedule == "robbins_monro":
        b = float(kwargs.get("b", 1.0))
        if b <= 0:
            raise ValueError("schedule 'robbins_monro': b must be > 0")
        power = float(kwargs.get("power", 1.0))
        if not power > 0:
            raise ValueError(f"schedule 'robbins_monro': power must be > 0 (got {power})")
        return (b / (b + s)) ** power
    span = span_total - warmup
    if schedule == "poly":
        power = float(kwargs.get("power", 1.0))
        if not power > 0:
            raise ValueError(f"schedule 'poly': power must be > 0 (got {power})")
        return 1.0 if span <= 0 else (1.0 - min(s, span) / span) ** power
    # cosine
    m = float(kwargs.get("min_factor", 0.0))
    if span <= 0:
        return 1.0
    s = min(s, span)
    return m + (1.0 - m) * (1.0 + math.cos(math.pi * s / span)) / 2.0


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, total: int, **kwargs: Any
) -> torch.optim.lr_scheduler.LambdaLR:
    """A `LambdaLR` whose factor at its step count t is `lr_factor(schedule, t, total, **kwargs)`.

    Call `scheduler.step()` once per unit (epoch or optimiser step). The factor function is validated
    here, so a bad argument fails before training starts.
    """
    lr_factor(schedule, 0, total, **kwargs)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(_factor_at, schedule, total, tuple(sorted(kwargs.items())))
    )


def _factor_at(schedule: str, total: int, items: tuple, t: int) -> float:
    return lr_factor(schedule, t, total, **dict(items))
