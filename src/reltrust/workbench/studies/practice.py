"""The practice study: the lecture notes' statements on training ("Training and practicalities for deep
learning models", /work/shared/papers/002_…), each turned into a measurement on scikit-learn's digits
(1,797 8×8 images; a fixed-seed test split of 20 % carved off, 10 % of the rest for validation, the
same split for every run). Seven panels, each a statement, a measurement and a verdict computed from
the stored runs:

1. **Gradient noise against batch size** ("the gradient variance is O(1/|B|)"): E‖g_B − g‖² at the
   initial point of an MLP for |B| = 1 … 1024, measured over minibatches (each a backward pass) and
   exactly from the per-example gradients (tr Σ/|B| · (n − |B|)/(n − 1) for B drawn without
   replacement; `reltrust.workbench.measures`); the log–log slope is fitted. Epoch-0 probe runs.
2. **Noisy steps against accurate steps** ("the optimal batch size is usually quite small"): SGD with
   small batches against full-batch gradient descent at equal examples processed (the same epochs),
   each batch size at its best η of a small grid: training loss against examples seen.
3. **Robbins–Monro**: logistic regression (an MLP of depth 1, with a small L2 term so the problem has
   a unique minimum) with a constant η, with a/(b + t) (Σα = ∞, Σα² < ∞) and with a/(b + t)²
   (Σα < ∞), stepped per optimiser step; each is classified from the last doubling of its run.
4. **Momentum** (EMA form Δ_t = βΔ_{t−1} + (1 − β)g): SGD with and without, on an η grid.
5. **Adam's bias correction**: torch's Adam against `adam_nobc` (no division by 1 − βᵗ) over the first
   few hundred steps, evaluated every few steps.
6. **Initialisation**: a deep MLP (ReLU and tanh) under the lecture's "Xavier" σ² = 1/d_{ℓ−1} (the
   code's ``init="lecun"``; the code's ``"xavier"`` is Glorot's 2/(fan_in + fan_out), which equals it
   on the square hidden layers and is not run), PyTorch's default (U(±1/√fan_in), σ² = 1/(3 fan_in))
   and Kaiming (2/fan_in): the variance of every layer's pre-activations at initialisation (an
   epoch-0 probe of the same run), then the training that follows.
7. **Regularisation** on a small training subset: none, L2 (coupled: torch SGD's / Adam's
   weight_decay) against decoupled decay (`sgdw`, AdamW), dropout and early stopping on validation
   loss; the decay strength of each is chosen on validation loss from a small grid. Plus plain SGD
   (no momentum) with L2 against SGDW: the lecture's "L2 … equates to replacing θ with θ(1 − λα)".

Each panel's runs carry the study label ``practice.<k>``. The rules that turn runs into verdicts are
in the functions of each panel's section below and are stated in the report.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reltrust.workbench import plots
from reltrust.workbench.report import Report, fmt, fmt_lr
from reltrust.workbench.schedules import lr_factor
from reltrust.workbench.spec import RunSpec
from reltrust.workbench.store import Record, Store
from reltrust.workbench.studies._common import Study, finish_report, group, mean

NAME = "practice"
TITLE = "The lecture notes' practice of training, measured"
PANELS = 7
DATA = {"dataset": "digits", "task_kwargs": {"test_fraction": 0.2}, "val_fraction": 0.1}
SLOPE_TOL = 0.1  # panel 1: the slope "is −1" when within ±0.1 of it
FLAT = 0.01  # panel 3: a relative change of the training loss below 1 % over the last doubling is "flat"
SHORT = 0.02  # panel 3: "stopped short": flat, and its final loss more than 2 % above the lowest schedule's
TRAINS = 0.5  # panel 6: a run "trains" when its final training loss is below half its initial one
SAME = 1e-2  # panel 7: plain SGD's L2 and SGDW "agree" within 1 % (relative) at every epoch
VAR_BAND = 10.0  # panel 6: kept when last/first hidden pre-activation variance is within [1/10, 10]


def study_label(panel: int) -> str:
    return f"{NAME}.{panel}"


def panel_of(spec: RunSpec) -> int:
    return int(spec.study.rsplit(".", 1)[1])


@dataclasses.dataclass(frozen=True)
class Config:
    seeds: tuple[int, ...]
    width: int
    grad_batches: tuple[int, ...]
    grad_draws: int
    gd_epochs: int
    gd_lrs: Mapping[int, tuple[float, ...]]  # batch size (0: full batch) → η grid
    rm_epochs: int
    rm_lr: float
    rm_b: float
    mom_epochs: int
    mom_lrs: tuple[float, ...]
    adam_steps: int
    adam_every: int
    adam_lrs: tuple[float, ...]
    init_depth: int
    init_epochs: int
    reg_subset: int
    reg_width: int
    reg_epochs: int
    reg_patience: int
    reg_decays: Mapping[str, tuple[float, ...]]


FULL_BATCH = 0  # in gd_lrs: the whole training set as one batch
_POW2 = tuple(2**k for k in range(11))  # 1 … 1024

CONFIGS = {
    "full": Config(seeds=(0, 1, 2), width=64, grad_batches=_POW2, grad_draws=300, gd_epochs=40,
                   gd_lrs={16: (0.03, 0.1, 0.3), 128: (0.1, 0.3, 1.0), FULL_BATCH: (0.3, 1.0, 3.0)},
                   rm_epochs=64, rm_lr=0.5, rm_b=200.0, mom_epochs=20, mom_lrs=(0.01, 0.03, 0.1, 0.3, 1.0, 3.0),
                   adam_steps=600, adam_every=10, adam_lrs=(1e-3, 1e-2), init_depth=30, init_epochs=30,
                   reg_subset=200, reg_width=256, reg_epochs=300, reg_patience=20,
                   reg_decays={"sgd": (5e-3, 5e-2), "adam": (5e-3, 5e-2), "adamw": (0.1, 1.0)}),
    "quick": Config(seeds=(0, 1), width=64, grad_batches=_POW2, grad_draws=100, gd_epochs=20,
                    gd_lrs={16: (0.03, 0.1, 0.3), 128: (0.1, 0.3, 1.0), FULL_BATCH: (0.3, 1.0, 3.0)},
                    rm_epochs=32, rm_lr=0.5, rm_b=200.0, mom_epochs=10, mom_lrs=(0.01, 0.03, 0.1, 0.3, 1.0, 3.0),
                    adam_steps=300, adam_every=10, adam_lrs=(1e-3, 1e-2), init_depth=20, init_epochs=15,
                    reg_subset=200, reg_width=256, reg_epochs=150, reg_patience=10,
                    reg_decays={"sgd": (5e-3, 5e-2), "adam": (5e-3, 5e-2), "adamw": (0.1, 1.0)}),
    "tiny": Config(seeds=(0,), width=16, grad_batches=(1, 8, 64), grad_draws=5, gd_epochs=2,
                   gd_lrs={16: (0.1,), FULL_BATCH: (1.0,)}, rm_epochs=4, rm_lr=0.5, rm_b=20.0, mom_epochs=1,
                   mom_lrs=(0.1, 1.0), adam_steps=20, adam_every=5, adam_lrs=(1e-2,), init_depth=5, init_epochs=1,
                   reg_subset=50, reg_width=16, reg_epochs=3, reg_patience=1,
                   reg_decays={"sgd": (5e-2,), "adam": (5e-2,), "adamw": (1.0,)}),
}


# ------------------------------------------------------------------------------------------- grid
def _base(c: Config, panel: int, **fields: Any) -> RunSpec:
    spec = RunSpec(study=study_label(panel), model="mlp", optimizer="sgd", lr=0.1, batch_size=32,
                   model_kwargs={"depth": 3, "width": c.width}, **DATA)
    tk = {**spec.kwargs("task"), **fields.pop("task_kwargs", {})}
    return spec.replace(task_kwargs=tk, **fields)


def _seeded(specs: Sequence[RunSpec], seeds: Sequence[int]) -> list[RunSpec]:
    return [s.replace(seed=int(seed)) for s in specs for seed in seeds]


SGD_M = {"momentum": 0.9}
# P7's methods: label → (optimizer, optimizer_kwargs, decay grid key or None, extra RunSpec fields)
REG_METHODS = {
    "SGD+momentum, none": ("sgd", SGD_M, None, {}),
    "SGD+momentum, L2 (coupled)": ("sgd", SGD_M, "sgd", {}),
    "SGDW+momentum (decoupled)": ("sgdw", SGD_M, "sgd", {}),
    "SGD+momentum, dropout 0.5": ("sgd", SGD_M, None, {"dropout": 0.5}),
    "SGD+momentum, early stopping": ("sgd", SGD_M, None, {"patience": True}),
    "Adam, none": ("adam", {}, None, {}),
    "Adam, L2 (coupled)": ("adam", {}, "adam", {}),
    "AdamW (decoupled)": ("adamw", {}, "adamw", {}),
    "plain SGD, L2 (coupled)": ("sgd", {}, "sgd", {}),
    "plain SGDW (decoupled)": ("sgdw", {}, "sgd", {}),
}
REG_LR = {"sgd": 0.05, "sgdw": 0.05, "adam": 1e-3, "adamw": 1e-3}


def build_grid(c: Config, seeds: Sequence[int]) -> list[RunSpec]:
    out: list[RunSpec] = []
    # 1: epoch-0 probe of the gradient variance
    out += _seeded([_base(c, 1, epochs=0, probe={"name": "grad_variance", "at_epochs": [0],
                                                  "batch_sizes": list(c.grad_batches), "draws": c.grad_draws})], seeds)
    # 2: batch sizes at equal epochs (equal examples processed)
    out += _seeded([_base(c, 2, epochs=c.gd_epochs, batch_size=b or 100_000, lr=lr)
                    for b, lrs in c.gd_lrs.items() for lr in lrs], seeds)
    # 3: logistic regression, three step-size sequences, stepped per optimiser step
    rm = dict(epochs=c.rm_epochs, batch_size=8, lr=c.rm_lr, model_kwargs={"depth": 1, "width": c.width},
              weight_decay=1e-3, schedule_interval="step")
    out += _seeded([_base(c, 3, **rm),
                    _base(c, 3, **rm, schedule="robbins_monro", schedule_kwargs={"b": c.rm_b, "power": 1.0}),
                    _base(c, 3, **rm, schedule="robbins_monro", schedule_kwargs={"b": c.rm_b, "power": 2.0})], seeds)
    # 4: momentum in EMA form (torch's dampening = β) against none
    out += _seeded([_base(c, 4, epochs=c.mom_epochs, lr=lr, optimizer_kwargs=kw)
                    for kw in ({}, {"momentum": 0.9, "dampening": 0.9}) for lr in c.mom_lrs], seeds)
    # 5: Adam with and without bias correction, evaluated every adam_every steps
    out += _seeded([_base(c, 5, optimizer=opt, lr=lr, epochs=0, steps=c.adam_steps,
                          task_kwargs={"eval_every": c.adam_every}, optimizer_kwargs={"betas": [0.9, 0.999]})
                    for opt in ("adam", "adam_nobc") for lr in c.adam_lrs], seeds)
    # 6: initialisation of a deep MLP: activation probe at epoch 0, then training
    out += _seeded([_base(c, 6, epochs=c.init_epochs, lr=0.01, optimizer_kwargs=SGD_M,
                          model_kwargs={"depth": c.init_depth, "width": c.width, "activation": act, "init": init},
                          probe={"name": "activations", "at_epochs": [0], "batch": 512})
                    for act in ("relu", "tanh") for init in INIT_ORDER], seeds)
    # 7: regularisation on a small training subset
    reg = []
    for label, (opt, okw, decays, extra) in REG_METHODS.items():
        mk = {"depth": 3, "width": c.reg_width}
        if "dropout" in extra:
            mk["dropout"] = extra["dropout"]
        fields = dict(optimizer=opt, optimizer_kwargs=okw, lr=REG_LR[opt], epochs=c.reg_epochs, batch_size=20,
                      model_kwargs=mk, task_kwargs={"train_subset": c.reg_subset},
                      patience=c.reg_patience if extra.get("patience") else 0)
        for wd in (c.reg_decays[decays] if decays else (0.0,)):
            reg.append(_base(c, 7, weight_decay=wd, **fields))
    out += _seeded(reg, seeds)
    return out


def grid(quick: bool = False, seeds: Sequence[int] | None = None, tiny: bool = False) -> list[RunSpec]:
    return STUDY.grid(quick, seeds=seeds, tiny=tiny)


# --------------------------------------------------------------------------------------- helpers
def _nan(x: Any) -> float:
    return float(x) if x is not None and math.isfinite(float(x)) else math.nan


def _final(r: Record, metric: str = "train_loss") -> float:
    """The run's final `metric`; ∞ for a diverged run or a non-finite value."""
    v = r.final.get(metric)
    if r.status == "diverged" or v is None or not math.isfinite(float(v)):
        return math.inf
    return float(v)


