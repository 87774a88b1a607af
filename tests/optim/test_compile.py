"""The functional updates under torch.compile, as users who compile their training step get them:
the torch path of each traces into one graph, and follows the eager path while lr changes."""
import pytest
import torch

from reltrust.optim.fromage import fromage_update
from reltrust.optim.lamb import lamb_update
from reltrust.optim.lars import lars_update


@pytest.fixture(autouse=True)
def _compiler():
    try:
        torch.compile(lambda x: x * 2.0 + 1.0, fullgraph=True)(torch.ones(3))
    except Exception as exc:  # no C++ compiler, unsupported platform
        pytest.skip(f"torch.compile does not run here: {type(exc).__name__}: {exc}")
    torch._dynamo.reset()  # a fresh recompile budget for each test
    yield


SHAPES = [(40, 30), (30,), (30, 10)]


def _state(kind):
    gen = torch.Generator().manual_seed(0)
    ps, gs, a, b = ([torch.randn(s, generator=gen) for s in SHAPES] for _ in range(4))
    if kind == "fromage":
        return ps, gs, a, [torch.full((), float("nan")) for _ in SHAPES]
    if kind == "lars":
        return ps, gs, a
    return ps, gs, a, [x.abs() for x in b], [torch.zeros(()) for _ in SHAPES]  # exp_avg_sq ≥ 0


UPDATES = {
    "fromage": lambda st, lr: fromage_update(*st, lr=lr, momentum=0.9, p_bound=2.0, fused=False),
    "lars": lambda st, lr: lars_update(*st, lr=lr, momentum=0.9, nesterov=True, weight_decay=0.01, fused=False),
    "lamb": lambda st, lr: lamb_update(*st, lr=lr, weight_decay=0.1, fused=False),
}


@pytest.mark.parametrize("kind", UPDATES)
def test_torch_path_traces_into_one_graph(kind):
    """fullgraph=True raises on any graph break."""
    update = UPDATES[kind]
    torch.compile(lambda st: update(st, 0.1), fullgraph=True)(_state(kind))


@pytest.mark.parametrize("kind", UPDATES)
def test_compiled_torch_path_follows_eager_while_lr_changes(kind):
    """A scheduler changes lr every step: dynamo then makes lr dynamic. For Fromage that once
    compiled a kernel that kept the first lr's 1/√(1+η²) (see fromage_update); every update must
    follow the eager path to float32 rounding."""
    update = UPDATES[kind]
    compiled = torch.compile(update)
    eager_state, compiled_state = _state(kind), _state(kind)
    for lr in (0.5, 0.3, 0.2, 0.1, 0.05):
        update(eager_state, lr)
        compiled(compiled_state, lr)
        for a, b in zip(compiled_state, eager_state):
            for x, y in zip(a, b):
                torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
