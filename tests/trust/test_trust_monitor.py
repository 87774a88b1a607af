"""TrustMonitor: exact relative updates against float64 references, spectra, exports, no side effects."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reltrust.trust import TrustMonitor
from reltrust.trust.monitor import top_singular_value


def train(model, opt, batch, steps, record=None, grads=None):
    """Plain training steps; `record` collects (before, after) float64 copies of the weights and
    `grads` float64 copies of the gradients."""
    x, y = batch
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        before = {n: p.detach().double().clone() for n, p in model.named_parameters()}
        if grads is not None:
            grads.append({n: p.grad.double().clone() for n, p in model.named_parameters()})
        opt.step()
        losses.append(float(loss.detach()))
        if record is not None:
            after = {n: p.detach().double().clone() for n, p in model.named_parameters()}
            record.append((before, after))
    return losses


def reference(record, names):
    """float64 by hand: ‖ΔW‖/‖W‖, ‖ΔW‖, ‖W‖ (before the step) per step and layer."""
    rel, dn, nrm = [], [], []
    for before, after in record:
        rel.append([float((after[n] - before[n]).norm() / before[n].norm()) for n in names])
        dn.append([float((after[n] - before[n]).norm()) for n in names])
        nrm.append([float(before[n].norm()) for n in names])
    return np.array(rel), np.array(dn), np.array(nrm)


@pytest.mark.parametrize("fused", [True, False], ids=["native", "torch"])
def test_native_and_torch_passes_record_the_same_float32_norms(mlp, batch, fused, monkeypatch):
    """float32 CPU layers take the native kernels' fused passes (copy-and-norm, difference-norm) where
    they are built; with them refused, the multi-tensor ops. Both match the float64 reference to
    float32 rounding, across a flush of the device buffer (flush_every=2, 5 steps)."""
    from reltrust.optim import _native

    if not fused:
        monkeypatch.setattr(_native, "supported", lambda *a: False)
    elif not _native.available():
        pytest.skip("native kernels unavailable")
    model = mlp(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    mon = TrustMonitor(opt, model, every=0, flush_every=2)
    assert mon._fused is fused
    record = []
    train(model, opt, batch(), 5, record)
    rel, dn, nrm = reference(record, mon.layers)
    np.testing.assert_allclose(mon.update_norm.numpy(), dn, rtol=2e-6)
    np.testing.assert_allclose(mon.norm.numpy(), nrm, rtol=2e-6)
    np.testing.assert_allclose(mon.relative_update.numpy(), rel, rtol=4e-6)


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 2e-6), (torch.float64, 1e-12)])
def test_plain_sgd_relative_update_is_exact(mlp, batch, dtype, rtol):
    model = mlp(3, dtype=dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = TrustMonitor(opt, model, every=0)
    record, record_grads = [], []
    train(model, opt, batch(dtype=dtype), 5, record, record_grads)
    assert mon.layers == ["0.weight", "2.weight", "4.weight"]
    assert mon.steps == [1, 2, 3, 4, 5]
    rel, dn, nrm = reference(record, mon.layers)
    np.testing.assert_allclose(mon.relative_update.numpy(), rel, rtol=rtol)
    np.testing.assert_allclose(mon.update_norm.numpy(), dn, rtol=rtol)
    np.testing.assert_allclose(mon.norm.numpy(), nrm, rtol=rtol)
    # and for plain SGD ΔW = −lr·g, so ‖ΔW‖/‖W‖ = lr·‖g‖/‖W‖: a second reference from the gradients
    by_grad = [[0.1 * float(grads[n].norm() / before[n].norm()) for n in mon.layers]
               for (before, _), grads in zip(record, record_grads)]
    np.testing.assert_allclose(mon.relative_update.numpy(), by_grad, rtol=max(rtol, 1e-6 if dtype == torch.float32 else 1e-12))


def test_momentum_weight_decay_and_adam(mlp, batch):
    for make_opt in (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2),
                     lambda p: torch.optim.AdamW(p, lr=1e-2)):
        model = mlp(3, dtype=torch.float64)
        opt = make_opt(model.parameters())
        record = []
        with TrustMonitor(opt, model, every=0) as mon:
            train(model, opt, batch(dtype=torch.float64), 4, record)
        rel, _, _ = reference(record, mon.layers)
        np.testing.assert_allclose(mon.relative_update.numpy(), rel, rtol=1e-12)


def test_detach_and_context_manager_stop_recording(mlp, batch):
    model = mlp(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with TrustMonitor(opt, model) as mon:
        assert mon.attached
        train(model, opt, batch(), 3)
    assert not mon.attached
    train(model, opt, batch(), 2)
    assert len(mon) == 3 and mon.relative_update.shape == (3, 2)
    mon.detach()  # idempotent
    mon.attach()
    mon.attach()  # idempotent: hooks registered once
    record = []
    train(model, opt, batch(), 2, record)
    assert mon.steps == [1, 2, 3, 4, 5]
    rel, _, _ = reference(record, mon.layers)
    np.testing.assert_allclose(mon.relative_update[3:].numpy(), rel, rtol=2e-6)


def test_monitor_does_not_change_training(mlp, batch):
    """Same seed, with and without the monitor: bit-identical losses and weights."""
    runs = []
    for attach in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 32), nn.Dropout(0.2), nn.ReLU(), nn.Linear(32, 4))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        mon = TrustMonitor(opt, model, every=1) if attach else None
        losses = train(model, opt, batch(), 6)
        runs.append((losses, [p.detach().clone() for p in model.parameters()]))
        if mon:
            mon.detach()
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_flushing_in_batches_gives_the_same_numbers(mlp, batch):
    results = []
    for flush in (1, 3, 1000):
        model = mlp(3)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        mon = TrustMonitor(opt, model, every=2, flush_every=flush)
        train(model, opt, batch(), 7)
        results.append((mon.relative_update, mon.norm, mon.top_singular_value))
    for r in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], r))


def test_top_singular_value_exact_and_lanczos(mlp, batch):
    model = mlp(3, width=24)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    exact = TrustMonitor(opt, model, every=3, spectral="exact")
    lanczos = TrustMonitor(opt, model, every=3)
    truth = []
    x, y = batch()
    for step in range(1, 11):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if step == 1 or step % 3 == 0:
            truth.append([float(np.linalg.svd(p.detach().double().numpy(), compute_uv=False)[0])
                          for n, p in model.named_parameters() if p.ndim >= 2])
    truth = np.array(truth)
    assert exact.spectral_steps == lanczos.spectral_steps == [1, 3, 6, 9]
    np.testing.assert_allclose(exact.top_singular_value.numpy(), truth, rtol=1e-5)
    est = lanczos.top_singular_value.numpy()
    assert np.all(est <= truth * (1 + 1e-5))  # a Ritz value: σ_1 from below
    np.testing.assert_allclose(est, truth, rtol=1e-4)


def test_layer_selection_and_names(mlp):
    model = mlp(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert TrustMonitor(opt, model, include_biases=True).layers == [
        "0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    assert TrustMonitor(opt, model, exclude=r"^4\.").layers == ["0.weight", "2.weight"]
    assert TrustMonitor(opt).layers == ["group0.param0", "group0.param2", "group0.param4"]
    named = torch.optim.SGD(model.named_parameters(), lr=0.1)  # torch >= 2.6 keeps param_names
    if "param_names" in named.param_groups[0]:
        assert TrustMonitor(named).layers == ["0.weight", "2.weight", "4.weight"]


def test_exports(mlp, batch, tmp_path):
    model = mlp(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with TrustMonitor(opt, model, every=2) as mon:
        train(model, opt, batch(), 4)
    rel, nrm, sv = mon.relative_update, mon.norm, mon.top_singular_value

    mon.to_csv(tmp_path / "m.csv")
    with open(tmp_path / "m.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * 2
    assert rows[0].keys() == {"step", "layer", "norm", "update_norm", "relative_update", "top_singular_value"}
    for r in rows:
        i, j = int(r["step"]) - 1, mon.layers.index(r["layer"])
        assert float(r["relative_update"]) == rel[i, j].item()
        assert float(r["norm"]) == nrm[i, j].item()
        if int(r["step"]) in mon.spectral_steps:
            assert float(r["top_singular_value"]) == sv[mon.spectral_steps.index(int(r["step"])), j].item()
        else:
            assert r["top_singular_value"] == ""

    mon.to_json(tmp_path / "m.json")
    d = json.loads((tmp_path / "m.json").read_text())
    assert d["layers"] == mon.layers and d["steps"] == [1, 2, 3, 4] and d["spectral_steps"] == [1, 2, 4]
    np.testing.assert_array_equal(np.array(d["relative_update"]), rel.numpy())

    class FakeWriter:
        def __init__(self):
            self.scalars = []

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

    w = FakeWriter()
    mon.to_tensorboard(w)
    assert ("trust/relative_update/0.weight", rel[2, 0].item(), 3) in w.scalars
    assert ("trust/top_singular_value/2.weight", sv[2, 1].item(), 4) in w.scalars
    assert len(w.scalars) == 4 * 2 * 2 + 3 * 2


def test_tensorboard_log_dir(mlp, batch, tmp_path):
    pytest.importorskip("tensorboard")
    model = mlp(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with TrustMonitor(opt, model) as mon:
        train(model, opt, batch(), 2)
    mon.to_tensorboard(tmp_path / "tb")
    assert any((tmp_path / "tb").iterdir())


def test_zero_norm_layer_gives_inf_and_json_null():
    model = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with TrustMonitor(opt, model, every=0) as mon:
        opt.zero_grad()
        model(torch.ones(4, 3)).sum().backward()
        opt.step()
    assert math.isinf(mon.relative_update[0, 0].item())
    assert mon.to_dict()["relative_update"] == [[None]]


def test_argument_validation(mlp):
    model = mlp(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        TrustMonitor(model)
    for kwargs, msg in [({"every": -1}, "every must be an integer >= 0"),
                        ({"lanczos_steps": 0}, "lanczos_steps must be an integer >= 1"),
                        ({"flush_every": 0}, "flush_every must be an integer >= 1"),
                        ({"spectral": "power"}, "spectral must be one of"),
                        ({"include": "nothing"}, "no layers selected")]:
        with pytest.raises(ValueError, match=msg):
            TrustMonitor(opt, model, **kwargs)


@pytest.mark.parametrize("shape", [(40, 30), (7, 60), (50, 3), (1, 9)])
def test_lanczos_top_singular_value(shape):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=g, dtype=torch.float64)
    w[0] *= 3  # a clear top singular value
    truth = float(np.linalg.svd(w.numpy(), compute_uv=False)[0])
    v0 = torch.randn(shape[1], generator=g, dtype=torch.float64)
    for steps in (1, 3, 10, 100):
        sigma, v = top_singular_value(w, v0, steps)
        assert float(sigma) <= truth * (1 + 1e-12)  # never above σ_1
        assert float(v.norm()) == pytest.approx(1.0, rel=1e-12)
    assert float(sigma) == pytest.approx(truth, rel=1e-10)  # a full Krylov space is exact
    # warm start from the returned vector: already converged
    assert float(top_singular_value(w, v, 2)[0]) == pytest.approx(truth, rel=1e-10)
    assert float(top_singular_value(torch.zeros(shape, dtype=torch.float64), v0, 5)[0]) == 0.0


@pytest.mark.parametrize("lr", [0.01, 0.1, 0.5])
def test_fromage_step_as_the_monitor_reports(mlp, batch, lr):
    """A real Fromage step of lr η: W_new = c·(W − η‖W‖ĝ) with c = 1/√(1+η²).

    Its gradient part moves every layer by exactly η/√(1+η²) of ‖W‖; the total relative change that
    the monitor reports adds the shrink (c − 1)·W, so it is
        ‖W_new − W‖/‖W‖ = √((1−c)² + (ηc)² + 2(1−c)·ηc·⟨Ŵ, ĝ⟩),
    which equals η/√(1+η²) up to 1 − c ≤ η²/2 (the paper's eq. 5: ≈ η)."""
    from reltrust import Fromage

    model = mlp(4, dtype=torch.float64)
    opt = Fromage(model.parameters(), lr=lr)
    record, grads = [], []
    with TrustMonitor(opt, model, every=0, include_biases=True) as mon:
        train(model, opt, batch(dtype=torch.float64), 3, record, grads)
    c = 1 / math.sqrt(1 + lr * lr)
    for s, ((before, after), g) in enumerate(zip(record, grads)):
        for j, n in enumerate(mon.layers):
            w, w2, gn = before[n], after[n], g[n]
            # the lead's statement, exactly: the gradient part has relative size η/√(1+η²)
            assert float((w2 - c * w).norm() / w.norm()) == pytest.approx(lr * c, rel=1e-12)
            cos = float((w * gn).sum() / (w.norm() * gn.norm()))
            closed = math.sqrt((1 - c) ** 2 + (lr * c) ** 2 + 2 * (1 - c) * lr * c * cos)
            reported = mon.relative_update[s, j].item()
            assert reported == pytest.approx(closed, rel=1e-10)
            assert abs(reported - lr * c) <= (1 - c) * (1 + 1e-9)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_lanczos_exhausted_krylov_space_is_exact(rank):
    """A rank-r matrix exhausts the Krylov space after r steps: the early stop (α or β below the
    tolerance) must leave B with the filled rows and columns only and give σ_1 exactly, with a unit
    right vector that attains it (‖W v‖ = σ_1)."""
    g = torch.Generator().manual_seed(rank)
    w = (torch.randn(30, rank, generator=g, dtype=torch.float64)
         @ torch.randn(rank, 20, generator=g, dtype=torch.float64))
    truth = float(np.linalg.svd(w.numpy(), compute_uv=False)[0])
    sigma, v = top_singular_value(w, torch.randn(20, generator=g, dtype=torch.float64), 10)
    assert float(sigma) == pytest.approx(truth, rel=1e-10)
    assert float(v.norm()) == pytest.approx(1.0, rel=1e-12)
    assert float((w @ v).norm()) == pytest.approx(truth, rel=1e-8)


def test_lanczos_float32_matches_float64_reference():
    """float32 layers (the monitor's usual case): the Ritz value agrees with a float64 run of the
    same Krylov space to float32 rounding, and stays at or below σ_1."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(64, 200, generator=g) / 14
    v0 = torch.randn(200, generator=g)
    truth = float(np.linalg.svd(w.double().numpy(), compute_uv=False)[0])
    for steps in (2, 4, 8):
        s32, _ = top_singular_value(w, v0, steps)
        s64, _ = top_singular_value(w.double(), v0.double(), steps)
        assert float(s32) == pytest.approx(float(s64), rel=1e-5)
        assert float(s32) <= truth * (1 + 1e-5)


def test_refresh_pass_gives_the_bits_of_the_two_passes():
    """The fused post-step pass (‖a − b‖, then b ← a with ‖a‖) equals difference_norms followed by
    snapshot_norms bit for bit, on sizes that cross the kernels' block and span edges."""
    from reltrust.optim import _native

    if not _native.available():
        pytest.skip("native kernels unavailable")
    g = torch.Generator().manual_seed(3)
    a = [torch.randn(n, generator=g) for n in (1, 7, 1000, 70_001)]
    b = [t + 1e-3 * torch.randn(t.shape, generator=g) for t in a]
    b2 = [t.clone() for t in b]
    diff, norm = torch.empty(len(a)), torch.empty(len(a))
    _native.refresh_norms(a, b, diff, norm)
    diff2, norm2 = torch.empty(len(a)), torch.empty(len(a))
    _native.difference_norms(a, b2, diff2)
    _native.snapshot_norms(b2, a, norm2)
    assert torch.equal(diff, diff2) and torch.equal(norm, norm2)
    assert all(torch.equal(x, y) for x, y in zip(b, a))  # b now holds the snapshot of a
    assert np.allclose(norm.numpy(), [float(x.double().norm()) for x in a], rtol=1e-6)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_reused_snapshot_records_the_same_bits_even_when_weights_are_written_between_steps(mlp, batch, optimizer):
    """reuse_snapshot (the post-hook takes the next snapshot) against reuse_snapshot=False, on two
    identical trajectories: every recorded number is the same bit for bit, including the steps after
    an in-place write to a weight between two steps (seen through its version counter, so the next
    pre-hook snapshots again) and after a detach/attach."""
    from reltrust.optim import _native

    if not _native.available():
        pytest.skip("native kernels unavailable")
    results = []
    for reuse in (True, False):
        torch.manual_seed(0)
        model = mlp(3)
        opt = (torch.optim.Adam(model.parameters(), lr=1e-2) if optimizer == "adam"
               else torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
        mon = TrustMonitor(opt, model, every=3, flush_every=4, reuse_snapshot=reuse)
        assert mon._fused and mon._reuse is reuse
        data = batch()
        train(model, opt, data, 4)
        with torch.no_grad():
            next(model.parameters()).mul_(1.5)  # a write the next step's ‖W‖ and ΔW must see
        train(model, opt, data, 3)
        mon.detach()
        with torch.no_grad():
            list(model.parameters())[2].add_(0.25)
        mon.attach()
        train(model, opt, data, 3)
        results.append((mon.norm, mon.update_norm, mon.top_singular_value))
    for x, y in zip(*results):
        assert torch.equal(x, y)
    norms = results[0][0]
    assert norms[4, 0] > 1.4 * norms[3, 0]  # the write between steps 4 and 5 is in step 5's ‖W‖


def test_reused_snapshot_must_be_a_bool(mlp):
    model = mlp(2)
    with pytest.raises(TypeError, match="reuse_snapshot must be True or False, got 1"):
        TrustMonitor(torch.optim.SGD(model.parameters(), lr=0.1), model, reuse_snapshot=1)


@pytest.mark.parametrize("shape", [(40, 30), (7, 60), (50, 3), (1, 9), (33, 17), (256, 100)])
def test_native_lanczos_is_the_torch_lanczos_in_float64(shape, monkeypatch):
    """Contiguous float32 CPU matrices run the whole bidiagonalisation in one native call
    (rt_lanczos), in float64 from the float32 entries: the torch form run on the float64 copy of
    the same matrix builds the same Krylov space, so σ_1 and the Ritz vector agree to float32
    rounding for every step count (shapes off the kernel's 8-wide lanes included)."""
    from reltrust.optim import _native

    if not _native.available():
        pytest.skip("native kernels unavailable")
    calls = []
    real = _native.lanczos
    monkeypatch.setattr(_native, "lanczos", lambda *a: calls.append(a[2]) or real(*a))
    g = torch.Generator().manual_seed(sum(shape))
    w = torch.randn(shape, generator=g)
    w[0] *= 2
    v0 = torch.randn(shape[1], generator=g)
    truth = float(np.linalg.svd(w.double().numpy(), compute_uv=False)[0])
    for steps in (1, 2, 5, 12):
        sigma, v = top_singular_value(w, v0, steps)
        s64, v64 = top_singular_value(w.double(), v0.double(), steps)
        assert sigma.dtype == v.dtype == torch.float32
        assert float(sigma) == pytest.approx(float(s64), rel=1e-6)
        np.testing.assert_allclose(v.double().numpy(), v64.numpy(), atol=1e-5)
        assert float(sigma) <= truth * (1 + 1e-6)
    assert calls == [max(1, min(s, *shape)) for s in (1, 2, 5, 12)]  # the native path ran, with k = min(steps, m, n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["native", "torch"])
def test_a_nan_or_inf_weight_gives_nan_sigma_and_training_goes_on(mlp, batch, dtype):
    """A diverged layer (a NaN or an inf weight) is recorded as σ_1 = NaN, the other layers as usual,
    and the layer is measured afresh once it is finite again. Before, numpy's SVD of the NaN
    bidiagonal matrix raised LinAlgError in the optimiser's post-hook, which stopped the training.
    (Steps without gradients, so that the bad entry stays in its layer.)"""
    model = mlp(3, dtype=dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = TrustMonitor(opt, model, every=1)
    train(model, opt, batch(dtype=dtype), 1)
    opt.zero_grad(set_to_none=True)
    w = model.get_parameter(mon.layers[0])
    good = w.detach().clone()
    for bad in (math.nan, math.inf):
        with torch.no_grad():
            w.view(-1)[3] = bad
        opt.step()  # no gradients: nothing moves, the post-hook measures σ_1
        sv = mon.top_singular_value[-1]
        assert math.isnan(sv[0].item()) and torch.isfinite(sv[1:]).all()
    with torch.no_grad():
        w.copy_(good)
    opt.step()
    assert torch.isfinite(mon.top_singular_value[-1]).all()
