"""Shared helpers for the trust tests: small seeded MLPs and batches (as fixtures returning factories)."""
from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: threads only add overhead on the 2-core machine. Scoped to these tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_mlp(depth: int, width: int = 32, d_in: int = 16, d_out: int = 4, *, seed: int = 0,
             dtype=torch.float32, bias: bool = True) -> nn.Sequential:
    """`depth` linear layers with ReLU between them (depth 1 = one linear map)."""
    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(seed)
        dims = [d_in] + [width] * (depth - 1) + [d_out]
        layers: list[nn.Module] = []
        for i in range(depth):
            layers.append(nn.Linear(dims[i], dims[i + 1], bias=bias))
            if i < depth - 1:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers).to(dtype)


def make_batch(n: int = 64, d_in: int = 16, d_out: int = 4, *, seed: int = 1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g, dtype=dtype)
    y = torch.randint(0, d_out, (n,), generator=g)
    return x, y


@pytest.fixture
def mlp():
    return make_mlp


@pytest.fixture
def batch():
    return make_batch
