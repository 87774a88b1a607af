"""A user's own optimiser, as `reltrust bench --optimizer bench_user_optimizer:ScaledSGD` names it: a
module that imports only torch, so that a worker process imports it quickly."""
from __future__ import annotations

import os
from pathlib import Path

import torch


class ScaledSGD(torch.optim.Optimizer):
    """A user's optimiser: plain SGD with its step multiplied by `scale`. `marker`: a folder in which
    every construction leaves a file named by the process id (so the test sees where it was built)."""

    def __init__(self, params, lr=0.1, scale=1.0, marker=None):
        if marker is not None:
            (Path(marker) / str(os.getpid())).touch()
        super().__init__(params, {"lr": lr, "scale": scale})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"] * group["scale"])


class NotAnOptimizer:
    pass
