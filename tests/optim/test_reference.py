"""Each optimiser against the independent float64 reference in references.py, every option."""
import math

import pytest
import torch

from reltrust import LAMB, LARS, Fromage

from . import references as ref

SHAPES = [(7, 5), (5,), (3, 2, 4), (1,)]


def problem(n_steps=6):
    """Weights (one zero-initialised bias for the zero-norm branch) and a fixed gradient sequence."""
    ws = [torch.randn(s, dtype=torch.float64) for s in SHAPES]
    ws[1].zero_()
    grads = [[torch.randn(s, dtype=torch.float64) for s in SHAPES] for _ in range(n_steps)]
    grads[2][3].zero_()  # a zero gradient at one step
    return ws, grads


CASES = [
    (Fromage, dict(lr=0.01), ref.fromage, dict(lr=0.01)),
    (Fromage, dict(lr=0.1, momentum=0.9), ref.fromage, dict(lr=0.1, momentum=0.9)),
    (Fromage, dict(lr=0.1, p_bound=1.0), ref.fromage, dict(lr=0.1, p_bound=1.0)),
    (Fromage, dict(lr=0.05, maximize=True), ref.fromage, dict(lr=0.05, maximize=True)),
    (LARS, dict(lr=2.0), ref.lars, dict(lr=2.0)),
    (LARS, dict(lr=2.0, weight_decay=0.01, eps=1e-8), ref.lars, dict(lr=2.0, weight_decay=0.01, eps=1e-8)),
    (LARS, dict(lr=2.0, nesterov=True, weight_decay=0.01), ref.lars, dict(lr=2.0, nesterov=True, weight_decay=0.01)),
    (LARS, dict(lr=0.5, momentum=0.0, trust_coefficient=0.02), ref.lars, dict(lr=0.5, momentum=0.0, kappa=0.02)),
    (LARS, dict(lr=1.0, maximize=True), ref.lars, dict(lr=1.0, maximize=True)),
    (LAMB, dict(lr=0.01), ref.lamb, dict(lr=0.01)),
    (LAMB, dict(lr=0.01, weight_decay=0.1, betas=(0.8, 0.99)), ref.lamb, dict(lr=0.01, weight_decay=0.1, betas=(0.8, 0.99))),
    (LAMB, dict(lr=0.01, maximize=True, eps=1e-3), ref.lamb, dict(lr=0.01, maximize=True, eps=1e-3)),
]


def run(cls, kw, ws, grads, dtype, foreach, trust=True):
    params = [torch.nn.Parameter(w.to(dtype).clone()) for w in ws]
    opt = cls([{"params": params, "trust_ratio": trust}], foreach=foreach, **kw)
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.to(dtype).clone()
        opt.step()
    return [p.detach().double() for p in params]


def reference(fn, kw, ws, grads, trust=True):
    state, cur = {}, [w.clone() for w in ws]
    for gs in grads:
        cur = fn(cur, gs, state, trust=trust, **kw)
    return cur


@pytest.mark.parametrize("cls,kw,fn,rkw", CASES, ids=lambda x: getattr(x, "__name__", None) or str(x))
@pytest.mark.parametrize("foreach", [True, False])
def test_matches_float64_reference(cls, kw, fn, rkw, foreach):
    ws, grads = problem()
    expected = reference(fn, rkw, ws, grads)
    got64 = run(cls, kw, ws, grads, torch.float64, foreach)
    for e, g in zip(expected, got64):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
    got32 = run(cls, kw, ws, grads, torch.float32, foreach)
    for e, g in zip(expected, got32):
        torch.testing.assert_close(g, e, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("cls,kw,fn,rkw", [CASES[0], CASES[5], CASES[10]], ids=["fromage", "lars", "lamb"])
def test_trust_ratio_false_group_uses_ratio_one(cls, kw, fn, rkw):
    ws, grads = problem()
    expected = reference(fn, rkw, ws, grads, trust=False)
    got = run(cls, kw, ws, grads, torch.float64, True, trust=False)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
    # and it differs from the trust-ratio run, so the flag is not ignored
    with_ratio = run(cls, kw, ws, grads, torch.float64, True, trust=True)
    assert any(not torch.allclose(a, b) for a, b in zip(got, with_ratio))


@pytest.mark.parametrize("cls,kw", [(c[0], c[1]) for c in CASES])
def test_foreach_equals_per_tensor_exactly(cls, kw):
    ws, grads = problem()
    a = run(cls, kw, ws, grads, torch.float32, True)
    b = run(cls, kw, ws, grads, torch.float32, False)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_lamb_large_tensor_is_split_into_blocks_and_matches_reference(monkeypatch):
    """Tensors larger than a block are processed in pieces, their direction kept from the norm pass
    to the update (KEEP_BYTES large) or computed twice (KEEP_BYTES 0); the result must not change."""
    import reltrust.optim._base as base_module
    import reltrust.optim.lamb as lamb_module

    monkeypatch.setattr(base_module, "CHUNK", 16)
    monkeypatch.setattr(base_module, "BLOCK", 40)
    ws = [torch.randn(9, 11, dtype=torch.float64), torch.randn(30, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]
    grads = [[torch.randn_like(w) for w in ws] for _ in range(4)]
    expected = reference(ref.lamb, dict(lr=0.02, weight_decay=0.05), ws, grads)
    results = []
    for keep in (1 << 30, 0):
        monkeypatch.setattr(lamb_module, "KEEP_BYTES", keep)
        for foreach in (True, False):
            got = run(LAMB, dict(lr=0.02, weight_decay=0.05), ws, grads, torch.float64, foreach)
            for e, g in zip(expected, got):
                torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
            results.append(got)
    for got in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], got))


