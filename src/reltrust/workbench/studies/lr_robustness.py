"""The learning-rate robustness study (Bernstein et al. 2020): is Fromage's best η about 0.01 everywhere?

The paper's claim: Fromage's best learning rate is about 0.01 on every task it was tried on, while the
best values of SGD and Adam move from task to task. Tested here on four kinds of task, all on data that
installs with the package: an MLP on MNIST (the embedded 5,000 images), a small CNN on scikit-learn's
digits (and, in the full study, on Fashion-MNIST where it is installed), the char Transformer on the Shakespeare corpus
and an MLP on MNIST-1D. Fromage, SGD with momentum 0.9, Adam, LAMB and LARS (their defaults otherwise)
each run on one log grid of η at a constant learning rate.

Metric: the final validation error (1 − accuracy; for the language model, the next-character error)
and validation loss. Per task and optimiser, the best η has the lowest mean validation error over
seeds (the smallest η on ties). Numbers the report computes from the runs:

- the spread of an optimiser's best η across tasks, in decades (log10 of the largest over the smallest);
- its robustness per task: the width in decades of the contiguous range of grid η around the best
  whose mean validation error is within 10 % (relative) of the best (0: only the best point);
- the claim holds here when Fromage's best η lies within half a decade of 0.01 on every task and its
  spread is smaller than both SGD's and Adam's.

A diverged run is a result: its error is measured on the model where it stopped (a non-finite output
counts as wrong), it competes in "best η" like any other, and the figures mark it.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reltrust.workbench import plots
from reltrust.workbench.report import Report, fmt, fmt_lr
from reltrust.workbench.runner import sweep
from reltrust.workbench.spec import RunSpec
from reltrust.workbench.store import Record, Store, atomic_write_text
from reltrust.workbench.studies._common import Study, best_over_lr, finish_report, group, load_records

NAME = "lr-robustness"
TITLE = "Learning-rate robustness: is Fromage's best learning rate about 0.01 on every task?"

OPTIMIZERS: dict[str, dict[str, Any]] = {
    "fromage": {}, "sgd": {"momentum": 0.9}, "adam": {}, "lamb": {}, "lars": {},
}
DECADES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
HALF_DECADES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
PAPER_LR = 0.01
ABOUT_DECADES = 0.55  # "about 0.01": at most one half-decade grid step away (3e-3 and 3e-2 included)
WITHIN = 0.10  # the robustness width: mean error within 10 % (relative) of the best


@dataclasses.dataclass(frozen=True)
class Setting:
    """One task of the study: a label and the RunSpec fields that make it (task, data, model, budget)."""

    label: str
    fields: Mapping[str, Any]
    needs: str | None = None  # a data set that must be installed for the setting to run


def _settings(size: str) -> tuple[Setting, ...]:
    """The study's tasks at a size: "tiny" (seconds, for tests), "quick" (minutes) or "full" (hours)."""
    big = size == "full"
    tiny = size == "tiny"
    mlp = {"depth": 3, "width": 16 if tiny else 256 if big else 128}
    cnn = {"width": 4 if tiny else 16 if big else 8}
    lm = ({"block_size": 16, "d_model": 16, "n_layers": 1, "n_heads": 2} if tiny else
          {"block_size": 64, "d_model": 64, "n_layers": 2, "n_heads": 4} if big else
          {"block_size": 32, "d_model": 32, "n_layers": 2, "n_heads": 2})
    return (
        Setting("MLP / MNIST", {"task": "classify", "dataset": "mnist", "model": "mlp", "model_kwargs": mlp,
                                "epochs": 1 if tiny else 20 if big else 5, "batch_size": 128}),
        Setting("CNN / digits", {"task": "classify", "dataset": "digits", "model": "cnn", "model_kwargs": cnn,
                                 "epochs": 1 if tiny else 30 if big else 10, "batch_size": 64}),
        # 60,000 images: in the full study only (the quick grid keeps to its 10 minutes).
        *([Setting("CNN / Fashion-MNIST", {"task": "classify", "dataset": "fashion-mnist", "model": "cnn",
                                           "model_kwargs": cnn, "epochs": 10, "batch_size": 128},
                   needs="fashion-mnist")] if big else []),
        Setting("Transformer / Shakespeare", {
            "task": "charlm", "dataset": "shakespeare", "model": "transformer", "model_kwargs": lm,
            "epochs": 0, "steps": 10 if tiny else 2000 if big else 200, "batch_size": 8 if tiny else 32 if big else 16,
            "task_kwargs": {"steps_per_epoch": 10 if tiny else 100, "eval_blocks": 16 if tiny else 256 if big else 64}}),
        Setting("MLP / MNIST-1D", {"task": "classify", "dataset": "mnist1d", "model": "mlp", "model_kwargs": mlp,
                                   "epochs": 1 if tiny else 50 if big else 10, "batch_size": 128}),
    )


