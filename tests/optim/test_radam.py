"""RAdamSkip ("radam_skip"): a float64 reference written from algorithms.md, the skip rule, torch's
RAdam once ρ_t is past the threshold, both code paths, torch.optim behaviour and bad inputs."""
import copy
import io
import math
import pickle

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from reltrust.optim import RAdamSkip, create, get
from reltrust.optim.radam import rectification, sma_length


def reference(ws, gs, state, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False, threshold=5.0,
              maximize=False):
    """One step of RAdam with the skip rule, plain float64 loops (algorithms.md, RAdam section)."""
    b1, b2 = betas
    rho_inf = 2 / (1 - b2) - 1
    out = []
    for i, (w, g) in enumerate(zip(ws, gs)):
        g = -g if maximize else g
        t = state.get(("t", i), 0) + 1
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if weight_decay and not decoupled:
            g = g + weight_decay * w
        m = b1 * state.get(("m", i), torch.zeros_like(w)) + (1 - b1) * g
        v = b2 * state.get(("v", i), torch.zeros_like(w)) + (1 - b2) * g * g
        state[("t", i)], state[("m", i)], state[("v", i)] = t, m, v
        if rho > threshold:
            if weight_decay and decoupled:
                w = w * (1 - lr * weight_decay)
            r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            w = w - lr * r * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (v.sqrt() + eps)
        out.append(w)
    return out


def tensors(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (5,), (3, 2, 4)]
    return [torch.randn(*s, generator=g, dtype=dtype) for s in shapes]


def gradients(ws, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(w.shape, generator=g, dtype=w.dtype) * (1 + k % 3) for w in ws] for k in range(steps)]


CASES = {
    "default": {},
    "wd": {"weight_decay": 0.1},
    "decoupled": {"weight_decay": 0.1, "decoupled": True},
    "paper-threshold": {"threshold": 4.0, "betas": (0.8, 0.99)},
    "maximize": {"maximize": True, "eps": 1e-3},
}


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("case", CASES)
def test_matches_the_float64_reference(case, foreach):
    kw = CASES[case]
    ws = tensors()
    params = [nn.Parameter(w.clone()) for w in ws]
    opt_kw = {k: v for k, v in kw.items() if k != "decoupled"}
    opt = RAdamSkip(params, lr=0.02, decoupled_weight_decay=kw.get("decoupled", False), foreach=foreach, **opt_kw)
    state, ref = {}, [w.clone() for w in ws]
    for gs in gradients(ws, 25):
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
        ref = reference(ref, gs, state, lr=0.02, **kw)
        for p, r in zip(params, ref):
            torch.testing.assert_close(p.detach(), r, rtol=1e-12, atol=1e-13)


def test_no_step_while_rho_is_at_most_the_threshold_and_the_moments_still_move():
    for threshold, first in ((5.0, 6), (4.0, 5), (20.0, 21)):
        assert max(t for t in range(1, 40) if sma_length(t, 0.999) <= threshold) == first - 1
        p = nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
        opt = RAdamSkip([p], lr=0.1, threshold=threshold, weight_decay=0.5, decoupled_weight_decay=True)
        w0 = p.detach().clone()
        for t in range(1, first + 1):
            p.grad = torch.randn_like(p)
            opt.step()
            assert opt.state[p]["step"] == t
            assert torch.equal(p.detach(), w0) == (t < first), t  # skipped up to first - 1, moved at first
            assert bool((opt.state[p]["exp_avg_sq"] > 0).all())