def test_lamb_torch_path_blocks_on_cpu_and_one_multi_tensor_pass_elsewhere(monkeypatch):
    """On CPU the torch path builds LAMB's direction block by block (computed once per block when
    the step's u fits in KEEP_BYTES, else twice); on other devices (here `meta`, which runs the
    same Python) once, for all tensors together, as cache_blocks does there."""
    import reltrust.optim._base as base_module
    import reltrust.optim.lamb as lamb_module

    calls = []
    direction = lamb_module._direction

    def spy(params, *args, **kwargs):
        calls.append(len(params))
        return direction(params, *args, **kwargs)

    monkeypatch.setattr(lamb_module, "_direction", spy)
    monkeypatch.setattr(base_module, "CHUNK", 16)
    monkeypatch.setattr(base_module, "BLOCK", 40)

    def step(device, keep):
        monkeypatch.setattr(lamb_module, "KEEP_BYTES", keep)
        calls.clear()
        ps = [torch.nn.Parameter(torch.ones(9, 11, device=device)), torch.nn.Parameter(torch.ones(30, device=device))]
        for p in ps:
            p.grad = torch.ones_like(p)
        LAMB(ps, lr=0.1, weight_decay=0.1, foreach=True).step()
        return list(calls)

    pieces = [16] * 6 + [3] + [16, 14]  # 99 elements in pieces of ≤ 16, then 30
    assert sum(step("cpu", 1 << 30)) == len(pieces) and len(step("cpu", 1 << 30)) > 1
    assert sum(step("cpu", 0)) == 2 * len(pieces)  # recomputed for the update
    assert step("meta", 0) == [2]


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("fused", [None, False])
@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_depth_aware_fromage_matches_reference_with_eta_from_the_budget(tau, fused, foreach):
    """trust_budget=τ: η = (1+τ)^(1/L) − 1 with L the tensors stepped (here 4, then 3 when one
    has no gradient), against the float64 Fromage reference at that η; and each step's deep relative
    trust Π(1 + η_l) − 1 is τ, η_l = ‖W_new − cW‖/‖cW‖ measured from the weights."""
    ws, grads = problem()
    grads[4][1] = None  # one step where a tensor has no gradient: L = 3
    params = [torch.nn.Parameter(w.clone()) for w in ws]
    opt = Fromage(params, trust_budget=tau, momentum=0.5, fused=fused, foreach=foreach)
    states, cur = [{} for _ in ws], [w.clone() for w in ws]
    for gs in grads:
        stepped = [i for i, g in enumerate(gs) if g is not None]
        eta = (1.0 + tau) ** (1.0 / len(stepped)) - 1.0
        for p, g in zip(params, gs):
            p.grad = None if g is None else g.clone()
        before = [p.detach().clone() for p in params]
        opt.step()
        for i in stepped:  # one reference state per tensor (its keys are list positions)
            cur[i] = ref.fromage([cur[i]], [gs[i]], states[i], lr=eta, momentum=0.5)[0]
        for p, c in zip(params, cur):
            torch.testing.assert_close(p.detach(), c, rtol=1e-12, atol=1e-12)
        # W_new = c·W + ΔW with c = 1/√(1+η²): the layer's relative step ‖ΔW‖/‖cW‖ is η, so the
        # product over the stepped layers (all with nonzero W and direction here) is 1 + τ
        c = 1 / math.sqrt(1 + eta * eta)
        rel = [float((params[i].detach() - c * before[i]).norm() / (c * before[i].norm())) for i in stepped]
        if all(before[i].norm() > 0 for i in stepped) and not any(gs[i].norm() == 0 for i in stepped):
            assert math.prod(1 + r for r in rel) - 1 == pytest.approx(tau, rel=1e-9)


def test_trust_budget_and_lr_are_exclusive_with_one_line_errors():
    p = torch.nn.Parameter(torch.randn(3, 2))
    with pytest.raises(ValueError) as info:
        Fromage([p], lr=0.01, trust_budget=0.1)
    assert str(info.value) == ("Invalid lr: 0.01; lr and trust_budget are exclusive (trust_budget=0.1 chooses "
                               "η = (1+τ)^(1/L) − 1): give one of them")
    with pytest.raises(ValueError) as info:
        Fromage([p], trust_budget=0.0)
    assert str(info.value) == "Invalid trust_budget: 0.0; allowed range (0.0, inf)"
    opt = Fromage([p], trust_budget=0.1)
    assert opt.param_groups[0]["lr"] is None and Fromage([p]).param_groups[0]["lr"] == 0.01
    opt.param_groups[0]["trust_budget"] = None
    p.grad = torch.randn(3, 2)
    with pytest.raises(ValueError, match=r"^Invalid lr: None; give lr \(≥ 0\) or trust_budget \(> 0\)$"):
        opt.step()
