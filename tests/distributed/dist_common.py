"""The tiny model, data, optimiser settings and single-process reference the distributed tests share.

`TinyNet` has what sharding makes interesting: first dimensions 5 and 3 (uneven halves on 2 ranks:
3+2 and 2+1 rows), a head with one output (rank 1 holds an *empty* shard of it), a LayerNorm, and a
zero-initialised bias (the ‖W‖ = 0 branch of the trust ratio).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from reltrust.optim import LAMB, LARS, Fromage, param_groups


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.norm = nn.LayerNorm(5)
        self.fc2 = nn.Linear(5, 3)
        self.head = nn.Linear(3, 1)
        nn.init.zeros_(self.fc1.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.fc2(self.norm(torch.tanh(self.fc1(x))))))


def make_model(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet()


GLOBAL_BATCH = 8


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of `step` (the same on every rank and in the reference)."""
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(GLOBAL_BATCH, 4, generator=g), torch.randn(GLOBAL_BATCH, 1, generator=g)


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((model(x) - y) ** 2).mean()


# name -> (factory(model) -> optimizer, all-reduces one step() costs on a 1-D FSDP2 mesh).
# The count follows docs/scaling.md: per param group, one all-reduce for the weight norms and one for
# the update-direction norms when the group uses the trust ratio; Fromage with p_bound one more (the
# norms after the step) and, in a trust_ratio=False group, the weight norms for the p_bound reference.
CONFIGS: dict[str, tuple[Callable[[nn.Module], torch.optim.Optimizer], int]] = {
    # decay group: ‖W‖, ‖m‖, ‖W after‖ = 3; biases/LayerNorm (trust_ratio=False): ‖W‖, ‖W after‖ = 2
    "fromage_pbound_momentum": (lambda m: Fromage(param_groups(m), lr=0.1, p_bound=1.0, momentum=0.9), 5),
    # one group, trust ratio on every tensor, zero bias included: ‖W‖, ‖g‖
    "fromage_all_tensors": (lambda m: Fromage(m.parameters(), lr=0.05), 2),
    "lars_nesterov_groups": (
        lambda m: LARS(param_groups(m, weight_decay=1e-2), lr=1.0, momentum=0.9, nesterov=True, trust_coefficient=0.02),
        2,
    ),
    "lars_decay_loop": (
        lambda m: LARS(m.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-2, trust_coefficient=0.02, eps=1e-8,
                       foreach=False),
        2,
    ),
    "lamb_groups": (lambda m: LAMB(param_groups(m, weight_decay=0.01), lr=0.02), 2),
}


def train_reference(factory, steps: int, seed: int = 0, dtype: torch.dtype = torch.float32):
    """One process, the whole global batch, mean loss: what data parallelism must reproduce."""
    model = make_model(seed).to(dtype)
    opt = factory(model)
    for s in range(steps):
        x, y = batch(s)
        opt.zero_grad(set_to_none=True)
        loss_fn(model, x.to(dtype), y.to(dtype)).backward()
        opt.step()
    return model, opt


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (gathered; never call inside step()), a plain tensor as is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t.detach().clone()


def named_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, dict[str, torch.Tensor]]:
    """The optimiser state keyed by parameter name, DTensors gathered to whole tensors."""
    names = {p: n.removeprefix("module.") for n, p in model.named_parameters()}
    return {names[p]: {k: full(v) for k, v in s.items() if torch.is_tensor(v)} for p, s in opt.state.items()}


def named_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n.removeprefix("module."): full(p) for n, p in model.named_parameters()}


def max_rel_diff(got: dict, want: dict) -> float:
    """max over entries of ‖got − want‖∞ / max(‖want‖∞, 1e-12), recursing into dicts."""
    worst = 0.0
    assert got.keys() == want.keys(), (sorted(got), sorted(want))
    for k in want:
        if isinstance(want[k], dict):
            worst = max(worst, max_rel_diff(got[k], want[k]))
            continue
        a, b = got[k].double(), want[k].double()
        assert a.shape == b.shape, (k, a.shape, b.shape)
        if b.numel() == 0:
            continue
        if not torch.equal(a.isnan(), b.isnan()):
            return float("inf")
        both_nan = a.isnan() & b.isnan()
        diff = torch.where(both_nan, torch.zeros_like(a), (a - b).abs()).max().item()
        worst = max(worst, diff / max(b.abs().nan_to_num(0.0).max().item(), 1e-12))
    return worst
