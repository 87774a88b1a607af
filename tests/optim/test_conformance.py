"""Drop-in conformance with torch.optim's conventions (issue 12): tensor learning rates, complex
parameters, LARS's default lr, state dicts that serialise as they were saved, plain-number step
counts, fused=True with float64, and what Fromage does to a tensor whose gradient is zero."""
import copy

import pytest
import torch
from torch import nn

from reltrust import LAMB, LARS, Fromage

KINDS = {
    "fromage": lambda ps, **kw: Fromage(ps, **{"lr": 0.05, **kw}),
    "fromage_momentum": lambda ps, **kw: Fromage(ps, **{"lr": 0.05, "momentum": 0.9, "p_bound": 1.2, **kw}),
    "lars": lambda ps, **kw: LARS(ps, **{"lr": 2.0, "weight_decay": 1e-3, **kw}),
    "lamb": lambda ps, **kw: LAMB(ps, **{"lr": 0.01, "weight_decay": 0.01, **kw}),
}
PATHS = {"native": {}, "foreach": {"foreach": True}, "per_tensor": {"foreach": False}}


def _data(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(6, 5, generator=g, dtype=dtype), torch.randn(5, generator=g, dtype=dtype)]
    grads = [[torch.randn(w.shape, generator=g, dtype=dtype) for w in ws] for _ in range(4)]
    return ws, grads


def _run(kind, ws, grads, **kw):
    ps = [nn.Parameter(w.clone()) for w in ws]
    opt = KINDS[kind](ps, **kw)
    for gs in grads:
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in ps], opt


# 1. a tensor learning rate ----------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(), (1,)])
def test_tensor_lr_steps_as_the_number(kind, path, shape):
    """lr=torch.tensor(η) (0-dim or one element) gives the steps lr=η gives: float64 parameters to
    1e-12 on the torch paths (the arithmetic differs only in where 1/√(1+η²) is rounded), float32 ones
    on the native kernels (which read the value) to float32 rounding."""
    dtype = torch.float32 if path == "native" else torch.float64
    ws, grads = _data(dtype)
    lr = KINDS[kind]([nn.Parameter(torch.zeros(1))]).defaults["lr"]
    want, _ = _run(kind, ws, grads, **PATHS[path])
    got, _ = _run(kind, ws, grads, lr=torch.full(shape, lr, dtype=torch.float64), **PATHS[path])
    tol = dict(rtol=1e-12, atol=1e-14) if dtype is torch.float64 else dict(rtol=1e-6, atol=1e-7)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("kind", ["fromage", "lars", "lamb"])
def test_tensor_lr_changed_in_place_is_followed(kind):
    """The point of a tensor lr: a change written into it in place is what the next step uses."""
    ws, grads = _data(torch.float64)
    lr_now = torch.tensor(0.01, dtype=torch.float64)
    ps = [nn.Parameter(w.clone()) for w in ws]
    opt = KINDS[kind](ps, lr=lr_now, foreach=True)
    qs = [nn.Parameter(w.clone()) for w in ws]
    ref = KINDS[kind](qs, lr=0.01, foreach=True)
    for t, gs in enumerate(grads):
        value = 0.01 / (1 + t)
        lr_now.fill_(value)
        ref.param_groups[0]["lr"] = value
        for p, q, g in zip(ps, qs, gs):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-14)


def test_tensor_lr_out_of_range_or_not_one_element_is_refused():
    p = [nn.Parameter(torch.randn(3))]
    with pytest.raises(ValueError, match=r"Invalid lr: tensor\(-0\.1000\); allowed range \[0\.0, inf\)"):
        Fromage(p, lr=torch.tensor(-0.1))
    with pytest.raises(ValueError, match=r"one-element real floating tensor; got shape \(2,\)"):
        LAMB(p, lr=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="dtype torch.int64"):
        LARS(p, lr=torch.tensor(1))