def _curve(records: Sequence[Record], metric: str, x: str = "step", scale: float = 1.0):
    """(xs of the longest run, [ys per seed]) for plots.curves."""
    longest = max(records, key=lambda r: len(r.history))
    return [h[x] * scale for h in longest.history], [[_nan(h.get(metric)) for h in r.history] for r in records]


def _seeds_text(xs: Sequence[float], digits: int = 3) -> str:
    return ", ".join(fmt(x, digits) for x in xs)


def _finished(records: Sequence[Record]) -> list[Record]:
    return [r for r in records if r.finished]


@dataclasses.dataclass
class Panel:
    number: int
    title: str
    statement: str
    measurement: str
    verdict: str
    figures: list[tuple[Path, str]]
    details: list[tuple[list[str], list[list[Any]]]]  # tables: (headers, rows)
    rule: str


def _draw(out_dir: Path | None, fn, panels, name: str, **kwargs) -> Path:
    """`fn(panels, out_dir / name, **kwargs)`; with out_dir None only the path (the verdicts without figures)."""
    return Path(name) if out_dir is None else fn(panels, out_dir / name, **kwargs)


def _empty(number: int, title: str, statement: str) -> Panel:
    return Panel(number, title, statement, "no finished runs", "not measured", [], [], "")


# ------------------------------------------------------------------------ 1: gradient variance
def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)), 1)[0])


