"""The warmup study (Liu et al., ICLR 2020; Ma & Yarats, 2019): does Adam need warmup, does RAdam
remove the need, and does an untuned warmup do as well as RAdam?

The claims: without warmup Adam stalls or diverges early (the variance of its adaptive learning rate
is large in the first steps), warmup rescues it by reducing that variance, and RAdam — which rectifies
the variance instead — needs no warmup and is robust to the learning rate. Ma & Yarats: a linear
warmup over 2/(1−β₂) steps, untuned, does about as well as RAdam.

Here, scaled to a CPU (see *Configuration* of the report for exactly what ran):

- the char Transformer on the Shakespeare corpus with **post-LN** blocks (as in the paper's
  Transformers) and with pre-LN blocks, at η ∈ {3e-4, 1e-3, 3e-3, 1e-2};
- a small CNN on scikit-learn's digits at η ∈ {0.1, 0.03, 0.01, 0.003} (the paper's robustness-to-η
  experiment on CIFAR-10, scaled down);
- Adam without warmup; Adam with a linear warmup of a few lengths (lr·min(1, t/N) at optimiser step
  t, schedule ``warmup`` stepped per optimiser step); Adam with the untuned N = 2/(1−β₂); RAdam as
  torch ships it (``radam``: SGD with momentum while ρ_t ≤ 5) and with the skip rule (``radam_skip``:
  no step while ρ_t ≤ 5); Fromage and LAMB beside them. Every Adam-family method uses the same β₂.

β₂ is scaled with the run: the quick runs take about 400 steps, so β₂ = 0.98 (ρ∞ = 99, an untuned
warmup of 100 steps, r_t above 0.8 from about step 100) keeps the paper's proportions, where a run is
many times 2/(1−β₂) long. With β₂ = 0.999 a 400-step run would end inside the untuned warmup (2,000
steps) and RAdam's r_t would stay below 0.3 throughout.

Metric: the final validation loss (cross-entropy; nats per character for the language model), mean
over seeds. The report answers each question from the runs with two rules: method A is *clearly
better* than B at a learning rate when A's mean is lower by more than 2 % and every seed of A is
below every seed of B; two methods *match* when neither is clearly better. A run *stalls* when its
final validation loss is above 90 % of the loss before training; a run that diverged (non-finite
training loss) has loss ∞ for these comparisons.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from reltrust.workbench import plots
from reltrust.workbench.report import Report, configuration, environment, failures, fmt, fmt_lr
from reltrust.workbench.runner import sweep
from reltrust.workbench.spec import RunSpec
from reltrust.workbench.store import Record, Store
from reltrust.workbench.studies._common import Study, group, load_records, mean

NAME = "warmup"
TITLE = "Warmup and RAdam: does Adam need warmup, and does RAdam remove the need?"
LM_LRS = (3e-4, 1e-3, 3e-3, 1e-2)
CNN_LRS = (0.003, 0.01, 0.03, 0.1)
CLEARLY = 0.02  # clearly better: lower mean by more than 2 %, and every seed below every seed
STALL = 0.9  # stalled: final validation loss above 90 % of the loss before training


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem of the study: a label, the RunSpec fields that make it, and its learning rates."""

    label: str
    fields: Mapping[str, Any]
    lrs: tuple[float, ...]


KINDS = ("adam", "warmup", "untuned", "radam", "radam_skip", "fromage", "lamb")
_LABELS = {"radam": "radam (torch: SGD while ρ_t ≤ 5)", "radam_skip": "radam_skip (no step while ρ_t ≤ 5)"}


