"""The trust study (Bernstein et al. 2020, Figure 2): loss and gradient along a relative slice.

Paper setting: MLPs on MNIST with 2 and 16 Linear layers (and a residual 16-layer one), trained
briefly with Fromage (lr 0.01, batch 250); at checkpoints, the full-batch gradient, then every layer
moved by relative size η ∈ [0, 0.1] along −‖W‖g/‖g‖; loss and relative gradient change against η.
Claim: both grow quasi-exponentially in η for the deep network, only mildly for the shallow one.

Here: the embedded 5,000-image MNIST (4,500 train); the probe is `reltrust.trust.perturbation_probe`
(weights only — biases stay put — on a copy of the model in eval mode), run on a fixed set of training
examples (all of them in the full study) at the end of chosen epochs (epoch 0 = initialisation). The
residual net is `MLP(residual=True)`: pre-activation blocks h ← h + β·W·relu(h) with β = 1/√(blocks).

The report measures "growth" by numbers, not by eye: the value at the largest η, and the factor by
which it grows when η doubles from η_max/2 to η_max (2 for straight-line growth, more for growth that
bends upwards, as an exponential does).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

from reltrust.workbench import plots
from reltrust.workbench.runner import sweep
from reltrust.workbench.report import Report, fmt
from reltrust.workbench.spec import RunSpec
from reltrust.workbench.store import Record, Store
from reltrust.workbench.studies._common import Study, finish_report, load_records

NAME = "trust"
TITLE = "Trust study: loss and gradient along a relative perturbation of every layer"

METRICS = (
    ("loss", "loss"),
    ("relative_gradient_change", "relative gradient change"),
    ("relative_function_change", "relative function change"),
)

@dataclasses.dataclass(frozen=True)
class Config:
    dataset: str
    models: tuple[tuple[int, bool], ...]  # (depth, residual)
    width: int
    epochs: int
    probe_epochs: tuple[int, ...]
    n_etas: int
    probe_batch: int
    seeds: tuple[int, ...]


CONFIGS = {
    "full": Config("mnist", ((2, False), (16, False), (16, True)), 784, 10, (0, 1, 2, 5, 10), 21, 4500, (0, 1, 2, 3, 4)),
    "quick": Config("mnist", ((2, False), (16, False), (16, True)), 256, 3, (0, 1, 3), 21, 1000, (0, 1, 2)),
    "tiny": Config("mnist", ((2, False), (4, False), (4, True)), 16, 1, (0, 1), 5, 200, (0,)),
}
ETA_MAX = 0.1


def build_grid(config: Config, seeds: Sequence[int]) -> list[RunSpec]:
    """Models (depth 2, 16, residual 16) × seeds, trained with Fromage lr 0.01, probed at checkpoints."""
    etas = [round(ETA_MAX * i / (config.n_etas - 1), 10) for i in range(config.n_etas)]
    base = RunSpec(study=NAME, dataset=config.dataset, model="mlp", optimizer="fromage", lr=0.01,
                   epochs=config.epochs, batch_size=250,
                   model_kwargs={"width": config.width, "init": "default"},
                   probe={"name": "perturbation", "at_epochs": list(config.probe_epochs), "etas": etas,
                          "batch": config.probe_batch})
    return sweep(base, models=[{"depth": d, "residual": r} for d, r in config.models], seeds=seeds)


def grid(quick: bool = False, *, seeds: Sequence[int] | None = None, tiny: bool = False) -> list[RunSpec]:
    """The study's runs (see `build_grid`) for the quick, full (default) or tiny config."""
    return STUDY.grid(quick, seeds=seeds, tiny=tiny)


# ------------------------------------------------------------------------------------------ analysis
def model_label(spec: RunSpec) -> str:
    mk = spec.kwargs("model")
    return f"{'residual ' if mk.get('residual') else ''}depth {mk['depth']}"


def _order(label: str) -> tuple:
    return ("residual" in label, int(label.split()[-1]))