S1 = "“Though there is a trade-off (the gradient variance is O(1/|B|)) …”"


def panel_grad(records: Sequence[Record], out_dir: Path) -> Panel:
    title = "Gradient noise against batch size"
    runs = [r for r in _finished(records) if r.probes]
    if not runs:
        return _empty(1, title, S1)
    rows, raw, corrected, worst = [], [], [], []
    for r in sorted(runs, key=lambda r: r.spec.seed):
        p = r.probes[0]
        b, meas, exact, n = p["batch_sizes"], p["measured"], p["exact"], p["n"]
        keep = [i for i, bb in enumerate(b) if bb < n and meas[i] > 0]
        bs = [b[i] for i in keep]
        fpc = [(n - bb) / (n - 1) for bb in bs]
        raw.append(slope(bs, [meas[i] for i in keep]))
        corrected.append(slope(bs, [meas[i] / f for i, f in zip(keep, fpc)]))
        worst.append(max(abs(meas[i] / exact[i] - 1) for i in keep))
        rows.append([r.spec.seed, n, fmt(p["trace_sigma"], 4), fmt(raw[-1]), fmt(corrected[-1]), f"{worst[-1]:.1%}"])
    c_mean = mean(corrected)
    holds = all(abs(s + 1) <= SLOPE_TOL for s in corrected)
    verdict = ("holds" if holds else "does not hold") + (
        f": the slope, corrected for sampling without replacement, is {_seeds_text(corrected)} (per seed; "
        f"−1 ± {SLOPE_TOL:g} is O(1/|B|)); uncorrected {_seeds_text(raw)}, bent by the factor (n − |B|)/(n − 1) "
        "that makes the variance 0 at |B| = n")
    measurement = (f"E‖g_B − g‖² at the initial point of an MLP (depth 3), |B| = {min(bs)} … {max(bs)}, "
                   f"{runs[0].spec.kwargs('probe')['draws']} minibatches per |B|; log–log slope {fmt(c_mean)} "
                   f"(mean over {len(runs)} seeds); measured within {max(worst):.1%} of the exact value at every |B|")
    panels = {"E‖g_B − g‖²": {}, "E‖g_B − g‖² · (n − 1)/(n − |B|)": {}}
    xs = runs[0].probes[0]["batch_sizes"]
    pr = [r.probes[0] for r in runs]
    n = pr[0]["n"]
    panels["E‖g_B − g‖²"]["measured (minibatch backward passes)"] = (xs, [p["measured"] for p in pr])
    panels["E‖g_B − g‖²"]["exact: tr Σ/|B| · (n − |B|)/(n − 1)"] = (xs, [p["exact"] for p in pr])
    sel = [i for i, b in enumerate(xs) if b < n]
    panels["E‖g_B − g‖² · (n − 1)/(n − |B|)"]["measured, corrected"] = (
        [xs[i] for i in sel], [[p["measured"][i] * (n - 1) / (n - xs[i]) for i in sel] for p in pr])
    panels["E‖g_B − g‖² · (n − 1)/(n − |B|)"]["tr Σ / |B| (slope −1)"] = (
        [xs[i] for i in sel], [[p["trace_sigma"] / xs[i] for i in sel] for p in pr])
    path = _draw(out_dir, plots.curves, panels, "p1_grad_variance.png", xlabel="batch size |B|", ylabel="E‖g_B − g‖²",
                        logx=True, logy=True, suptitle="Gradient noise against batch size (at initialisation)")
    return Panel(1, title, S1, measurement, verdict,
                 [(path, "Minibatch gradient variance against |B| (log–log), measured and exact; right: divided "
                         "by the finite-population factor. Line: mean; band: min–max over seeds.")],
                 [(["seed", "n", "tr Σ", "slope", "slope, corrected", "max |measured/exact − 1|"], rows)],
                 f"holds when every seed's corrected slope is within ±{SLOPE_TOL:g} of −1")