@dataclasses.dataclass(frozen=True, order=True)
class Method:
    """One training method: Adam without warmup (``adam``), with a linear warmup of `warmup` steps
    (``warmup``) or of the untuned 2/(1−β₂) steps (``untuned``), or ``radam``, ``radam_skip``,
    ``fromage``, ``lamb`` (no warmup). Ordered as in KINDS, then by warmup length."""

    rank: int = dataclasses.field(init=False, repr=False)
    kind: str
    warmup: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "rank", KINDS.index(self.kind))

    @property
    def optimizer(self) -> str:
        return "adam" if self.kind in ("warmup", "untuned") else self.kind

    @property
    def label(self) -> str:
        if self.kind == "warmup":
            return f"adam, warmup {self.warmup}"
        if self.kind == "untuned":
            return f"adam, untuned warmup {self.warmup}"
        return _LABELS.get(self.kind, self.kind)

    def fields(self, beta2: float) -> dict[str, Any]:
        """The RunSpec fields of this method (every Adam-family optimiser gets betas (0.9, β₂))."""
        out: dict[str, Any] = {"optimizer": self.optimizer,
                               "optimizer_kwargs": {} if self.kind == "fromage" else {"betas": [0.9, beta2]}}
        if self.warmup:
            out.update(schedule="warmup", schedule_kwargs={"warmup": self.warmup}, schedule_interval="step")
        return out


def untuned_warmup(beta2: float) -> int:
    """Ma & Yarats' untuned linear warmup length, 2/(1−β₂) steps."""
    return round(2.0 / (1.0 - beta2))


def methods(beta2: float, warmups: Sequence[int], kinds: Sequence[str] = KINDS) -> tuple[Method, ...]:
    """The methods of `kinds`, with one ``warmup`` method per length in `warmups`."""
    out = []
    for kind in kinds:
        if kind == "warmup":
            out += [Method("warmup", n) for n in warmups]
        else:
            out.append(Method(kind, untuned_warmup(beta2) if kind == "untuned" else 0))
    return tuple(out)


def method_of(spec: RunSpec) -> Method:
    """The method a spec runs, read back from its optimiser, schedule and β₂."""
    if spec.optimizer != "adam":
        return Method(spec.optimizer)
    warmup = int(spec.kwargs("schedule").get("warmup", 0)) if spec.schedule == "warmup" else 0
    if not warmup:
        return Method("adam")
    beta2 = spec.kwargs("optimizer").get("betas", [0.9, 0.999])[1]
    return Method("untuned" if warmup == untuned_warmup(beta2) else "warmup", warmup)


def _problems(size: str) -> tuple[Problem, ...]:
    tiny, full = size == "tiny", size == "full"
    lm = ({"block_size": 16, "d_model": 16, "n_layers": 1, "n_heads": 2} if tiny else
          {"block_size": 64, "d_model": 64, "n_layers": 4, "n_heads": 4} if full else
          {"block_size": 32, "d_model": 32, "n_layers": 2, "n_heads": 2})
    charlm = {"task": "charlm", "dataset": "shakespeare", "model": "transformer", "epochs": 0,
              "steps": 10 if tiny else 2000 if full else 400, "batch_size": 8 if tiny else 32 if full else 16,
              "task_kwargs": {"steps_per_epoch": 5 if tiny else 100 if full else 25,
                              "eval_blocks": 16 if tiny else 256 if full else 64}}
    lm_lrs = (1e-2,) if tiny else LM_LRS
    return (
        Problem("Transformer, post-LN", {**charlm, "model_kwargs": {**lm, "post_ln": True}}, lm_lrs),
        Problem("Transformer, pre-LN", {**charlm, "model_kwargs": {**lm, "post_ln": False}}, lm_lrs),
        Problem("CNN / digits", {"task": "classify", "dataset": "digits", "model": "cnn",
                                 "model_kwargs": {"width": 4 if tiny else 16 if full else 8},
                                 "epochs": 1 if tiny else 30 if full else 8, "batch_size": 64 if tiny else 32},
                (0.01, 0.1) if tiny else CNN_LRS),
    )


@dataclasses.dataclass(frozen=True)
class Config:
    problems: tuple[Problem, ...]
    methods: tuple[Method, ...]
    beta2: float
    seeds: tuple[int, ...]