@dataclasses.dataclass(frozen=True)
class Config:
    settings: tuple[Setting, ...]
    optimizers: tuple[str, ...]
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]


CONFIGS = {
    "full": Config(_settings("full"), tuple(OPTIMIZERS), HALF_DECADES, (0, 1, 2)),
    "quick": Config(_settings("quick"), tuple(OPTIMIZERS), DECADES, (0, 1)),
    "tiny": Config(_settings("tiny"), ("fromage", "adam"), (1e-2, 1e-1), (0,)),
}


def _installed(name: str) -> bool:
    from reltrust.workbench.data import available_datasets

    return any(d.name == name and d.installed for d in available_datasets())


def build_grid(config: Config, seeds: Sequence[int]) -> list[RunSpec]:
    """Tasks (those whose data is installed) × optimisers × the η grid × seeds, constant lr."""
    base = RunSpec(study=NAME, dataset="mnist", model="mlp", optimizer="fromage", lr=PAPER_LR)
    settings = [s.fields for s in config.settings if s.needs is None or _installed(s.needs)]
    return sweep(base, settings=settings, optimizers={o: OPTIMIZERS[o] for o in config.optimizers},
                 lrs=config.lrs, seeds=seeds)


def grid(quick: bool = False, *, seeds: Sequence[int] | None = None, tiny: bool = False) -> list[RunSpec]:
    """The study's runs (see `build_grid`) for the quick, full (default) or tiny config."""
    return STUDY.grid(quick, seeds=seeds, tiny=tiny)


# ------------------------------------------------------------------------------------------ analysis
def task_label(spec: RunSpec) -> str:
    """The setting's label, read back from a spec (task, data set and model name it)."""
    for setting in CONFIGS["full"].settings:
        f = setting.fields
        if (f["task"], f["dataset"], f["model"]) == (spec.task, spec.dataset, spec.model):
            return setting.label
    return f"{spec.model} / {spec.dataset}"


def _task_order(label: str) -> int:
    labels = [s.label for s in CONFIGS["full"].settings]
    return labels.index(label) if label in labels else len(labels)


def _opt_order(name: str) -> int:
    names = list(OPTIMIZERS)
    return names.index(name) if name in names else len(names)


def _decades(a: float, b: float) -> float:
    return abs(math.log10(a / b))


def summarise(records: Sequence[Record]) -> list[dict]:
    """One row per (task, optimiser): the best η, its error and loss over seeds, the robustness width,
    and every η's point (mean error, values per seed, diverged and crashed counts)."""
    rows = []
    for (task, opt), recs in sorted(group(records, lambda r: (task_label(r.spec), r.spec.optimizer)).items(),
                                    key=lambda kv: (_task_order(kv[0][0]), _opt_order(kv[0][1]))):
        best, points = best_over_lr(recs, "val_acc")
        lrs = [p.lr for p in points]
        row: dict[str, Any] = {"task": task, "optimizer": opt, "points": points, "best": best,
                               "grid": (min(lrs), max(lrs)),
                               "diverged": sum(p.n_diverged for p in points),
                               "crashed": sum(p.n_crashed for p in points)}
        if best is not None:
            best_err = 1.0 - best.mean
            ok = [p.mean is not None and (1.0 - p.mean) <= best_err * (1 + WITHIN) for p in points]
            i = points.index(best)
            lo = hi = i
            while lo > 0 and ok[lo - 1]:
                lo -= 1
            while hi < len(points) - 1 and ok[hi + 1]:
                hi += 1
            row.update(best_lr=best.lr, best_err=best_err,
                       best_err_range=(1.0 - max(best.values), 1.0 - min(best.values)),
                       best_val_loss=_mean_loss(best),
                       robust=(points[lo].lr, points[hi].lr), width=_decades(points[hi].lr, points[lo].lr),
                       at_edge=best.lr in (min(lrs), max(lrs)))
        rows.append(row)
    return rows


def _mean_loss(point) -> float | None:
    vals = [r.final.get("val_loss") for r in point.records if r.status in ("ok", "diverged")]
    vals = [float("nan") if v is None else float(v) for v in vals]
    return sum(vals) / len(vals) if vals else None