# ---------------------------------------------------------------- 2: small batches against GD
S2 = "“… the optimal batch size is usually quite small (and O(1))”, each update costing O(|B|)"


def _batch_label(spec: RunSpec, n: int | None) -> str:
    return "full batch (GD)" if n is not None and spec.batch_size >= n else f"|B| = {spec.batch_size}"


def panel_batch(records: Sequence[Record], out_dir: Path) -> Panel:
    title = "Noisy steps against accurate steps"
    runs = _finished(records)
    if not runs:
        return _empty(2, title, S2)
    n = runs[0].info.get("n_train")
    best = {}
    rows = []
    for b, rs in sorted(group(runs, lambda r: r.spec.batch_size).items()):
        by_lr = group(rs, lambda r: r.spec.lr)
        means = {lr: mean([_final(r) for r in g]) for lr, g in by_lr.items()}
        lr = min(sorted(means), key=lambda k: means[k])
        best[b] = (lr, sorted(by_lr[lr], key=lambda r: r.spec.seed))
        rows.append([_batch_label(rs[0].spec, n), ", ".join(f"{k:g}: {fmt(v)}" for k, v in sorted(means.items())),
                     fmt_lr(lr), _seeds_text([_final(r) for r in best[b][1]])])
    order = sorted(best)
    finals = {b: mean([_final(r) for r in best[b][1]]) for b in order}
    winner = min(order, key=lambda b: finals[b])
    label = lambda b: _batch_label(best[b][1][0].spec, n)  # noqa: E731
    if winner == order[0]:
        verdict = f"holds: the smallest batch ({label(winner)}) ends lowest"
    elif winner != order[-1]:
        verdict = f"partly: {label(winner)} ends lowest, not the smallest batch"
    else:
        verdict = "does not hold: full-batch gradient descent ends lowest"
    verdict += " at equal examples processed (" + "; ".join(f"{label(b)} {fmt(finals[b])}" for b in order) + ")"
    measurement = (f"final training loss after {best[order[0]][1][0].spec.epochs} epochs ({n} examples each) at "
                   "each batch size's best η (mean over seeds)")
    lines = {f"{label(b)}, η = {fmt_lr(best[b][0])}": _curve(best[b][1], "train_loss", "epoch", n or 1) for b in order}
    path = _draw(out_dir, plots.curves, {"training loss": lines}, "p2_batch.png", xlabel="examples processed",
                        ylabel="training loss", logy=True, suptitle="Minibatch SGD against full-batch GD, equal compute")
    return Panel(2, title, S2, measurement, verdict,
                 [(path, "Training loss (full pass, eval mode) against examples processed, each batch size at its "
                         "best η. Line: mean; band: min–max over seeds.")],
                 [(["batch", "mean final training loss per η", "best η", "per seed at best η"], rows)],
                 "the batch size with the lowest mean final training loss at its best η; holds when that is the smallest")


# --------------------------------------------------------------------------------- 3: Robbins–Monro
S3 = ("“SGD also converges … for any batch size if the step sizes satisfy the Robbins–Monro conditions "
      "Σα_t = ∞, Σα_t² < ∞ … a traditional choice would be α_t = a/(b + t)”")


def schedule_label(spec: RunSpec) -> str:
    if spec.schedule == "constant":
        return "constant η"
    p = spec.kwargs("schedule").get("power", 1.0)
    return "a/(b + t)" if p == 1 else f"a/(b + t)^{p:g}"


EXPECTED = {"constant η": ("noise floor",), "a/(b + t)": ("still converging", "converged"),
            "a/(b + t)^2": ("stopped short",)}


