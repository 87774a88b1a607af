"""Singular values against numpy, Mirsky's bound on random perturbations, and a known-answer case."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from reltrust.trust import singular_values, spectral_changes


def conv_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 5), nn.Flatten(), nn.Linear(4, 6))


def test_singular_values_match_numpy():
    net = conv_net()
    sv = singular_values(net)
    assert list(sv) == ["0.weight", "2.weight", "4.weight"]
    for name, p in net.named_parameters():
        if p.ndim < 2:
            continue
        mat = p.detach().numpy().astype(np.float64).reshape(p.shape[0], -1)  # (out, in·k·k)
        np.testing.assert_allclose(sv[name].numpy(), np.linalg.svd(mat, compute_uv=False), rtol=1e-12)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("scale", [1e-4, 1e-2, 0.3, 3.0])
def test_mirsky_holds_on_random_perturbations(seed, scale):
    before = conv_net(seed)
    after = copy.deepcopy(before)
    g = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for p in after.parameters():
            p.add_(scale * p.norm() * torch.randn(p.shape, generator=g) / p.numel() ** 0.5)
    for ch in spectral_changes(before, after):
        w = before.get_parameter(ch.name).detach().numpy().astype(np.float64)
        w2 = after.get_parameter(ch.name).detach().numpy().astype(np.float64)
        s = np.linalg.svd(w.reshape(w.shape[0], -1), compute_uv=False)
        s2 = np.linalg.svd(w2.reshape(w.shape[0], -1), compute_uv=False)
        bound = np.linalg.norm((w2 - w).ravel())
        assert ch.holds
        assert ch.mirsky_bound == pytest.approx(bound, rel=1e-12)
        assert ch.max_shift == pytest.approx(np.abs(s2 - s).max(), rel=1e-9, abs=1e-15)
        assert ch.l2_shift == pytest.approx(np.linalg.norm(s2 - s), rel=1e-9, abs=1e-15)
        assert ch.relative_shift == pytest.approx(np.abs(s2 - s).max() / s[0], rel=1e-9, abs=1e-15)
        # Mirsky, checked independently: per singular value, in l2, and in the paper's relative form
        assert np.abs(s2 - s).max() <= bound * (1 + 1e-12)
        assert np.linalg.norm(s2 - s) <= bound * (1 + 1e-12)
        assert ch.relative_l2_shift <= ch.relative_change * (1 + 1e-12)


def test_scaling_is_the_equality_case():
    delta = 0.2
    before = conv_net()
    after = copy.deepcopy(before)
    with torch.no_grad():
        after[4].weight.mul_(1 + delta)
    ch = {c.name: c for c in spectral_changes(before, after)}["4.weight"]
    torch.testing.assert_close(ch.sigma_after, (1 + delta) * ch.sigma_before, rtol=1e-6, atol=0)
    assert ch.relative_shift == pytest.approx(delta, rel=1e-6)
    assert ch.relative_l2_shift == pytest.approx(delta, rel=1e-6)
    # σ' = (1+δ)σ: the l2 shift equals ‖ΔW‖_F exactly, so Mirsky is tight; `holds` tolerates rounding
    assert ch.l2_shift == pytest.approx(ch.mirsky_bound, rel=1e-6)
    assert ch.holds
    unchanged = {c.name: c for c in spectral_changes(before, after)}["0.weight"]
    assert unchanged.max_shift == 0.0 and unchanged.mirsky_bound == 0.0 and unchanged.holds


def test_to_dict_and_errors():
    before = conv_net()
    ch = spectral_changes(before, before)[0]
    d = ch.to_dict()
    assert d["shape"] == [8, 3, 3, 3] and len(d["sigma_before"]) == 8
    assert "sigma_before" not in ch.to_dict(with_sigmas=False)
    other = conv_net()
    other[4] = nn.Linear(4, 7)
    with pytest.raises(ValueError, match=r"'4\.weight' has shape \(6, 4\) in before but \(7, 4\) in after"):
        spectral_changes(before, other)
    bad = copy.deepcopy(before)
    with torch.no_grad():
        bad[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"'0\.weight' in after has 1 non-finite"):
        spectral_changes(before, bad)
