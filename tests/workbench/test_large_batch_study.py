"""`reltrust reproduce large-batch`: the lr scaling rules, steps to target and hold batches from hand-made
runs, and the --tiny grid end to end with its verdicts recomputed from results.csv."""
from __future__ import annotations

import csv
import math
import re
from collections import defaultdict

import pytest

from reltrust.cli import main
from reltrust.workbench.results import RunRecord
from reltrust.workbench.studies import large_batch as lb


@pytest.mark.parametrize("batch", [32, 64, 256, 1000, 4096])
def test_lr_scaling_rules_are_the_papers_formulas(batch):
    # square root (Adam, AdamW, LAMB, Fromage) and linear (SGD, LARS) from η₀ at batch 32
    assert lb.scaled_lr(0.002, batch, "sqrt") == pytest.approx(0.002 * math.sqrt(batch / 32), rel=1e-12)
    assert lb.scaled_lr(0.05, batch, "linear") == pytest.approx(0.05 * batch / 32, rel=1e-12)
    assert {o: p.rule for o, p in lb.OPTIMIZERS.items()} == {
        "lamb": "sqrt", "lars": "linear", "adam": "sqrt", "adamw": "sqrt", "sgd": "linear", "fromage": "sqrt"}
    # the grid at a batch: the scaled η₀ (× the language model's multiplier) × each factor
    lm = next(s for s in lb.CONFIGS["quick"].settings if s.fields["task"] == "charlm")
    assert lb.lr_grid(lm, "lars", batch, (0.25, 1.0, 4.0)) == pytest.approx(
        [2.0 * lb.LM_LR_SCALE * batch / 32 * f for f in (0.25, 1.0, 4.0)], rel=1e-12)


def test_scaled_lr_rejects_an_unknown_rule():
    with pytest.raises(ValueError, match=r"rule must be one of sqrt, linear, got 'cubic'"):
        lb.scaled_lr(0.1, 64, "cubic")


def test_the_grid_keeps_a_fixed_epoch_budget_and_the_papers_schedule():
    specs = lb.grid(quick=True)
    for s in specs:
        assert (s.schedule, s.schedule_interval, s.kwargs("schedule")) == ("poly", "step", {"warmup_fraction": 0.1})
        assert s.weight_decay == lb.OPTIMIZERS[s.optimizer].weight_decay
    lm = {s.batch_size: s for s in specs if s.task == "charlm"}
    assert sorted(lm) == [32, 64, 128, 256, 512, 1024]
    assert all(s.steps * b == 4096 and s.epochs == 0 for b, s in lm.items())  # the same sequences at every batch
    assert {s.epochs for s in specs if s.task == "classify"} == {3}