def last_doubling(losses: Sequence[float]) -> tuple[float, float]:
    """(D, TV) of the training losses over the last doubling of the run (evaluations ⌊T/2⌋ … T):
    the net decrease D = L(T/2) − L(T) and the total variation TV = Σ|L(e) − L(e − 1)|, both relative
    to L(T/2)."""
    T = len(losses) - 1
    part = losses[T // 2:]
    ref = part[0]
    return (part[0] - part[-1]) / ref, sum(abs(b - a) for a, b in zip(part, part[1:])) / ref


def classify_tail(d: float, tv: float, final: float, lowest: float) -> str:
    """The rule of panel 3, on the last doubling: *noise floor* when the loss moves more than twice its
    net decrease (and more than FLAT); *stopped short* when its final loss is more than SHORT above the
    lowest schedule's (relative gap g) and it fell by less than g/2 over the whole doubling (at that pace
    it does not close the gap); *still converging* when it fell by more than FLAT; else *converged*."""
    if tv > FLAT and tv > 2 * max(d, 0.0):
        return "noise floor"
    gap = (final - lowest) / final if final > 0 else 0.0
    if gap > SHORT and d < gap / 2:
        return "stopped short"
    if d > FLAT:
        return "still converging"
    return "converged"


def panel_rm(records: Sequence[Record], out_dir: Path) -> Panel:
    title = "Robbins–Monro step sizes"
    runs = [r for r in _finished(records) if r.status == "ok"]
    if not runs:
        return _empty(3, title, S3)
    by = group(runs, lambda r: schedule_label(r.spec))
    finals = {k: mean([_final(r) for r in rs]) for k, rs in by.items()}
    lowest = min(finals.values())
    classes, rows = {}, []
    for k in sorted(by, key=lambda k: list(EXPECTED).index(k) if k in EXPECTED else 9):
        rs = sorted(by[k], key=lambda r: r.spec.seed)
        tails = [last_doubling([float(h["train_loss"]) for h in r.history]) for r in rs]
        d, tv = mean([t[0] for t in tails]), mean([t[1] for t in tails])
        classes[k] = classify_tail(d, tv, finals[k], lowest)
        s = rs[0].spec
        total = s.epochs * -(-int(rs[0].info.get("n_train") or 0) // s.batch_size)
        alphas = [s.lr * lr_factor(s.schedule, t, total, **s.kwargs("schedule")) for t in range(total)]
        rows.append([k, fmt(sum(alphas), 1), fmt(sum(a * a for a in alphas), 2), fmt(alphas[-1], 5),
                     _seeds_text([_final(r) for r in rs], 4), f"{d:+.2%}", f"{tv:.2%}", classes[k]])
    ok = [k for k in classes if k in EXPECTED and classes[k] in EXPECTED[k]]
    verdict = ("holds" if len(ok) == len(classes) == len(EXPECTED) else "partly" if ok else "does not hold") + ": " + \
        "; ".join(f"{k} {v}" + ("" if k in ok else f" (the lecture: {' or '.join(EXPECTED.get(k, ('?',)))})")
                  for k, v in classes.items())
    s = runs[0].spec
    b = next((r.spec.kwargs("schedule")["b"] for r in runs if r.spec.schedule != "constant"), None)
    measurement = (f"logistic regression, batch {s.batch_size}, η₀ = {s.lr:g}, b = {fmt_lr(b)} steps, L2 {s.weight_decay:g}, {s.epochs} epochs: the training loss over the last doubling of the run")
    panels = {"training loss": {}, "validation loss": {}}
    for k in classes:
        panels["training loss"][k] = _curve(by[k], "train_loss")
        panels["validation loss"][k] = _curve(by[k], "val_loss")
    path = _draw(out_dir, plots.curves, panels, "p3_robbins_monro.png", xlabel="optimiser step", ylabel="loss", logy=True,
                        suptitle="Constant η against a/(b + t) and a/(b + t)²")
    return Panel(3, title, S3, measurement, verdict,
                 [(path, "Training and validation loss of logistic regression against the optimiser step (log y). "
                         "Line: mean; band: min–max over seeds.")],
                 [(["schedule", "Σα", "Σα²", "last α", "final training loss per seed", "net decrease, last doubling",
                    "total variation, last doubling", "class"], rows)],
                 f"over the last doubling of each run (mean over seeds): noise floor when the training loss moves (total "
                 f"variation) more than twice its net decrease and more than {FLAT:.0%}; stopped short when its final "
                 f"loss is more than {SHORT:.0%} above the lowest schedule's (a relative gap g) and it fell by less than "
                 f"g/2 over the doubling; still converging when it fell by more than {FLAT:.0%}; else converged. Holds when constant "
                 "η sits at a noise floor, a/(b + t) converges (or still is) and a/(b + t)² stops short")


# ------------------------------------------------------------------------------------ 4: momentum
S4 = ("“Vanilla SGD can be susceptible to moving extremely slowly through valleys … Momentum mitigates this … "
      "can also help to reduce noise and allow larger learning rates”")


def _momentum_label(spec: RunSpec) -> str:
    return "momentum β = 0.9 (EMA form)" if spec.kwargs("optimizer").get("momentum") else "plain SGD"


def panel_momentum(records: Sequence[Record], out_dir: Path) -> Panel:
    title = "Momentum"
    runs = _finished(records)
    if not runs:
        return _empty(4, title, S4)
    by = group(runs, lambda r: _momentum_label(r.spec))
    info, rows, lines, failed = {}, [], {}, {}
    for k in ("plain SGD", "momentum β = 0.9 (EMA form)"):
        if k not in by:
            continue
        by_lr = {lr: sorted(g, key=lambda r: r.spec.seed) for lr, g in group(by[k], lambda r: r.spec.lr).items()}
        means = {lr: mean([_final(r) for r in g]) for lr, g in by_lr.items()}
        best = min(sorted(means), key=lambda lr: means[lr])
        trains = [lr for lr, g in by_lr.items()
                  if all(r.status == "ok" and _final(r) < TRAINS * float(r.history[0]["train_loss"]) for r in g)]
        info[k] = (best, means[best], max(trains) if trains else None, [_final(r) for r in by_lr[best]])
        rows.append([k, ", ".join(f"{lr:g}: {fmt(v)}" for lr, v in sorted(means.items())), fmt_lr(best),
                     _seeds_text(info[k][3]), fmt_lr(info[k][2])])
        lines[k] = {lr: [_final(r) if math.isfinite(_final(r)) else math.nan for r in g] for lr, g in by_lr.items()}
        failed[k] = [lr for lr, g in by_lr.items() if all(r.status == "diverged" for r in g)]
    if len(info) < 2:
        return Panel(4, title, S4, "only one method finished", "not measured", [], [(["method", "", "", "", ""], rows)], "")
    p, m = info["plain SGD"], info["momentum β = 0.9 (EMA form)"]
    lower = max(m[3]) < min(p[3])
    larger = m[0] > p[0]
    verdict = ("holds" if lower and larger else "partly" if lower or larger else "does not hold") + (
        f": best final training loss {fmt(m[1])} with momentum vs {fmt(p[1])} without "
        f"({'every seed lower' if lower else 'not lower on every seed'}); best η {fmt_lr(m[0])} vs {fmt_lr(p[0])} "
        f"({'larger' if larger else 'not larger'}); largest η that trains {fmt_lr(m[2])} vs {fmt_lr(p[2])}")
    s = runs[0].spec
    measurement = f"MLP (depth 3), batch {s.batch_size}, {s.epochs} epochs; final training loss on an η grid"
    path = _draw(out_dir, plots.metric_vs, {"final training loss": lines}, "p4_momentum.png", xlabel="learning rate η",
                           ylabel="final training loss", logx=True, failed={"final training loss": failed},
                           suptitle="SGD with and without momentum (EMA form)")
    return Panel(4, title, S4, measurement, verdict,
                 [(path, "Final training loss against η (log x). Line: mean; band: min–max over seeds; × on the "
                         "axis: every seed diverged.")],
                 [(["method", "mean final training loss per η", "best η", "per seed at best η", "largest η that trains"],
                   rows)],
                 f"holds when momentum's best final training loss is below plain SGD's on every seed and its best η is "
                 f"larger; a run trains when it ends below {TRAINS:.0%} of its initial training loss")


# ------------------------------------------------------------------------------ 5: bias correction
S5 = ("Adam: “Δ̃_t = Δ_t/(1 − β₁ᵗ), Ṽ_t = V_t/(1 − β₂ᵗ) … Both Δ_0 and V_0 are initialized at 0”: the "
      "correction undoes the averages' bias towards 0 in the first steps")


def panel_adam(records: Sequence[Record], out_dir: Path) -> Panel:
    title = "Adam's bias correction"
    runs = _finished(records)
    if not runs:
        return _empty(5, title, S5)
    cells = group(runs, lambda r: (r.spec.lr, r.spec.optimizer))
    rows, panels, differs = [], {}, []
    for lr in sorted({r.spec.lr for r in runs}):
        a, b = cells.get((lr, "adam")), cells.get((lr, "adam_nobc"))
        if not a or not b:
            continue
        curve_a = [[_nan(h["train_loss"]) for h in r.history] for r in a]
        curve_b = [[_nan(h["train_loss"]) for h in r.history] for r in b]
        steps = [h["step"] for h in max(a, key=lambda r: len(r.history)).history]
        n = min(min(len(c) for c in curve_a), min(len(c) for c in curve_b))
        # a point where every seed of one is below every seed of the other: the curves clearly differ
        apart = [i for i in range(1, n) if max(c[i] for c in curve_a) < min(c[i] for c in curve_b)
                 or max(c[i] for c in curve_b) < min(c[i] for c in curve_a)]
        early = [i for i in range(1, n) if steps[i] <= steps[n - 1] / 3]
        ea = mean([mean([c[i] for i in early]) for c in curve_a]) if early else math.nan
        eb = mean([mean([c[i] for i in early]) for c in curve_b]) if early else math.nan
        fa = mean([_final(r) for r in a])
        fb = mean([_final(r) for r in b])
        if apart:
            differs.append(lr)
        rows.append([fmt_lr(lr), fmt(ea), fmt(eb), fmt(fa), fmt(fb),
                     ", ".join(str(steps[i]) for i in apart[:8]) + (" …" if len(apart) > 8 else "") or "none",
                     sum(r.status == "diverged" for r in b)])
        panels[f"η = {fmt_lr(lr)}"] = {"adam (bias-corrected)": (steps, curve_a), "adam_nobc (no correction)": (steps, curve_b)}
    lrs = sorted({r.spec.lr for r in runs})
    verdict = ("holds" if len(differs) == len(lrs) else "partly" if differs else "does not hold") + (
        f": the loss curves are clearly apart at {len(differs)} of the {len(lrs)} η ({', '.join(map(fmt_lr, differs)) or 'none'}); "
        + "; ".join(f"η = {r[0]}: first-third mean loss {r[1]} with vs {r[2]} without, at the end {r[3]} vs {r[4]}" for r in rows))
    s = runs[0].spec
    measurement = (f"MLP (depth 3), batch {s.batch_size}, β = (0.9, 0.999): training loss every "
                   f"{s.kwargs('task')['eval_every']} steps over the first {s.steps} steps")
    path = _draw(out_dir, plots.curves, panels, "p5_adam_bias.png", xlabel="optimiser step", ylabel="training loss",
                        suptitle="Adam with and without bias correction, the first steps")
    return Panel(5, title, S5, measurement, verdict,
                 [(path, "Training loss (full pass) against the optimiser step, one panel per η. Line: mean; band: "
                         "min–max over seeds.")],
                 [(["η", "mean loss, first third, with", "without", "final, with", "without",
                    "steps where every seed of one is below every seed of the other", "diverged without"], rows)],
                 "holds when, at every η, the curves are apart (every seed of one below every seed of the other) at "
                 "some evaluation")


# -------------------------------------------------------------------------------- 6: initialisation
S6 = ("“We can avoid blow up or collapse by setting σ_ℓ² = O(1/d_{ℓ−1}) … Using σ_ℓ² = 1/d_{ℓ−1} exactly is "
      "known as Xavier initialization”; pre-activations should stay in a sensible region (order [−2, 2])")
INIT_ORDER = ("lecun", "default", "kaiming")
INIT_NAMES = {"lecun": "lecture's “Xavier” σ² = 1/d (code: lecun)", "default": "PyTorch default σ² = 1/(3d)",
              "kaiming": "Kaiming σ² = 2/d"}


def variance_class(ratio: float) -> str:
    return "collapses" if ratio < 1 / VAR_BAND else "blows up" if ratio > VAR_BAND else "kept"


def panel_init(records: Sequence[Record], out_dir: Path) -> Panel:
    title = "Initialisation"
    runs = [r for r in _finished(records) if r.probes]
    if not runs:
        return _empty(6, title, S6)
    by = group(runs, lambda r: (r.spec.kwargs("model")["activation"], r.spec.kwargs("model")["init"]))
    rows, var_panels, loss_panels, summary = [], {}, {}, {}
    for act in ("relu", "tanh"):
        for init in INIT_ORDER:
            rs = sorted(by.get((act, init), []), key=lambda r: r.spec.seed)
            if not rs:
                continue
            pv = [r.probes[0]["pre_var"] for r in rs]
            hidden = len(pv[0]) - 1  # the last Linear is the head
            ratio = math.exp(mean([math.log(v[hidden - 1] / v[0]) for v in pv]))
            max_std = max(math.sqrt(x) for v in pv for x in v[:hidden])
            trains = all(r.status == "ok" and _final(r) < TRAINS * float(r.history[0]["train_loss"]) for r in rs)
            summary[(act, init)] = (variance_class(ratio), trains)
            rows.append([act, INIT_NAMES[init], fmt(mean([v[0] for v in pv]), 3), f"{ratio:.3g}",
                         f"{ratio ** (1 / max(hidden - 1, 1)):.3f}", variance_class(ratio),
                         fmt(max_std, 2), _seeds_text([_final(r) for r in rs]),
                         _seeds_text([1 - _nan(r.final.get("test_acc")) for r in rs]), "yes" if trains else "no"])
            var_panels.setdefault(f"{act}: pre-activation variance", {})[INIT_NAMES[init]] = (
                list(range(1, len(pv[0]) + 1)), pv)
            loss_panels.setdefault(f"{act}: training loss", {})[INIT_NAMES[init]] = _curve(rs, "train_loss", "epoch")
    parts = []
    for act in ("relu", "tanh"):
        if (act, "lecun") in summary:
            cls, tr = summary[(act, "lecun")]
            parts.append(f"{act}: “Xavier” {cls}" + ("" if tr else ", does not train") + "; " +
                         ", ".join(f"{i} {summary[(act, i)][0]}" for i in INIT_ORDER if i != "lecun" and (act, i) in summary))
    held = [act for act in ("relu", "tanh") if summary.get((act, "lecun"), ("",))[0] == "kept"]
    verdict = ("holds" if len(held) == 2 else f"holds with {held[0]} only" if held else "does not hold") + \
        " (the variance of the last hidden layer's pre-activations against the first's): " + "; ".join(parts)
    depth = runs[0].spec.kwargs("model")["depth"]
    measurement = (f"MLP of {depth} Linear layers, width {runs[0].spec.kwargs('model')['width']}: variance of every "
                   "layer's pre-activations on 512 training examples at initialisation, then SGD+momentum")
    p1 = _draw(out_dir, plots.curves, var_panels, "p6_init_variance.png", xlabel="layer", ylabel="pre-activation variance",
                      logy=True, suptitle="Pre-activation variance per layer at initialisation")
    p2 = _draw(out_dir, plots.curves, loss_panels, "p6_init_training.png", xlabel="epoch", ylabel="training loss",
                      suptitle="The training that follows")
    return Panel(6, title, S6, measurement, verdict,
                 [(p1, "Variance of each Linear layer's output at initialisation (log y; the last point is the head). "
                       "Line: mean; band: min–max over seeds."),
                  (p2, "Training loss per epoch from each initialisation. Line: mean; band: min–max over seeds.")],
                 [(["activation", "initialisation", "first layer variance", "last/first hidden variance", "per layer", "class",
                    "largest pre-activation std", "final training loss per seed", "test error per seed", "trains"], rows)],
                 f"kept when the last hidden layer's pre-activation variance is within a factor {VAR_BAND:g} of the first's "
                 f"(geometric mean over seeds), else collapses/blows up; holds when “Xavier” keeps it for both activations")


# -------------------------------------------------------------------------------- 7: regularisation
S7 = ("“L2 regularization … is often known as weight decay as it equates to replacing θ_{t−1} with "
      "θ_{t−1}(1 − λα_t)”; dropout; “early stopping: … stop training when [the validation loss] starts increasing”")


def reg_label(spec: RunSpec) -> str:
    for label, (opt, okw, decays, extra) in REG_METHODS.items():
        mk = spec.kwargs("model")
        if (spec.optimizer == opt and spec.kwargs("optimizer") == okw and bool(decays) == (spec.weight_decay > 0)
                and ("dropout" in extra) == bool(mk.get("dropout")) and bool(extra.get("patience")) == (spec.patience > 0)):
            return label
    return "other"


def panel_reg(records: Sequence[Record], out_dir: Path) -> Panel:
    title = "Regularisation on a small training set"
    runs = _finished(records)
    if not runs:
        return _empty(7, title, S7)
    by = group(runs, lambda r: reg_label(r.spec))
    chosen: dict[str, list[Record]] = {}
    rows = []
    for label in REG_METHODS:
        if label not in by:
            continue
        cells = group(by[label], lambda r: r.spec.weight_decay)
        wd = min(sorted(cells), key=lambda w: mean([_final(r, "val_loss") for r in cells[w]]))
        rs = chosen[label] = sorted(cells[wd], key=lambda r: r.spec.seed)
        rows.append([label, fmt_lr(wd) if wd else "—", fmt(mean([_final(r) for r in rs]), 4),
                     fmt(mean([_final(r, "val_loss") for r in rs])),
                     _seeds_text([1 - _nan(r.final.get("test_acc")) for r in rs]),
                     fmt(mean([1 - _nan(r.final.get("test_acc")) for r in rs])),
                     ", ".join(str(r.final.get("best_epoch") or r.final.get("epochs_run")) for r in rs)])
    test_err = {k: [1 - _nan(r.final.get("test_acc")) for r in rs] for k, rs in chosen.items()}
    better, not_better = [], []
    for k in test_err:
        base = "Adam, none" if k.startswith("Adam") else "SGD+momentum, none" if "momentum" in k else None
        if base is None or k == base or base not in test_err:
            continue
        (better if mean(test_err[k]) < mean(test_err[base]) else not_better).append(
            f"{k} {fmt(mean(test_err[k]))} (vs {fmt(mean(test_err[base]))})")
    # the lecture's identity: plain SGD with L2 is SGD with decoupled decay
    eq = None
    a, b = by.get("plain SGD, L2 (coupled)"), by.get("plain SGDW (decoupled)")
    if a and b:
        pair = group(a + b, lambda r: (r.spec.weight_decay, r.spec.seed))
        gaps = []
        for rs in pair.values():
            if len(rs) == 2:
                h0, h1 = rs[0].history, rs[1].history
                gaps += [abs(x["train_loss"] - y["train_loss"]) / max(abs(x["train_loss"]), 1e-12) for x, y in zip(h0, h1)]
        eq = max(gaps) if gaps else None
    eq_text = ("not measured" if eq is None else
               f"{'holds' if eq < SAME else 'does not hold'} for plain SGD: L2 and θ(1 − λα) give training losses "
               f"within {eq:.1e} (relative) at every epoch (float rounding apart, the same steps)")
    verdict = (f"weight decay = L2: {eq_text}. Lower mean test error than without regularisation: "
               f"{'; '.join(better) or 'none'}; not lower: {'; '.join(not_better) or 'none'}")
    s = runs[0].spec
    n = runs[0].info.get("n_train")
    measurement = (f"MLP (depth 3, width {s.kwargs('model')['width']}) on {n} training examples, batch {s.batch_size}, "
                   f"up to {max(r.spec.epochs for r in runs)} epochs; λ chosen per method on the final validation loss; "
                   "the test error each run ends at (early stopping: at its best epoch)")
    panels = {"training loss": {}, "validation loss": {}}
    for k, rs in chosen.items():
        if k.startswith("plain"):
            continue
        panels["training loss"][k] = _curve(rs, "train_loss", "epoch")
        panels["validation loss"][k] = _curve(rs, "val_loss", "epoch")
    path = _draw(out_dir, plots.curves, panels, "p7_regularisation.png", xlabel="epoch", ylabel="loss", logy=True,
                        suptitle=f"Regularisation on {n} training examples")
    return Panel(7, title, S7, measurement, verdict,
                 [(path, "Training and validation loss per epoch, each method at its chosen λ (early stopping's curve "
                         "ends where it stopped). Line: mean; band: min–max over seeds.")],
                 [(["method", "λ", "final training loss", "final validation loss", "test error per seed",
                    "mean test error", "epoch ended at (per seed)"], rows)],
                 "each method's mean test error against its optimiser's run without regularisation; plain SGD's L2 and "
                 f"SGDW agree when their training losses are within {SAME:g} (relative) at every epoch: the two compute the "
                 "same step in a different order of float operations, and the rounding grows over the run")


ANALYSES = {1: panel_grad, 2: panel_batch, 3: panel_rm, 4: panel_momentum, 5: panel_adam, 6: panel_init, 7: panel_reg}


# ------------------------------------------------------------------------------------------ report
def load(store: Store, specs: Sequence[RunSpec] | None) -> list[Record]:
    if specs is not None:
        return store.records(specs=specs)
    return [r for k in range(1, PANELS + 1) for r in store.records(study=study_label(k))]


def panels(records: Sequence[Record], out_dir: Path) -> list[Panel]:
    by = group(records, lambda r: panel_of(r.spec))
    return [fn(by.get(k, []), out_dir) for k, fn in ANALYSES.items()]


def analyse(store: Store, out_dir: str | Path, specs: Sequence[RunSpec] | None = None,
            command: str | None = None) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = load(store, specs)
    rep = Report(TITLE)
    rep.para("Each panel quotes a statement of the lecture notes, measures it on scikit-learn's digits and states a "
             "verdict computed from the stored runs by the rule given under the panel. Seeds: "
             f"{', '.join(map(str, sorted({r.spec.seed for r in records}))) or 'none'}.")
    ps = panels(records, out_dir)
    rep.heading("Summary")
    rep.table(["#", "statement (lecture notes)", "measurement", "verdict (these runs)"],
              [(p.number, p.statement, p.measurement, p.verdict) for p in ps])
    for p in ps:
        rep.heading(f"{p.number}. {p.title}")
        rep.table(["", ""], [("statement", p.statement), ("measurement", p.measurement), ("verdict", p.verdict),
                             ("rule", p.rule or "—")])
        for path, caption in p.figures:
            rep.figure(path, caption, relative_to=out_dir)
        for headers, rows in p.details:
            rep.table(headers, rows)
    return finish_report(rep, out_dir, specs, records, command)


STUDY = Study(
    name=NAME, title=TITLE,
    description="the lecture notes' practice measured: gradient noise vs batch, SGD vs GD, Robbins–Monro, momentum, "
                "Adam's bias correction, initialisation, regularisation",
    configs=CONFIGS, build_grid=build_grid, analyse=analyse, quick_minutes=3,
)

__all__ = ["STUDY", "CONFIGS", "NAME", "analyse", "build_grid", "classify_tail", "grid", "last_doubling", "panel_of",
           "panels", "reg_label", "schedule_label", "slope", "variance_class"]
