"""Relative function and gradient change against hand computations; no side effects on the models."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reltrust.trust import relative_function_change, relative_gradient_change


def test_scaling_the_last_bias_free_layer_scales_the_output(mlp, batch):
    a = mlp(4, bias=False, dtype=torch.float64)
    b = copy.deepcopy(a)
    with torch.no_grad():
        b[6].weight.mul_(1.3)  # f_b = 1.3 f_a exactly
    x, _ = batch(dtype=torch.float64)
    assert relative_function_change(a, b, x) == pytest.approx(0.3, rel=1e-12)
    assert relative_function_change(a, a, x) == 0.0


def test_function_change_matches_hand_computation(mlp, batch):
    a, b = mlp(3, seed=0), mlp(3, seed=1)
    x, _ = batch()
    with torch.no_grad():
        fa, fb = a(x).double(), b(x).double()
    ref = float(((fb - fa) ** 2).sum().sqrt() / (fa ** 2).sum().sqrt())
    assert relative_function_change(a, b, x) == pytest.approx(ref, rel=1e-12)


def test_gradient_change_matches_hand_computation(mlp, batch):
    a = mlp(3, dtype=torch.float64)
    b = copy.deepcopy(a)
    with torch.no_grad():
        for p in b.parameters():
            p.mul_(1.05).add_(0.01)
    x, y = batch(dtype=torch.float64)

    def grads(model):
        m = copy.deepcopy(model)
        F.cross_entropy(m(x), y).backward()
        return {n: p.grad for n, p in m.named_parameters()}

    ga, gb = grads(a), grads(b)
    got = relative_gradient_change(a, b, F.cross_entropy, (x, y))
    assert list(got) == ["0.weight", "2.weight", "4.weight"]
    for n, v in got.items():
        assert v == pytest.approx(float((gb[n] - ga[n]).norm() / ga[n].norm()), rel=1e-10)
    with_biases = relative_gradient_change(a, b, F.cross_entropy, (x, y), include_biases=True)
    assert with_biases["2.bias"] == pytest.approx(float((gb["2.bias"] - ga["2.bias"]).norm() / ga["2.bias"].norm()), rel=1e-10)
    assert relative_gradient_change(a, a, F.cross_entropy, (x, y)) == {n: 0.0 for n in got}


def test_no_gradients_left_and_modes_restored(batch):
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(16, 32), nn.Dropout(0.5), nn.ReLU(), nn.Linear(32, 4))
    b = copy.deepcopy(a)
    with torch.no_grad():
        b[3].weight.mul_(1.1)
    a.train()
    b.eval()
    b[1].train()  # mixed modes must come back exactly
    modes_a, modes_b = [m.training for m in a.modules()], [m.training for m in b.modules()]
    x, y = batch()
    r1 = relative_function_change(a, b, x)
    r2 = relative_function_change(a, b, x)
    assert r1 == r2 > 0  # eval mode by default: dropout off, deterministic
    relative_gradient_change(a, b, F.cross_entropy, (x, y))
    relative_gradient_change(a, b, F.cross_entropy, (x, y), mode="train")
    assert all(p.grad is None for p in list(a.parameters()) + list(b.parameters()))
    assert [m.training for m in a.modules()] == modes_a
    assert [m.training for m in b.modules()] == modes_b


def test_existing_gradients_are_kept(mlp, batch):
    a, b = mlp(2, seed=0), mlp(2, seed=1)
    x, y = batch()
    F.cross_entropy(a(x), y).backward()
    saved = [p.grad.clone() for p in a.parameters()]
    relative_gradient_change(a, b, F.cross_entropy, (x, y))
    assert all(torch.equal(p.grad, s) for p, s in zip(a.parameters(), saved))
    assert all(p.grad is None for p in b.parameters())


def test_tuple_and_dict_inputs_and_outputs():
    class TwoIn(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3, bias=False)

        def forward(self, u, v):
            return {"logits": self.lin(u + v), "aux": None}

    torch.manual_seed(0)
    a = TwoIn()
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.lin.weight.mul_(0.5)
    u, v = torch.randn(5, 4), torch.randn(5, 4)
    assert relative_function_change(a, b, (u, v)) == pytest.approx(0.5, rel=1e-6)
    assert relative_function_change(a, b, {"u": u, "v": v}) == pytest.approx(0.5, rel=1e-6)


def test_errors(mlp, batch):
    x, y = batch()
    with pytest.raises(ValueError, match=r"'0\.weight' has shape \(32, 16\) in model_a but \(8, 16\) in model_b"):
        relative_gradient_change(mlp(3, width=32), mlp(3, width=8), F.cross_entropy, (x, y))
    with pytest.raises(ValueError, match="outputs differ in shape"):
        relative_function_change(mlp(2, d_out=4), mlp(2, d_out=3), x)
    with pytest.raises(ValueError, match="batch must be a pair"):
        relative_gradient_change(mlp(2), mlp(2), F.cross_entropy, (x, y, y))
    with pytest.raises(ValueError, match="mode must be one of"):
        relative_function_change(mlp(2), mlp(2), x, mode="inference")
    zero = mlp(2, bias=False)
    with torch.no_grad():
        zero[2].weight.zero_()
    with pytest.raises(ValueError, match="model_a's output is zero"):
        relative_function_change(zero, mlp(2), x)


def test_train_mode_uses_the_same_dropout_mask_for_both_models(batch):
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(16, 32), nn.Dropout(0.5), nn.ReLU(), nn.Linear(32, 4, bias=False))
    b = copy.deepcopy(a)
    with torch.no_grad():
        b[3].weight.mul_(1.2)  # same mask ⇒ f_b = 1.2 f_a exactly, even with dropout on
    x, y = batch()
    rng = torch.get_rng_state()
    assert relative_function_change(a, b, x, mode="train") == pytest.approx(0.2, rel=1e-5)
    assert relative_gradient_change(a, copy.deepcopy(a), F.cross_entropy, (x, y), mode="train") == {
        "0.weight": 0.0, "3.weight": 0.0}
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random stream is untouched
