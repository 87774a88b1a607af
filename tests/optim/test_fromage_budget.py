"""`fromage_budget`: the depth-aware Fromage with τ in the lr slot equals Fromage(trust_budget=τ) step for
step, on every path, and an LR scheduler on it schedules τ."""
from __future__ import annotations

import pytest
import torch

from reltrust.optim import Fromage, FromageBudget, create


def _problem(dtype):
    g = torch.Generator().manual_seed(7)
    shapes = [(6, 5), (6,), (4, 6), (4,)]
    ws = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    grads = [[torch.randn(s, generator=g, dtype=dtype) for s in shapes] for _ in range(4)]
    grads[2][1] = None  # one step where a tensor has no gradient: L = 3 there
    return ws, grads


@pytest.mark.parametrize("dtype,fused,foreach", [(torch.float32, None, None), (torch.float32, False, True),
                                                  (torch.float64, False, False)])
def test_budget_in_the_lr_slot_equals_fromage_with_trust_budget_bit_for_bit(dtype, fused, foreach):
    ws, grads = _problem(dtype)
    a = [torch.nn.Parameter(w.clone()) for w in ws]
    b = [torch.nn.Parameter(w.clone()) for w in ws]
    oa = Fromage(a, trust_budget=0.3, momentum=0.5, fused=fused, foreach=foreach)
    ob = FromageBudget(b, lr=0.3, momentum=0.5, fused=fused, foreach=foreach)
    for gs in grads:
        for pa, pb, g in zip(a, b, gs):
            pa.grad = None if g is None else g.clone()
            pb.grad = None if g is None else g.clone()
        oa.step()
        ob.step()
        for pa, pb in zip(a, b):
            assert torch.equal(pa.detach(), pb.detach())


def test_a_scheduler_on_lr_schedules_the_budget_and_the_registry_builds_it():
    ws, grads = _problem(torch.float64)
    a = [torch.nn.Parameter(w.clone()) for w in ws]
    b = [torch.nn.Parameter(w.clone()) for w in ws]
    ob = create("fromage_budget", b, lr=0.5)
    assert isinstance(ob, FromageBudget)
    sched = torch.optim.lr_scheduler.ExponentialLR(ob, gamma=0.5)
    for t, gs in enumerate(grads):
        oa = Fromage(a, trust_budget=0.5 * 0.5 ** t)  # stateless (momentum 0): a fresh one per step
        for pa, pb, g in zip(a, b, gs):
            pa.grad = None if g is None else g.clone()
            pb.grad = None if g is None else g.clone()
        oa.step()
        ob.step()
        sched.step()
        for pa, pb in zip(a, b):
            torch.testing.assert_close(pa.detach(), pb.detach(), rtol=0, atol=0)


def test_fromage_budget_refuses_a_second_budget():
    with pytest.raises(ValueError, match=r"give the budget τ as lr"):
        FromageBudget([torch.nn.Parameter(torch.ones(2, 2))], lr=0.1, trust_budget=0.1)


def test_with_a_closure_L_is_counted_from_the_gradients_the_closure_made():
    """A closure that computes the gradients (none exist before the first step): L is the tensors the
    step moves, counted after the closure, as Fromage(trust_budget) counts it — not 1 from the
    gradients that were there before it."""
    ws, _ = _problem(torch.float64)
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    params = []
    for opt_cls, kw in ((Fromage, {"trust_budget": 0.3}), (FromageBudget, {"lr": 0.3})):
        ps = [torch.nn.Parameter(w.clone()) for w in ws]
        opt = opt_cls(ps, **kw)

        def closure():
            opt.zero_grad()
            h = torch.tanh(x @ ps[0].T + ps[1]) @ ps[2].T + ps[3]
            loss = h.square().sum()
            loss.backward()
            return loss

        for _ in range(2):
            opt.step(closure)
        params.append([p.detach().clone() for p in ps])
    for a, b in zip(*params):
        assert torch.equal(a, b)
