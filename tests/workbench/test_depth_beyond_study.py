"""`reltrust reproduce depth --optimizers` (parsing, the grid, one-line errors) and `reltrust reproduce
depth-beyond`: the --tiny grid end to end, with what trains where and the geometry verdicts recomputed
from results.json."""
from __future__ import annotations

import csv
import json
import math
import re

import pytest

from reltrust.cli import main
from reltrust.workbench.studies import depth
from reltrust.workbench.studies import depth_beyond as db

TINY = ["--tiny", "--workers", "0", "--threads", "1", "--no-progress"]


# ------------------------------------------------------------------------------- depth --optimizers
def test_optimizers_are_parsed_in_order_and_bad_lists_are_one_line_errors():
    assert depth.parse_optimizers("nero, Adam,fromage_budget") == ("nero", "adam", "fromage_budget")
    allowed = "fromage, fromage_budget, nero, muon, lamb, sgd, adam"
    with pytest.raises(ValueError, match=re.escape(f"unknown optimizer 'rmsprop'; allowed: {allowed}")):
        depth.parse_optimizers("adam,rmsprop")
    with pytest.raises(ValueError, match=re.escape("a comma-separated list of optimiser names is expected, got 'adam,'")):
        depth.parse_optimizers("adam,")
    with pytest.raises(ValueError, match=re.escape("sgd given twice")):
        depth.parse_optimizers("sgd,adam,sgd")


def test_the_default_grid_is_the_papers_three_with_unchanged_keys_and_a_choice_runs_only_those():
    default = depth.grid(quick=True)
    assert [s.key for s in depth.grid(quick=True, optimizers=("fromage", "sgd", "adam"))] == [s.key for s in default]
    assert {s.optimizer for s in default} == {"fromage", "sgd", "adam"}
    assert all(s.study == "depth" and not s.task_kwargs for s in default)
    chosen = depth.grid(quick=True, optimizers=("nero", "muon"))
    n_models = len(depth.CONFIGS["quick"].depths) * len(depth.INITS)
    assert len(chosen) == n_models * (len(depth.DESCENDANTS["nero"][1]) + len(depth.DESCENDANTS["muon"][1]))
    assert {(s.optimizer, s.lr) for s in chosen} == {("nero", lr) for lr in depth.DESCENDANTS["nero"][1]} | {
        ("muon", lr) for lr in depth.DESCENDANTS["muon"][1]}
    # a spec of the default grid keeps its key when another optimiser joins (its run is reused)
    assert {s.key for s in default} <= {s.key for s in depth.grid(quick=True, optimizers=tuple(depth.ALLOWED))}


@pytest.mark.parametrize("argv,expected", [
    (["reproduce", "depth", "--optimizers", "adam,rmsprop"], "argument --optimizers: unknown optimizer 'rmsprop'; allowed:"),
    (["reproduce", "trust", "--optimizers", "adam"], "argument --optimizers: study 'trust' does not take it (its options: none)"),
    (["run", "depth", "--index", "0", "--optimizers", ""], "argument --optimizers: a comma-separated list"),
])
def test_a_bad_optimizers_option_is_one_line_and_writes_nothing(tmp_path, capsys, argv, expected):
    out = tmp_path / "out"
    rc = main([*argv[:2], "--tiny", "--out", str(out), *argv[2:]])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and expected in err, err
    assert not out.exists()


def test_run_with_optimizers_picks_from_that_grid(tmp_path, capsys):
    rc = main(["run", "depth", "--tiny", "--optimizers", "lamb", "--list", "--out", str(tmp_path / "o")])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0 and len(lines) == len(depth.grid(tiny=True, optimizers=("lamb",))) and all("/lamb@" in x for x in lines)


# ------------------------------------------------------------------------------- verdict rule
def test_relation_says_whether_a_quantity_separates_trainers_from_the_rest():
    assert "separates them" in db.relation("x", {"a": 0.5, "b": 0.4}, {"c": 0.1}) and "larger" in db.relation(
        "x", {"a": 0.5}, {"c": 0.1})
    assert "smaller than" in db.relation("x", {"a": 0.01}, {"c": 0.1, "d": 0.2})
    assert "does not separate them: 0.1–0.5 among those that train, 0.2 among" in db.relation(
        "x", {"a": 0.1, "b": 0.5}, {"c": 0.2})
    assert "separates nothing" in db.relation("x", {"a": 0.1}, {})


