"""`reltrust bench`: any optimiser against the others on the workbench's tasks, with one tuning
protocol for all, steps to a target and performance profiles.

    reltrust bench --quick --optimizer mypackage.optim:MyOptimizer --hp beta=0.9 --optimizer adam

**Tasks** (`TASKS`): the four tasks of the learning-rate robustness study at its quick size
(`reltrust.workbench.studies.lr_robustness`, reused as they are): MLP/MNIST (5 epochs of 36 steps),
CNN/digits (10 epochs of 26 steps), the char Transformer on Shakespeare (200 steps, evaluated every
20 steps here instead of every 100) and MLP/MNIST-1D (10 epochs of 29 steps). Each has a fixed step
budget and a **target**: a validation error (1 − accuracy; for the language model the next-character
error). The metric is evaluated once before training and after every epoch (every 20 steps for the
language model); the history records the step of each evaluation.

**Targets** (`BenchTask.target`), set as AlgoPerf sets its own (its DOCUMENTATION.md, "Defining
target performance": the best of the tuned target-setting algorithms, rerun on many seeds, the
median over seeds of the best validation error reached; the submissions' budget is 4/3 of the
target-setting runtime): this module's full protocol was run with SGD (momentum 0.9), Adam, Fromage,
LAMB and LARS; for each of them at its tuned learning rate, each rerun seed's best validation error
over the evaluations in the first 3/4 of the step budget, the median over the seeds; the target is
the lowest such median over the five (`derive_targets`, which every report applies to its own runs
in "Targets these runs would set"). So the best baseline reaches the target in at most 3/4 of the
budget in half of its seeds or more, and the budget leaves the others 4/3 of that.

**Protocol**, the same for every optimiser (DeepOBS's, Schneider et al. 2019: a learning-rate grid
search, then the best setting rerun on more seeds): weight decay 0, a constant learning rate, every
other hyperparameter fixed (the class's defaults, or what ``--hp`` gives). Stage 1 runs each task at
every learning rate of a fixed log grid on one seed (`Protocol.tune_seed`); the best learning rate is
the one with the lowest final validation error (the smallest on ties; a diverged run competes with
the error of the model where it stopped). Stage 2 reruns that learning rate on fresh seeds
(`Protocol.seeds`), which are all the results report: the tuning seed is left out so that the
winner's luck on it does not flatter the final numbers. ``--quick`` uses a grid of whole decades
(1e-5 … 10, 7 values) and 3 rerun seeds; the full protocol half-decades (1e-5, 3e-5, … 10: 13
values) and 5 seeds.
Both run the same tasks with the same targets, so their runs share keys and one store.

**Steps to target** of a run: the step of the first evaluation after training starts at which the
validation error is at most the target (∞ if none). Per task and optimiser: the median over the
rerun seeds (∞ when half of them or more miss; AlgoPerf takes the median over its 5 studies). Steps,
not seconds: the count does not depend on the machine, but it ignores what a step costs (an
optimiser with a dearer step is not charged for it).

**Performance profiles and the score** (AlgoPerf, DOCUMENTATION.md, "Benchmark score using
performance profiles", after Dolan and Moré 2002): with t_{s,w} the steps to target of optimiser s
on task w, the ratio is r_{s,w} = t_{s,w} / min_s t_{s,w}; optimiser s's profile is ρ_s(τ) = (1/n)·
|{w : r_{s,w} ≤ τ}| over all n tasks; its score is B_s = 1/(r_max − 1) ∫_1^{r_max} ρ_s(τ) dτ with
r_max = 4, in [0, 1]. An optimiser that misses a task has r = ∞ there; a task that no optimiser
solves stays in n and in nobody's profile. The integral is computed exactly: ρ_s is a step function,
so B_s = (1/n) Σ_w max(0, r_max − r_{s,w}) / (r_max − 1) (AlgoPerf's code, scoring/
performance_profile.py, takes np.trapz on a grid of τ, which tends to the same value).

Outputs in ``--out`` (default ``runs/bench`` or ``runs/bench-quick``): ``results.sqlite`` (the store:
rerunning the command resumes, and optimisers added later reuse the runs already there),
``results.csv``/``results.json`` (every run), ``bench_summary.csv`` (per task and optimiser),
``bench_summary.json`` (the protocol, targets, every number of the report, the profiles and scores),
the figures and ``report.md``.
"""
from __future__ import annotations

import argparse
import ast
import csv
import dataclasses
import io
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reltrust.workbench.report import Report, fmt, fmt_lr
from reltrust.workbench.runner import run_sweep, sweep
from reltrust.workbench.spec import RunSpec
from reltrust.workbench.store import Record, Store, atomic_write_text
from reltrust.workbench.studies import lr_robustness
from reltrust.workbench.studies._common import best_over_lr, finish_report

