"""The large-batch study (You et al. 2017, LARS; You et al. 2020, LAMB): do layerwise trust ratios keep
accuracy at batch sizes where Adam and SGD lose it?

The claim: with a trust ratio per layer, training at a fixed budget of epochs keeps its accuracy as the
batch grows further than Adam and SGD do, so the same epochs take far fewer steps. Tested here on an
MLP on MNIST (the embedded 5,000 images), a small CNN (on scikit-learn's digits in the quick study, on
MNIST and, where it is installed, Fashion-MNIST in the full one) and the char Transformer on the
Shakespeare corpus, with LAMB, LARS, Adam, AdamW, SGD with momentum 0.9 and Fromage (which shares the
trust ratio).

**Budget**: a fixed number of epochs (the language model: a fixed number of training sequences, its
"epochs" being evaluation intervals of 1/`LM_EVALS` of the run), so a batch twice as large takes half
the steps. Batch sizes double (quadruple on Fashion-MNIST) from 32 up to what the training set holds.

**Learning rates**: per optimiser a base η₀ at batch `BASE_BATCH` (= 32), scaled to batch B by its
paper's rule, η(B) = η₀ · (B / 32)^a with a = 1/2 (square root: Adam, AdamW, LAMB, Fromage) or a = 1
(linear: SGD, LARS); the grid at B is η(B) × each factor of the config (e.g. ¼, 1, 4). The language
model's η₀ are `LM_LR_SCALE` times the classifiers'. **Schedule** (every optimiser, per step): LAMB's
linear warmup over the first `WARMUP_FRACTION` of the steps, then polynomial decay (power 1) to 0
(`reltrust.workbench.schedules`, ``poly``). **Weight decay**: each optimiser's paper setting (LAMB and
AdamW 0.01, LARS and SGD 5e-4, Adam and Fromage none); with decay, biases and norm layers are excluded
from decay and from the trust ratio (`reltrust.optim.param_groups`, as `fit` builds every optimiser).

**Measures**, from the stored runs (`summarise`): per task, optimiser and batch, the best η (lowest mean
final validation error over seeds; 1 − accuracy, next-character error for the language model) and its
error per seed. An optimiser *holds* its accuracy up to the largest batch B such that at every batch up
to B its best error is within the tolerance of its smallest-batch error: err ≤ err₃₂ + max(`TOL_REL` ·
err₃₂, `TOL_ABS`). The claim holds on a task when LAMB and LARS both hold further than both Adam and
SGD; it is undecided there when all four hold up to the largest batch (nothing degraded). Steps to
target (Shallue et al. 2019): the target of a task is the median over optimisers of their
smallest-batch error plus the same tolerance; per (task, optimiser, batch), the steps of the first
evaluation at or below it (`reltrust.workbench.bench.steps_to_target`), the median over seeds, the
lowest over the η grid (∞: missed). Evaluations come once per epoch, so a classifier's steps to target
are a whole number of epochs' steps.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reltrust.workbench import plots
from reltrust.workbench.bench import steps_to_target
from reltrust.workbench.report import Report, fmt, fmt_lr
from reltrust.workbench.runner import sweep
from reltrust.workbench.spec import RunSpec
from reltrust.workbench.store import Record, Store, atomic_write_text
from reltrust.workbench.studies._common import Study, best_over_lr, finish_report, group, load_records

NAME = "large-batch"
TITLE = "Large batch: do LAMB and LARS keep their accuracy further than Adam and SGD as the batch grows?"

BASE_BATCH = 32
RULES = {"sqrt": 0.5, "linear": 1.0}  # the exponent a of η(B) = η₀ · (B / BASE_BATCH)^a
WARMUP_FRACTION = 0.1
SCHEDULE = {"schedule": "poly", "schedule_interval": "step", "schedule_kwargs": {"warmup_fraction": WARMUP_FRACTION}}
LM_EVALS = 8
LM_LR_SCALE = 4.0
TOL_REL, TOL_ABS = 0.10, 0.01


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """An optimiser of the study: its fixed hyperparameters, weight decay, η₀ at batch 32 and scaling rule."""

    kwargs: Mapping[str, Any]
    weight_decay: float
    base_lr: float
    rule: str


OPTIMIZERS = {
    "lamb": Optimizer({}, 0.01, 2e-2, "sqrt"),
    "lars": Optimizer({}, 5e-4, 2.0, "linear"),
    "adam": Optimizer({}, 0.0, 2e-3, "sqrt"),
    "adamw": Optimizer({}, 0.01, 2e-3, "sqrt"),
    "sgd": Optimizer({"momentum": 0.9}, 5e-4, 5e-2, "linear"),
    "fromage": Optimizer({}, 0.0, 2e-2, "sqrt"),
}


def scaled_lr(base_lr: float, batch: int, rule: str) -> float:
    """η₀ at batch `BASE_BATCH` scaled to `batch`: η₀ · (batch / BASE_BATCH)^a, a from `RULES`."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    return base_lr * (batch / BASE_BATCH) ** RULES[rule]


