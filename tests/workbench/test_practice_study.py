"""`reltrust reproduce practice`: the gradient-variance measurement against a closed form, the textbook
optimisers against hand-written steps, the classification task's new options, the panels' rules, and
the --tiny grid end to end with its verdicts recomputed from the store."""
from __future__ import annotations

import itertools
import json
import math
import re

import numpy as np
import pytest
import torch

from reltrust.cli import main
from reltrust.optim import SGDW, AdamNoBiasCorrection, create
from reltrust.workbench.measures import activation_variances, gradient_variance
from reltrust.workbench.spec import RunSpec
from reltrust.workbench.store import Store
from reltrust.workbench.studies import get_study, practice
from reltrust.workbench.tasks import make_task
from reltrust.workbench.train import fit


# ----------------------------------------------------------------- gradient variance, closed form
def _least_squares(n=12, d=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    model = torch.nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, d, generator=gen, dtype=torch.float64))
    return x, y, model


def test_gradient_variance_matches_the_least_squares_closed_form_and_an_enumeration():
    n, d = 12, 3
    x, y, model = _least_squares(n, d)
    w = model.weight.detach().numpy().reshape(d)
    X, Y = x.numpy(), y.numpy().reshape(n)
    # loss = mean_i (x_i·w − y_i)²: per-example gradient 2 (x_i·w − y_i) x_i, in float64 by hand
    G = 2 * (X @ w - Y)[:, None] * X
    g = G.mean(0)
    trace_sigma = ((G - g) ** 2).sum(1).mean()
    sizes = [1, 2, 4, 12]
    closed = [trace_sigma / b * (n - b) / (n - 1) for b in sizes]
    # the closed form is the expectation over every subset of size b (enumerated)
    for b, c in zip(sizes, closed):
        subsets = list(itertools.combinations(range(n), b))
        enum = np.mean([((G[list(s)].mean(0) - g) ** 2).sum() for s in subsets])
        assert enum == pytest.approx(c, rel=1e-10, abs=1e-14)
    out = gradient_variance(model, torch.nn.functional.mse_loss, x, y, sizes, draws=400,
                            generator=torch.Generator().manual_seed(1))
    assert out["trace_sigma"] == pytest.approx(trace_sigma, rel=1e-10)
    assert out["exact"] == pytest.approx(closed, rel=1e-10, abs=1e-14)
    assert out["grad_norm2"] == pytest.approx(float((g**2).sum()), rel=1e-10)
    # the Monte Carlo measurement (real minibatch backward passes) is an estimate of the same numbers
    for m, c in zip(out["measured"][:-1], closed[:-1]):
        assert m == pytest.approx(c, rel=0.15)
    assert out["measured"][-1] == pytest.approx(0.0, abs=1e-20)  # |B| = n is the full gradient
    assert model.weight.grad is None and model.training  # left as it was


def test_gradient_variance_rejects_batch_sizes_outside_the_data():
    x, y, model = _least_squares()
    with pytest.raises(ValueError, match=r"batch_sizes must be ints in \[1, 12\]"):
        gradient_variance(model, torch.nn.functional.mse_loss, x, y, [0, 4], 2, torch.Generator())
    with pytest.raises(ValueError, match="draws must be"):
        gradient_variance(model, torch.nn.functional.mse_loss, x, y, [4], 0, torch.Generator())


def test_activation_variances_are_each_linear_outputs_variance():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    x = torch.randn(64, 5)
    out = activation_variances(net, x)
    h1 = net[0](x)
    assert out["pre_var"] == pytest.approx([float(h1.detach().double().var()), float(net[2](torch.tanh(h1)).detach().double().var())],
                                           rel=1e-5)


# --------------------------------------------------------------------------------- the optimisers
def _params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, generator=gen, dtype=torch.float64), [torch.randn(4, 3, generator=gen, dtype=torch.float64)
                                                                  for _ in range(5)]