CONFIGS = {
    "full": Config(_problems("full"), methods(0.98, (25, 500)), 0.98, (0, 1, 2)),
    # quick: one tuned length (25) beside the untuned 100, so that the grid fits 10 minutes on 2 cores
    "quick": Config(_problems("quick"), methods(0.98, (25,)), 0.98, (0, 1)),
    # β₂ = 0.8: an untuned warmup of 10 steps and rectified steps inside a 20-step run
    "tiny": Config(_problems("tiny"), methods(0.8, (), kinds=("adam", "untuned", "radam", "radam_skip")), 0.8, (0,)),
}


def build_grid(config: Config, seeds: Sequence[int]) -> list[RunSpec]:
    """Problems × methods × each problem's learning rates × seeds."""
    base = RunSpec(study=NAME, dataset="digits", model="cnn", optimizer="adam", lr=1e-3)
    specs: list[RunSpec] = []
    for problem in config.problems:
        specs += sweep(base.replace(**problem.fields), settings=[m.fields(config.beta2) for m in config.methods],
                       lrs=problem.lrs, seeds=seeds)
    return specs


def grid(quick: bool = False, *, seeds: Sequence[int] | None = None, tiny: bool = False) -> list[RunSpec]:
    """The study's runs (see `build_grid`) for the quick, full (default) or tiny config."""
    return STUDY.grid(quick, seeds=seeds, tiny=tiny)


# ---------------------------------------------------------------------------------------- labels
def problem_label(spec: RunSpec) -> str:
    if spec.task == "charlm":
        return f"Transformer, {'post' if spec.kwargs('model').get('post_ln') else 'pre'}-LN"
    return f"{spec.model.upper()} / {spec.dataset}"


def _problem_order(label: str) -> int:
    labels = [p.label for p in CONFIGS["full"].problems]
    return labels.index(label) if label in labels else len(labels)


# ---------------------------------------------------------------------------------------- analysis
def final_loss(r: Record) -> float:
    """The run's final validation loss; ∞ for a diverged run or a non-finite value."""
    v = r.final.get("val_loss")
    if r.status == "diverged" or v is None or not math.isfinite(float(v)):
        return math.inf
    return float(v)


@dataclasses.dataclass
class Cell:
    """The finished runs of one (problem, method, learning rate)."""

    problem: str
    method: Method
    lr: float
    records: list[Record]

    @property
    def losses(self) -> list[float]:
        """Final validation loss per seed (∞ where a run diverged)."""
        return [final_loss(r) for r in self.records]

    @property
    def mean(self) -> float:
        return mean(self.losses)

    @property
    def diverged(self) -> int:
        return sum(r.status == "diverged" for r in self.records)

    @property
    def stalled(self) -> bool:
        """A diverged seed, or a mean final validation loss above STALL × the loss before training."""
        initial = mean([float(r.history[0]["val_loss"]) for r in self.records])
        return self.diverged > 0 or self.mean > STALL * initial


Table = Mapping[tuple[str, Method, float], Cell]


def cells(records: Sequence[Record]) -> dict[tuple[str, Method, float], Cell]:
    """The finished runs (ok or diverged) grouped by (problem label, method, learning rate)."""
    finished = [r for r in records if r.finished]
    return {key: Cell(*key, sorted(rs, key=lambda r: r.spec.seed)) for key, rs in
            group(finished, lambda r: (problem_label(r.spec), method_of(r.spec), r.spec.lr)).items()}


def clearly_better(a: Cell, b: Cell) -> bool:
    """a's mean lower than b's by more than CLEARLY (relative), and every seed of a below every seed of b."""
    return math.isfinite(a.mean) and a.mean < b.mean * (1 - CLEARLY) and max(a.losses) < min(b.losses)


def _problems_of(table: Table) -> list[str]:
    return sorted({p for p, _, _ in table}, key=_problem_order)


def _lrs(table: Table, problem: str) -> list[float]:
    return sorted({lr for p, _, lr in table if p == problem})


def _methods(table: Table, problem: str) -> list[Method]:
    return sorted({m for p, m, _ in table if p == problem})


