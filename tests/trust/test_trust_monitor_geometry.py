"""The monitor's geometry of a step (opt-in ``update_spectral``): the relative spectral change of a
hand-made rank-one update against its closed form, and the per-step deep relative trust against a
float64 product written here."""
from __future__ import annotations


import pytest
import torch

from reltrust.optim import _native
from reltrust.trust import TrustMonitor


class RankOne(torch.optim.Optimizer):
    """Adds the given rank-one matrix s·u vᵀ (one per parameter, per step) to each parameter."""

    def __init__(self, params, updates):
        super().__init__(params, {})
        self.updates = updates  # list per step: list per parameter of (s, u, v)
        self.t = 0

    @torch.no_grad()
    def step(self, closure=None):
        for p, (s, u, v) in zip(self.param_groups[0]["params"], self.updates[self.t]):
            p.add_((s * torch.outer(u, v)).to(p.dtype))
        self.t += 1


def _weights(dtype):
    """Two layers with known σ₁: W = Q diag(σ) Rᵀ with orthogonal Q, R (float64, then cast)."""
    g = torch.Generator().manual_seed(3)
    out, sigmas = [], []
    for (m, n), sig in (((7, 5), [4.0, 2.5, 1.0, 0.5, 0.1]), ((6, 9), [3.0, 2.9, 1.0, 0.2, 0.1, 0.05])):
        q, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
        r, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
        d = torch.zeros(m, n, dtype=torch.float64)
        d[range(len(sig)), range(len(sig))] = torch.tensor(sig, dtype=torch.float64)
        out.append(torch.nn.Parameter((q @ d @ r.T).to(dtype)))
        sigmas.append(sig[0])
    return out, sigmas


def _updates(params, steps, seed=5):
    g = torch.Generator().manual_seed(seed)
    return [[(0.01 * (t + 1) * (1 + i), torch.randn(p.shape[0], generator=g, dtype=torch.float64),
              torch.randn(p.shape[1], generator=g, dtype=torch.float64)) for i, p in enumerate(params)]
            for t in range(steps)]


PATHS = [("exact", torch.float64), ("lanczos", torch.float64), ("exact", torch.float32), ("lanczos", torch.float32)]


@pytest.mark.parametrize("spectral,dtype", PATHS)
def test_relative_spectral_change_of_a_rank_one_update_is_its_closed_form(spectral, dtype):
    params, sigmas = _weights(dtype)
    updates = _updates(params, 1)
    mon = TrustMonitor(RankOne(params, updates), every=1, spectral=spectral, update_spectral=True)
    if dtype == torch.float32:  # float32 contiguous CPU tensors take the fused native passes where built
        assert mon._fused == _native.available()
    mon._optimizer.step()
    rel = mon.relative_spectral_update
    assert rel.shape == (1, 2) and mon.spectral_steps == [1]
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for j, ((s, u, v), sigma) in enumerate(zip(updates[0], sigmas)):
        closed = s * float(u.norm()) * float(v.norm())  # ‖s·u vᵀ‖₂ = s·|u|·|v|
        assert float(mon.update_spectral_norm[0, j]) == pytest.approx(closed, rel=tol)
        assert float(mon.spectral_norm_before[0, j]) == pytest.approx(sigma, rel=tol)
        assert float(rel[0, j]) == pytest.approx(closed / sigma, rel=tol)
    # the Frobenius change of a rank-one update equals its spectral norm: the two traces agree here
    assert torch.allclose(mon.update_norm[0], mon.update_spectral_norm[0], rtol=tol)


def test_the_update_spectral_trace_is_taken_at_the_spectral_steps_and_exported():
    params, sigmas = _weights(torch.float64)
    updates = _updates(params, 6)
    opt = RankOne(params, updates)
    mon = TrustMonitor(opt, every=3, spectral="exact", update_spectral=True)
    before = []
    for t in range(6):
        before.append([float(torch.linalg.matrix_norm(p.detach(), ord=2)) for p in params])
        opt.step()
    assert mon.spectral_steps == [1, 3, 6] and mon.relative_spectral_update.shape == (3, 2)
    for m, step in enumerate(mon.spectral_steps):
        for j, (s, u, v) in enumerate(updates[step - 1]):
            expect = s * float(u.norm() * v.norm()) / before[step - 1][j]
            assert float(mon.relative_spectral_update[m, j]) == pytest.approx(expect, rel=1e-10)
    rows = mon.to_records()
    assert [r["relative_spectral_update"] is None for r in rows if r["layer"] == "group0.param0"] == [
        False, True, False, True, True, False]
    d = mon.to_dict()
    assert d["relative_spectral_update"] == mon.relative_spectral_update.tolist()


def test_deep_relative_trust_of_each_step_is_the_product_formula():
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 6), torch.nn.ReLU(),
                                torch.nn.Linear(6, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    mon = TrustMonitor(opt, model, every=0)
    weights = [model[0].weight, model[2].weight, model[4].weight]
    ref = []
    for _ in range(4):
        x, y = torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        w0 = [w.detach().double().clone() for w in weights]
        opt.step()
        prod = 1.0
        for a, w in zip(w0, weights):
            prod *= 1.0 + float(torch.linalg.vector_norm(w.detach().double() - a) / torch.linalg.vector_norm(a))
        ref.append(prod - 1.0)
    drt = mon.deep_relative_trust()
    assert drt.dtype == torch.float64 and drt.shape == (4,)
    assert drt.tolist() == pytest.approx(ref, rel=1e-5)
    assert mon.to_dict()["deep_relative_trust"] == pytest.approx(ref, rel=1e-5)


def test_update_spectral_is_off_by_default_and_checked():
    params, _ = _weights(torch.float64)
    mon = TrustMonitor(RankOne(params, _updates(params, 1)), every=1)
    mon._optimizer.step()
    assert not mon.update_spectral and mon.relative_spectral_update.shape == (0, 2)
    assert "relative_spectral_update" not in mon.to_records()[0] and "relative_spectral_update" not in mon.to_dict()
    mon.detach()
    with pytest.raises(ValueError, match=r"every must be >= 1, got 0"):
        TrustMonitor(RankOne(params, []), every=0, update_spectral=True)
    with pytest.raises(ValueError, match=r"update_spectral must be True or False, got 1"):
        TrustMonitor(RankOne(params, []), every=1, update_spectral=1)