NAME = "bench"
TITLE = "reltrust bench: the optimisers on the workbench's tasks, one tuning protocol for all"
R_MAX = 4.0  # AlgoPerf's upper limit of τ: beyond 4× the fastest a task earns nothing
TARGET_FRACTION = 0.75  # targets are what the best baseline reaches in 3/4 of the budget (budget = 4/3 of it)
TOLERANCE = 1e-9  # error ≤ target + this: 1 − accuracy is not exact in floating point


class BenchError(ValueError):
    """A bad `reltrust bench` input; the message names the option and what it allows."""


# --------------------------------------------------------------------------------------------- tasks
@dataclasses.dataclass(frozen=True)
class BenchTask:
    """One task: a setting of the lr-robustness study, the validation error to reach, and (for a task
    whose "epoch" is a task_kwargs choice, the language model) the steps between evaluations."""

    setting: lr_robustness.Setting
    target: float
    eval_every: int | None = None

    @property
    def name(self) -> str:
        return _task_name(self.setting)

    @property
    def label(self) -> str:
        return self.setting.label

    def fields(self) -> dict[str, Any]:
        f = dict(self.setting.fields)
        if self.eval_every is not None:
            f["task_kwargs"] = {**f["task_kwargs"], "steps_per_epoch": self.eval_every}
        return f


def _task_name(setting: lr_robustness.Setting) -> str:
    return f"{setting.fields['model']}-{setting.fields['dataset']}"  # the --tasks name: "mlp-mnist"


def _tasks(size: str, targets: Mapping[str, float], eval_every: int) -> dict[str, BenchTask]:
    """The lr-robustness study's settings at `size`, with their targets; the LM evaluated every `eval_every`."""
    return {_task_name(s): BenchTask(s, targets[_task_name(s)], eval_every if s.fields["task"] == "charlm" else None)
            for s in lr_robustness.CONFIGS[size].settings}


# The targets (validation error) as `derive_targets` set them from the full protocol's runs of SGD
# (momentum 0.9), Adam, Fromage, LAMB and LARS (see the module doc and the README): 38/500 (SGD),
# 2/179 (SGD), 1453/2048 (Adam) and 164/399 (Adam) wrong answers on the validation splits, rounded up
# at the fourth decimal, which admits no further wrong answer.
TASKS = _tasks("quick", {"mlp-mnist": 0.076, "cnn-digits": 0.0112, "transformer-shakespeare": 0.7095,
                         "mlp-mnist1d": 0.4111}, eval_every=20)
