"""The norm study (Bernstein et al. 2020, Figure 5): Fromage against Adam on a class-conditional GAN.

The claims: under Fromage every layer's weight norm stays where it started (Frobenius-norm stability;
and, by Mirsky's theorem, a controlled relative spectral shift), while under Adam the norms wander;
and Fromage is competitive with Adam for training GANs.

Here, scaled to a CPU: the workbench's GAN task (MLP generator; MLP projection discriminator with
spectral norm on every layer; hinge loss) on the embedded 5,000-image MNIST (and Fashion-MNIST in the
full study where it is installed). Both players take the same optimiser: Fromage η = 0.01 (the
paper's), Fromage η = 0.01 with p_bound = 1, Adam β = (0, 0.999) at lr 1e-4 (the paper's) and at a
small grid of larger lrs.

What is measured (`TrustMonitor`, through the task's ``monitor_every``): ‖W‖_F of every ≥ 2-d
parameter the optimisers update, biases excluded, after steps 0, k, 2k, …, and σ₁ after step 1 and
every k steps. For the generator these are its class embedding and its three Linear weights; for the
spectrally normalised discriminator they are the stored ``parametrizations.weight.original``
tensors (what the optimiser moves; the weight the network uses is W/σ₁(W), whose σ₁ is 1 by
construction). A layer's *drift* is |‖W_T‖/‖W_0‖ − 1| at the end of training; σ₁'s drift is taken
against its first measurement (after step 1).

Quality: a classifier (`reltrust.workbench.quality`, an MLP trained once on the real training
images, cached in the output folder) scores the fakes of fixed latents and labels: the accuracy with
which it recovers their labels, and the classifier Fréchet distance (FID's formula in this
classifier's penultimate features: not comparable with FID) to as many real training images.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reltrust.workbench import plots
from reltrust.workbench.report import Report, fmt
from reltrust.workbench.runner import sweep
from reltrust.workbench.spec import RunSpec
from reltrust.workbench.store import Record, Store
from reltrust.workbench.studies._common import Study, finish_report, group, load_records, mean

NAME = "norms"
TITLE = "Norm study: Fromage against Adam on a class-conditional GAN (weight norms, spectra, samples)"
PLAYERS = ("generator", "discriminator")
STABLE = 0.10  # a norm "stays where it started": final drift at most 10 %
COMPETITIVE_CFD = 1.10  # competitive: mean classifier Fréchet distance at most 10 % above Adam's ...
COMPETITIVE_ACC = 0.05  # ... and mean label accuracy at most 0.05 below it
PAPER_ADAM_LR = 1e-4


@dataclasses.dataclass(frozen=True)
class Config:
    datasets: tuple[str, ...]  # those not installed are left out of the grid
    epochs: int
    batch_size: int
    hidden: int
    adam_lrs: tuple[float, ...]
    eval_examples: int
    monitor_every: int
    scorer_epochs: int
    per_class: int
    seeds: tuple[int, ...]


CONFIGS = {
    "full": Config(("mnist", "fashion-mnist"), 40, 64, 256, (1e-4, 3e-4, 1e-3), 2048, 20, 10, 10, (0, 1, 2)),
    "quick": Config(("mnist",), 12, 64, 256, (1e-4, 1e-3), 1000, 10, 5, 8, (0, 1)),
    "tiny": Config(("mnist",), 1, 256, 32, (1e-4,), 200, 4, 1, 2, (0,)),
}


def methods(adam_lrs: Sequence[float]) -> list[dict[str, Any]]:
    """The RunSpec fields of each method (the same optimiser for both players)."""
    out = [{"optimizer": "fromage", "lr": 0.01, "optimizer_kwargs": {}},
           {"optimizer": "fromage", "lr": 0.01, "optimizer_kwargs": {"p_bound": 1.0}}]
    out += [{"optimizer": "adam", "lr": lr, "optimizer_kwargs": {"betas": [0.0, 0.999]}} for lr in adam_lrs]
    return [{**m, "optimizer2": m["optimizer"], "lr2": m["lr"], "optimizer2_kwargs": m["optimizer_kwargs"]} for m in out]


def _installed(name: str) -> bool:
    from reltrust.workbench.data import available_datasets

    return any(d.name == name and d.installed for d in available_datasets())


def build_grid(config: Config, seeds: Sequence[int]) -> list[RunSpec]:
    """Installed data sets × methods × seeds."""
    base = RunSpec(study=NAME, task="gan", dataset="mnist", model="mlp", optimizer="fromage", lr=0.01,
                   epochs=config.epochs, batch_size=config.batch_size, model_kwargs={"hidden": config.hidden},
                   task_kwargs={"eval_examples": config.eval_examples, "monitor_every": config.monitor_every,
                                "scorer": {"epochs": config.scorer_epochs}},
                   probe={"name": "samples", "at_epochs": [config.epochs], "per_class": config.per_class, "seed": 0})
    datasets = [d for d in config.datasets if d == "mnist" or _installed(d)]
    return sweep(base, settings=methods(config.adam_lrs), problems=datasets, seeds=seeds)


def grid(quick: bool = False, *, seeds: Sequence[int] | None = None, tiny: bool = False) -> list[RunSpec]:
    return STUDY.grid(quick, seeds=seeds, tiny=tiny)


def prepare(specs: Sequence[RunSpec], out_dir: str | Path, *, data_dir: str | None = None) -> None:
    """Train (or load) every scorer the grid needs, once, into `out_dir`, and point the workers at it."""
    from reltrust.workbench import quality

    out_dir = Path(out_dir)
    seen = set()
    for s in specs:
        cfg = s.kwargs("task").get("scorer")
        if not cfg:
            continue
        sspec = quality.scorer_spec(s.dataset, val_fraction=s.val_fraction, split_seed=s.split_seed,
                                    **{**quality.SCORER_DEFAULTS, **cfg})
        if sspec.key not in seen:
            seen.add(sspec.key)
            quality.load_scorer(sspec, data_dir=data_dir, cache_dir=out_dir)
    os.environ[quality.SCORER_DIR_ENV] = str(out_dir.resolve())


# ------------------------------------------------------------------------------------------ analysis
def method_label(spec: RunSpec) -> str:
    kw = spec.kwargs("optimizer")
    if spec.optimizer == "fromage":
        return f"fromage η={spec.lr:g}" + (f", p_bound={kw['p_bound']:g}" if kw.get("p_bound") else "")
    paper = " (paper)" if spec.lr == PAPER_ADAM_LR else ""
    return f"adam lr={spec.lr:g}{paper}"


def _order(label: str) -> tuple:
    return (not label.startswith("fromage"), "p_bound" in label, float(label.split("=")[1].split()[0].rstrip(",")))


def run_drifts(r: Record) -> dict[str, dict[str, Any]]:
    """player → {"norm": max over layers of |‖W_T‖/‖W_0‖ − 1|, "norm_layer", "norm_ratio" (that layer's
    ‖W_T‖/‖W_0‖), "sigma": max over layers of |σ₁(T)/σ₁(1) − 1|, "sigma_layer"}."""
    out = {}
    for p, t in (r.info.get("trust") or {}).items():
        first, last = t["norm"][0], t["norm"][-1]
        ratios = [b / a if a else math.nan for a, b in zip(first, last)]
        i = max(range(len(ratios)), key=lambda j: abs(ratios[j] - 1))
        row = {"norm": abs(ratios[i] - 1), "norm_layer": t["layers"][i], "norm_ratio": ratios[i]}
        sv = t["top_singular_value"]
        if len(sv) >= 2:
            s_ratio = [b / a if a else math.nan for a, b in zip(sv[0], sv[-1])]
            j = max(range(len(s_ratio)), key=lambda q: abs(s_ratio[q] - 1))
            row.update(sigma=abs(s_ratio[j] - 1), sigma_layer=t["layers"][j])
        out[p] = row
    return out


@dataclasses.dataclass
class Cell:
    """The finished runs of one (data set, method)."""

    dataset: str
    method: str
    records: list[Record]

    def drifts(self, player: str | None, what: str = "norm") -> list[float]:
        """Per seed: the largest drift of any layer of `player` (None: of both players)."""
        out = []
        for r in self.records:
            d = run_drifts(r)
            vals = [d[p][what] for p in (PLAYERS if player is None else (player,)) if p in d and what in d[p]]
            if vals:
                out.append(max(vals))
        return out

    def final(self, metric: str) -> list[float]:
        vals = [r.final.get(f"train_{metric}") for r in self.records if r.status == "ok"]
        return [float(v) if v is not None else math.nan for v in vals]


def cells(records: Sequence[Record]) -> dict[tuple[str, str], Cell]:
    fin = [r for r in records if r.finished]
    return {k: Cell(*k, sorted(rs, key=lambda r: r.spec.seed))
            for k, rs in group(fin, lambda r: (r.spec.dataset, method_label(r.spec))).items()}


def _span(xs: Sequence[float], digits: int = 3, pct: bool = False) -> str:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return "—"
    f = (lambda v: f"{100 * v:.{max(digits - 2, 0)}f} %") if pct else (lambda v: fmt(v, digits))
    return f(mean(xs)) + (f" [{f(min(xs))}–{f(max(xs))}]" if len(xs) > 1 else "") + f" ({len(xs)} seeds)"


def _pick(table: dict, ds: str, prefix: str) -> Cell | None:
    return next((c for (d, m), c in table.items() if d == ds and m.startswith(prefix)), None)


def verdicts(table: dict[tuple[str, str], Cell], ds: str) -> list[tuple[str, str]]:
    """(clause, verdict computed from the runs) for data set `ds`."""
    fro = table.get((ds, "fromage η=0.01"))
    adam = table.get((ds, f"adam lr={PAPER_ADAM_LR:g} (paper)"))
    adams = [c for (d, m), c in table.items() if d == ds and m.startswith("adam")]
    out = []
    if fro is not None:
        for who in (None, *PLAYERS):
            dr = fro.drifts(who)
            if not dr:
                continue
            holds = max(dr) <= STABLE
            what = "every layer of both players" if who is None else f"every {who} layer"
            out.append((f"Fromage η=0.01 keeps {what} within {STABLE:.0%} of its initial norm",
                        f"{'holds' if holds else 'does not hold'}: largest final drift {_span(dr, pct=True)}"))
    if fro is not None and adam is not None:
        for who in (None, *PLAYERS):
            a, f = adam.drifts(who), fro.drifts(who)
            if not a or not f:
                continue
            holds = min(a) > STABLE and min(a) > max(f)
            scope = "" if who is None else f" ({who})"
            out.append((f"Adam's norms wander{scope}: drift above {STABLE:.0%} in every seed and above every Fromage seed",
                        f"{'holds' if holds else 'does not hold'}: Adam lr 1e-4 {_span(a, pct=True)} vs Fromage {_span(f, pct=True)}"))
        for who in PLAYERS:
            a, f = adam.drifts(who, "sigma"), fro.drifts(who, "sigma")
            if a and f:
                holds = max(f) < min(a)
                out.append((f"σ₁ is steadier under Fromage than under Adam ({who}): every Fromage seed's largest σ₁ "
                            "drift below every Adam seed's",
                            f"{'holds' if holds else 'does not hold'}: Fromage {_span(f, pct=True)} vs Adam lr 1e-4 "
                            f"{_span(a, pct=True)}"))
    if fro is not None:
        for name, ref in (("Adam lr 1e-4 (paper)", adam),
                          ("the best Adam of the grid", min(adams, key=lambda c: _m(c.final("cfd"))) if adams else None)):
            if ref is None:
                continue
            fc, rc = _m(fro.final("cfd")), _m(ref.final("cfd"))
            fa, ra = _m(fro.final("label_acc")), _m(ref.final("label_acc"))
            holds = fc <= COMPETITIVE_CFD * rc and fa >= ra - COMPETITIVE_ACC
            out.append((f"Fromage is competitive with {name}: mean classifier Fréchet distance at most "
                        f"{COMPETITIVE_CFD - 1:.0%} above and mean label accuracy at most {COMPETITIVE_ACC:g} below",
                        f"{'holds' if holds else 'does not hold'}: Fromage CFD {fmt(fc, 2)}, label acc {fmt(fa, 3)}; "
                        f"{ref.method} CFD {fmt(rc, 2)}, label acc {fmt(ra, 3)}"))
    return out


def _m(xs: Sequence[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return mean(xs) if xs else math.inf


def analyse(store: Store, out_dir: str | Path, specs: Sequence[RunSpec] | None = None,
            command: str | None = None) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = load_records(store, NAME, specs)
    table = cells(records)
    rep = Report(TITLE)
    rep.para(
        "The claims (Bernstein et al. 2020, §5 and Fig. 5): Fromage almost perfectly stabilises every layer's "
        "Frobenius norm (and controls the relative spectral shift), whereas under Adam the norms wander; and "
        "Fromage is competitive with Adam for training a class-conditional GAN. Here: MLP generator and "
        "spectrally normalised MLP projection discriminator, hinge loss, the same optimiser for both players. "
        "**Measured tensors**: every ≥ 2-d parameter the optimisers update, biases excluded — the generator's "
        "class embedding and three Linear weights; the discriminator's `parametrizations.weight.original` "
        "(the unnormalised tensors the optimiser moves; the effective weight W/σ₁(W) has σ₁ = 1 by construction, "
        "so the loss is invariant to their scale). *Drift*: |‖W_T‖/‖W_0‖ − 1| at the end of training; σ₁ drift "
        "against its first measurement (after step 1). Thresholds: a norm *stays* when its drift is at most "
        f"{STABLE:.0%}; *competitive*: mean classifier Fréchet distance at most {COMPETITIVE_CFD - 1:.0%} above and "
        f"mean label accuracy at most {COMPETITIVE_ACC:g} below the other's. Theory note: Fromage's step keeps ‖W‖ "
        "exactly only when the gradient is orthogonal to W (true for the discriminator's scale-invariant layers); "
        "for the generator, which has no normalisation, the radial part of the gradient can move the norm."
    )
    scorers = {}
    for r in records:
        s = r.info.get("scorer")
        if s:
            scorers.setdefault((r.spec.dataset, s["sha256"]), s)
    rep.heading("The scoring classifier")
    if scorers:
        rep.table(["data set", "classifier", "held-out accuracy", "sha256"],
                  [(ds, f"MLP width {s['spec']['model_kwargs']['width']}, {s['spec']['epochs']} epochs Adam",
                    f"{fmt(s['held_out']['acc'], 3)} ({s['held_out']['split']} split)", sha[:12])
                   for (ds, sha), s in sorted(scorers.items())])
        if len({ds for ds, _ in scorers}) != len(scorers):
            rep.para("**Warning:** runs of one data set were scored by different classifiers (see sha256).")
    rep.heading("Findings")
    if not table:
        rep.para("No runs are recorded yet: nothing to report.")
    for ds in sorted({d for d, _ in table}):
        rep.heading(ds, 3)
        rep.table(["clause of the claim", "these runs"], verdicts(table, ds))
        order = sorted((m for d, m in table if d == ds), key=_order)
        rep.heading(f"Table: {ds}, at the end of training (mean [min–max] over seeds)", 3)
        rows = []
        for m in order:
            c = table[(ds, m)]
            rows.append([m, _span(c.drifts("generator"), pct=True), _span(c.drifts("discriminator"), pct=True),
                         _span(c.drifts("generator", "sigma"), pct=True), _span(c.drifts("discriminator", "sigma"), pct=True),
                         _span(c.final("label_acc")), _span(c.final("cfd"), 2)])
        rep.table(["method", "largest norm drift, G", "largest norm drift, D", "largest σ₁ drift, G",
                   "largest σ₁ drift, D", "label accuracy", "classifier Fréchet distance"], rows)
        layer_rows = []
        for m in order:
            for r in table[(ds, m)].records:
                for p, d in run_drifts(r).items():
                    layer_rows.append([m, r.spec.seed, p, d["norm_layer"], fmt(d["norm_ratio"], 3)])
        rep.para("Which layer drifts most, per run (‖W_T‖/‖W_0‖ of that layer):")
        rep.table(["method", "seed", "player", "layer", "‖W_T‖/‖W_0‖"], layer_rows)
        for path, caption in _figures(table, ds, order, out_dir):
            rep.figure(path, caption, relative_to=out_dir)
    return finish_report(rep, out_dir, specs, records, command)


def _slug(text: str) -> str:
    text = text.replace("η", "eta")
    return "".join(ch if ch.isascii() and ch.isalnum() else "_" for ch in text).strip("_")


def _figures(table, ds: str, order: list[str], out_dir: Path) -> list[tuple[Path, str]]:
    out = []
    for what, key, ylabel in (("norm", "norm", "‖W‖ / ‖W_0‖"), ("sigma", "top_singular_value", "σ₁ / σ₁(step 1)")):
        panels = {}
        for m in order:
            recs = [r for r in table[(ds, m)].records if r.info.get("trust")]
            for p in PLAYERS:
                lines = {}
                for r in recs:
                    t = r.info["trust"][p]
                    xs = t["steps"] if what == "norm" else t["spectral_steps"]
                    rows = t[key]
                    for j, layer in enumerate(t["layers"]):
                        base = rows[0][j]
                        ys = [row[j] / base if base else math.nan for row in rows]
                        name = layer.replace(".parametrizations.weight.original", " (orig)")
                        lines.setdefault(name, (xs, []))[1].append(ys)
                if lines:
                    panels[f"{m} / {p}"] = lines
        if panels:
            path = plots.curves(panels, out_dir / f"{what}_{_slug(ds)}.png", xlabel="optimiser step", ylabel=ylabel,
                                ncols=2, suptitle=f"{ds}: per-layer {'weight norm' if what == 'norm' else 'σ₁'}")
            out.append((path, f"{ds}: {'Frobenius norm' if what == 'norm' else 'top singular value'} of every "
                              f"monitored layer relative to its {'initial value' if what == 'norm' else 'value after step 1'}, "
                              "one panel per method and player, one line per layer (mean; band: min–max over seeds)."))
    panels = {}
    for metric, title in (("label_acc", "label accuracy"), ("cfd", "classifier Fréchet distance")):
        lines = {}
        for m in order:
            recs = table[(ds, m)].records
            if recs:
                longest = max(recs, key=lambda r: len(r.history))
                lines[m] = ([h["step"] for h in longest.history],
                            [[_nan(h.get(f"train_{metric}")) for h in r.history] for r in recs])
        panels[title] = lines
    path = plots.curves(panels, out_dir / f"quality_{_slug(ds)}.png", xlabel="optimiser step", ylabel="", ncols=2,
                        suptitle=f"{ds}: quality of the generated images over training")
    out.append((path, f"{ds}: the scoring classifier's label accuracy on the fakes and the classifier Fréchet "
                      "distance to real training images, one line per method (mean; band: min–max over seeds)."))
    for m in order:
        rec = next((r for r in table[(ds, m)].records if r.probes), None)
        if rec is not None:
            path = sample_grid(rec.probes[-1], out_dir / f"samples_{_slug(ds)}_{_slug(m)}.png",
                               f"{ds}, {m}, seed {rec.spec.seed}, step {rec.probes[-1]['step']}")
            out.append((path, f"{ds}, {m}: samples at the end of training (seed {rec.spec.seed}), one row per class, "
                              "the same latents for every method."))
    return out


def _nan(x: Any) -> float:
    return float(x) if x is not None and math.isfinite(float(x)) else math.nan


def sample_grid(probe: dict, path: Path, title: str) -> Path:
    """A PNG of a ``samples`` probe: one row per class, one column per latent."""
    import base64
    import io

    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from reltrust.workbench.store import atomic_write_bytes

    k, n, c, h, w = probe["shape"]
    px = np.frombuffer(base64.b64decode(probe["pixels_uint8_base64"]), dtype=np.uint8).reshape(k, n, c, h, w)
    img = px.transpose(0, 3, 1, 4, 2).reshape(k * h, n * w, c)
    fig = Figure(figsize=(max(2.0, n * 0.45), max(2.0, k * 0.45) + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(img[..., 0] if c == 1 else img, cmap="gray" if c == 1 else None, vmin=0, vmax=255)
    ax.set_axis_off()
    ax.set_title(title, fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return atomic_write_bytes(path, buf.getvalue())


STUDY = Study(
    name=NAME, title=TITLE,
    description="GAN: per-layer weight norms and σ₁ under Fromage vs Adam, samples, classifier-scored quality",
    configs=CONFIGS, build_grid=build_grid, analyse=analyse, quick_minutes=3, prepare=prepare,
)

__all__ = ["STUDY", "CONFIGS", "NAME", "Cell", "analyse", "build_grid", "cells", "grid", "method_label", "methods",
           "prepare", "run_drifts", "sample_grid", "verdicts"]