def spreads(rows: Sequence[dict]) -> dict[str, dict]:
    """Per optimiser: its best η per task and their spread across tasks in decades."""
    out: dict[str, dict] = {}
    for r in rows:
        if r.get("best_lr") is None:
            continue
        out.setdefault(r["optimizer"], {"best": {}})["best"][r["task"]] = r["best_lr"]
    for info in out.values():
        bests = list(info["best"].values())
        info["spread"] = _decades(max(bests), min(bests))
    return dict(sorted(out.items(), key=lambda kv: _opt_order(kv[0])))


def verdict(rows: Sequence[dict]) -> dict[str, Any]:
    """The claim's two parts and the verdict, computed from the rows."""
    sp = spreads(rows)
    out: dict[str, Any] = {"spreads": sp, "holds": None, "parts": []}
    if "fromage" not in sp:
        return out
    fromage = sp["fromage"]
    far = {t: lr for t, lr in fromage["best"].items() if _decades(lr, PAPER_LR) > ABOUT_DECADES}
    about = not far
    out["parts"].append((
        f"Fromage's best η is within half a decade of {PAPER_LR:g} on every task",
        "holds" if about else "does not hold: " + ", ".join(f"{t} {fmt_lr(lr)}" for t, lr in far.items())))
    others = {o: sp[o]["spread"] for o in ("sgd", "adam") if o in sp}
    smaller = bool(others) and all(fromage["spread"] < v for v in others.values())
    out["parts"].append((
        "Fromage's best η moves less across tasks than SGD's and Adam's",
        f"{'holds' if smaller else 'does not hold'}: spread {fromage['spread']:.2f} decades for Fromage, "
        + ", ".join(f"{v:.2f} for {o}" for o, v in others.items())))
    out["holds"] = about and smaller
    out["tasks"] = len(fromage["best"])
    return out


def findings(rows: Sequence[dict]) -> list[str]:
    out = []
    for opt, info in spreads(rows).items():
        bests = ", ".join(f"{t} {fmt_lr(lr)}" for t, lr in info["best"].items())
        out.append(f"{opt}: best η per task {bests}; spread across tasks {info['spread']:.2f} decades.")
    edge = [f"{r['optimizer']} on {r['task']} ({fmt_lr(r['best_lr'])})" for r in rows if r.get("at_edge")]
    if edge:
        out.append("Best η at the edge of the grid (the true best may lie outside it): " + "; ".join(edge) + ".")
    return out