# Seconds-long tasks for the tests; their targets are loose values, not set from baselines.
TINY_TASKS = _tasks("tiny", {"mlp-mnist": 0.5, "cnn-digits": 0.85, "transformer-shakespeare": 0.9,
                             "mlp-mnist1d": 0.85}, eval_every=5)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The tuning effort, the same for every optimiser: `lrs` on seed `tune_seed`, then the best lr on
    `seeds` (fresh seeds: the results)."""

    lrs: tuple[float, ...]
    tune_seed: int
    seeds: tuple[int, ...]


HALF_DECADES = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0)
PROTOCOLS = {
    "full": Protocol(HALF_DECADES, 0, (1, 2, 3, 4, 5)),
    "quick": Protocol(HALF_DECADES[::2], 0, (1, 2, 3)),  # whole decades: the quick runs are full runs too
    "tiny": Protocol((1e-2, 1e-1), 0, (1,)),
}


def _base() -> RunSpec:
    """What every bench run shares before its task, optimiser, lr and seed are set."""
    return RunSpec(study=NAME, dataset="mnist", model="mlp", optimizer="sgd", lr=0.1)


def budget(task: BenchTask, data_dir: str | None = None) -> tuple[int, int]:
    """(steps in the budget, steps between evaluations) of `task`, from its data (loaded once)."""
    import torch

    from reltrust.workbench.tasks import make_task

    spec = _base().replace(**task.fields())
    per_epoch = make_task(spec, device=torch.device("cpu"), data_dir=data_dir).steps_per_epoch
    if spec.epochs == 0:
        return spec.steps, per_epoch
    return (min(spec.steps, spec.epochs * per_epoch) if spec.steps else spec.epochs * per_epoch), per_epoch


# ---------------------------------------------------------------------------------------- optimisers
@dataclasses.dataclass(frozen=True)
class Entrant:
    """An optimiser in the bench: a registry name or an import path, and its fixed hyperparameters."""

    optimizer: str
    hps: tuple[tuple[str, Any], ...] = ()  # as a RunSpec stores them (`RunSpec.optimizer_kwargs`)

    @property
    def label(self) -> str:
        if not self.hps:
            return self.optimizer
        return f"{self.optimizer} ({', '.join(f'{k}={v!r}' for k, v in self.hps)})"

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return _base().replace(optimizer_kwargs=dict(self.hps)).kwargs("optimizer")


def _hp(text: str, optimizer: str) -> tuple[str, Any]:
    name, eq, raw = text.partition("=")
    name = name.strip()
    if not eq or not name.isidentifier():
        raise BenchError(f"--hp {text!r} (for {optimizer}): expected name=value, e.g. --hp momentum=0.9")
    if name in ("lr", "weight_decay"):
        raise BenchError(f"--hp {name} (for {optimizer}): the bench tunes lr on its grid and trains every "
                         "optimiser without weight decay; give only the other hyperparameters")
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        value = raw.strip()  # a bare word: a string
    return name, value


def parse_entrants(items: Sequence[tuple[str, str]], protocol: Protocol) -> list[Entrant]:
    """The optimisers named by ``--optimizer NAME --hp k=v …`` (each --hp belongs to the --optimizer
    before it), each checked before anything runs: the name resolves to a `torch.optim.Optimizer`
    subclass and it builds with every lr of the grid and its hyperparameters."""
    raw: list[tuple[str, list[tuple[str, Any]]]] = []
    for kind, text in items:
        if kind == "optimizer":
            raw.append((text, []))
        elif not raw:
            raise BenchError(f"--hp {text!r}: give it after the --optimizer it belongs to")
        else:
            raw[-1][1].append(_hp(text, raw[-1][0]))
    if not raw:
        raise BenchError("--optimizer: give at least one (a registry name or package.module:Class)")
    entrants, seen = [], set()
    for name, hps in raw:
        names = [k for k, _ in hps]
        if len(set(names)) < len(names):
            raise BenchError(f"--hp for {name}: a hyperparameter is given twice ({', '.join(names)})")
        entrant = _check(name, dict(hps), protocol)
        if entrant in seen:
            raise BenchError(f"--optimizer {entrant.label}: given twice")
        seen.add(entrant)
        entrants.append(entrant)
    return entrants


def _check(name: str, hps: dict[str, Any], protocol: Protocol) -> Entrant:
    import torch

    from reltrust.optim import create, get

    try:
        cls = get(name)
    except (ValueError, TypeError) as e:
        raise BenchError(f"--optimizer {name!r}: {e}") from None
    try:
        spec = _base().replace(optimizer=name, optimizer_kwargs=hps)
    except (TypeError, ValueError) as e:
        raise BenchError(f"--hp for {name}: {e}") from None
    entrant = Entrant(name, spec.optimizer_kwargs)
    for lr in protocol.lrs:
        try:
            create(cls, [torch.zeros(2, requires_grad=True)], lr=lr, **spec.kwargs("optimizer"))
        except Exception as e:  # noqa: BLE001 - whatever the user's constructor raises, said before anything runs
            raise BenchError(f"--optimizer {entrant.label}: {cls.__name__}(params, lr={lr:g}"
                             f"{''.join(f', {k}={v!r}' for k, v in entrant.hps)}) failed: {type(e).__name__}: {e}") from None
    return entrant


# ----------------------------------------------------------------------------------------------- grid
def tuning_grid(tasks: Sequence[BenchTask], entrants: Sequence[Entrant], protocol: Protocol) -> list[RunSpec]:
    """Stage 1: every task × optimiser × lr of the grid, on the tuning seed."""
    out = []
    for e in entrants:
        out += sweep(_base(), settings=[t.fields() for t in tasks], optimizers={e.optimizer: dict(e.hps)},
                     lrs=protocol.lrs, seeds=[protocol.tune_seed])
    return out


def tuned_lrs(tasks: Sequence[BenchTask], entrants: Sequence[Entrant], protocol: Protocol,
              records: Sequence[Record]) -> dict[tuple[str, Entrant], Any]:
    """(task name, entrant) → the stage-1 `best_over_lr` result (best Point, all points), for every
    pair whose grid is complete (each lr finished, ok or diverged); pairs with a crashed or missing
    run are left out (rerunning the command retries them)."""
    have = {r.key: r for r in records if r.finished}
    out = {}
    for t in tasks:
        for e in entrants:
            specs = tuning_grid([t], [e], protocol)
            if all(s.key in have for s in specs):
                out[(t.name, e)] = best_over_lr([have[s.key] for s in specs], "val_acc")
    return out


def rerun_grid(tasks: Sequence[BenchTask], entrants: Sequence[Entrant], protocol: Protocol,
               tuned: Mapping[tuple[str, Entrant], Any]) -> list[RunSpec]:
    """Stage 2: each (task, optimiser)'s tuned lr on the rerun seeds."""
    out = []
    for t in tasks:
        for e in entrants:
            if (t.name, e) in tuned:
                best, _ = tuned[(t.name, e)]
                out += sweep(_base(), settings=[t.fields()], optimizers={e.optimizer: dict(e.hps)}, lrs=[best.lr],
                             seeds=protocol.seeds)
    return out


