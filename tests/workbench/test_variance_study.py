"""`reltrust reproduce variance`: the simulation against its closed forms, and the report end to end."""
from __future__ import annotations

import csv
import dataclasses
import math
import re

import pytest
import torch

from reltrust.cli import main
from reltrust.optim.radam import rectification, sma_length
from reltrust.workbench.studies import variance


def test_psi_1_is_one_over_abs_g_the_bias_correction_cancels():
    g = torch.randn(1000, dtype=torch.float64)
    for beta2 in (0.9, 0.999):
        v = (1 - beta2) * g * g  # v_1 = β₂·0 + (1−β₂)·g²
        torch.testing.assert_close(variance.adaptive_lr(v, 1, beta2), 1 / g.abs(), rtol=1e-14, atol=0)


def test_simulated_variance_is_infinite_where_the_tail_index_says_so_and_matches_the_closed_form_after():
    """β₂ → 1 makes the first steps' weights equal: ψ_t² = t/χ²_t, the scaled inverse χ² law with t
    degrees of freedom, whose variance has a closed form (finite for t > 2). ψ_t has tail index t."""
    config = dataclasses.replace(variance.CONFIGS["tiny"], mus=(0.0,), beta2=0.99999, trajectories=100_000, steps=12,
                                 table_steps=(1, 2, 3, 6, 12))
    sim = variance.simulate(config)
    var = dict(zip(sim.steps, sim.var_psi[0.0]))
    assert var[1] == math.inf and var[2] == math.inf  # not the (finite) sample variance
    assert sim.sample_var_where_infinite[0.0][1] > 100 * var[3]  # which is large but a number
    assert sim.tail_index[0.0][1] == pytest.approx(1.0, abs=0.15)
    assert sim.tail_index[0.0][2] == pytest.approx(2.0, abs=0.3)
    for t in (6, 12):
        assert var[t] == pytest.approx(variance.inverse_chi2_variance(t), rel=0.04), t
    for t, r, vr, vp in zip(sim.steps, sim.r, sim.var_rect[0.0], sim.var_psi[0.0]):
        assert (r is None) == (sma_length(t, config.beta2) <= 4)
        if r is not None:
            assert vr == pytest.approx(rectification(sma_length(t, config.beta2), config.beta2) ** 2 * vp, rel=1e-12)


@pytest.mark.parametrize("rho", [3.0, 5.0, 10.0, 37.5, 120.0])
def test_inverse_chi2_variance_equals_the_papers_beta_function_form(rho):
    a = (rho - 1) / 2
    beta = math.gamma(a) ** 2 / math.gamma(2 * a)
    paper = rho / (rho - 2) - rho * 2 ** (2 * rho - 5) / math.pi * beta**2
    assert variance.inverse_chi2_variance(rho) == pytest.approx(paper, rel=1e-9)


def test_both_analytic_curves_diverge_where_they_should_and_agree_for_long_averages():
    assert variance.first_order_variance(4.0) == math.inf and variance.inverse_chi2_variance(2.0) == math.inf
    assert math.isfinite(variance.first_order_variance(4.01)) and math.isfinite(variance.inverse_chi2_variance(2.01))
    for rho in (1e3, 1e4):
        assert variance.first_order_variance(rho) == pytest.approx(1 / (2 * rho), rel=10 / rho)
        assert variance.inverse_chi2_variance(rho) == pytest.approx(1 / (2 * rho), rel=10 / rho)


def test_hill_estimator_recovers_a_pareto_tail():
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert variance.hill_tail_index(u ** (-1 / 1.5)) == pytest.approx(1.5, rel=0.05)


def test_variance_report_says_infinite_and_its_numbers_come_from_the_simulation(tmp_path):
    out = tmp_path / "variance"
    assert main(["reproduce", "variance", "--tiny", "--out", str(out), "--workers", "0", "--threads", "1",
                 "--no-progress"]) == 0
    for name in ("report.md", "variance.csv", "variance.png"):
        assert (out / name).is_file(), name
    assert variance.grid(tiny=True) == [] and variance.grid(quick=True) == []
    report = (out / "report.md").read_text()
    config = variance.CONFIGS["tiny"]
    rows = {int(r["t"]): r for r in csv.DictReader((out / "variance.csv").open())}
    assert sorted(rows) == variance.recorded_steps(config)
    assert rows[1]["var_psi_mu=0"] == "inf"
    # the per-μ table: ∞ at t = 1 and 2, then the CSV's values
    row = re.search(r"^\| 0 \| Var\[ψ_t\] \| (.+) \|$", report, re.M).group(1).split(" | ")
    assert row[:2] == ["∞", "∞"]
    for cell, t in zip(row[2:], config.table_steps[2:]):
        assert float(cell) == pytest.approx(float(rows[t]["var_psi_mu=0"]), rel=5e-3)
    # every claim has a verdict computed from the simulation
    for claim in ("problematically large variance", "shrinks as ρ_t grows", "about constant variance"):
        line = next(ln for ln in report.splitlines() if claim in ln)
        assert re.search(r"\| (holds|does not hold)", line), line
    assert "](variance.png)" in report and "## Configuration" in report