def analyse(store: Store, out_dir: str | Path, specs: Sequence[RunSpec] | None = None,
            command: str | None = None) -> Path:
    """Figures, ``lr_robustness_summary.csv`` and ``report.md`` in `out_dir`; returns the report's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = load_records(store, NAME, specs)
    rows = summarise(records)
    _write_summary_csv(rows, out_dir / "lr_robustness_summary.csv")

    rep = Report(TITLE)
    rep.para(
        "The claim (Bernstein et al. 2020): Fromage's best learning rate is about 0.01 on every task, while "
        "SGD's and Adam's best values move from task to task. Here: four kinds of task on data that installs "
        "with the package, each optimiser on one log grid of η (constant), final validation error "
        "(1 − accuracy; next-character error for the language model) as the metric, best η = lowest mean "
        "over seeds. See *Configuration* for exactly what ran."
    )
    rep.heading("Findings")
    if not rows:
        rep.para("No runs are recorded yet: nothing to report.")
    else:
        v = verdict(rows)
        if v["holds"] is not None:
            rep.para(f"**The claim {'holds' if v['holds'] else 'does not hold'} here** "
                     f"(on {v['tasks']} tasks; each part below is computed from the runs).")
            rep.table(["part of the claim", "these runs"], v["parts"])
        rep.bullets(findings(rows))
        for path, caption in _figures(rows, out_dir):
            rep.figure(path, caption, relative_to=out_dir)
        _tables(rep, rows)
    return finish_report(rep, out_dir, specs, records, command)


def _write_summary_csv(rows: Sequence[dict], path: Path) -> Path:
    """One row per (task, optimiser): the best η, its error over seeds and the robustness range."""
    buf = io.StringIO()
    cols = ["task", "optimizer", "best_lr", "best_val_error", "best_val_error_min", "best_val_error_max",
            "best_val_loss", "at_grid_edge", "robust_lr_low", "robust_lr_high", "robust_width_decades",
            "diverged", "crashed"]
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        lo_hi = r.get("best_err_range", (None, None))
        rob = r.get("robust", (None, None))
        w.writerow(["" if v is None else v for v in (
            r["task"], r["optimizer"], r.get("best_lr"), r.get("best_err"), lo_hi[0], lo_hi[1], r.get("best_val_loss"),
            r.get("at_edge"), rob[0], rob[1], r.get("width"), r["diverged"], r["crashed"])])
    return atomic_write_text(path, buf.getvalue())


def _tables(rep: Report, rows: Sequence[dict]) -> None:
    tasks = sorted({r["task"] for r in rows}, key=_task_order)
    opts = sorted({r["optimizer"] for r in rows}, key=_opt_order)
    by = {(r["task"], r["optimizer"]): r for r in rows}

    def best_cell(r: dict | None) -> str:
        if r is None or r.get("best_lr") is None:
            return "—"
        lo, hi = r["best_err_range"]
        rng = f" [{fmt(lo, 3)}–{fmt(hi, 3)}]" if len(r["best"].values) > 1 else ""
        return f"{fmt_lr(r['best_lr'])}{' (edge)' if r['at_edge'] else ''}: {fmt(r['best_err'], 3)}{rng}"

    rep.heading("Table: best η and its validation error (mean [min–max] over seeds)", 3)
    rep.table(["optimizer"] + tasks, [[o] + [best_cell(by.get((t, o))) for t in tasks] for o in opts])
    rep.heading(f"Table: robustness — the η range within {WITHIN:.0%} of the best error, and its width", 3)
    rep.table(["optimizer"] + tasks, [[o] + [
        (f"{fmt_lr(r['robust'][0])}–{fmt_lr(r['robust'][1])} ({r['width']:.2f} dec.)"
         if (r := by.get((t, o))) and r.get("robust") else "—") for t in tasks] for o in opts])
    rep.para("The band is relative to the best error, so where even the best error is high (near chance) "
             "it is wide in absolute terms and many η qualify; read the width beside the error it is relative "
             "to. Per (task, optimiser) numbers are also in `lr_robustness_summary.csv`.")
    rep.heading("Table: every point (mean validation error over seeds; diverged runs counted as measured)", 3)
    lines = []
    for r in rows:
        for p in r["points"]:
            err = None if p.mean is None else 1.0 - p.mean
            loss = _mean_loss(p)
            lines.append([r["task"], r["optimizer"], fmt_lr(p.lr), fmt(err, 3), fmt(loss, 3),
                          f"{len(p.values)}", f"{p.n_diverged}", f"{p.n_crashed}"])
    rep.table(["task", "optimizer", "η", "val error", "val loss", "seeds", "diverged", "crashed"], lines)


def _figures(rows: Sequence[dict], out_dir: Path) -> list[tuple[Path, str]]:
    tasks = sorted({r["task"] for r in rows}, key=_task_order)
    panels: dict[str, dict] = {t: {} for t in tasks}
    failed: dict[str, dict] = {t: {} for t in tasks}
    for r in rows:
        pts = {p.lr: [1.0 - v for v in p.values] for p in r["points"] if p.values}
        panels[r["task"]][r["optimizer"]] = pts
        failed[r["task"]][r["optimizer"]] = [p.lr for p in r["points"] if p.n_diverged or p.n_crashed]
    seeds = max((len(p.values) for r in rows for p in r["points"]), default=0)
    p1 = plots.metric_vs(panels, out_dir / "lr_robustness.png", xlabel="learning rate η", ylabel="validation error",
                         failed=failed, logx=True, ylim=(0.0, 1.02),
                         suptitle="Final validation error against the learning rate")
    sp = spreads(rows)
    p2 = plots.best_per_category({o: info["best"] for o, info in sp.items()}, tasks, out_dir / "best_lr.png",
                                 ylabel="best learning rate η", hline=PAPER_LR, hline_label=f"η = {PAPER_LR:g}",
                                 title="Each optimiser's best η per task")
    band = "bands: min–max over seeds" if seeds > 1 else "one seed: no band"
    return [
        (p1, f"Validation error against η, one panel per task, one line per optimiser ({band}; × on the axis: "
             "at least one run at that η diverged or crashed)."),
        (p2, "Each optimiser's best η per task (lowest mean validation error); the dotted line is η = 0.01."),
    ]


STUDY = Study(
    name=NAME, title=TITLE,
    description="is Fromage's best lr about 0.01 on every task, while SGD's and Adam's move? (4 task kinds)",
    configs=CONFIGS, build_grid=build_grid, analyse=analyse, quick_minutes=3.5,
)

__all__ = ["STUDY", "CONFIGS", "NAME", "OPTIMIZERS", "analyse", "build_grid", "grid", "spreads", "summarise",
           "task_label", "verdict"]