def curves_by(records: Sequence[Record]) -> dict[tuple[str, int], dict]:
    """(model label, checkpoint epoch) → {"etas", metric → [values per seed], "train_acc": [per seed]}."""
    out: dict[tuple[str, int], dict] = {}
    for r in records:
        if r.status != "ok":
            continue
        accs = {h["epoch"]: h["train_acc"] for h in r.history}
        for p in r.probes:
            key = (model_label(r.spec), int(p["epoch"]))
            slot = out.setdefault(key, {"etas": p["etas"], "train_acc": [], **{m: [] for m, _ in METRICS}})
            for m, _ in METRICS:
                slot[m].append(p[m])
            slot["train_acc"].append(accs.get(int(p["epoch"])))
    return out


def _mean(xs):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else None


def growth(etas: Sequence[float], values: Sequence[float]) -> tuple[float | None, float | None]:
    """(value at the largest η, value(η_max) / value(η_max / 2)) for one curve, None where undefined."""
    if not etas:
        return None, None
    i_max = max(range(len(etas)), key=lambda i: etas[i])
    half = etas[i_max] / 2
    i_half = min(range(len(etas)), key=lambda i: abs(etas[i] - half))
    v_max, v_half = values[i_max], values[i_half]
    if abs(etas[i_half] - half) > 1e-9 or v_half is None or v_max is None or not v_half or i_half == i_max:
        return v_max, None
    return v_max, v_max / v_half


def summarise(curves: dict) -> list[dict]:
    """A row per (model, checkpoint): loss(0), loss(η_max), relative changes at η_max and their
    doubling factors (each computed per seed, then averaged over seeds)."""
    rows = []
    for (label, epoch), c in sorted(curves.items(), key=lambda kv: (_order(kv[0][0]), kv[0][1])):
        etas = c["etas"]
        row = {"model": label, "epoch": epoch, "eta_max": max(etas), "seeds": len(c["loss"]),
               "train_acc": _mean(c["train_acc"])}
        row["loss_0"] = _mean([v[0] for v in c["loss"]])
        row["loss_max"] = _mean([growth(etas, v)[0] for v in c["loss"]])
        row["loss_ratio"] = _mean([growth(etas, v)[0] / v[0] if v[0] else None for v in c["loss"]])
        for m in ("relative_gradient_change", "relative_function_change"):
            g = [growth(etas, v) for v in c[m]]
            row[f"{m}_max"] = _mean([a for a, _ in g])
            row[f"{m}_doubling"] = _mean([b for _, b in g])
        rows.append(row)
    return rows


def findings(rows: Sequence[dict]) -> list[str]:
    out = []
    epochs = sorted({r["epoch"] for r in rows})
    labels = sorted({r["model"] for r in rows}, key=_order)
    by = {(r["model"], r["epoch"]): r for r in rows}
    for e in epochs:
        parts = []
        for lab in labels:
            r = by.get((lab, e))
            if r is None:
                continue
            parts.append(
                f"{lab}: relative gradient change {fmt(r['relative_gradient_change_max'], 2)} "
                f"(×{fmt(r['relative_gradient_change_doubling'], 1)} from η={r['eta_max'] / 2:g}), "
                f"loss {fmt(r['loss_0'], 3)} → {fmt(r['loss_max'], 3)} (×{fmt(r['loss_ratio'], 2)})")
        where = "at initialisation" if e == 0 else f"after epoch {e}"
        if parts:
            eta = by[(labels[0], e)]["eta_max"] if (labels[0], e) in by else ETA_MAX
            out.append(f"{where}, at η = {eta:g}: " + "; ".join(parts) + ".")
    return out


def claim_check(rows: Sequence[dict]) -> list[tuple[str, str, str]]:
    """Per checkpoint: does the deep net's gradient change exceed the shallow one's, and does it bend
    upwards (doubling factor > 2) while the shallow one's does less?"""
    out = []
    by = {(r["model"], r["epoch"]): r for r in rows}
    labels = sorted({r["model"] for r in rows}, key=_order)
    plain = [lab for lab in labels if not lab.startswith("residual")]
    if len(plain) < 2:
        return out
    shallow, deep = plain[0], plain[-1]
    for e in sorted({r["epoch"] for r in rows}):
        s, d = by.get((shallow, e)), by.get((deep, e))
        if not s or not d:
            continue
        where = "init" if e == 0 else f"epoch {e}"
        sg, dg = s["relative_gradient_change_max"], d["relative_gradient_change_max"]
        if sg is not None and dg is not None:
            out.append((where, f"gradient change at η={d['eta_max']:g}: {deep} > {shallow}",
                        f"{'yes' if dg > sg else 'no'}: {dg:.3g} vs {sg:.3g} (×{dg / sg:.3g})" if sg else
                        f"{dg:.3g} vs {sg:.3g}"))
        sd, dd = s["relative_gradient_change_doubling"], d["relative_gradient_change_doubling"]
        if sd is not None and dd is not None:
            out.append((where, f"gradient change bends upwards more for {deep} (doubling factor; 2 = straight line)",
                        f"{'yes' if dd > sd else 'no'}: ×{dd:.3g} vs ×{sd:.3g}"))
        sl, dl = s["loss_ratio"], d["loss_ratio"]
        if sl is not None and dl is not None:
            out.append((where, f"loss(η={d['eta_max']:g}) / loss(0) larger for {deep}",
                        f"{'yes' if dl > sl else 'no'}: ×{dl:.3g} vs ×{sl:.3g}"))
    return out


