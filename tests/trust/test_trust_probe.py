"""The perturbation probe: exact per-layer relative moves, a hand-built reference, and no side effects."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reltrust.trust import ProbeResult, perturbation_probe

ETAS = [0.0, 0.01, 0.03, 0.1]


def hand_probe(model, batch, eta, direction=None):
    """The probe at one η, built by hand in float64 with plain backward() on private copies."""
    x, y = batch
    ref = copy.deepcopy(model).double().eval()
    for p in ref.parameters():
        p.grad = None
    names = [n for n, p in ref.named_parameters() if p.ndim >= 2]
    F.cross_entropy(ref(x.double()), y).backward()
    g0 = {n: p.grad.clone() for n, p in ref.named_parameters() if n in names}
    with torch.no_grad():
        f0 = ref(x.double()).clone()
    moved = copy.deepcopy(ref)
    for p in moved.parameters():
        p.grad = None
    with torch.no_grad():
        for n, p in moved.named_parameters():
            if n in names:
                d = -g0[n] if direction is None else direction[n].double()
                p.add_(eta * p.norm() * d / d.norm())
    loss = F.cross_entropy(moved(x.double()), y)
    loss.backward()
    g = {n: p.grad for n, p in moved.named_parameters() if n in names}
    with torch.no_grad():
        f = moved(x.double())
    dg2 = sum(float(((g[n] - g0[n]) ** 2).sum()) for n in names)
    g02 = sum(float((g0[n] ** 2).sum()) for n in names)
    return {
        "loss": float(loss.detach()),
        "function": float((f - f0).norm() / f0.norm()),
        "gradient": math.sqrt(dg2 / g02),
        "per_layer": {n: float((g[n] - g0[n]).norm() / g0[n].norm()) for n in names},
    }


def test_matches_a_hand_built_reference(mlp, batch):
    m = mlp(4, dtype=torch.float64)
    x, y = batch(dtype=torch.float64)
    res = perturbation_probe(m, F.cross_entropy, (x, y), ETAS)
    assert isinstance(res, ProbeResult)
    assert res.etas == ETAS and res.layers == ["0.weight", "2.weight", "4.weight", "6.weight"]
    for i, eta in enumerate(ETAS):
        ref = hand_probe(m, (x, y), eta)
        assert res.loss[i] == pytest.approx(ref["loss"], rel=1e-10)
        assert res.relative_function_change[i] == pytest.approx(ref["function"], rel=1e-9, abs=1e-14)
        assert res.relative_gradient_change[i] == pytest.approx(ref["gradient"], rel=1e-9, abs=1e-14)
        for n in res.layers:
            assert res.relative_gradient_change_per_layer[n][i] == pytest.approx(ref["per_layer"][n], rel=1e-9, abs=1e-14)
    assert res.relative_function_change[0] == 0.0 and res.relative_gradient_change[0] == 0.0


def test_relative_change_per_layer_is_eta(mlp, batch):
    m = mlp(5)
    etas = [0.0, 0.001, 0.05, 0.2, -0.1]
    res = perturbation_probe(m, F.cross_entropy, batch(), etas)
    for n, moved in res.relative_parameter_change_per_layer.items():
        np.testing.assert_allclose(moved, np.abs(etas), rtol=2e-6, atol=0, err_msg=n)
    # deep relative trust of the realised move: (1 + |η|)^L − 1 with L = 5
    np.testing.assert_allclose(res.deep_relative_trust, [(1 + abs(e)) ** 5 - 1 for e in etas], rtol=1e-5)


def test_small_step_along_negative_gradient_lowers_the_loss(mlp, batch):
    res = perturbation_probe(mlp(3), F.cross_entropy, batch(), [0.0, 1e-3, -1e-3])
    assert res.loss[1] < res.loss[0] < res.loss[2]


def test_input_model_is_untouched(batch):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 4))
    m.train()
    m[4].eval()  # a mixed-mode model: every submodule's flag must come back as it was
    x, y = batch()
    F.cross_entropy(m(x), y).backward()  # pre-existing grads and running stats
    params = {n: p.detach().clone() for n, p in m.named_parameters()}
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    buffers = {n: b.clone() for n, b in m.named_buffers()}
    modes = [mod.training for mod in m.modules()]
    rng = torch.get_rng_state()

    for mode in ("eval", "train", "keep"):
        perturbation_probe(m, F.cross_entropy, (x, y), [0.0, 0.05, 0.1], mode=mode)

    assert all(torch.equal(p, params[n]) for n, p in m.named_parameters())
    assert all(torch.equal(p.grad, grads[n]) for n, p in m.named_parameters())
    assert all(torch.equal(b, buffers[n]) for n, b in m.named_buffers())
    assert [mod.training for mod in m.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)


def test_train_mode_replays_dropout_masks(batch):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 4))
    res = perturbation_probe(m, F.cross_entropy, batch(), [0.0, 0.0, 0.02], mode="train")
    # the same dropout mask at every η: η = 0 reproduces the reference exactly
    assert res.relative_function_change[:2] == [0.0, 0.0]
    assert res.loss[0] == res.loss[1]


def test_function_change_grows_with_eta_and_depth(mlp, batch):
    etas = [0.0, 0.02, 0.04, 0.06, 0.08, 0.1]
    x, y = batch(seed=100)
    shallow = perturbation_probe(mlp(2, seed=0, bias=False), F.cross_entropy, (x, y), etas)
    deep = perturbation_probe(mlp(16, seed=0, bias=False), F.cross_entropy, (x, y), etas)
    for res in (shallow, deep):
        assert all(b > a for a, b in zip(res.relative_function_change, res.relative_function_change[1:]))
    # the paper's prediction: the deep net breaks down far faster at the same relative move
    assert deep.relative_function_change[-1] > 5 * shallow.relative_function_change[-1]
    assert deep.relative_gradient_change[-1] > shallow.relative_gradient_change[-1]


def test_given_direction_is_normalised_per_layer(mlp, batch):
    m = mlp(3, dtype=torch.float64)
    x, y = batch(dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    direction = {n: 10 ** i * torch.randn(p.shape, generator=g, dtype=torch.float64)
                 for i, (n, p) in enumerate(m.named_parameters())}  # wildly different scales; biases ignored
    res = perturbation_probe(m, F.cross_entropy, (x, y), [0.0, 0.07], direction=direction)
    for n, moved in res.relative_parameter_change_per_layer.items():
        assert moved[1] == pytest.approx(0.07, rel=1e-12)
    ref = hand_probe(m, (x, y), 0.07, direction=direction)
    assert res.loss[1] == pytest.approx(ref["loss"], rel=1e-10)
    assert res.relative_function_change[1] == pytest.approx(ref["function"], rel=1e-9)


def test_layers_argument_moves_only_those(mlp, batch):
    m = mlp(3)
    res = perturbation_probe(m, F.cross_entropy, batch(), [0.05], layers=["2.weight", "2.bias"])
    assert res.layers == ["2.weight", "2.bias"]
    assert res.relative_parameter_change_per_layer["2.bias"][0] == pytest.approx(0.05, rel=1e-5)
    assert res.deep_relative_trust[0] == pytest.approx(1.05 ** 2 - 1, rel=1e-5)


def test_to_dict_is_json_ready(mlp, batch):
    res = perturbation_probe(mlp(2), F.cross_entropy, batch(), np.array([0.0, 0.1]))
    d = json.loads(json.dumps(res.to_dict()))
    assert d["etas"] == [0.0, 0.1]
    for key in ("loss", "relative_function_change", "relative_gradient_change", "deep_relative_trust"):
        assert len(d[key]) == 2
    assert set(d["relative_gradient_change_per_layer"]) == {"0.weight", "2.weight"}


def test_bad_inputs(mlp, batch):
    m, b = mlp(3), batch()
    with pytest.raises(ValueError, match="etas must hold at least one"):
        perturbation_probe(m, F.cross_entropy, b, [])
    with pytest.raises(ValueError, match="etas must be finite"):
        perturbation_probe(m, F.cross_entropy, b, [0.0, float("nan")])
    with pytest.raises(TypeError, match="etas must hold real numbers"):
        perturbation_probe(m, F.cross_entropy, b, ["big"])
    with pytest.raises(ValueError, match="batch must be a pair"):
        perturbation_probe(m, F.cross_entropy, b[0], [0.1])
    with pytest.raises(ValueError, match="mode must be one of"):
        perturbation_probe(m, F.cross_entropy, b, [0.1], mode="test")
    with pytest.raises(ValueError, match=r"layers: 'fc\.weight' is not a parameter"):
        perturbation_probe(m, F.cross_entropy, b, [0.1], layers=["fc.weight"])
    with pytest.raises(ValueError, match=r"no entry for selected layer\(s\): 2\.weight"):
        perturbation_probe(m, F.cross_entropy, b, [0.1], direction={"0.weight": torch.ones(32, 16), "4.weight": torch.ones(4, 32)})
    with pytest.raises(ValueError, match=r"direction: 'nope' is not a parameter"):
        perturbation_probe(m, F.cross_entropy, b, [0.1], direction={"nope": torch.ones(1)})
    with pytest.raises(ValueError, match=r"direction\['0\.weight'\] has shape"):
        perturbation_probe(m, F.cross_entropy, b, [0.1], layers=["0.weight"], direction={"0.weight": torch.ones(3)})
    dead = copy.deepcopy(m)
    with torch.no_grad():
        dead[2].weight.zero_()
    with pytest.raises(ValueError, match=r"'2\.weight' has zero norm"):
        perturbation_probe(dead, F.cross_entropy, b, [0.1])
    # zeroing layer 2 kills the gradient of layer 0 (nothing flows back through it)
    with pytest.raises(ValueError, match=r"'0\.weight' has a zero gradient"):
        perturbation_probe(dead, F.cross_entropy, b, [0.1], layers=["0.weight"])