@dataclasses.dataclass(frozen=True)
class Setting:
    """One task: a label, the RunSpec fields that make it, its batch sizes, the language model's budget
    in training sequences (0: the fields' epochs are the budget), its η₀ multiplier and the data set it
    needs installed (if any)."""

    label: str
    fields: Mapping[str, Any]
    batch_sizes: tuple[int, ...]
    sequences: int = 0
    lr_scale: float = 1.0
    needs: str | None = None

    def fields_at(self, batch: int) -> dict[str, Any]:
        """The fields of a run at `batch`: a language model gets steps = sequences // batch, evaluated
        `LM_EVALS` times (as evenly as whole steps allow)."""
        f = {**self.fields, "batch_size": batch}
        if self.sequences:
            steps = max(1, self.sequences // batch)
            f.update(epochs=0, steps=steps,
                     task_kwargs={**f.get("task_kwargs", {}), "steps_per_epoch": max(1, steps // LM_EVALS)})
        return f


def _doubling(lo: int, hi: int, ratio: int = 2) -> tuple[int, ...]:
    out = [lo]
    while out[-1] * ratio <= hi:
        out.append(out[-1] * ratio)
    return tuple(out)


def _settings(size: str) -> tuple[Setting, ...]:
    """The tasks at a size: "tiny" (seconds, for tests), "quick" (minutes) or "full" (hours)."""
    if size == "tiny":
        return (
            Setting("MLP / MNIST", {"task": "classify", "dataset": "mnist", "model": "mlp",
                                    "model_kwargs": {"depth": 2, "width": 16}, "epochs": 1}, (128, 1024)),
            Setting("Transformer / Shakespeare", {
                "task": "charlm", "dataset": "shakespeare", "model": "transformer",
                "model_kwargs": {"block_size": 16, "d_model": 16, "n_layers": 1, "n_heads": 2},
                "task_kwargs": {"eval_blocks": 16}}, (32, 64), sequences=256, lr_scale=LM_LR_SCALE),
        )
    lm = ({"block_size": 64, "d_model": 64, "n_layers": 2, "n_heads": 4} if size == "full" else
          {"block_size": 32, "d_model": 32, "n_layers": 1, "n_heads": 2})
    lm_setting = Setting("Transformer / Shakespeare", {
        "task": "charlm", "dataset": "shakespeare", "model": "transformer", "model_kwargs": lm,
        "task_kwargs": {"eval_blocks": 256 if size == "full" else 64}},
        _doubling(32, 4096 if size == "full" else 1024), sequences=64_000 if size == "full" else 4096,
        lr_scale=LM_LR_SCALE)
    if size == "quick":
        return (
            Setting("MLP / MNIST", {"task": "classify", "dataset": "mnist", "model": "mlp",
                                    "model_kwargs": {"depth": 2, "width": 64}, "epochs": 3}, _doubling(32, 1024)),
            Setting("CNN / digits", {"task": "classify", "dataset": "digits", "model": "cnn",
                                     "model_kwargs": {"width": 8}, "epochs": 3}, _doubling(32, 1024)),
            lm_setting,
        )
    # MNIST: 4,500 training images (up to 4096); Fashion-MNIST: 54,000 (up to 32768, quadrupling)
    return (
        Setting("MLP / MNIST", {"task": "classify", "dataset": "mnist", "model": "mlp",
                                "model_kwargs": {"depth": 3, "width": 128}, "epochs": 20}, _doubling(32, 4096)),
        Setting("CNN / MNIST", {"task": "classify", "dataset": "mnist", "model": "cnn",
                                "model_kwargs": {"width": 8}, "epochs": 10}, _doubling(32, 4096)),
        Setting("CNN / Fashion-MNIST", {"task": "classify", "dataset": "fashion-mnist", "model": "cnn",
                                        "model_kwargs": {"width": 8}, "epochs": 10}, _doubling(32, 32768, 4),
                needs="fashion-mnist"),
        lm_setting,
    )


@dataclasses.dataclass(frozen=True)
class Config:
    settings: tuple[Setting, ...]
    optimizers: tuple[str, ...]
    factors: tuple[float, ...]  # the η grid at each batch: η(B) × factor
    seeds: tuple[int, ...]


CONFIGS = {
    "full": Config(_settings("full"), tuple(OPTIMIZERS), (0.25, 0.5, 1.0, 2.0, 4.0), (0, 1, 2)),
    "quick": Config(_settings("quick"), tuple(OPTIMIZERS), (0.25, 1.0, 4.0), (0, 1)),
    "tiny": Config(_settings("tiny"), ("lamb", "lars", "adam", "sgd"), (0.5, 2.0), (0,)),
}


def _installed(name: str) -> bool:
    from reltrust.workbench.data import available_datasets

    return any(d.name == name and d.installed for d in available_datasets())


def lr_grid(setting: Setting, optimizer: str, batch: int, factors: Sequence[float]) -> list[float]:
    """The η grid of `optimizer` at `batch`: its scaled η₀ (times the setting's multiplier) × each factor."""
    opt = OPTIMIZERS[optimizer]
    centre = scaled_lr(opt.base_lr * setting.lr_scale, batch, opt.rule)
    return [centre * f for f in factors]


def build_grid(config: Config, seeds: Sequence[int]) -> list[RunSpec]:
    """Tasks (those whose data is installed) × batch sizes × optimisers × their η grid × seeds."""
    base = RunSpec(study=NAME, dataset="mnist", model="mlp", optimizer="lamb", lr=0.01, **SCHEDULE)
    out: list[RunSpec] = []
    for setting in config.settings:
        if setting.needs is not None and not _installed(setting.needs):
            continue
        for batch in setting.batch_sizes:
            at = base.replace(**setting.fields_at(batch))
            for name in config.optimizers:
                opt = OPTIMIZERS[name]
                out += sweep(at.replace(weight_decay=opt.weight_decay), optimizers={name: opt.kwargs},
                             lrs=lr_grid(setting, name, batch, config.factors), seeds=seeds)
    return out


def grid(quick: bool = False, *, seeds: Sequence[int] | None = None, tiny: bool = False) -> list[RunSpec]:
    """The study's runs (see `build_grid`) for the quick, full (default) or tiny config."""
    return STUDY.grid(quick, seeds=seeds, tiny=tiny)


# ------------------------------------------------------------------------------------------ analysis
def task_label(spec: RunSpec) -> str:
    """The setting's label, read back from a spec (task, data set and model name it)."""
    for size in ("full", "quick"):
        for setting in CONFIGS[size].settings:
            f = setting.fields
            if (f["task"], f["dataset"], f["model"]) == (spec.task, spec.dataset, spec.model):
                return setting.label
    return f"{spec.model} / {spec.dataset}"


def _opt_order(name: str) -> int:
    names = list(OPTIMIZERS)
    return names.index(name) if name in names else len(names)


def tolerance(small_err: float) -> float:
    """How far above its smallest-batch error an optimiser may be and still hold: max(TOL_REL·err, TOL_ABS)."""
    return max(TOL_REL * small_err, TOL_ABS)


def hold_batch(errors: Mapping[int, float]) -> int | None:
    """The largest batch B such that at every batch up to B the error is within `tolerance` of the
    smallest batch's; None without errors."""
    if not errors:
        return None
    batches = sorted(errors)
    limit = errors[batches[0]] + tolerance(errors[batches[0]])
    held = batches[0]
    for b in batches[1:]:
        if errors[b] > limit:
            break
        held = b
    return held


def _median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("inf")


def summarise(records: Sequence[Record]) -> dict[str, dict[str, Any]]:
    """Per task: ``rows`` (optimiser → batch → best η, its error per seed and mean, the η points),
    ``hold`` (optimiser → hold batch), ``target`` and ``steps`` (optimiser → batch → steps to target)."""
    out: dict[str, dict[str, Any]] = {}
    for task, recs in group(records, lambda r: task_label(r.spec)).items():
        rows: dict[str, dict[int, dict]] = {}
        for (opt, batch), rs in group(recs, lambda r: (r.spec.optimizer, r.spec.batch_size)).items():
            best, points = best_over_lr(rs, "val_acc")
            rows.setdefault(opt, {})[batch] = {
                "best": best, "points": points, "lr": None if best is None else best.lr,
                "errors": [] if best is None else [1.0 - v for v in best.values],
                "err": None if best is None else 1.0 - best.mean,
                "diverged": sum(p.n_diverged for p in points), "crashed": sum(p.n_crashed for p in points),
                "at_edge": best is not None and best.lr in (points[0].lr, points[-1].lr) and len(points) > 1}
        rows = dict(sorted(((o, dict(sorted(b.items()))) for o, b in rows.items()), key=lambda kv: _opt_order(kv[0])))
        errs = {o: {b: c["err"] for b, c in bs.items() if c["err"] is not None} for o, bs in rows.items()}
        hold = {o: hold_batch(e) for o, e in errs.items()}
        smalls = [e[min(e)] for e in errs.values() if e]
        target = None
        steps: dict[str, dict[int, float]] = {}
        if smalls:
            mid = statistics.median(smalls)
            target = mid + tolerance(mid)
            for o, bs in rows.items():
                steps[o] = {b: min((_median([steps_to_target(r, target) for r in p.records]) for p in c["points"]),
                                   default=float("inf")) for b, c in bs.items()}
        out[task] = {"rows": rows, "hold": hold, "target": target, "steps": steps,
                     "largest": max((b for bs in rows.values() for b in bs), default=None)}
    return dict(sorted(out.items(), key=lambda kv: _task_order(kv[0])))


def _task_order(label: str) -> int:
    labels = [s.label for s in CONFIGS["full"].settings] + [s.label for s in CONFIGS["quick"].settings]
    return labels.index(label) if label in labels else len(labels)


TRUST, BASELINES = ("lamb", "lars"), ("adam", "sgd")


def verdict(summary: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per task: "holds" when LAMB and LARS both hold further than both Adam and SGD, "undecided" when
    all four hold to the largest batch, else "does not hold"; and the count over tasks."""
    per_task: dict[str, tuple[str, str]] = {}
    for task, s in summary.items():
        hold = s["hold"]
        if any(hold.get(o) is None for o in TRUST + BASELINES):
            continue
        trust = min(hold[o] for o in TRUST)
        base = max(hold[o] for o in BASELINES)
        detail = ", ".join(f"{o} {hold[o]}" for o in TRUST + BASELINES)
        if trust == base == s["largest"]:
            per_task[task] = ("undecided", f"all four hold up to the largest batch ({detail})")
        elif trust > base:
            per_task[task] = ("holds", f"hold batches {detail}")
        else:
            per_task[task] = ("does not hold", f"hold batches {detail}")
    n_holds = sum(v == "holds" for v, _ in per_task.values())
    decided = sum(v != "undecided" for v, _ in per_task.values())
    return {"per_task": per_task, "holds": n_holds, "decided": decided, "tasks": len(per_task)}


def findings(summary: Mapping[str, Mapping[str, Any]]) -> list[str]:
    out = []
    for task, s in summary.items():
        parts = []
        for o, bs in s["rows"].items():
            small = bs[min(bs)]["err"]
            parts.append(f"{o} {s['hold'][o]} (error {fmt(small, 3)} at {min(bs)}, {fmt(bs[max(bs)]['err'], 3)} "
                         f"at {max(bs)})")
        out.append(f"{task}: largest batch within tolerance — " + "; ".join(parts) + ".")
    edge = [f"{o} on {t} at batch {b} ({fmt_lr(c['lr'])})" for t, s in summary.items() for o, bs in s["rows"].items()
            for b, c in bs.items() if c["at_edge"]]
    if edge:
        out.append(f"Best η at the edge of its grid ({len(edge)} of "
                   f"{sum(len(bs) for s in summary.values() for bs in s['rows'].values())} points; the true best "
                   "may lie outside): " + "; ".join(edge[:12]) + ("; …" if len(edge) > 12 else "") + ".")
    return out


def analyse(store: Store, out_dir: str | Path, specs: Sequence[RunSpec] | None = None,
            command: str | None = None) -> Path:
    """Figures, ``large_batch_summary.csv`` and ``report.md`` in `out_dir`; returns the report's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = load_records(store, NAME, specs)
    summary = summarise(records)
    _write_summary_csv(summary, out_dir / "large_batch_summary.csv")

    rep = Report(TITLE)
    rep.para(
        "The claim (You et al. 2017, 2020): with a layerwise trust ratio, LARS and LAMB keep their accuracy at "
        "batch sizes where SGD and Adam lose it, at the same budget of epochs. Here: each optimiser at every batch "
        "size on a small η grid centred on its paper's scaling rule, LAMB's warmup-then-polynomial-decay schedule "
        "for all, the final validation error at the best η as the metric. See *Protocol* and *Configuration*."
    )
    _protocol(rep, specs, records)
    rep.heading("Findings")
    if not summary:
        rep.para("No runs are recorded yet: nothing to report.")
    else:
        v = verdict(summary)
        if v["tasks"]:
            rep.para(f"**LAMB and LARS hold their accuracy further than Adam and SGD on {v['holds']} of {v['tasks']} "
                     f"tasks here** ({v['decided']} decided; on each, LAMB and LARS must both hold to a larger batch "
                     f"than both Adam and SGD; tolerance: error ≤ the smallest batch's + max({TOL_REL:.0%} of it, "
                     f"{TOL_ABS:g})).")
            rep.table(["task", "verdict", "these runs"], [(t, a, b) for t, (a, b) in v["per_task"].items()])
        rep.bullets(findings(summary))
        for path, caption in _figures(summary, out_dir):
            rep.figure(path, caption, relative_to=out_dir)
        _tables(rep, summary)
    return finish_report(rep, out_dir, specs, records, command)


def _protocol(rep: Report, specs: Sequence[RunSpec] | None, records: Sequence[Record]) -> None:
    """The η grid (the rule and η₀ of each optimiser, the factors of each size) and the schedule."""
    ran = {s.optimizer for s in (specs if specs is not None else [r.spec for r in records])}
    rep.heading("Protocol")
    rep.table(["optimizer", "η₀ at batch 32 (classifiers)", "scaling rule", "weight decay", "fixed hyperparameters"],
              [(o, fmt_lr(p.base_lr), f"η₀·(B/32)^{RULES[p.rule]:g} ({p.rule})", fmt_lr(p.weight_decay),
                ", ".join(f"{k}={v}" for k, v in p.kwargs.items()) or "defaults")
               for o, p in OPTIMIZERS.items() if o in ran])
    grids = "; ".join(f"{size}: η(B) × {{{', '.join(f'{f:g}' for f in c.factors)}}}" for size, c in CONFIGS.items())
    rep.para(
        f"The η grid at batch B ({grids}; the language model's η₀ are {LM_LR_SCALE:g} × the classifiers'; "
        "*Configuration* lists every η that ran). Schedule, every optimiser, stepped every optimiser step: linear "
        f"warmup over the first ⌈{WARMUP_FRACTION:g} · T⌉ steps, then (1 − s/(T − warmup))¹ to 0 (T: the run's "
        "steps). With weight decay, biases and norm layers have none and no trust ratio. Budget: a fixed number of "
        "epochs (the language model: a fixed number of training sequences), so steps ∝ 1/B. Steps to target: the "
        f"first evaluation (once per epoch; the language model {LM_EVALS} times a run) at or below the task's "
        "target, median over seeds, lowest over the η grid.")


def _write_summary_csv(summary: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """One row per (task, optimiser, batch): the best η, its error over seeds, steps to target, hold batch."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["task", "optimizer", "batch_size", "best_lr", "val_error", "val_error_min", "val_error_max",
                "seeds", "target", "steps_to_target", "hold_batch", "diverged", "crashed"])
    for task, s in summary.items():
        for o, bs in s["rows"].items():
            for b, c in bs.items():
                errs = c["errors"]
                w.writerow(["" if v is None else v for v in (
                    task, o, b, c["lr"], c["err"], min(errs, default=None), max(errs, default=None), len(errs),
                    s["target"], s["steps"].get(o, {}).get(b), s["hold"][o], c["diverged"], c["crashed"])])
    return atomic_write_text(path, buf.getvalue())


def _tables(rep: Report, summary: Mapping[str, Mapping[str, Any]]) -> None:
    for task, s in summary.items():
        batches = sorted({b for bs in s["rows"].values() for b in bs})
        rep.heading(f"Table: {task} — best η and its validation error (mean [min–max] over seeds)", 3)

        def cell(c: dict | None) -> str:
            if c is None or c["err"] is None:
                return "—"
            rng = f" [{fmt(min(c['errors']), 3)}–{fmt(max(c['errors']), 3)}]" if len(c["errors"]) > 1 else ""
            return f"{fmt(c['err'], 3)}{rng} @ {fmt_lr(c['lr'])}{'*' if c['at_edge'] else ''}"

        rep.table(["optimizer"] + [str(b) for b in batches] + ["holds to"],
                  [[o] + [cell(bs.get(b)) for b in batches] + [str(s["hold"][o])] for o, bs in s["rows"].items()])
        rep.heading(f"Table: {task} — steps to the target error {fmt(s['target'], 3)}", 3)
        rep.table(["optimizer"] + [str(b) for b in batches],
                  [[o] + [_steps_cell(s["steps"].get(o, {}).get(b)) for b in batches] for o in s["rows"]])
    rep.para("`*`: the best η is at the edge of its grid. Perfect scaling halves the steps with every doubling of "
             "the batch. Every point is also in `large_batch_summary.csv`.")


def _steps_cell(v: float | None) -> str:
    return "—" if v is None else "miss" if v == float("inf") else f"{v:g}"


def _figures(summary: Mapping[str, Mapping[str, Any]], out_dir: Path) -> list[tuple[Path, str]]:
    errs = {t: {o: {b: c["errors"] for b, c in bs.items() if c["errors"]} for o, bs in s["rows"].items()}
            for t, s in summary.items()}
    failed = {t: {o: [b for b, c in bs.items() if c["best"] is not None and
                      (c["best"].n_diverged or c["best"].n_crashed)] for o, bs in s["rows"].items()}
              for t, s in summary.items()}
    seeds = max((len(c["errors"]) for s in summary.values() for bs in s["rows"].values() for c in bs.values()),
                default=0)
    p1 = plots.metric_vs(errs, out_dir / "error_vs_batch.png", xlabel="batch size", ylabel="validation error",
                         failed=failed, logx=True, ylim=(0.0, 1.02),
                         suptitle="Final validation error at the best η against the batch size (fixed epochs)")
    p2 = plots.scaling({t: s["steps"] for t, s in summary.items()}, out_dir / "steps_to_target.png",
                       xlabel="batch size", ylabel="steps to target",
                       suptitle="Steps to the target error against the batch size (dotted: perfect scaling)")
    band = "bands: min–max over seeds" if seeds > 1 else "one seed: no band"
    return [
        (p1, f"Final validation error at each batch size's best η, one panel per task, one line per optimiser "
             f"({band}; × on the axis: a run at the best η diverged or crashed)."),
        (p2, "Steps to the task's target error (log–log; misses left out), and per optimiser a dotted line of slope "
             "−1 from its smallest batch: perfect scaling. Where a line leaves its dotted line, larger batches stop "
             "paying for themselves: that optimiser's critical batch size."),
    ]


STUDY = Study(
    name=NAME, title=TITLE,
    description="do LAMB and LARS hold accuracy to larger batches than Adam and SGD at fixed epochs? (3 tasks)",
    configs=CONFIGS, build_grid=build_grid, analyse=analyse, quick_minutes=6.5,
)

__all__ = ["STUDY", "CONFIGS", "NAME", "OPTIMIZERS", "RULES", "analyse", "build_grid", "grid", "hold_batch",
           "lr_grid", "scaled_lr", "summarise", "task_label", "tolerance", "verdict"]