# 2. complex parameters ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", KINDS)
def test_complex_parameter_steps_as_its_real_view(kind, path):
    """As in torch's optimisers, a complex tensor is updated as torch.view_as_real of it: the same
    numbers bit for bit as a real parameter holding that view (the Frobenius norm is the same)."""
    torch.manual_seed(0)
    wc = torch.randn(4, 3, dtype=torch.complex64)
    gcs = [torch.randn(4, 3, dtype=torch.complex64) for _ in range(3)]
    pc = nn.Parameter(wc.clone())
    pr = nn.Parameter(torch.view_as_real(wc).clone())
    oc, orr = KINDS[kind]([pc], **PATHS[path]), KINDS[kind]([pr], **PATHS[path])
    for g in gcs:
        pc.grad, pr.grad = g.clone(), torch.view_as_real(g).clone()
        oc.step()
        orr.step()
    assert torch.equal(torch.view_as_real(pc.detach()), pr.detach())
    for key, value in oc.state[pc].items():  # state of a complex parameter is complex, as in torch
        if value.dim() > 0:
            assert value.is_complex() and torch.equal(torch.view_as_real(value), orr.state[pr][key])


# 3. LARS's default lr -------------------------------------------------------------------------------


def test_lars_has_a_default_lr_so_groups_can_set_their_own():
    a, b = nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(3))
    opt = LARS([{"params": [a], "lr": 5.0}, {"params": [b]}])
    assert [g["lr"] for g in opt.param_groups] == [5.0, 1.0]
    a.grad, b.grad = torch.randn(4, 3), torch.randn(3)
    opt.step()


# 4. a reloaded state dict serialises as it was saved ---------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip_adds_no_key(kind):
    ws, grads = _data()
    _, opt = _run(kind, ws, grads)
    saved = copy.deepcopy(opt.state_dict())
    opt.load_state_dict(copy.deepcopy(saved))
    again = opt.state_dict()
    assert again["param_groups"] == saved["param_groups"]
    fresh = KINDS[kind]([nn.Parameter(w.clone()) for w in ws])
    fresh.load_state_dict(copy.deepcopy(saved))
    assert fresh.state_dict()["param_groups"] == saved["param_groups"]
    assert "differentiable" not in fresh.defaults


# 5. LAMB's step counter ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_lamb_takes_a_plain_number_step_and_counts_in_float32(path):
    """A state dict whose step is a plain number (older or hand-edited checkpoints) loads and
    continues exactly as the uninterrupted run; the counter is float32, as torch's Adam's, also for
    float64 parameters."""
    dtype = torch.float32 if path == "native" else torch.float64
    ws, grads = _data(dtype)
    want, _ = _run("lamb", ws, grads, **PATHS[path])
    first, opt = _run("lamb", ws, grads[:2], **PATHS[path])
    assert all(s["step"].dtype is torch.float32 for s in opt.state.values())
    saved = copy.deepcopy(opt.state_dict())
    for s in saved["state"].values():
        s["step"] = int(s["step"])  # 2
    ps = [nn.Parameter(w.clone()) for w in first]
    resumed = KINDS["lamb"](ps, **PATHS[path])
    resumed.load_state_dict(saved)
    for gs in grads[2:]:
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        resumed.step()
    for p, w in zip(ps, want):
        assert torch.equal(p.detach(), w)
    assert all(s["step"].dtype is torch.float32 and float(s["step"]) == 4 for s in resumed.state.values())


# 7. Fromage and a zero gradient ------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["fromage", "fromage_momentum"])
def test_fromage_leaves_a_tensor_with_zero_gradient_as_it_is(kind, path):
    """A gradient kept at zero (zero_grad(set_to_none=False), a frozen part of a model) takes no step:
    before, 1/√(1+η²) shrank it every step, to 0.95 of its norm in 1,000 steps at η = 0.01. The other
    tensors of the group step as they would alone."""
    torch.manual_seed(0)
    frozen, moving = torch.randn(8, 8), torch.randn(8, 8)
    pf, pm = nn.Parameter(frozen.clone()), nn.Parameter(moving.clone())
    alone = nn.Parameter(moving.clone())
    opt = KINDS[kind]([pf, pm], lr=0.01, **PATHS[path])
    ref = KINDS[kind]([alone], lr=0.01, **PATHS[path])
    for _ in range(200):
        g = torch.randn(8, 8)
        pf.grad, pm.grad, alone.grad = torch.zeros(8, 8), g.clone(), g.clone()
        opt.step()
        ref.step()
    assert torch.equal(pf.detach(), frozen)
    assert torch.equal(pm.detach(), alone.detach())
