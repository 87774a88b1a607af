"""Beyond the depth study: which of Fromage's descendants trains a deep plain MLP, and the geometry of
their steps in the language of relative trust.

The depth study's setting and budget (`depth.CONFIGS`, `depth.base_spec`: a plain ReLU MLP, the
embedded MNIST subset, batch 250, lr × 0.95 per epoch, both initialisations, the same depths) with six
optimisers, each on a small learning-rate grid (`LRS`, stated in the report):

- Fromage (one relative step η per layer, Frobenius norm);
- the depth-aware Fromage (`fromage_budget`, lr = τ): η = (1+τ)^(1/L) − 1, so that every step's
  deep relative trust Π_l(1+η) − 1 is τ whatever the depth;
- Nero (per-neuron relative steps, weights on a balanced sphere); Muon (torch's orthogonalised step
  for the hidden matrices, AdamW at its default lr 1e-3 for the head and biases); LAMB (Adam's
  direction scaled by a Frobenius trust ratio); Adam.

The geometry of a step (ClassifyTask's ``monitor_every``, a `TrustMonitor` with exact σ₁ and
``update_spectral``): for every layer, the median over training (at step 1 and every k-th step) of
the relative Frobenius change ‖ΔW‖_F/‖W‖_F and of the relative spectral change ‖ΔW‖₂/‖W‖₂ (top
singular value of the update over that of the weights before it), and the median over every step of
the deep relative trust of the layers up to each layer, Π_{k≤l}(1+‖ΔW_k‖_F/‖W_k‖_F) − 1 (its last
entry: the whole network's). The report relates them, in computed sentences, to which optimisers
train at the deepest depth.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from reltrust.workbench import plots
from reltrust.workbench.report import Report, fmt_lr
from reltrust.workbench.runner import sweep
from reltrust.workbench.spec import RunSpec
from reltrust.workbench.store import Record, Store, atomic_write_text
from reltrust.workbench.studies import depth
from reltrust.workbench.studies._common import Study, chance_level, finish_report, load_records

NAME = "depth-beyond"
TITLE = "Beyond the depth study: Fromage's descendants on deep plain MLPs, and the geometry of their steps"
METHODS = ("fromage", "fromage_budget", "nero", "muon", "lamb", "adam")
TRAINS = depth.TRAINS_THRESHOLD

# Learning rates per size (fromage_budget: τ). Quick: two each, around the values that train best in
# the depth study at depth 50 (Fromage, Adam) or the methods' usual defaults (Nero 0.01), except Muon:
# one, its usual 0.02. torch's Muon runs its Newton–Schulz iterations in bfloat16, which costs this CPU
# about 7× the step of any other method here (84 s against 12 s per depth-50 run); its second quick lr,
# 0.1, trained nothing beyond depth 2 under Kaiming in the first quick run, and kept the quick grid over
# 15 minutes (14 min 53 s on 2 idle cores with it, 120 runs).
LRS = {
    "full": {"fromage": (0.1, 0.01, 0.001), "fromage_budget": (1.0, 0.3, 0.1), "nero": (0.01, 0.003, 0.001),
             "muon": (0.1, 0.05, 0.02), "lamb": (0.01, 0.003, 0.001), "adam": (1e-2, 1e-3, 1e-4)},
    "quick": {"fromage": (0.01, 0.001), "fromage_budget": (1.0, 0.1), "nero": (0.01, 0.001),
              "muon": (0.02,), "lamb": (0.01, 0.001), "adam": (1e-3, 1e-4)},
    "tiny": {m: (0.01,) for m in METHODS},
}


@dataclasses.dataclass(frozen=True)
class Config:
    depth: depth.Config  # the depth study's data, depths, width, epochs, batch and seeds
    lrs: tuple[tuple[str, tuple[float, ...]], ...]
    monitor_every: int

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.depth.seeds


# The depth study's configs (tiny: its deeper depth only, to keep the tests short); σ₁ and ‖ΔW‖₂ at step 1
# and every k-th step.
CONFIGS = {
    "full": Config(depth.CONFIGS["full"], tuple(LRS["full"].items()), 100),
    "quick": Config(depth.CONFIGS["quick"], tuple(LRS["quick"].items()), 30),
    "tiny": Config(dataclasses.replace(depth.CONFIGS["tiny"], depths=depth.CONFIGS["tiny"].depths[-1:]),
                   tuple(LRS["tiny"].items()), 2),
}


def build_grid(config: Config, seeds: Sequence[int]) -> list[RunSpec]:
    """Initialisations × depths × the six optimisers × their lr grid × seeds, each run monitored."""
    base = depth.base_spec(config.depth, study=NAME).replace(task_kwargs={"monitor_every": config.monitor_every})
    lrs = dict(config.lrs)
    return sweep(base, models=depth.model_variants(config.depth), optimizers={m: {} for m in lrs}, lrs=lrs, seeds=seeds)


def grid(quick: bool = False, *, seeds: Sequence[int] | None = None, tiny: bool = False) -> list[RunSpec]:
    return STUDY.grid(quick, seeds=seeds, tiny=tiny)


# ------------------------------------------------------------------------------------------ analysis
GEOMETRY = (("relative_update", "relative Frobenius change ‖ΔW‖_F/‖W‖_F"),
            ("relative_spectral_update", "relative spectral change ‖ΔW‖₂/‖W‖₂"),
            ("deep_relative_trust_by_layer", "deep relative trust of layers 1..l"))


def _nan(v) -> float:
    return math.nan if v is None else float(v)


def _median(xs: Sequence[float]) -> float:
    xs = [x for x in xs if math.isfinite(x)]
    return statistics.median(xs) if xs else math.nan


def geometry(row: dict) -> dict | None:
    """The geometry of the best-lr runs of a summary row: per layer the median over seeds of each
    quantity of `GEOMETRY`, and summaries across layers; None when no run has a trace."""
    best = row.get("best")
    traces = [r.info["trust"] for r in (best.records if best else []) if r.info.get("trust") and r.status in ("ok", "diverged")]
    if not traces:
        return None
    out = {}
    for key, _ in GEOMETRY:
        per_seed = [[_nan(v) for v in t[key]] for t in traces]
        out[key] = [_median(vals) if len(vals) > 1 else vals[0] for vals in zip(*per_seed)]
    rel, spec = out["relative_update"], out["relative_spectral_update"]
    finite = [x for x in rel if math.isfinite(x) and x > 0]
    out["drt"] = _median([_nan(t["deep_relative_trust"]) for t in traces])
    out["frob_median"] = _median(rel)
    out["spec_median"] = _median(spec)
    out["spread"] = max(finite) / min(finite) if finite else math.nan  # largest over smallest layer
    out["spec_over_frob"] = _median([s / f for s, f in zip(spec, rel) if f > 0 and math.isfinite(s / f)])
    return out


def _g(x: float, digits: int = 2) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.{digits}g}"


def _range(xs: Sequence[float]) -> str:
    xs = [x for x in xs if math.isfinite(x)]
    return "n/a" if not xs else (_g(xs[0]) if len(xs) == 1 else f"{_g(min(xs))}–{_g(max(xs))}")


def relation(name: str, trained: dict[str, float], failed: dict[str, float]) -> str:
    """Does `name` (a value per method) separate the methods that train from those that do not?"""
    t = {m: v for m, v in trained.items() if math.isfinite(v)}
    f = {m: v for m, v in failed.items() if math.isfinite(v)}
    if not t or not f:
        return f"{name}: every method with a value {'trains' if t else 'fails'} here, so it separates nothing ({_range(list((t or f).values()))})."
    if max(f.values()) < min(t.values()):
        how = "larger than that of every one that does not"
    elif min(f.values()) > max(t.values()):
        how = "smaller than that of every one that does not"
    else:
        return (f"{name} does not separate them: {_range(list(t.values()))} among those that train, "
                f"{_range(list(f.values()))} among those that do not.")
    return (f"{name} separates them: that of every method that trains ({_range(list(t.values()))}) is {how} "
            f"({_range(list(f.values()))}).")


def verdicts(rows: Sequence[dict]) -> list[str]:
    """Per initialisation, at the deepest depth: which methods train, and whether each quantity of the
    geometry separates those that do from those that do not. Computed from the rows."""
    out = []
    for init in [i for i in depth.INITS if any(r["init"] == i for r in rows)]:
        dmax = max(r["depth"] for r in rows if r["init"] == init)
        deep = [r for r in rows if r["init"] == init and r["depth"] == dmax and r["train_acc"] is not None]
        if not deep:
            continue
        yes = [r for r in deep if r["train_acc"] >= TRAINS]
        no = [r for r in deep if r["train_acc"] < TRAINS]
        names = lambda rs: ", ".join(f"{depth._label(r['optimizer'])} ({r['train_acc']:.2f})" for r in rs) or "none"  # noqa: E731
        out.append(f"Depth {dmax}, {init} init: trains (best final train accuracy ≥ {TRAINS:.2f}): {names(yes)}; "
                   f"does not: {names(no)}.")
        geo = {r["optimizer"]: geometry(r) for r in deep}
        for label, key in (("The median per-step deep relative trust", "drt"),
                           ("The median relative Frobenius change per layer", "frob_median"),
                           ("The median relative spectral change per layer", "spec_median"),
                           ("The spread of the relative Frobenius change across layers (largest/smallest)", "spread")):
            pick = lambda rs: {r["optimizer"]: (geo[r["optimizer"]] or {}).get(key, math.nan) for r in rs}  # noqa: E731
            out.append(f"Depth {dmax}, {init} init: " + relation(label, pick(yes), pick(no)))
    return out


def _write_geometry_csv(rows: Sequence[dict], path: Path) -> Path:
    buf = io.StringIO()
    cols = ["init", "depth", "optimizer", "best_lr", "train_acc", "deep_relative_trust", "relative_update_median",
            "relative_spectral_update_median", "layer_spread", "spectral_over_frobenius", "relative_update",
            "relative_spectral_update", "deep_relative_trust_by_layer"]
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        g = geometry(r)
        if g is None:
            continue
        w.writerow([r["init"], r["depth"], r["optimizer"], r["best_lr"], r["train_acc"], g["drt"], g["frob_median"],
                    g["spec_median"], g["spread"], g["spec_over_frob"],
                    *(" ".join(repr(x) for x in g[k]) for k, _ in GEOMETRY)])
    return atomic_write_text(path, buf.getvalue())


def analyse(store: Store, out_dir: str | Path, specs: Sequence[RunSpec] | None = None,
            command: str | None = None) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = load_records(store, NAME, specs)
    rows = depth.summarise(records)
    chance = chance_level(records)
    depth.write_summary_csv(rows, out_dir / "depth_beyond_summary.csv")
    _write_geometry_csv(rows, out_dir / "geometry.csv")

    rep = Report(TITLE)
    rep.para(
        "Which of Fromage's descendants trains a deep plain MLP (no normalisation) at the depth study's quick "
        "budget, and what their steps look like in relative trust. Metric: final train accuracy (eval mode, "
        "whole training split, after the last epoch), best over each optimiser's learning rates (mean over "
        f"seeds at the best lr); \"trains\" = at least {TRAINS:.2f}.")
    used = list(specs) if specs is not None else [r.spec for r in records]
    lrs = {}
    for s in used:
        lrs.setdefault(s.optimizer, set()).add(s.lr)
    if lrs:
        rep.para("Learning rates (fromage_budget, \"Fromage-τ\": the budget τ = the deep relative trust of every "
                 "step over all the tensors it updates, biases included, decayed by the schedule like an lr; the "
                 "monitor measures the weight matrices only, so its deep relative trust is below τ): " + "; ".join(
                     f"{depth._label(m)} {', '.join(fmt_lr(x) for x in sorted(v))}"
                     for m, v in sorted(lrs.items(), key=lambda kv: depth._opt_order(kv[0]))) + ".")
    depth.paper_vs_here(rep, used, records)
    rep.heading("What trains where")
    if not rows:
        rep.para("No runs are recorded yet: nothing to report.")
    else:
        rep.bullets(depth.findings(rows, chance))
        rep.heading("The geometry of a step, against training at depth")
        rep.bullets(verdicts(rows))
        _geometry_table(rep, rows)

    if rows:
        for path, caption in depth.accuracy_figures(records, rows, chance, out_dir) + _geometry_figures(rows, out_dir):
            rep.figure(path, caption, relative_to=out_dir)
        depth.accuracy_tables(rep, rows)
        rep.para("Every run is in `results.csv`; the per-point summary in `depth_beyond_summary.csv`; the "
                 "per-layer geometry of the best-lr runs in `geometry.csv`; per-epoch histories and the "
                 "monitor's summaries (info.trust) in `results.json` and `results.sqlite`.")
    return finish_report(rep, out_dir, specs, records, command)


def _geometry_table(rep: Report, rows: Sequence[dict]) -> None:
    body = []
    for init in depth.INITS:
        rs = [r for r in rows if r["init"] == init]
        if not rs:
            continue
        dmax = max(r["depth"] for r in rs)
        for r in sorted((r for r in rs if r["depth"] == dmax), key=lambda r: depth._opt_order(r["optimizer"])):
            g = geometry(r)
            if g is None or r["train_acc"] is None:
                continue
            body.append([init, dmax, depth._label(r["optimizer"]), fmt_lr(r["best_lr"]), f"{r['train_acc']:.3f}",
                         _g(g["drt"], 3), _g(g["frob_median"], 3), _g(g["spec_median"], 3), _g(g["spread"], 3),
                         _g(g["spec_over_frob"], 3)])
    if body:
        rep.para("At the deepest depth, the best-lr run of each optimiser (medians over training; across layers "
                 "for the per-layer quantities):")
        rep.table(["init", "depth", "optimiser", "best lr", "train acc", "deep relative trust / step",
                   "‖ΔW‖_F/‖W‖_F", "‖ΔW‖₂/‖W‖₂", "layer spread (max/min)", "spectral / Frobenius"], body)


def _geometry_figures(rows: Sequence[dict], out_dir: Path) -> list[tuple[Path, str]]:
    """A figure per initialisation: a panel per optimiser, the three quantities of `GEOMETRY` against
    the layer, at the best lr of the deepest depth."""
    out = []
    opts = sorted({r["optimizer"] for r in rows}, key=depth._opt_order)
    for init in [i for i in depth.INITS if any(r["init"] == i for r in rows)]:
        panels, dmax = {}, max(r["depth"] for r in rows if r["init"] == init)
        for opt in opts:
            r = next((r for r in rows if r["init"] == init and r["optimizer"] == opt and r["depth"] == dmax), None)
            g = geometry(r) if r is not None else None
            if g is None:
                continue
            lines = {}
            for key, what in GEOMETRY:
                ys = [y if math.isfinite(y) and y > 0 else math.nan for y in g[key]]
                lines[what] = (list(range(1, len(ys) + 1)), [ys])
            acc = "n/a" if r["train_acc"] is None else f"{r['train_acc']:.2f}"
            panels[f"{depth._label(opt)} ({_lr_word(opt)} {fmt_lr(r['best_lr'])}): train acc {acc}"] = lines
        if not panels:
            continue
        p = plots.curves(panels, out_dir / f"geometry_{init}.png", xlabel="layer (1 = input, last = head)",
                         ylabel="median over training", logy=True, suptitle=f"{init} init, depth {dmax}")
        out.append((p, f"{init} init, depth {dmax}: per layer, the relative Frobenius change ‖ΔW‖_F/‖W‖_F, the "
                       "relative spectral change ‖ΔW‖₂/‖W‖₂ and the deep relative trust of the layers up to it, "
                       "Π_{k≤l}(1+‖ΔW_k‖_F/‖W_k‖_F) − 1, each the median over training, at the best lr; one panel "
                       "per optimiser (log scale)."))
    return out


def _lr_word(opt: str) -> str:
    return "τ" if opt == "fromage_budget" else "lr"


STUDY = Study(
    name=NAME, title=TITLE,
    description="which of Fromage, depth-aware Fromage, Nero, Muon, LAMB, Adam train a deep plain MLP; the relative size of their steps per layer",
    configs=CONFIGS, build_grid=build_grid, analyse=analyse, quick_minutes=9,
)

__all__ = ["STUDY", "NAME", "METHODS", "LRS", "CONFIGS", "build_grid", "grid", "analyse", "geometry", "verdicts",
           "relation"]