def _cell(table: Table, problem: str, lr: float, kind: str) -> Cell | None:
    """The cell of the (first) method of `kind`."""
    return next((c for (p, m, l), c in sorted(table.items(), key=lambda kv: kv[0][1])
                 if p == problem and l == lr and m.kind == kind), None)


def _best_warmup(table: Table, problem: str, lr: float) -> Cell | None:
    """Of Adam's warmed-up runs at this η, the one with the lowest mean final validation loss."""
    warm = [c for (p, m, l), c in table.items() if p == problem and l == lr and m.kind in ("warmup", "untuned")]
    return min(warm, key=lambda c: c.mean) if warm else None


def _etas(lrs: Sequence[float]) -> str:
    return ", ".join(fmt_lr(x) for x in lrs) if lrs else "none"


def _loss(x: float) -> str:
    return "∞" if math.isinf(x) else fmt(x, 3)


def _no_warmup_answer(table: Table, prob: str) -> str:
    trouble, rescued = [], []
    for lr in _lrs(table, prob):
        adam, warm = _cell(table, prob, lr, "adam"), _best_warmup(table, prob, lr)
        if adam is None or warm is None:
            continue
        if adam.stalled or clearly_better(warm, adam):
            what = "diverged" if adam.diverged else "stalled" if adam.stalled else "worse"
            trouble.append(f"{fmt_lr(lr)} ({what}: {_loss(adam.mean)} vs {warm.method.label} {_loss(warm.mean)})")
            if clearly_better(warm, adam) and not warm.stalled:
                rescued.append(lr)
    if not trouble:
        return "no: at every η Adam without warmup trained and no warmup did clearly better"
    return (f"yes at η = {_etas(rescued)}" if rescued else "no") + "; Adam without warmup: " + "; ".join(trouble)


def _match_answer(table: Table, prob: str, kind: str, against: Callable[[float], Cell | None]) -> str | None:
    """Where the method of `kind` is about equal to, better or worse than `against(lr)`, η by η; it
    matches ("yes") where it is nowhere worse."""
    match, better, worse = [], [], []
    for lr in _lrs(table, prob):
        a, b = _cell(table, prob, lr, kind), against(lr)
        if a is None or b is None:
            continue
        (worse if clearly_better(b, a) else better if clearly_better(a, b) else match).append(lr)
    if not (match or better or worse):
        return None
    verdict = "yes" if not worse else "no" if not (match or better) else "partly"
    return f"{verdict}: about equal at η = {_etas(match)}; better at {_etas(better)}; worse at {_etas(worse)}"


def _robustness_answer(table: Table, prob: str) -> str | None:
    """Spread (max − min) of the mean final validation loss over the η grid: RAdams against Adam."""
    spreads = {}
    for kind in ("adam", "radam", "radam_skip"):
        means = [c.mean for (p, m, _), c in table.items() if p == prob and m.kind == kind]
        if len(means) >= 2:
            spreads[kind] = max(means) - min(means)
    if "adam" not in spreads or len(spreads) < 2:
        return None
    less = [k for k, v in spreads.items() if k != "adam" and v < spreads["adam"]]
    verdict = "yes" if len(less) == len(spreads) - 1 else "no" if not less else "only " + ", ".join(less)
    return f"{verdict}: max − min over η of the mean final validation loss: " + ", ".join(
        f"{k} {_loss(v)}" for k, v in spreads.items())


QUESTIONS = {
    "no_warmup": "Does Adam without warmup stall or diverge where warmup rescues it?",
    "radam": "Does radam (torch) without warmup match the best warmed-up Adam (nowhere worse)?",
    "radam_skip": "Does radam_skip without warmup match the best warmed-up Adam (nowhere worse)?",
    "untuned_radam": "Does the untuned 2/(1−β₂) warmup match radam (torch) (nowhere worse)?",
    "untuned_radam_skip": "Does the untuned 2/(1−β₂) warmup match radam_skip (nowhere worse)?",
    "robust": "Is RAdam less sensitive to η than Adam?",
}