def _rec(batch, lr, seed, errors, optimizer="adam", steps_per_epoch=None):
    """A finished run whose validation error after epoch k is errors[k-1] (epoch 0: 0.9)."""
    spec = lb.grid(tiny=True)[0].replace(optimizer=optimizer, batch_size=batch, lr=lr, seed=seed)
    per = steps_per_epoch or -(-4500 // batch)
    history = [{"epoch": 0, "step": 0, "val_acc": 0.1}] + [
        {"epoch": k, "step": k * per, "val_acc": 1.0 - e} for k, e in enumerate(errors, 1)]
    return RunRecord(spec=spec, status="ok", history=history, final={"val_acc": 1.0 - errors[-1]})


def test_steps_to_target_and_hold_batch_from_hand_made_histories():
    recs = [
        # batch 128 (36 steps an epoch): lr 0.01 reaches 0.10 at epoch 2 in both seeds, lr 0.1 at epoch 1 and 3
        _rec(128, 0.01, 0, [0.3, 0.10, 0.08]), _rec(128, 0.01, 1, [0.3, 0.09, 0.08]),
        _rec(128, 0.1, 0, [0.09, 0.2, 0.30]), _rec(128, 0.1, 1, [0.5, 0.4, 0.10]),
        # batch 1024 (5 steps an epoch): one seed misses at lr 0.01 (median ∞); lr 0.1 at epochs 3 and 2
        _rec(1024, 0.01, 0, [0.5, 0.3, 0.08]), _rec(1024, 0.01, 1, [0.5, 0.3, 0.2]),
        _rec(1024, 0.1, 0, [0.5, 0.3, 0.085]), _rec(1024, 0.1, 1, [0.5, 0.09, 0.09]),
    ]
    (s,) = lb.summarise(recs).values()
    # best final error: 0.08 at 128 (lr 0.01), 0.0875 at 1024 (lr 0.1); target = 0.08 + max(0.008, 0.01)
    assert s["rows"]["adam"][128]["lr"] == 0.01 and s["rows"]["adam"][128]["err"] == pytest.approx(0.08)
    assert s["rows"]["adam"][1024]["lr"] == 0.1 and s["rows"]["adam"][1024]["err"] == pytest.approx(0.0875)
    assert s["target"] == pytest.approx(0.09)
    # 128: lr 0.01 → epoch 3 and epoch 2 → median 90 steps; lr 0.1 → epoch 1 and a miss → ∞: lowest 90.
    # 1024: lr 0.01 → ∞ (median of 15 and ∞); lr 0.1 → 15 and 10 → 12.5.
    assert s["steps"]["adam"] == {128: pytest.approx(90.0), 1024: pytest.approx(12.5)}
    # 0.0875 ≤ 0.08 + 0.01: adam holds to 1024
    assert s["hold"]["adam"] == 1024


def test_hold_batch_is_the_contiguous_run_from_the_smallest_batch():
    # tolerance max(10 %, 0.01): 0.20 → 0.22; 0.215 holds, 0.25 breaks, a later 0.21 does not rejoin
    assert lb.hold_batch({32: 0.20, 64: 0.215, 128: 0.25, 256: 0.21}) == 64
    assert lb.hold_batch({32: 0.05, 64: 0.0599, 128: 0.061}) == 64  # the absolute floor 0.01 at small errors
    assert lb.hold_batch({}) is None


def test_verdict_needs_both_trust_ratio_methods_past_both_baselines():
    def summary(hold, largest=1024):
        return {"t": {"hold": hold, "largest": largest}}
    v = lb.verdict(summary({"lamb": 1024, "lars": 512, "adam": 256, "sgd": 128}))
    assert v["per_task"]["t"][0] == "holds" and v["holds"] == 1
    assert lb.verdict(summary({"lamb": 1024, "lars": 256, "adam": 256, "sgd": 128}))["per_task"]["t"][0] == "does not hold"
    v = lb.verdict(summary({"lamb": 1024, "lars": 1024, "adam": 1024, "sgd": 1024}))
    assert v["per_task"]["t"][0] == "undecided" and v["decided"] == 0


def test_large_batch_tiny_end_to_end_and_the_report_follows_from_the_runs(tmp_path):
    out = tmp_path / "lb"
    assert main(["reproduce", "large-batch", "--tiny", "--out", str(out), "--workers", "0", "--threads", "1",
                 "--no-progress"]) == 0
    for name in ("results.sqlite", "results.csv", "report.md", "large_batch_summary.csv", "error_vs_batch.png",
                 "steps_to_target.png"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {r["task"] for r in rows} == {"classify", "charlm"} and len(rows) == len(lb.grid(tiny=True))
    # best error per (problem, optimiser, batch) over the lr grid, then the hold batch, from results.csv
    errs = defaultdict(lambda: defaultdict(list))
    for r in rows:
        errs[(r["problem"], r["optimizer"], int(r["batch_size"]))][float(r["lr"])].append(1 - float(r["val_acc"]))
    best = {k: min(sum(e) / len(e) for e in by_lr.values()) for k, by_lr in errs.items()}
    labels = {"mnist": "MLP / MNIST", "shakespeare": "Transformer / Shakespeare"}
    report = (out / "report.md").read_text()
    n_holds = 0
    for problem, label in labels.items():
        hold = {}
        for opt in ("lamb", "lars", "adam", "sgd"):
            by_b = {b: e for (p, o, b), e in best.items() if (p, o) == (problem, opt)}
            b0 = min(by_b)
            limit = by_b[b0] + max(0.1 * by_b[b0], 0.01)
            hold[opt] = b0
            for b in sorted(by_b)[1:]:
                if by_b[b] > limit:
                    break
                hold[opt] = b
        line = re.search(rf"^\| {re.escape(label)} \| ([a-z ]+) \| (.*) \|$", report, re.M)
        assert line and all(f"{o} {hold[o]}" in line.group(2) for o in hold)
        trust, base = min(hold["lamb"], hold["lars"]), max(hold["adam"], hold["sgd"])
        largest = max(b for (p, _, b) in best if p == problem)
        expected = "undecided" if trust == base == largest else "holds" if trust > base else "does not hold"
        assert line.group(1) == expected
        n_holds += expected == "holds"
    assert f"on {n_holds} of 2 tasks here**" in report
    assert "](error_vs_batch.png)" in report and "](steps_to_target.png)" in report and "## Configuration" in report