@pytest.mark.parametrize("foreach", [True, False])
def test_equals_torch_radam_once_past_the_threshold(foreach):
    """Same gradients, same starting weights at the first rectified step: torch's RAdam (which took
    SGD steps before) and RAdamSkip then take the same steps, step for step."""
    ws = tensors()
    ours = [nn.Parameter(w.clone()) for w in ws]
    theirs = [nn.Parameter(w.clone()) for w in ws]
    # decoupled decay: the moments see the gradients only, so they agree whatever the weights did
    o1 = RAdamSkip(ours, lr=3e-3, weight_decay=0.01, decoupled_weight_decay=True, foreach=foreach)
    o2 = torch.optim.RAdam(theirs, lr=3e-3, weight_decay=0.01, decoupled_weight_decay=True, foreach=foreach)
    first = next(t for t in range(1, 20) if sma_length(t, 0.999) > 5)  # 6
    for t, gs in enumerate(gradients(ws, 40), start=1):
        if t == first:  # torch's SGD phase moved its weights: both start the rectified phase from ours
            for a, b in zip(ours, theirs):
                b.data.copy_(a.detach())
        for a, b, g in zip(ours, theirs, gs):
            a.grad, b.grad = g.clone(), g.clone()
        before = [b.detach().clone() for b in theirs]
        o1.step()
        o2.step()
        moved_torch = any(not torch.equal(b.detach(), w) for b, w in zip(theirs, before))
        assert moved_torch  # torch always moves: SGD, then rectified
        if t >= first:
            for a, b in zip(ours, theirs):
                torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-12, atol=1e-14)


def test_torch_radam_state_loads_and_continues_identically():
    """A torch.optim.RAdam state dict (tensor step counts) loads into RAdamSkip, and back."""
    ws = tensors()
    a = [nn.Parameter(w.clone()) for w in ws]
    ta = torch.optim.RAdam(a, lr=1e-2)
    grads = gradients(ws, 20)
    for gs in grads[:10]:
        for p, g in zip(a, gs):
            p.grad = g.clone()
        ta.step()
    b = [nn.Parameter(p.detach().clone()) for p in a]
    ours = RAdamSkip(b, lr=1e-2)
    ours.load_state_dict(copy.deepcopy(ta.state_dict()))  # a loaded state dict shares its tensors
    assert all(type(s["step"]) is int and s["step"] == 10 for s in ours.state.values())
    for gs in grads[10:]:
        for p, q, g in zip(a, b, gs):
            p.grad, q.grad = g.clone(), g.clone()
        ta.step()
        ours.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(q.detach(), p.detach(), rtol=1e-12, atol=1e-14)
    back = torch.optim.RAdam([nn.Parameter(q.detach().clone()) for q in b], lr=1e-2)
    back.load_state_dict(copy.deepcopy(ours.state_dict()))
    assert all(torch.is_tensor(s["step"]) and float(s["step"]) == 20 for s in back.state.values())


def test_foreach_and_per_tensor_paths_are_bit_identical_float32():
    ws = tensors(torch.float32)
    pa, pb = [nn.Parameter(w.clone()) for w in ws], [nn.Parameter(w.clone()) for w in ws]
    oa = RAdamSkip(pa, lr=1e-2, weight_decay=1e-2, foreach=True, maximize=True)
    ob = RAdamSkip(pb, lr=1e-2, weight_decay=1e-2, foreach=False, maximize=True)
    for gs in gradients(ws, 15):
        for p, q, g in zip(pa, pb, gs):
            p.grad, q.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    for p, q in zip(pa, pb):
        assert torch.equal(p, q)
    for p, q in zip(pa, pb):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(oa.state[p][key], ob.state[q][key])


def test_parameters_join_late_and_keep_their_own_step_count():
    a, b = nn.Parameter(torch.randn(3, dtype=torch.float64)), nn.Parameter(torch.randn(3, dtype=torch.float64))
    opt = RAdamSkip([a, b], lr=1e-2)
    state, ref = {}, [b.detach().clone()]
    for t in range(12):
        a.grad = torch.randn(3, dtype=torch.float64)
        b.grad = torch.randn(3, dtype=torch.float64) if t >= 4 else None
        gb = b.grad
        opt.step()
        if gb is not None:
            ref = reference(ref, [gb], state, lr=1e-2)
    assert opt.state[a]["step"] == 12 and opt.state[b]["step"] == 8
    torch.testing.assert_close(b.detach(), ref[0], rtol=1e-12, atol=1e-14)