def cost_lines(tasks: Sequence[BenchTask], entrants: Sequence[Entrant], protocol: Protocol,
               budgets: Mapping[str, tuple[int, int]]) -> list[str]:
    """What each optimiser costs under the protocol: runs and optimiser steps."""
    g, s, r = len(protocol.lrs), 1, len(protocol.seeds)
    steps = sum(budgets[t.name][0] for t in tasks) * (g * s + r)
    runs = len(tasks) * (g * s + r)
    return [f"optimizer {e.label}: {runs} runs ({len(tasks)} tasks × (grid {g} × seeds {s} + rerun {r})), "
            f"{steps:,} optimizer steps" for e in entrants]


# ------------------------------------------------------------------------------------------- measures
def steps_to_target(record: Record, target: float) -> float:
    """The step of the first evaluation after training starts with validation error ≤ `target`; ∞ if
    none (or the run crashed)."""
    if not record.finished:
        return math.inf
    for h in record.history:
        acc = h.get("val_acc")
        if h["step"] > 0 and acc is not None and 1.0 - acc <= target + TOLERANCE:
            return float(h["step"])
    return math.inf


def ratios(times: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """optimiser → task → t / (the fastest optimiser's t on that task); ∞ for a miss, and for every
    optimiser on a task nobody solves."""
    tasks = {w for per in times.values() for w in per}
    best = {w: min(per.get(w, math.inf) for per in times.values()) for w in tasks}
    return {s: {w: (t / best[w] if math.isfinite(t) else math.inf) for w, t in per.items()}
            for s, per in times.items()}


def profile(r: Mapping[str, float], tau: float, n: int) -> float:
    """ρ(τ): the fraction of the `n` tasks on which the ratio is at most τ."""
    return sum(1 for v in r.values() if v <= tau) / n


def score(r: Mapping[str, float], n: int, r_max: float = R_MAX) -> float:
    """AlgoPerf's benchmark score, 1/(r_max − 1) ∫_1^{r_max} ρ(τ) dτ, exactly: each task solved with
    ratio r contributes (r_max − r)/(r_max − 1)/n when r ≤ r_max."""
    return sum(max(0.0, r_max - v) for v in r.values() if math.isfinite(v)) / ((r_max - 1.0) * n)


def profile_curve(r: Mapping[str, float], n: int, r_max: float = R_MAX) -> tuple[list[float], list[float]]:
    """ρ as a right-continuous step function on [1, r_max]: its breakpoints and values."""
    xs = sorted({1.0, r_max} | {v for v in r.values() if 1.0 <= v <= r_max})
    return xs, [profile(r, x, n) for x in xs]


def summarise(tasks: Sequence[BenchTask], entrants: Sequence[Entrant], protocol: Protocol,
              records: Sequence[Record]) -> list[dict]:
    """One row per (task, optimiser): the tuning points, the tuned lr, the rerun seeds' final errors
    and steps to target, their median, and whether the protocol finished for the pair."""
    tuned = tuned_lrs(tasks, entrants, protocol, records)
    by_key = {r.key: r for r in records}
    rows = []
    for t in tasks:
        for e in entrants:
            row: dict[str, Any] = {"task": t, "entrant": e, "complete": False, "points": [], "best": None,
                                   "steps": {}, "errors": {}, "time": math.inf}
            keys = {s.key for s in tuning_grid([t], [e], protocol)}
            tuning = [r for r in records if r.key in keys]
            row["points"] = best_over_lr(tuning, "val_acc")[1] if tuning else []
            if (t.name, e) in tuned:
                best, _ = tuned[(t.name, e)]
                lrs = [p.lr for p in row["points"]]
                row.update(best=best, at_edge=best.lr in (min(lrs), max(lrs)))
                reruns = [by_key.get(s.key) for s in rerun_grid([t], [e], protocol, tuned)]
                done = [r for r in reruns if r is not None and r.finished]
                row["records"] = done
                row["errors"] = {r.spec.seed: 1.0 - float(r.final.get("val_acc") or 0.0) for r in done}
                row["steps"] = {r.spec.seed: steps_to_target(r, t.target) for r in done}
                row["complete"] = len(done) == len(protocol.seeds)
                if row["complete"]:
                    row["time"] = statistics.median(row["steps"].values())
            rows.append(row)
    return rows


def profiles(rows: Sequence[dict], entrants: Sequence[Entrant], n_tasks: int) -> dict[Entrant, dict]:
    """entrant → its ratios per task, score and profile curve (over the tasks of `rows`)."""
    times = {e: {} for e in entrants}
    for row in rows:
        times[row["entrant"]][row["task"].name] = row["time"]
    rs = ratios(times)
    return {e: {"ratios": rs[e], "score": score(rs[e], n_tasks), "curve": profile_curve(rs[e], n_tasks),
                "solved": sum(math.isfinite(v) for v in rs[e].values())} for e in entrants}


def derive_targets(rows: Sequence[dict], budgets: Mapping[str, tuple[int, int]],
                   fraction: float = TARGET_FRACTION) -> dict[str, tuple[float, str]]:
    """task → (target, the optimiser that set it) as the module doc says: per optimiser at its tuned
    lr, each rerun seed's best validation error over the evaluations within `fraction` of the budget,
    the median over seeds; the lowest median over the optimisers with a complete protocol."""
    out: dict[str, tuple[float, str]] = {}
    for row in rows:
        if not row["complete"]:
            continue
        limit = fraction * budgets[row["task"].name][0]
        bests = [min(1.0 - (h.get("val_acc") or 0.0) for h in r.history if 0 < h["step"] <= limit)
                 for r in row["records"] if any(0 < h["step"] <= limit for h in r.history)]
        if len(bests) < len(row["records"]):
            continue  # no evaluation within the fraction of the budget: this task's cadence cannot set one
        value = statistics.median(bests)
        name = row["task"].name
        if name not in out or value < out[name][0]:
            out[name] = (value, row["entrant"].label)
    return out


# ------------------------------------------------------------------------------------------- report
def _steps_cell(v: float) -> str:
    return f"{v:g}" if math.isfinite(v) else "∞"


def analyse(records: Sequence[Record], out_dir: Path, tasks: Sequence[BenchTask], entrants: Sequence[Entrant],
            protocol: Protocol, budgets: Mapping[str, tuple[int, int]], specs: Sequence[RunSpec],
            command: str | None = None, protocol_name: str = "full") -> tuple[Path, dict[Entrant, dict]]:
    """Summary CSV/JSON, figures and ``report.md`` in `out_dir` from the stored runs of `specs`; the
    report's path and the `profiles`."""
    rows = summarise(tasks, entrants, protocol, records)
    prof = profiles(rows, entrants, len(tasks))
    _write_summary(rows, prof, tasks, entrants, protocol, budgets, out_dir, protocol_name)

    rep = Report(TITLE)
    rep.para(
        f"Protocol **{protocol_name}**, the same for every optimiser: a constant learning rate from the grid "
        f"{', '.join(fmt_lr(x) for x in protocol.lrs)} on seed {protocol.tune_seed}, no weight decay, the other "
        "hyperparameters fixed; the lr with the lowest final validation error is rerun on seeds "
        f"{', '.join(map(str, protocol.seeds))}, and only those reruns are reported. Steps to target: the first "
        "evaluation at which the validation error (1 − accuracy; next-character error for the language model) "
        "is at most the task's target, the median over the rerun seeds (∞: not reached by half of them). "
        f"Performance profiles and the score as AlgoPerf defines them (τ from 1 to {R_MAX:g}).")
    rep.heading("Score")
    order = sorted(entrants, key=lambda e: -prof[e]["score"])
    names = [t.label for t in tasks]
    rep.table(["optimizer", f"score (area under ρ, τ ≤ {R_MAX:g})", "tasks solved"] + [f"steps: {n}" for n in names],
              [[e.label, fmt(prof[e]["score"], 3), f"{prof[e]['solved']}/{len(tasks)}"]
               + [_time_cell(r) for r in rows if r["entrant"] == e] for e in order])
    p = out_dir / "performance_profiles.png"
    from reltrust.workbench import plots

    short = legend_labels(entrants)
    plots.step_profiles({f"{short[e]} ({prof[e]['score']:.2f})": prof[e]["curve"] for e in order}, p,
                        xlabel="τ (steps to target ÷ the fastest optimiser's)", ylabel="fraction of tasks ρ(τ)",
                        xlim=(1.0, R_MAX), title=f"Performance profiles over {len(tasks)} tasks")
    rep.figure(p, "Performance profiles: for each optimiser (score in brackets), the fraction of tasks it solves "
                  "within τ times the fastest optimiser's steps to target.", relative_to=out_dir)
    rep.heading("Per task")
    for t in tasks:
        steps, every = budgets[t.name]
        rep.heading(f"{t.label}: target validation error {t.target:g}, budget {steps} steps, evaluated every {every}", 3)
        lines = []
        for r in (r for r in rows if r["task"] is t):
            errs = list(r["errors"].values())
            err = f"{fmt(statistics.mean(errs), 3)} [{fmt(min(errs), 3)}–{fmt(max(errs), 3)}]" if errs else "—"
            per_seed = ", ".join(_steps_cell(r["steps"][s]) for s in sorted(r["steps"])) or "—"
            lr = "—" if r["best"] is None else fmt_lr(r["best"].lr) + (" (edge)" if r["at_edge"] else "")
            lines.append([r["entrant"].label, lr, err, _time_cell(r), per_seed, _ratio_cell(prof[r["entrant"]], t)])
        rep.table(["optimizer", "tuned lr", "final val error, mean [min–max]", "steps to target (median)",
                   "per seed", "ratio"], lines)
    for path, caption in _figures(rows, tasks, short, out_dir):
        rep.figure(path, caption, relative_to=out_dir)
    rep.heading("Tasks and targets")
    rep.table(["task", "--tasks name", "budget (steps)", "evaluated every", "target (val error)"],
              [[t.label, f"`{t.name}`", budgets[t.name][0], budgets[t.name][1], f"{t.target:g}"] for t in tasks])
    derived = derive_targets(rows, budgets)
    rep.para("The targets are fixed in `reltrust.workbench.bench` (set by `derive_targets` from the full protocol's "
             "runs of SGD with momentum 0.9, Adam, Fromage, LAMB and LARS: for each at its tuned lr, the median over "
             f"its rerun seeds of the best validation error within the first {TARGET_FRACTION:.0%} of the budget; the "
             "lowest of them). Applied to the runs of this report, the same rule gives:")
    rep.table(["task", "target in use", "these runs would set", "set by"],
              [[t.label, f"{t.target:g}", fmt(derived[t.name][0], 4) if t.name in derived else "—",
                derived[t.name][1] if t.name in derived else "—"] for t in tasks])
    rep.para("`bench_summary.csv` has one row per task and optimiser; `bench_summary.json` every number above, the "
             "profiles and the protocol; `results.csv`/`results.json` every run.")
    return finish_report(rep, out_dir, specs, records, command), prof


def _time_cell(row: dict) -> str:
    if row["best"] is None:
        return "tuning incomplete"
    if not row["complete"]:
        return "reruns incomplete"
    return _steps_cell(row["time"])


def _ratio_cell(prof: dict, task: BenchTask) -> str:
    v = prof["ratios"].get(task.name, math.inf)
    return f"{v:.2f}" if math.isfinite(v) else "∞"


def legend_labels(entrants: Sequence[Entrant]) -> dict[Entrant, str]:
    """Short names for the figures' legends: the class of an import path, the hyperparameters only where
    two entrants share an optimiser (the tables give every label in full)."""
    names = {e: e.optimizer.rpartition(":")[2] for e in entrants}
    return {e: (names[e] if list(names.values()).count(names[e]) == 1 or not e.hps
                else f"{names[e]} ({', '.join(f'{k}={v!r}' for k, v in e.hps)})") for e in entrants}


def _figures(rows: Sequence[dict], tasks: Sequence[BenchTask], short: Mapping[Entrant, str],
             out_dir: Path) -> list[tuple[Path, str]]:
    from reltrust.workbench import plots

    tuning = {t.label: {} for t in tasks}
    failed = {t.label: {} for t in tasks}
    curves = {t.label: {} for t in tasks}
    for r in rows:
        label, task = short[r["entrant"]], r["task"].label
        tuning[task][label] = {p.lr: [1.0 - v for v in p.values] for p in r["points"] if p.values}
        failed[task][label] = [p.lr for p in r["points"] if p.n_diverged or p.n_crashed]
        recs = r.get("records") or []
        if recs:
            longest = max(recs, key=lambda x: len(x.history))
            curves[task][label] = ([h["step"] for h in longest.history],
                                   [[1.0 - (h.get("val_acc") or 0.0) for h in x.history] for x in recs])
    p1 = plots.metric_vs(tuning, out_dir / "tuning.png", xlabel="learning rate η", ylabel="final validation error",
                         failed=failed, logx=True, ylim=(0.0, 1.02), suptitle="Stage 1: the learning-rate grid (one seed)")
    p2 = plots.curves(curves, out_dir / "curves.png", xlabel="step", ylabel="validation error", ylim=(0.0, 1.02),
                      hline_label="target", panel_hlines={t.label: t.target for t in tasks},
                      suptitle="Stage 2: validation error at the tuned lr (min–max over the rerun seeds)")
    return [
        (p1, "Stage 1: final validation error against η on the tuning seed, one panel per task (× on the axis: the "
             "run diverged or crashed)."),
        (p2, "Stage 2: validation error against the step at each optimiser's tuned lr (band: min–max over the rerun "
             "seeds); the dotted line is the task's target."),
    ]


def _write_summary(rows, prof, tasks, entrants, protocol, budgets, out_dir: Path, protocol_name: str) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["task", "optimizer", "optimizer_kwargs", "tuned_lr", "at_grid_edge", "target", "val_error_mean",
                "val_error_min", "val_error_max", "steps_to_target_median", "steps_to_target_per_seed", "ratio",
                "complete"])
    for r in rows:
        errs = list(r["errors"].values())
        e, t = r["entrant"], r["task"]
        w.writerow([t.name, e.optimizer, json.dumps(e.hyperparameters, sort_keys=True),
                    "" if r["best"] is None else r["best"].lr, r.get("at_edge", ""), t.target,
                    statistics.mean(errs) if errs else "", min(errs, default=""), max(errs, default=""),
                    r["time"] if r["complete"] else "", json.dumps({str(k): v for k, v in r["steps"].items()}),
                    prof[e]["ratios"].get(t.name), r["complete"]])
    atomic_write_text(out_dir / "bench_summary.csv", buf.getvalue())

    def finite(x: float) -> float | None:
        return x if math.isfinite(x) else None  # strict JSON: ∞ (not reached) as null

    data = {
        "protocol": {"name": protocol_name, "lrs": list(protocol.lrs), "tune_seed": protocol.tune_seed,
                     "seeds": list(protocol.seeds), "weight_decay": 0.0, "schedule": "constant", "r_max": R_MAX},
        "tasks": [{"name": t.name, "label": t.label, "target": t.target, "budget_steps": budgets[t.name][0],
                   "eval_every": budgets[t.name][1], "fields": t.fields()} for t in tasks],
        "optimizers": [{"label": e.label, "optimizer": e.optimizer, "hyperparameters": e.hyperparameters,
                        "score": prof[e]["score"], "solved": prof[e]["solved"],
                        "ratios": {k: finite(v) for k, v in prof[e]["ratios"].items()},
                        "profile": {"tau": prof[e]["curve"][0], "rho": prof[e]["curve"][1]}} for e in entrants],
        "results": [{"task": r["task"].name, "optimizer": r["entrant"].label, "complete": r["complete"],
                     "tuned_lr": None if r["best"] is None else r["best"].lr,
                     "tuning": {str(p.lr): (None if p.mean is None else 1.0 - p.mean) for p in r["points"]},
                     "val_error": {str(k): v for k, v in r["errors"].items()},
                     "steps_to_target": {str(k): finite(v) for k, v in r["steps"].items()},
                     "steps_to_target_median": finite(r["time"]) if r["complete"] else None} for r in rows],
    }
    atomic_write_text(out_dir / "bench_summary.json", json.dumps(data, indent=1, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------------- CLI
def _selected_tasks(names: Sequence[str] | None, tiny: bool) -> list[BenchTask]:
    pool = TINY_TASKS if tiny else TASKS
    if not names:
        return list(pool.values())
    unknown = [n for n in names if n not in pool]
    if unknown:
        raise BenchError(f"--tasks: {', '.join(map(repr, unknown))} not known; the tasks: {', '.join(pool)}")
    if len(set(names)) < len(names):
        raise BenchError(f"--tasks: a task is given twice ({', '.join(names)})")
    return [pool[n] for n in names]


def _command_line(args: argparse.Namespace) -> str:
    import shlex

    parts = ["reltrust", "bench"] + (["--quick"] if args.quick else [])
    for kind, text in args.entries:
        parts += [f"--{'optimizer' if kind == 'optimizer' else 'hp'}", text]
    if args.tasks:
        parts += ["--tasks", *args.tasks]
    for opt in ("out", "workers", "threads", "data_dir"):
        if getattr(args, opt) is not None:
            parts += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
    if args.device != "cpu":
        parts += ["--device", args.device]
    from reltrust.workbench.cli import executor_command_parts

    return " ".join(shlex.quote(p) for p in parts + (["--tiny"] if args.tiny else []) + executor_command_parts(args))


def _dry_run(out: Path, tasks, entrants, protocol: Protocol, protocol_name: str, budgets, executor) -> int:
    """`--dry-run`: what each stage would submit now, from the store in `out` if there is one; writes nothing."""
    from reltrust.workbench.cli import pending_without_writing

    stage1 = tuning_grid(tasks, entrants, protocol)
    print(f"bench, {protocol_name} protocol: {len(entrants)} optimizer(s) × {len(tasks)} task(s); lr grid "
          f"{', '.join(fmt_lr(x) for x in protocol.lrs)} on seed {protocol.tune_seed}, the best lr rerun on seeds "
          f"{', '.join(map(str, protocol.seeds))}")
    for line in cost_lines(tasks, entrants, protocol, budgets):
        print(line)
    seen = pending_without_writing("bench", out, stage1)
    if isinstance(seen, int):
        return seen
    todo1, records = seen
    print(f"dry run, nothing submitted: stage 1 (tuning): {len(todo1)} of {len(stage1)} run(s) to do: "
          f"{executor.describe(todo1)}")
    for spec in todo1:
        print(f"  {spec.key}  {spec.label()}")
    tuned = tuned_lrs(tasks, entrants, protocol, records)
    stage2 = rerun_grid(tasks, entrants, protocol, tuned)
    seen2 = pending_without_writing("bench", out, stage2)
    if isinstance(seen2, int):
        return seen2
    todo2 = seen2[0]
    waiting = len(tasks) * len(entrants) - len(tuned)
    print(f"stage 2 (rerun): {len(todo2)} run(s) to do for the {len(tuned)} task × optimizer pair(s) tuned so far"
          + (f"; {waiting} pair(s) get their {len(protocol.seeds)} rerun(s) each once stage 1 has run" if waiting else ""))
    for spec in todo2:
        print(f"  {spec.key}  {spec.label()}")
    return 0


def command(args: argparse.Namespace) -> int:
    """`reltrust bench`: check every input, print the cost, run stage 1, then stage 2, then report.
    Exit status as `reltrust reproduce`: 0, 1 (a run crashed or is missing), 2 (bad input), 130."""
    t0 = time.perf_counter()
    # An import path is resolved from the folder the command runs in (as uvicorn and celery do); the
    # spawned workers inherit this sys.path.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    protocol_name = "tiny" if args.tiny else "quick" if args.quick else "full"
    protocol = PROTOCOLS[protocol_name]
    try:
        if args.workers is not None and args.workers < 0:
            raise BenchError(f"--workers must be >= 0 (0: run in this process), got {args.workers}")
        if args.threads is not None and args.threads < 1:
            raise BenchError(f"--threads must be >= 1, got {args.threads}")
        tasks = _selected_tasks(args.tasks, args.tiny)
        entrants = parse_entrants(args.entries, protocol)
        device = args.device
        if device != "cpu":
            from reltrust.workbench.train import resolve_device

            try:
                device = str(resolve_device(device))
            except RuntimeError as e:
                raise BenchError(f"--device: {e}") from None
        budgets = {t.name: budget(t, args.data_dir) for t in tasks}
    except BenchError as e:
        print(f"reltrust bench: {e}", file=sys.stderr)
        return 2
    from reltrust.workbench.cli import _held_locks, _lock, executor_from_args
    from reltrust.workbench.executors import MissingExtra, WorkersCannotImport

    out = Path(args.out or f"runs/bench{'-tiny' if args.tiny else '-quick' if args.quick else ''}")
    try:
        executor = executor_from_args(args, out)
    except MissingExtra as e:
        print(f"reltrust bench: {e}", file=sys.stderr)
        return 2
    if getattr(args, "dry_run", False):
        return _dry_run(out, tasks, entrants, protocol, protocol_name, budgets, executor)
    out.mkdir(parents=True, exist_ok=True)
    lock = _lock(out)
    if lock is False:
        print(f"reltrust bench: another bench or reproduce is running in {out} (lock {out / '.lock'})", file=sys.stderr)
        return 2
    progress = not args.no_progress and sys.stderr.isatty()
    stage1 = tuning_grid(tasks, entrants, protocol)
    print(f"bench, {protocol_name} protocol: {len(entrants)} optimizer(s) × {len(tasks)} task(s); lr grid "
          f"{', '.join(fmt_lr(x) for x in protocol.lrs)} on seed {protocol.tune_seed}, the best lr rerun on seeds "
          f"{', '.join(map(str, protocol.seeds))}", flush=True)
    for line in cost_lines(tasks, entrants, protocol, budgets):
        print(line, flush=True)
    interrupted = False

    def stage2() -> list[RunSpec]:  # the reruns that stage 1's stored runs call for
        return rerun_grid(tasks, entrants, protocol, tuned_lrs(tasks, entrants, protocol, store.records(specs=stage1)))

    with Store(out / "results.sqlite") as store:
        try:
            for stage, name in ((1, "tuning"), (2, "rerun")):
                todo = store.pending(stage1 if stage == 1 else stage2())
                print(f"stage {stage} ({name}): {len(todo)} run(s) to do", flush=True)
                if todo:
                    summary = run_sweep(todo, store, workers=args.workers, threads=args.threads, device=device,
                                        data_dir=args.data_dir, progress=progress, executor=executor)
                    print(summary.line(), flush=True)
        except KeyboardInterrupt:
            interrupted = True
            print("interrupted: finished runs are kept; rerun the same command to resume", file=sys.stderr)
        except WorkersCannotImport as e:  # asked before anything was submitted: nothing ran
            print(f"reltrust bench: --optimizer: {e}", file=sys.stderr)
            if lock:
                _held_locks.remove(lock)
                lock.close()
            return 2
        specs = stage1 + stage2()
        records = store.records(specs=specs)
        store.export_csv(out / "results.csv", records)
        store.export_json(out / "results.json", records)
    report, prof = analyse(records, out, tasks, entrants, protocol, budgets, specs, _command_line(args), protocol_name)
    if lock:
        _held_locks.remove(lock)
        lock.close()
    for e in sorted(entrants, key=lambda e: -prof[e]["score"]):
        print(f"{e.label}: score {prof[e]['score']:.3f}, {prof[e]['solved']}/{len(tasks)} tasks solved")
    crashed = sum(r.status == "crashed" for r in records)
    missing = len(specs) - len(records)
    print(f"wrote {out / 'results.csv'}, {out / 'bench_summary.csv'}, {report}")
    print(f"{len(records)}/{len(specs)} runs recorded ({crashed} crashed, {missing} not run); "
          f"total {time.perf_counter() - t0:.1f} s")
    if interrupted:
        return 130
    return 1 if crashed or missing else 0


__all__ = ["PROTOCOLS", "R_MAX", "TASKS", "BenchError", "BenchTask", "Entrant", "Protocol", "analyse", "budget",
           "command", "derive_targets", "parse_entrants", "profile", "profile_curve", "ratios", "rerun_grid",
           "score", "steps_to_target", "summarise", "tuned_lrs", "tuning_grid"]