def test_adam_without_bias_correction_equals_a_hand_written_step():
    p0, grads = _params()
    p = torch.nn.Parameter(p0.clone())
    opt = AdamNoBiasCorrection([p], lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
    ref = p0.numpy().copy()
    m = np.zeros_like(ref)
    v = np.zeros_like(ref)
    for gt in grads:
        p.grad = gt.clone()
        opt.step()
        g = gt.numpy() + 0.1 * ref
        m = 0.8 * m + 0.2 * g
        v = 0.95 * v + 0.05 * g * g
        ref = ref - 0.01 * m / (np.sqrt(v) + 1e-6)
        np.testing.assert_allclose(p.detach().numpy(), ref, rtol=1e-12, atol=1e-14)
    # with the correction (torch's Adam) the same gradients give other weights
    q = torch.nn.Parameter(p0.clone())
    adam = torch.optim.Adam([q], lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
    for gt in grads:
        q.grad = gt.clone()
        adam.step()
    assert not torch.allclose(p, q)
    assert create("adam_nobc", [torch.nn.Parameter(torch.zeros(2))], lr=1e-3).__class__ is AdamNoBiasCorrection


def test_sgdw_is_decoupled_decay_and_equals_l2_without_momentum():
    p0, grads = _params(1)
    lr, wd, mu = 0.1, 0.05, 0.9
    p = torch.nn.Parameter(p0.clone())
    opt = SGDW([p], lr=lr, momentum=mu, weight_decay=wd)
    ref, buf = p0.numpy().copy(), None
    for gt in grads:
        p.grad = gt.clone()
        opt.step()
        ref = ref * (1 - lr * wd)
        buf = gt.numpy().copy() if buf is None else mu * buf + gt.numpy()
        ref = ref - lr * buf
        np.testing.assert_allclose(p.detach().numpy(), ref, rtol=1e-12, atol=1e-14)
    assert opt.param_groups[0]["weight_decay"] == wd  # restored after each step
    a, b = torch.nn.Parameter(p0.clone()), torch.nn.Parameter(p0.clone())
    coupled, decoupled = torch.optim.SGD([a], lr=lr, weight_decay=wd), SGDW([b], lr=lr, weight_decay=wd)
    for gt in grads:
        a.grad, b.grad = gt.clone(), gt.clone()
        coupled.step()
        decoupled.step()
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="weight_decay must be in"):
        SGDW([b], lr=lr, weight_decay=-1.0)


# ------------------------------------------------------------------ the classification task's options
SPEC = RunSpec(study="t", dataset="digits", model="mlp", optimizer="sgd", lr=0.1, batch_size=16, epochs=1,
               model_kwargs={"depth": 2, "width": 8}, task_kwargs={"test_fraction": 0.2})


def test_train_subset_is_the_same_for_every_seed_and_eval_every_sets_the_evaluations():
    cpu = torch.device("cpu")
    a = make_task(SPEC.replace(task_kwargs={"test_fraction": 0.2, "train_subset": 40}), device=cpu)
    b = make_task(SPEC.replace(seed=3, task_kwargs={"test_fraction": 0.2, "train_subset": 40}), device=cpu)
    full = make_task(SPEC, device=cpu)
    assert a.n == 40 and torch.equal(a.splits["train"][0], b.splits["train"][0])
    assert torch.equal(a.splits["val"][0], full.splits["val"][0]) and len(full.splits["test"][1]) > 0
    rows = {tuple(r.tolist()) for r in full.splits["train"][0].flatten(1)}
    assert all(tuple(r.tolist()) in rows for r in a.splits["train"][0].flatten(1))
    rec = fit(SPEC.replace(epochs=0, steps=7, task_kwargs={"test_fraction": 0.2, "train_subset": 40, "eval_every": 2}))
    assert [h["step"] for h in rec.history] == [0, 2, 4, 6, 7]
    assert rec.final["test_acc"] is not None


@pytest.mark.parametrize("kwargs, message", [
    ({"train_subset": -1}, "train_subset must be an int >= 0"),
    ({"train_subset": 10**6}, r"train_subset must be in \[0, "),
    ({"eval_every": 1.5}, "eval_every must be an int >= 0"),
    ({"test_fraction": 1.0}, r"test_fraction must be a number in \[0, 1\)"),
])
def test_bad_classify_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_task(SPEC.replace(task_kwargs=kwargs), device=torch.device("cpu"))


# ---------------------------------------------------------------------------------- the rules
def test_tail_rules():
    assert practice.last_doubling([4.0, 2.0, 1.0, 0.8, 0.5]) == pytest.approx((0.5, 0.5))
    assert practice.classify_tail(0.3, 0.3, 1.0, 1.0) == "still converging"
    assert practice.classify_tail(0.0, 0.2, 1.0, 1.0) == "noise floor"
    assert practice.classify_tail(0.005, 0.006, 1.5, 1.0) == "stopped short"  # gap 1/3, fell 0.5 %
    assert practice.classify_tail(0.02, 0.02, 1.5, 1.0) == "stopped short"  # still falling, but far too slowly
    assert practice.classify_tail(0.2, 0.2, 1.5, 1.0) == "still converging"  # falling fast enough to close the gap
    assert practice.classify_tail(0.005, 0.006, 1.01, 1.0) == "converged"
    assert practice.variance_class(0.05) == "collapses" and practice.variance_class(20) == "blows up"
    assert practice.variance_class(0.5) == "kept"
    assert practice.slope([1, 2, 4, 8], [3.0, 1.5, 0.75, 0.375]) == pytest.approx(-1.0)


def test_quick_and_full_grids_hold_what_the_issue_asks():
    for quick, n_seeds in ((True, 2), (False, 3)):
        specs = practice.grid(quick)
        assert sorted({s.seed for s in specs}) == list(range(n_seeds))
        assert {practice.panel_of(s) for s in specs} == set(range(1, 8))
        p1 = [s for s in specs if practice.panel_of(s) == 1]
        assert p1[0].kwargs("probe")["batch_sizes"] == [2**k for k in range(11)] and p1[0].epochs == 0
        assert {practice.schedule_label(s) for s in specs if practice.panel_of(s) == 3} == set(practice.EXPECTED)
        assert {s.kwargs("model")["init"] for s in specs if practice.panel_of(s) == 6} == {"lecun", "default", "kaiming"}
        assert {practice.reg_label(s) for s in specs if practice.panel_of(s) == 7} == set(practice.REG_METHODS)
    assert get_study("practice") is practice.STUDY


# ---------------------------------------------------------------------------------- end to end
def test_practice_study_tiny_grid_end_to_end(tmp_path):
    out = tmp_path / "practice"
    assert main(["reproduce", "practice", "--tiny", "--out", str(out), "--workers", "0", "--threads", "1",
                 "--no-progress"]) == 0
    runs = json.loads((out / "results.json").read_text())
    assert len(runs) == len(practice.grid(tiny=True)) and all(r["status"] == "ok" for r in runs)
    for name in ("p1_grad_variance.png", "p2_batch.png", "p3_robbins_monro.png", "p4_momentum.png",
                 "p5_adam_bias.png", "p6_init_variance.png", "p6_init_training.png", "p7_regularisation.png"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    # every verdict in the report is what the rules compute from the stored runs
    records = Store(out / "results.sqlite").records(specs=practice.grid(tiny=True))
    for p in practice.panels(records, None):
        assert p.verdict.replace("|", "\\|") in report
        assert re.match(r"(holds|partly|does not hold|weight decay = L2: (holds|does not hold))", p.verdict), p.verdict
    # panel 1's slope, recomputed here from the stored probe with numpy
    probe = next(r for r in runs if r["spec"]["study"] == "practice.1")["probes"][0]
    b = np.array(probe["batch_sizes"], float)
    corr = np.array(probe["measured"]) * (probe["n"] - 1) / (probe["n"] - b)
    s = np.polyfit(np.log(b), np.log(corr), 1)[0]
    assert f"is {s:.3f} (per seed".replace("-", "-") in report
    assert math.isfinite(s)