def analyse(store: Store, out_dir: str | Path, specs: Sequence[RunSpec] | None = None,
            command: str | None = None) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = load_records(store, NAME, specs)
    curves = curves_by(records)
    rows = summarise(curves)

    rep = Report(TITLE)
    rep.para(
        "The claim (Bernstein et al. 2020, Fig. 2): moving every layer of a deep MLP by the same relative "
        "amount η changes its loss and gradient quasi-exponentially in η; a shallow MLP changes only mildly. "
        "Setting scaled to a CPU; see *Configuration*. Each curve: mean over seeds (band: min–max)."
    )
    rep.heading("Findings")
    if not rows:
        rep.para("No probe results are recorded yet: nothing to report.")
    else:
        rep.bullets(findings(rows))
        checks = claim_check(rows)
        if checks:
            rep.para("The claim, checkpoint by checkpoint (computed from the numbers below):")
            rep.table(["checkpoint", "question", "these runs"], checks)
        p = _figure(curves, out_dir)
        rep.figure(p, "Loss, relative gradient change and relative function change against the relative "
                      "perturbation η, at each checkpoint (log axes; η = 0 left off the change panels, where "
                      "both are 0 by definition).",
                   relative_to=out_dir)
        rep.heading("Table: at the largest η", 3)
        rep.table(
            ["model", "checkpoint (epoch)", "train acc", "loss(0)", "loss(η_max)", "rel. grad change",
             "its doubling factor", "rel. function change", "its doubling factor", "seeds"],
            [[r["model"], r["epoch"], fmt(r["train_acc"], 3), fmt(r["loss_0"], 3), fmt(r["loss_max"], 3),
              fmt(r["relative_gradient_change_max"], 3), fmt(r["relative_gradient_change_doubling"], 2),
              fmt(r["relative_function_change_max"], 3), fmt(r["relative_function_change_doubling"], 2),
              r["seeds"]] for r in rows])
        rep.para("Full curves per run and checkpoint (also per layer) are in `results.json` (`probes`).")
    return finish_report(rep, out_dir, specs, records, command)


def _figure(curves: dict, out_dir: Path) -> Path:
    epochs = sorted({e for _, e in curves})
    labels = sorted({lab for lab, _ in curves}, key=_order)
    panels, logy = {}, []
    for m, mname in METRICS:
        for e in epochs:
            title = f"{mname}, {'init' if e == 0 else f'epoch {e}'}"
            lines = {}
            for lab in labels:
                c = curves.get((lab, e))
                if c is None:
                    continue
                if m == "loss":
                    lines[lab] = (c["etas"], c[m])
                else:  # η = 0 is 0 by definition: leave it off the log axis
                    lines[lab] = (c["etas"][1:], [v[1:] for v in c[m]])
            panels[title] = lines
            logy.append(title)
    return plots.curves(panels, out_dir / "trust.png", xlabel="relative perturbation η", ylabel="",
                        ncols=len(epochs), logy_panels=logy)


STUDY = Study(
    name=NAME, title=TITLE,
    description="loss and gradient along a relative perturbation of every layer, 2 vs 16 layers (Fig. 2)",
    configs=CONFIGS, build_grid=build_grid, analyse=analyse, quick_minutes=1.5,
)

__all__ = ["STUDY", "build_grid", "NAME", "CONFIGS", "grid", "analyse", "curves_by", "summarise", "findings", "claim_check", "growth"]