class _ScalarReads(TorchDispatchMode):
    """Counts reads of a tensor's value by the host (.item(), float(t), bool(t), `if t`)."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("foreach", [True, False])
def test_a_step_never_reads_a_tensor_on_the_host(foreach):
    ws = tensors(torch.float32)
    params = [nn.Parameter(w.clone()) for w in ws]
    opt = RAdamSkip(params, lr=1e-2, weight_decay=0.1, foreach=foreach)
    for gs in gradients(ws, 8):  # skipped steps and rectified ones
        for p, g in zip(params, gs):
            p.grad = g
        with _ScalarReads() as mode:
            opt.step()
        assert mode.reads == 0
    probe = _ScalarReads()
    with probe:
        params[0].sum().item()
    assert probe.reads == 1  # the counter sees a read when there is one


def test_state_dict_round_trip_deepcopy_and_pickle_continue_bit_for_bit():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = RAdamSkip(model.parameters(), lr=1e-2, weight_decay=1e-3)
    data = [(torch.randn(16, 6), torch.randint(0, 3, (16,))) for _ in range(14)]

    def train(m, o, batches):
        for x, y in batches:
            o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()

    train(model, opt, data[:7])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    resumed = copy.deepcopy(model)
    resumed.load_state_dict(ck["model"])
    resumed_opt = RAdamSkip(resumed.parameters(), lr=1e-2, weight_decay=1e-3)
    resumed_opt.load_state_dict(ck["opt"])
    copies = [(resumed, resumed_opt), copy.deepcopy((model, opt)), pickle.loads(pickle.dumps((model, opt)))]
    train(model, opt, data[7:])
    for m, o in copies:
        train(m, o, data[7:])
        for a, b in zip(model.parameters(), m.parameters()):
            assert torch.equal(a, b)


def test_registry_serves_both_variants():
    assert get("radam") is torch.optim.RAdam
    assert get("radam_skip") is RAdamSkip
    p = nn.Parameter(torch.randn(2))
    assert isinstance(create("radam_skip", [p], lr=1e-3, threshold=4.0), RAdamSkip)


def test_rectification_is_the_ratio_of_first_order_variances():
    """r_t² = Var[ψ]_{ρ∞}/Var[ψ]_{ρ_t} with Var[ψ]_ρ ∝ ρ/((ρ−2)(ρ−4)) (the paper's approximation)."""
    beta2 = 0.999
    rho_inf = 2 / (1 - beta2) - 1

    def var(rho):
        return rho / ((rho - 2) * (rho - 4))

    for t in (5, 10, 100, 1000, 10_000):
        rho = sma_length(t, beta2)
        assert rectification(rho, beta2) ** 2 == pytest.approx(var(rho_inf) / var(rho), rel=1e-12)
    assert sma_length(1, beta2) == pytest.approx(1.0, abs=1e-9)
    assert sma_length(100_000, beta2) == pytest.approx(rho_inf)
    assert rectification(rho_inf, beta2) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"lr": -1e-3}, r"Invalid lr: .*allowed range"),
        ({"lr": torch.tensor(1e-3)}, "lr must be a real number"),
        ({"betas": (1.0, 0.999)}, r"Invalid betas\[0\]"),
        ({"betas": (0.9, 1.0)}, r"Invalid betas\[1\]: 1.0; allowed range"),
        ({"betas": 0.9}, "Invalid betas"),
        ({"betas": (0.9, 0.6)}, r"Invalid betas\[1\]: 0.6; .*β₂ must exceed 0.666667"),
        ({"betas": (0.9, 0.99), "threshold": 300.0}, r"Invalid betas\[1\].*must exceed 0.99"),
        ({"eps": -1.0}, "Invalid eps"),
        ({"weight_decay": -0.1}, "Invalid weight_decay"),
        ({"threshold": 3.9}, r"Invalid threshold: 3.9; allowed range \[4.0, inf\)"),
    ],
)
def test_bad_arguments_get_one_line_errors_naming_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        RAdamSkip([nn.Parameter(torch.randn(2))], **kwargs)
    assert "\n" not in str(info.value)


def test_sparse_gradients_and_complex_parameters_are_refused():
    emb = nn.Embedding(5, 3, sparse=True)
    opt = RAdamSkip(emb.parameters())
    emb(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    with pytest.raises(ValueError, match="view_as_real"):
        RAdamSkip([nn.Parameter(torch.randn(2, dtype=torch.complex64))])


def test_lr_set_to_a_tensor_later_is_refused_at_step():
    p = nn.Parameter(torch.randn(3))
    opt = RAdamSkip([p])
    opt.param_groups[0]["lr"] = torch.tensor(1e-3)
    p.grad = torch.randn(3)
    with pytest.raises(ValueError, match="lr"):
        opt.step()