def answers(table: Table) -> dict[str, dict[str, str]]:
    """problem → {question key → answer}, every answer computed from the cells."""
    out: dict[str, dict[str, str]] = {}
    for prob in _problems_of(table):
        row = {"no_warmup": _no_warmup_answer(table, prob)}
        best = lambda lr, prob=prob: _best_warmup(table, prob, lr)  # noqa: E731
        for kind in ("radam", "radam_skip"):
            row[kind] = _match_answer(table, prob, kind, best)
            row[f"untuned_{kind}"] = _match_answer(table, prob, "untuned",
                                                   lambda lr, kind=kind, prob=prob: _cell(table, prob, lr, kind))
        row["robust"] = _robustness_answer(table, prob)
        out[prob] = {k: v for k, v in row.items() if v is not None}
    return out


def layer_norm_answer(ans: Mapping[str, Mapping[str, str]]) -> str | None:
    """Does post-LN versus pre-LN change the answers? Compares each question's verdict (the word before
    the first colon or semicolon)."""
    post, pre = ans.get("Transformer, post-LN"), ans.get("Transformer, pre-LN")
    if not post or not pre:
        return None

    def verdict(a: str) -> str:
        return a.split(":")[0].split(";")[0]

    diff = [f"{QUESTIONS[k]} post-LN “{verdict(a)}”, pre-LN “{verdict(pre[k])}”"
            for k, a in post.items() if k in pre and verdict(a) != verdict(pre[k])]
    return "yes: " + "; ".join(diff) if diff else "no: each question has the same answer for both"