# ------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("depth_beyond")
    return out, main(["reproduce", "depth-beyond", "--out", str(out), *TINY])


def _runs(out):
    return json.loads((out / "results.json").read_text())


def test_the_tiny_grid_runs_every_method_under_both_inits_with_a_monitor(tiny):
    out, rc = tiny
    assert rc == 0
    runs = _runs(out)
    specs = db.grid(tiny=True)
    assert len(runs) == len(specs) == len(db.METHODS) * len(depth.INITS) * len(db.CONFIGS["tiny"].depth.depths)
    assert {r["spec"]["optimizer"] for r in runs} == set(db.METHODS)
    for r in runs:
        t = r["info"]["trust"]
        d = r["spec"]["model_kwargs"]["depth"]
        assert t["layers"] == [f"layers.{i}.weight" for i in range(d)] and len(t["relative_spectral_update"]) == d
        assert t["spectral_steps"][:2] == [1, 2] and t["steps"] == r["final"]["steps"]
        # the deep relative trust of all layers is the last entry of the per-layer cumulative one
        assert t["deep_relative_trust_by_layer"][-1] == pytest.approx(t["deep_relative_trust"], rel=1e-9)
        if r["spec"]["optimizer"] == "fromage":  # the paper's property: every layer moves by the same relative amount
            assert max(t["relative_update"]) / min(t["relative_update"]) < 1.01
    for png in ("depth.png", "geometry_default.png", "geometry_kaiming.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_reports_verdicts_are_those_recomputed_from_the_runs(tiny):
    out, rc = tiny
    report = (out / "report.md").read_text()
    runs = _runs(out)
    for init in depth.INITS:
        deep = {r["spec"]["optimizer"]: r for r in runs
                if r["spec"]["model_kwargs"]["init"] == init and r["spec"]["model_kwargs"]["depth"] == 3}
        acc = {m: r["final"]["train_acc"] for m, r in deep.items()}  # one lr, one seed: the best is the run
        yes = [m for m in db.METHODS if acc[m] >= db.TRAINS]
        no = [m for m in db.METHODS if acc[m] < db.TRAINS]
        m = re.search(rf"Depth 3, {init} init: trains \(best final train accuracy ≥ 0\.50\): (.*?); does not: (.*?)\.\n", report)
        assert m, init
        names = lambda s: [] if s == "none" else [x.split(" (")[0] for x in s.split(", ")]  # noqa: E731
        assert names(m.group(1)) == [depth._label(x) for x in sorted(yes, key=depth._opt_order)]
        assert names(m.group(2)) == [depth._label(x) for x in sorted(no, key=depth._opt_order)]
        drt = {k: r["info"]["trust"]["deep_relative_trust"] for k, r in deep.items()}
        line = re.search(rf"Depth 3, {init} init: The median per-step deep relative trust (.*)\n", report).group(1)
        t, f = [drt[k] for k in yes], [drt[k] for k in no]
        if t and f and (max(f) < min(t) or min(f) > max(t)):
            assert line.startswith("separates them") and ("larger" in line) == (max(f) < min(t))
        elif t and f:
            assert line.startswith("does not separate them")
        else:
            assert "separates nothing" in line
    # the geometry table and geometry.csv carry the runs' own numbers
    rows = {(r["init"], r["depth"], r["optimizer"]): r for r in csv.DictReader(open(out / "geometry.csv"))}
    for r in runs:
        k = r["spec"]["model_kwargs"]
        g = rows[(k["init"], str(k["depth"]), r["spec"]["optimizer"])]
        assert float(g["deep_relative_trust"]) == pytest.approx(r["info"]["trust"]["deep_relative_trust"], rel=1e-12)
        rel = [float(x) for x in g["relative_spectral_update"].split()]
        assert rel == pytest.approx([math.nan if v is None else v for v in r["info"]["trust"]["relative_spectral_update"]],
                                    rel=1e-12, nan_ok=True)
    assert "Learning rates (fromage_budget" in report and "Command: `reltrust reproduce depth-beyond" in report
