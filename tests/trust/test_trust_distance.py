"""Deep relative trust and per-layer relative changes against hand-made float64 references."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from reltrust.trust import (
    deep_relative_trust,
    distance_report,
    drt_from_changes,
    layer_distances,
    named_tensors,
    relative_changes,
    surrogate_from_changes,
    trust_surrogate,
)


def np_norm(t: torch.Tensor) -> float:
    return float(np.linalg.norm(t.detach().cpu().numpy().astype(np.float64).ravel()))


def test_model_with_itself_is_zero(mlp):
    m = mlp(4)
    for other in (m, m.state_dict(), copy.deepcopy(m)):
        rel = relative_changes(m, other)
        assert list(rel) == ["0.weight", "2.weight", "4.weight", "6.weight"]
        assert all(v == 0.0 for v in rel.values())
        assert deep_relative_trust(m, other) == 0.0
        assert trust_surrogate(m, other) == 0.0


def test_hand_made_perturbation_matches_float64_reference(mlp):
    m = mlp(3, dtype=torch.float64)
    after = copy.deepcopy(m)
    g = torch.Generator().manual_seed(5)
    e0 = 0.03 * torch.randn(m[0].weight.shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        after[0].weight += e0
        after[2].weight.mul_(1.25)
        after[4].bias += 1.0  # biases are not layers by default: must not count
    r0 = np.linalg.norm(e0.numpy()) / np_norm(m[0].weight)
    expected = [r0, 0.25, 0.0]
    rel = relative_changes(m, after)
    assert list(rel) == ["0.weight", "2.weight", "4.weight"]
    np.testing.assert_allclose(list(rel.values()), expected, rtol=1e-12, atol=1e-15)

    drt_ref = (1 + expected[0]) * (1 + expected[1]) * (1 + expected[2]) - 1
    sur_ref = sum((1 + r) ** 3 - 1 for r in expected) / 3
    assert deep_relative_trust(m, after) == pytest.approx(drt_ref, rel=1e-12)
    assert trust_surrogate(m, after) == pytest.approx(sur_ref, rel=1e-12)

    dists = layer_distances(m, after)
    assert dists[0].shape == (32, 16)
    assert dists[0].norm == pytest.approx(np_norm(m[0].weight), rel=1e-13)
    assert dists[0].delta_norm == pytest.approx(float(np.linalg.norm(e0.numpy())), rel=1e-12)


@pytest.mark.parametrize("layer", [0, 2, 4, 6])
def test_scaling_one_layer_gives_exactly_delta(mlp, layer):
    delta = 0.0371
    m = mlp(4, dtype=torch.float64)
    after = copy.deepcopy(m)
    with torch.no_grad():
        after[layer].weight.mul_(1 + delta)
    rel = relative_changes(m, after)
    for name, r in rel.items():
        assert r == pytest.approx(delta if name == f"{layer}.weight" else 0.0, rel=1e-13, abs=1e-16)
    assert deep_relative_trust(m, after) == pytest.approx(delta, rel=1e-13)
    # surrogate: (1/L) [((1+δ)^L − 1) + (L−1)·0]
    assert trust_surrogate(m, after) == pytest.approx(((1 + delta) ** 4 - 1) / 4, rel=1e-13)


def test_float32_checkpoints_and_scaling(mlp, tmp_path):
    delta = 0.01
    m = mlp(3)
    after = copy.deepcopy(m)
    with torch.no_grad():
        after[2].weight.mul_(1 + delta)
    torch.save(m.state_dict(), tmp_path / "a.pt")
    torch.save(after.state_dict(), tmp_path / "b.pt")
    rel = relative_changes(str(tmp_path / "a.pt"), tmp_path / "b.pt")
    assert rel["2.weight"] == pytest.approx(delta, rel=1e-5)  # float32 rounding of (1+δ)W
    assert rel["0.weight"] == 0.0 and rel["4.weight"] == 0.0


def test_every_input_kind_gives_the_same_answer(mlp, tmp_path):
    m = mlp(3)
    after = copy.deepcopy(m)
    with torch.no_grad():
        for p in after.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ref = relative_changes(m, after)
    sd = after.state_dict()
    torch.save({"model": sd, "epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "wrapped.pt")
    torch.save({"state_dict": sd}, tmp_path / "sd.pt")
    ddp = {f"module.{k}": v for k, v in sd.items()}
    compiled = {f"_orig_mod.{k}": v for k, v in sd.items()}
    for other in (sd, tmp_path / "wrapped.pt", str(tmp_path / "sd.pt"), ddp, compiled):
        assert relative_changes(m, other) == ref
    assert relative_changes(m.state_dict(), after) == ref


def test_selection_rules():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():  # batch-norm starts with zero biases and means: give every tensor a norm
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.uniform_(0.5, 1.5)
    tensors = named_tensors(net)
    assert "1.num_batches_tracked" in tensors  # an integer buffer, present but never a layer
    after = copy.deepcopy(net)
    with torch.no_grad():
        for t in after.state_dict().values():
            if t.is_floating_point():
                t.mul_(1.5)
    # default: floating tensors with >= 2 dims (the conv kernel and the linear weight)
    assert list(relative_changes(net, after)) == ["0.weight", "3.weight"]
    with_biases = relative_changes(net, after, include_biases=True, exclude="running_var")
    assert list(with_biases) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "3.weight", "3.bias"]
    assert list(relative_changes(net, after, include=r"^3\.")) == ["3.weight"]
    assert list(relative_changes(net, after, include_biases=True, include=[r"^0\.", r"^3\."], exclude=r"bias$")) == [
        "0.weight", "3.weight"]
    assert all(v == pytest.approx(0.5, rel=1e-6) for v in with_biases.values())


def test_tied_weights_count_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 6)
            self.mid = nn.Linear(6, 6)
            self.head = nn.Linear(6, 10, bias=False)
            self.head.weight = self.emb.weight

    torch.manual_seed(0)
    m = Tied()
    after = copy.deepcopy(m)
    with torch.no_grad():
        after.emb.weight.mul_(1.1)
    rel = relative_changes(m, after)
    assert list(rel) == ["emb.weight", "mid.weight"]
    assert deep_relative_trust(m, after) == pytest.approx(0.1, rel=1e-5)
    # a checkpoint whose tensors were cloned one by one (tie lost) still matches
    untied = {k: v.clone() for k, v in after.state_dict().items()}
    assert relative_changes(m, untied) == pytest.approx(rel)


# ---------------------------------------------------------------------------------- errors


def test_missing_layer_is_named(mlp):
    a, b = mlp(3), mlp(3)
    sd = b.state_dict()
    del sd["2.weight"]
    with pytest.raises(ValueError, match=r"'2\.weight' is in before but not in after"):
        relative_changes(a, sd)
    sd2 = dict(b.state_dict(), **{"extra.weight": torch.ones(2, 2)})
    with pytest.raises(ValueError, match=r"'extra\.weight' is in after but not in before"):
        relative_changes(a, sd2)


def test_shape_mismatch_is_named(mlp):
    with pytest.raises(ValueError, match=r"'0\.weight' has shape \(32, 16\) in before but \(8, 16\) in after"):
        relative_changes(mlp(3, width=32), mlp(3, width=8))


def test_zero_norm_layer(mlp):
    a = mlp(3)
    with torch.no_grad():
        a[2].weight.zero_()
    b = copy.deepcopy(a)
    with torch.no_grad():
        b[0].weight.mul_(1.2)
    with pytest.raises(ValueError, match=r"'2\.weight' has zero norm"):
        deep_relative_trust(a, b)
    report = distance_report(a, b, on_zero="skip")
    assert [d.name for d in report.layers] == ["0.weight", "4.weight"]
    assert report.skipped == ["2.weight"]
    assert report.deep_relative_trust == pytest.approx(0.2, rel=1e-5)
    assert report.trust_surrogate == pytest.approx(((1.2) ** 2 - 1) / 2, rel=1e-5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("side", ["before", "after"])
def test_non_finite_is_named(mlp, bad, side):
    a, b = mlp(3), mlp(3)
    target = a if side == "before" else b
    with torch.no_grad():
        target[4].weight[0, 0] = bad
    with pytest.raises(ValueError, match=rf"'4\.weight' in {side} has 1 non-finite"):
        relative_changes(a, b)


def test_argument_validation(mlp, tmp_path):
    m = mlp(2)
    with pytest.raises(ValueError, match="on_zero"):
        relative_changes(m, m, on_zero="ignore")
    with pytest.raises(ValueError, match="no layers selected"):
        relative_changes(m, m, include="nothing-matches")
    with pytest.raises(ValueError, match="include: invalid regular expression"):
        relative_changes(m, m, include="(")
    with pytest.raises(TypeError, match="before must be an nn.Module, a state dict or a checkpoint path"):
        relative_changes(3, m)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        relative_changes(tmp_path / "nope.pt", m)
    torch.save({"epoch": 1, "lr": 0.1}, tmp_path / "nosd.pt")
    with pytest.raises(ValueError, match="no model state dict found"):
        relative_changes(tmp_path / "nosd.pt", m)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot load checkpoint"):
        relative_changes(tmp_path / "garbage.pt", m)


# ---------------------------------------------------------------------------------- the formulas


def test_formulas_from_changes():
    r = [0.1, 0.0, 0.3, 0.05]
    assert drt_from_changes(r) == pytest.approx(1.1 * 1.0 * 1.3 * 1.05 - 1, rel=1e-14)
    assert surrogate_from_changes(r) == pytest.approx(sum((1 + x) ** 4 - 1 for x in r) / 4, rel=1e-14)
    assert drt_from_changes({"a": 0.2}) == pytest.approx(0.2, rel=1e-15)
    # equal relative changes: surrogate == DRT (the paper's remark)
    same = [0.07] * 12
    assert surrogate_from_changes(same) == pytest.approx(drt_from_changes(same), rel=1e-13)
    # accurate for tiny changes, where a naive product minus one loses every digit
    tiny = [1e-13] * 50
    assert drt_from_changes(tiny) == pytest.approx(math.fsum(tiny), rel=1e-9)
    with pytest.raises(ValueError, match="finite and >= 0"):
        drt_from_changes([0.1, -0.2])
    with pytest.raises(ValueError, match="at least one"):
        surrogate_from_changes([])