# ------------------------------------------------------------------------------------------ report
def analyse(store: Store, out_dir: str | Path, specs: Sequence[RunSpec] | None = None,
            command: str | None = None) -> Path:
    """Figures and ``report.md`` in `out_dir`; returns the report's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = load_records(store, NAME, specs)
    table = cells(records)
    grid_specs = list(specs) if specs is not None else [r.spec for r in records]
    ran = sorted({method_of(s) for s in grid_specs})
    beta2s = sorted({s.kwargs("optimizer")["betas"][1] for s in grid_specs if "betas" in s.kwargs("optimizer")})

    rep = Report(TITLE)
    rep.para(
        "The claims (Liu et al. 2020): without warmup Adam stalls or diverges; warmup rescues it by reducing the "
        "variance of the adaptive learning rate; RAdam needs no warmup and is robust to the learning rate. Ma & "
        "Yarats (2019): an untuned linear warmup over 2/(1−β₂) steps does about as well as RAdam. Here: a char "
        "Transformer with post-LN and with pre-LN blocks, and a small CNN, at the learning rates of the tables, "
        f"with β₂ = {', '.join(f'{b:g}' for b in beta2s)} for every Adam-family method. Methods: "
        f"{'; '.join(m.label for m in ran)} (warmups linear in the optimiser step). RAdam ran in two variants: "
        "`radam` is `torch.optim.RAdam` (SGD with momentum while ρ_t ≤ 5), `radam_skip` is "
        "`reltrust.optim.RAdamSkip` (no step while ρ_t ≤ 5); they differ only in the first few steps. "
        f"*Clearly better*: a mean final validation loss lower by more than {CLEARLY:.0%}, with every seed below every "
        f"seed of the other; *match*: neither clearly better; *stalled*: a final validation loss above {STALL:.0%} of "
        "the loss before training, or a diverged seed (a diverged run's loss counts as ∞)."
    )
    rep.heading("Findings")
    if not table:
        rep.para("No runs are recorded yet: nothing to report.")
    else:
        ans = answers(table)
        for prob, row in ans.items():
            rep.heading(prob, 3)
            rep.table(["question", "these runs"], [(QUESTIONS[k], v) for k, v in row.items()])
        ln = layer_norm_answer(ans)
        if ln:
            rep.heading("Post-LN against pre-LN", 3)
            rep.table(["question", "these runs"], [("Does post-LN versus pre-LN change the answer?", ln)])
        for path, caption in _figures(table, out_dir):
            rep.figure(path, caption, relative_to=out_dir)
        _tables(rep, table)
    configuration(rep, grid_specs, command)
    failures(rep, records, specs)
    environment(rep, records)
    return rep.write(out_dir / "report.md")


def _tables(rep: Report, table: Table) -> None:
    for prob in _problems_of(table):
        lrs = _lrs(table, prob)
        rep.heading(f"Table: {prob}, final validation loss, mean [min–max] over seeds", 3)
        rows = []
        for m in _methods(table, prob):
            row = [m.label]
            for lr in lrs:
                c = table.get((prob, m, lr))
                if c is None:
                    row.append("—")
                    continue
                text = _loss(c.mean)
                if len(c.losses) > 1 and math.isfinite(c.mean):
                    text += f" [{fmt(min(c.losses), 3)}–{fmt(max(c.losses), 3)}]"
                text += f" ({c.diverged} diverged)" if c.diverged else " (stalled)" if c.stalled else ""
                row.append(text)
            rows.append(row)
        rep.table(["method"] + [f"η = {fmt_lr(lr)}" for lr in lrs], rows)


def _nan_if_not_finite(x: Any) -> float:
    return float(x) if x is not None and math.isfinite(float(x)) else math.nan


def _figures(table: Table, out_dir: Path) -> list[tuple[Path, str]]:
    out = []
    problems = _problems_of(table)
    for k, prob in enumerate(problems, start=1):
        lrs = _lrs(table, prob)
        panels: dict[str, dict] = {}
        initial, lowest = [], []
        for split in ("train", "val"):
            for lr in lrs:
                lines = {}
                for m in _methods(table, prob):
                    c = table.get((prob, m, lr))
                    if c is None:
                        continue
                    runs = [[_nan_if_not_finite(h[f"{split}_loss"]) for h in r.history] for r in c.records]
                    longest = max(c.records, key=lambda r: len(r.history))
                    lines[m.label] = ([h["step"] for h in longest.history], runs)
                    initial += [v[0] for v in runs]
                    lowest += [x for v in runs for x in v if not math.isnan(x)]
                panels[f"{split} loss, η = {fmt_lr(lr)}"] = lines
        path = plots.curves(panels, out_dir / f"curves_{k}.png", xlabel="optimiser step", ylabel="loss",
                            ncols=len(lrs), ylim=(0.95 * min(lowest), 1.25 * max(initial)),
                            suptitle=f"{prob}: training and validation loss")
        out.append((path, f"{prob}: training (top row) and validation (bottom row) loss against the optimiser step, "
                          "one panel per η, one line per method (mean; band: min–max over seeds; a diverged run's "
                          "curve ends where it diverged)."))
    panels, failed = {}, {}
    for prob in problems:
        lines: dict[str, dict] = {}
        for m in _methods(table, prob):
            for lr in _lrs(table, prob):
                c = table.get((prob, m, lr))
                if c is None:
                    continue
                lines.setdefault(m.label, {})[lr] = [x if math.isfinite(x) else math.nan for x in c.losses]
                if c.diverged:
                    failed.setdefault(prob, {}).setdefault(m.label, []).append(lr)
        panels[prob] = lines
    path = plots.metric_vs(panels, out_dir / "final_vs_lr.png", xlabel="learning rate η",
                           ylabel="final validation loss", failed=failed, logx=True,
                           suptitle="Final validation loss against the learning rate")
    out.append((path, "Final validation loss against η, one panel per problem, one line per method (mean; band: "
                      "min–max over seeds; × on the axis: a run at that η diverged)."))
    return out


STUDY = Study(
    name=NAME, title=TITLE,
    description="Adam with/without warmup vs RAdam (torch's and skip), post-LN and pre-LN Transformer, a CNN",
    configs=CONFIGS, build_grid=build_grid, analyse=analyse, quick_minutes=7,
)

__all__ = ["STUDY", "CONFIGS", "KINDS", "NAME", "Cell", "Method", "answers", "analyse", "build_grid", "cells",
           "clearly_better", "grid", "layer_norm_answer", "method_of", "methods", "problem_label", "untuned_warmup"]
