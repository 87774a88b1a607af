"""Shared fixtures for the workbench tests: tiny runs (the embedded 5,000-image MNIST), one torch thread."""
from __future__ import annotations

import pytest
import torch

from reltrust.workbench.spec import RunSpec


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # Tiny models are slower with several threads on a shared 2-core machine, and a fixed thread count
    # is part of what makes runs bit-identical.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_spec(**changes) -> RunSpec:
    base = dict(study="test", dataset="mnist", model="mlp", optimizer="sgd", lr=0.1,
                optimizer_kwargs={"momentum": 0.9}, seed=0, epochs=2, batch_size=250,
                model_kwargs={"depth": 2, "width": 16})
    base.update(changes)
    return RunSpec(**base)


@pytest.fixture
def tiny_spec():
    return _tiny_spec

