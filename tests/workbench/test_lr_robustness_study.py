"""`reltrust reproduce lr-robustness` end to end on the hidden --tiny grid (four kinds of task), and the
study registry."""
from __future__ import annotations

import csv
import math
import re
from collections import defaultdict

import pytest

from reltrust.cli import main
from reltrust.workbench.results import RunRecord
from reltrust.workbench.studies import STUDIES, get_study, lr_robustness
from reltrust.workbench.studies._common import SIZES


def test_lr_robustness_tiny_runs_four_task_kinds_and_the_report_follows_from_the_runs(tmp_path):
    out = tmp_path / "lrr"
    assert main(["reproduce", "lr-robustness", "--tiny", "--out", str(out), "--workers", "0", "--threads", "1",
                 "--no-progress"]) == 0
    for name in ("results.sqlite", "results.csv", "results.json", "report.md", "lr_robustness.png", "best_lr.png"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {r["task"] for r in rows} == {"classify", "charlm"}
    assert {r["problem"] for r in rows} == {"mnist", "digits", "shakespeare", "mnist1d"}

    # best lr per (problem, optimiser) = lowest mean validation error, recomputed from results.csv
    errs = defaultdict(list)
    for r in rows:
        errs[(r["problem"], r["optimizer"], float(r["lr"]))].append(1 - float(r["val_acc"]))
    best = {}
    for (problem, opt, lr), e in sorted(errs.items()):
        m = sum(e) / len(e)
        if (problem, opt) not in best or m < best[(problem, opt)][1]:
            best[(problem, opt)] = (lr, m)
    report = (out / "report.md").read_text()
    labels = {"mnist": "MLP / MNIST", "digits": "CNN / digits", "shakespeare": "Transformer / Shakespeare",
              "mnist1d": "MLP / MNIST-1D"}
    for (problem, opt), (lr, _) in best.items():
        line = re.search(rf"^- {opt}: best η per task (.*); spread", report, re.M)
        assert line and f"{labels[problem]} {lr:g}" in line.group(1)
    fromage = [best[(p, "fromage")][0] for p in labels]
    adam = [best[(p, "adam")][0] for p in labels]
    spread = lambda xs: math.log10(max(xs) / min(xs))  # noqa: E731
    about = all(abs(math.log10(lr / 0.01)) <= 0.55 for lr in fromage)
    holds = about and spread(fromage) < spread(adam)
    assert f"**The claim {'holds' if holds else 'does not hold'} here**" in report
    assert f"spread {spread(fromage):.2f} decades for Fromage, {spread(adam):.2f} for adam" in report
    assert "](lr_robustness.png)" in report and "](best_lr.png)" in report and "## Configuration" in report


def test_robustness_width_is_the_contiguous_range_within_ten_percent_of_the_best():
    def rec(lr, acc, seed=0):
        spec = lr_robustness.grid(tiny=True)[0].replace(lr=lr, seed=seed)
        return RunRecord(spec=spec, status="ok", final={"val_acc": acc, "val_loss": 1.0})
    # errors 0.50, 0.21, 0.20, 0.215, 0.30 at lrs 1e-4..1: within 10 % of 0.20 are 1e-3..1e-1 (2 decades);
    # a far lr as good again does not join the range (not contiguous).
    recs = [rec(1e-4, 0.5), rec(1e-3, 0.79), rec(1e-2, 0.8), rec(1e-1, 0.785), rec(1.0, 0.7), rec(10.0, 0.79)]
    (row,) = lr_robustness.summarise(recs)
    assert row["best_lr"] == 1e-2 and row["best_err"] == pytest.approx(0.2)
    assert row["robust"] == (1e-3, 1e-1) and row["width"] == pytest.approx(2.0)
    assert not row["at_edge"]


def test_every_registered_study_is_declarative_and_listed(capsys):
    for name in STUDIES:
        study = get_study(name)
        assert study.name == name and study.description and set(SIZES) <= set(study.configs)
        assert len(study.grid(tiny=True)) <= len(study.grid(quick=True)) <= len(study.grid())
        if not study.grid():  # a simulation (variance): no training runs in any size, whatever the seeds
            assert not study.grid(quick=True, seeds=[0, 1]) and not study.config(False).seeds
            continue
        assert len(study.grid(quick=True, seeds=[0])) < len(study.grid(quick=True)) or len(study.config(True).seeds) == 1
    assert main(["reproduce", "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == list(STUDIES)
    for ln, name in zip(lines, STUDIES):
        assert f"quick: {len(get_study(name).grid(quick=True))} runs" in ln
