"""`reltrust bench`: performance profiles against a hand-computed example, the protocol on synthetic
runs, a user's optimiser (defined here) end to end through worker processes, and every bad input."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from reltrust.cli import main
from reltrust.workbench import bench
from reltrust.workbench.results import RunRecord

from bench_user_optimizer import ScaledSGD


# ------------------------------------------------------------------------------- performance profiles
def test_performance_profiles_and_score_match_a_hand_computed_example():
    # Task A: a and b tie (100 steps), c takes 3×. Task B: b fastest, a 2×, c misses. Task C: nobody.
    times = {"a": {"A": 100.0, "B": 200.0, "C": math.inf},
             "b": {"A": 100.0, "B": 100.0, "C": math.inf},
             "c": {"A": 300.0, "B": math.inf, "C": math.inf}}
    r = bench.ratios(times)
    assert r == {"a": {"A": 1.0, "B": 2.0, "C": math.inf}, "b": {"A": 1.0, "B": 1.0, "C": math.inf},
                 "c": {"A": 3.0, "B": math.inf, "C": math.inf}}
    # ρ(τ) by hand, n = 3 tasks (the unsolved one counts in n)
    expected = {"a": {1.0: 1 / 3, 1.5: 1 / 3, 2.0: 2 / 3, 3.0: 2 / 3, 4.0: 2 / 3},
                "b": {1.0: 2 / 3, 2.0: 2 / 3, 4.0: 2 / 3},
                "c": {1.0: 0.0, 2.9: 0.0, 3.0: 1 / 3, 4.0: 1 / 3}}
    for s, points in expected.items():
        for tau, rho in points.items():
            assert bench.profile(r[s], tau, 3) == pytest.approx(rho), (s, tau)
    # areas by hand: a = (1/3·1 + 2/3·2)/3, b = 2/3·3/3, c = 1/3·1/3
    scores = {s: bench.score(r[s], 3) for s in r}
    assert scores == pytest.approx({"a": 5 / 9, "b": 2 / 3, "c": 1 / 9})
    # AlgoPerf's own way, a trapezoid rule over a fine grid of τ in [1, 4] normalised by 3, agrees
    taus = np.linspace(1.0, 4.0, 30001)
    for s in r:
        rho = np.array([bench.profile(r[s], t, 3) for t in taus])
        assert float(np.sum((rho[1:] + rho[:-1]) / 2 * np.diff(taus)) / 3.0) == pytest.approx(scores[s], abs=1e-3)
    assert bench.profile_curve(r["a"], 3) == ([1.0, 2.0, 4.0], [pytest.approx(1 / 3), pytest.approx(2 / 3),
                                                                pytest.approx(2 / 3)])
    # beyond 4× the fastest a task earns nothing
    assert bench.score({"A": 5.0}, 1) == 0.0 and bench.score({"A": 4.0}, 1) == 0.0


# ------------------------------------------------------------------------------ protocol, synthetic
def _rec(spec, errors, steps, status="ok"):
    hist = [{"epoch": i, "step": s, "val_acc": 1.0 - e} for i, (s, e) in enumerate(zip(steps, errors))]
    return RunRecord(spec=spec, status=status, history=hist, final={"val_acc": 1.0 - errors[-1]})


def test_tuning_takes_the_lowest_final_error_and_results_come_from_the_fresh_seeds_only():
    task = bench.TINY_TASKS["mlp-mnist"]  # target 0.5, evaluated at steps 0, 36 in the tiny size
    protocol = bench.Protocol(lrs=(0.01, 0.1, 1.0), tune_seed=0, seeds=(1, 2, 3))
    fast, slow = bench.Entrant("sgd"), bench.Entrant("adam")
    steps = [0, 10, 20, 30, 40]
    recs = []
    for e, finals in ((fast, {0.01: 0.6, 0.1: 0.3, 1.0: 0.3}), (slow, {0.01: 0.4, 0.1: 0.45, 1.0: 0.9})):
        for s in bench.tuning_grid([task], [e], protocol):
            recs.append(_rec(s, [0.9, 0.9, 0.9, 0.9, finals[s.lr]], steps))
    tuned = bench.tuned_lrs([task], [fast, slow], protocol, recs)
    assert tuned[(task.name, fast)][0].lr == 0.1  # a tie at 0.3 goes to the smaller lr
    assert tuned[(task.name, slow)][0].lr == 0.01
    reruns = bench.rerun_grid([task], [fast, slow], protocol, tuned)
    assert sorted((s.optimizer, s.lr, s.seed) for s in reruns) == sorted(
        [("sgd", 0.1, k) for k in (1, 2, 3)] + [("adam", 0.01, k) for k in (1, 2, 3)])
    # reruns: sgd reaches 0.5 at steps 10, 20, 30 (median 20); adam at 40 on one seed only (median ∞)
    by = {(s.optimizer, s.seed): s for s in reruns}
    recs += [_rec(by[("sgd", 1)], [0.9, 0.5, 0.4, 0.3, 0.2], steps),
             _rec(by[("sgd", 2)], [0.9, 0.7, 0.45, 0.3, 0.2], steps),
             _rec(by[("sgd", 3)], [0.9, 0.7, 0.6, 0.5, 0.4], steps),
             _rec(by[("adam", 1)], [0.9, 0.8, 0.7, 0.6, 0.5], steps),
             _rec(by[("adam", 2)], [0.9, 0.8, 0.7, 0.6, 0.55], steps),
             _rec(by[("adam", 3)], [0.9, 0.8, 0.7, 0.6, 0.6], steps)]
    rows = bench.summarise([task], [fast, slow], protocol, recs)
    sgd, adam = rows
    assert sgd["complete"] and sgd["steps"] == {1: 10.0, 2: 20.0, 3: 30.0} and sgd["time"] == 20.0
    assert sgd["errors"] == pytest.approx({1: 0.2, 2: 0.2, 3: 0.4})  # seed 0 (the tuning run) is not among them
    assert adam["steps"] == {1: 40.0, 2: math.inf, 3: math.inf} and adam["time"] == math.inf
    prof = bench.profiles(rows, [fast, slow], 1)
    assert prof[fast]["score"] == 1.0 and prof[slow]["score"] == 0.0 and prof[slow]["solved"] == 0
    # targets: best error within 3/4 of a 40-step budget (steps ≤ 30): sgd 0.3, 0.3, 0.5 → 0.3; adam 0.6 → 0.6
    assert bench.derive_targets(rows, {task.name: (40, 10)}) == {task.name: (pytest.approx(0.3), "sgd")}
    # a crashed rerun leaves the pair incomplete: no time, not solved
    crashed = [r if r.spec.seed != 3 or r.spec.optimizer != "sgd" else
               RunRecord(spec=r.spec, status="crashed", error="boom") for r in recs]
    sgd_row = bench.summarise([task], [fast], protocol, crashed)[0]
    assert not sgd_row["complete"] and sgd_row["time"] == math.inf


def test_steps_to_target_is_the_first_evaluation_after_training_starts():
    spec = bench.tuning_grid([bench.TINY_TASKS["mlp-mnist"]], [bench.Entrant("sgd")], bench.PROTOCOLS["tiny"])[0]
    assert bench.steps_to_target(_rec(spec, [0.1, 0.6, 0.5, 0.2], [0, 5, 10, 15]), 0.5) == 10.0  # not step 0
    assert bench.steps_to_target(_rec(spec, [0.9, 0.6, 0.51], [0, 5, 10]), 0.5) == math.inf
    assert bench.steps_to_target(_rec(spec, [0.9, 1 - 0.7], [0, 5]), 0.3) == 5.0  # 1 − 0.7 ≠ 0.3 in floats
    assert bench.steps_to_target(RunRecord(spec=spec, status="crashed"), 0.5) == math.inf


# -------------------------------------------------------------------------------------- end to end
def test_a_user_optimiser_named_by_its_import_path_is_imported_in_every_worker_process(tmp_path):
    from reltrust.workbench.runner import run_sweep
    from reltrust.workbench.spec import RunSpec
    from reltrust.workbench.store import Store

    marker = tmp_path / "built"
    marker.mkdir()
    specs = [RunSpec(study="t", task="regress", dataset="teacher", model="linear", lr=0.1, seed=seed, epochs=3,
                     batch_size=50, optimizer=f"{ScaledSGD.__module__}:ScaledSGD",
                     optimizer_kwargs={"scale": 0.5, "marker": str(marker)}) for seed in (0, 1)]
    with Store(tmp_path / "s.sqlite") as store:
        summary = run_sweep(specs, store, workers=2, threads=1, progress=False)
        recs = store.records(specs=specs)
    assert summary.ok == 2 and all(r.final["train_loss"] < 0.5 * r.history[0]["train_loss"] for r in recs)
    built = {int(p.name) for p in marker.iterdir()}
    assert built and os.getpid() not in built  # built, so imported, only in the spawned workers


def test_a_user_optimiser_runs_through_bench_end_to_end_and_the_report_follows_from_the_runs(tmp_path, capsys):
    marker = tmp_path / "built"
    marker.mkdir()
    out = tmp_path / "bench"
    user = f"{ScaledSGD.__module__}:ScaledSGD"
    argv = ["bench", "--tiny", "--optimizer", user, "--hp", "scale=0.5", "--hp", f"marker={marker}",
            "--optimizer", "sgd", "--hp", "momentum=0.9", "--tasks", "mlp-mnist", "transformer-shakespeare",
            "--out", str(out), "--workers", "0", "--threads", "1", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    label = f"{user} (marker={str(marker)!r}, scale=0.5)"
    assert f"optimizer {label}: 6 runs (2 tasks × (grid 2 × seeds 1 + rerun 1)), 138 optimizer steps" in printed
    assert "optimizer sgd (momentum=0.9): 6 runs" in printed
    assert {int(p.name) for p in marker.iterdir()} == {os.getpid()}  # built: checked, and run in this process
    for name in ("results.sqlite", "results.csv", "results.json", "bench_summary.csv", "bench_summary.json",
                 "report.md", "performance_profiles.png", "tuning.png", "curves.png"):
        assert (out / name).is_file(), name

    runs = json.loads((out / "results.json").read_text())
    summary = json.loads((out / "bench_summary.json").read_text())
    assert len(runs) == 12 and {r["status"] for r in runs} == {"ok"}
    steps = {r["spec"]["dataset"]: [h["step"] for h in r["history"]] for r in runs}
    assert steps == {"mnist": [0, 36], "shakespeare": [0, 5, 10]}  # the LM evaluated every 5 steps (tiny)
    assert all(r["history"][-1]["step"] == r["final"]["steps"] for r in runs)
    times = {}
    for res in summary["results"]:
        task = bench.TINY_TASKS[res["task"]]
        mine = [r for r in runs if r["spec"]["dataset"] == task.fields()["dataset"]
                and (r["spec"]["optimizer"], r["spec"].get("optimizer_kwargs", {})) ==
                ((user, {"marker": str(marker), "scale": 0.5}) if res["optimizer"] == label else ("sgd", {"momentum": 0.9}))]
        tuning = {r["spec"]["lr"]: 1 - r["final"]["val_acc"] for r in mine if r["spec"]["seed"] == 0}
        best = min(sorted(tuning), key=lambda lr: tuning[lr])
        assert res["tuned_lr"] == best and res["complete"]
        (rerun,) = [r for r in mine if r["spec"]["seed"] == 1]
        assert rerun["spec"]["lr"] == best
        hit = [h["step"] for h in rerun["history"] if h["step"] > 0 and 1 - h["val_acc"] <= task.target + 1e-9]
        assert res["steps_to_target_median"] == (hit[0] if hit else None)
        assert res["val_error"] == {"1": pytest.approx(1 - rerun["final"]["val_acc"])}
        times.setdefault(res["optimizer"], {})[res["task"]] = hit[0] if hit else math.inf
    for opt in summary["optimizers"]:
        assert opt["score"] == pytest.approx(bench.score(bench.ratios(times)[opt["label"]], 2))
    report = (out / "report.md").read_text()
    assert "](performance_profiles.png)" in report and "## Configuration" in report and "seeds 0, 1." in report
    for opt in summary["optimizers"]:
        assert f"| {opt['label']} | {opt['score']:.3f} |" in report

    # resumable: the same command again runs nothing and writes the same summary
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert "stage 1 (tuning): 0 run(s) to do" in again and "stage 2 (rerun): 0 run(s) to do" in again
    assert json.loads((out / "bench_summary.json").read_text()) == summary


# --------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("args, message", [
    (["--optimizer", "adamm"], "--optimizer 'adamm': unknown optimizer 'adamm'; known: adam, "),
    (["--optimizer", "no_such_package_xyz.opt:Opt"],
     "--optimizer 'no_such_package_xyz.opt:Opt': optimizer 'no_such_package_xyz.opt:Opt': importing "
     "'no_such_package_xyz.opt' failed: ModuleNotFoundError"),
    (["--optimizer", "bench_user_optimizer:Nope"], "module 'bench_user_optimizer' has no attribute 'Nope'"),
    (["--optimizer", "bench_user_optimizer:NotAnOptimizer"], "is not a torch.optim.Optimizer subclass"),
    (["--optimizer", "math:sqrt"], "<built-in function sqrt> is not a torch.optim.Optimizer subclass"),
    (["--optimizer", "torch.optim:"], "an import path is 'package.module:Class'"),
    (["--hp", "momentum=0.9", "--optimizer", "sgd"], "--hp 'momentum=0.9': give it after the --optimizer it belongs to"),
    (["--optimizer", "sgd", "--hp", "momentum"], "--hp 'momentum' (for sgd): expected name=value"),
    (["--optimizer", "sgd", "--hp", "lr=0.1"], "--hp lr (for sgd): the bench tunes lr on its grid"),
    (["--optimizer", "adamw", "--hp", "weight_decay=0.1"], "--hp weight_decay (for adamw)"),
    (["--optimizer", "sgd", "--hp", "momentum=0.9", "--hp", "momentum=0.5"], "a hyperparameter is given twice"),
    (["--optimizer", "sgd", "--hp", "nesterov_typo=1"],
     "--optimizer sgd (nesterov_typo=1): SGD(params, lr=0.01, nesterov_typo=1) failed: TypeError"),
    (["--optimizer", "bench_user_optimizer:ScaledSGD", "--hp", "scale={1}"], "--hp for"),
    (["--optimizer", "adam", "--optimizer", "adam"], "--optimizer adam: given twice"),
    (["--optimizer", "adam", "--tasks", "mlp-cifar"], "--tasks: 'mlp-cifar' not known; the tasks: mlp-mnist, "),
    (["--optimizer", "adam", "--tasks", "mlp-mnist", "mlp-mnist"], "--tasks: a task is given twice"),
    (["--optimizer", "adam", "--workers", "-1"], "--workers must be >= 0 (0: run in this process), got -1"),
    (["--optimizer", "adam", "--threads", "0"], "--threads must be >= 1, got 0"),
])
def test_every_bad_input_is_one_clear_line_before_anything_runs(tmp_path, capsys, args, message):
    out = tmp_path / "bench"
    assert main(["bench", "--tiny", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("reltrust bench: ") and message in err and err.count("\n") == 1, err
    assert not out.exists()  # nothing ran, nothing was written


def test_bench_without_an_optimizer_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench", "--tiny"])
    assert info.value.code == 2 and "--optimizer" in capsys.readouterr().err
