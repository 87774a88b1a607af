"""Figures for the studies, drawn with matplotlib's Agg canvas (no display, no pyplot global state).

- `curves`: y against x (e.g. train accuracy per epoch), one line per label with a band over seeds.
- `metric_vs`: a final metric against a swept quantity (depth), one line per label, band over seeds,
  an optional horizontal reference (chance level) and markers for diverged/crashed points.
- `lr_sensitivity`: a final metric against the learning rate (log axis), one panel per optimiser.
- `step_profiles`: step functions on one axis (performance profiles: the fraction of tasks against τ).
- `scaling`: steps to a target against the batch size on log–log axes, one panel per task, with each
  line's perfect-scaling reference (steps ∝ 1/batch from its smallest batch).

A band is min–max over seeds (``band="minmax"``, default) or mean ± one standard deviation (``"std"``);
the line is the mean. With one seed there is no band, and the figure's caption should say so. Every
function writes a PNG atomically (temporary file, then `os.replace`), with the permissions the umask
gives a new file, and returns its path.
"""
from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reltrust.workbench.store import atomic_write_bytes

# One colour per optimiser name, stable across figures; others take the default cycle.
COLORS = {"fromage": "#1b9e77", "sgd": "#d95f02", "adam": "#7570b3", "adamw": "#e7298a", "lars": "#66a61e",
          "lamb": "#e6ab02", "radam": "#a6761d", "nadam": "#666666"}
# Every other label (radam_skip, "adam, warmup 25", ...) by its index, from colours none of the above is
# near (matplotlib's default cycle has a purple beside adam's and a brown beside radam's).
OTHER_COLORS = ("#1f77b4", "#d62728", "#17becf", "#000000", "#bcbd22", "#ff9896", "#9edae5", "#393b79")


def band(values: Sequence[Sequence[float]], kind: str = "minmax") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high) over the first axis of ragged rows (shorter rows padded with NaN; NaNs ignored)."""
    if kind not in ("minmax", "std"):
        raise ValueError(f"band kind must be 'minmax' or 'std', got {kind!r}")
    width = max((len(v) for v in values), default=0)
    a = np.full((len(values), width), np.nan)
    for i, v in enumerate(values):
        a[i, : len(v)] = [np.nan if x is None else float(x) for x in v]
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(a, axis=0)
            if kind == "minmax":
                lo, hi = np.nanmin(a, axis=0), np.nanmax(a, axis=0)
            else:
                sd = np.nanstd(a, axis=0)
                lo, hi = mean - sd, mean + sd
    return mean, lo, hi


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    """Render `fig` as PNG and write it atomically, with the umask's permissions (`atomic_write_bytes`)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def _color(label: str, i: int, labels=()) -> str:
    """The colour of the i-th of `labels`: its optimiser's (first word) unless an earlier label of the
    same figure took it (fromage η=0.01 and fromage η=0.01, p_bound=1 must differ), else by index."""
    key = label.split(" ")[0].lower()
    if key in COLORS and not any(str(other).split(" ")[0].lower() == key for other in list(labels)[:i]):
        return COLORS[key]
    return OTHER_COLORS[i % len(OTHER_COLORS)]


def _grid(n: int, ncols: int | None = None, size=(4.2, 3.3)) -> tuple[Figure, list]:
    ncols = ncols or min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(n)]
    return fig, axes


def _draw_series(ax, xs, runs, label, i, band_kind, marker="o", labels=()):
    mean, lo, hi = band(runs, band_kind)
    xs = np.asarray(xs[: len(mean)], dtype=float)
    c = _color(label, i, labels)
    ax.plot(xs, mean[: len(xs)], marker=marker, ms=3, color=c, label=label)
    if len(runs) > 1:
        ax.fill_between(xs, lo[: len(xs)], hi[: len(xs)], color=c, alpha=0.2, linewidth=0)


def _label_axes(ax, title, xlabel, ylabel, hline, hline_label) -> None:
    """The chance line (if any), title, axis labels, grid and legend every panel gets."""
    if hline is not None:
        ax.axhline(hline, color="grey", ls=":", lw=1, label=hline_label)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _finish(fig, suptitle: str | None, path: str | os.PathLike) -> Path:
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return _save(fig, path)


def curves(
    panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[Sequence[float]]]]],
    path: str | os.PathLike,
    *,
    xlabel: str,
    ylabel: str,
    band_kind: str = "minmax",
    logy: bool = False,
    hline: float | None = None,
    hline_label: str = "chance",
    suptitle: str | None = None,
    ncols: int | None = None,
    logy_panels: Sequence[str] = (),
    ylim: tuple[float, float] | None = None,
    panel_hlines: Mapping[str, float] | None = None,
    logx: bool = False,
) -> Path:
    """`panels`: panel title → {line label → (xs, [ys per seed])}; `logy_panels`: titles drawn log-y;
    `panel_hlines`: title → the y of that panel's own reference line (labelled `hline_label`), in
    place of `hline`."""
    fig, axes = _grid(len(panels), ncols)
    for ax, (title, lines) in zip(axes, panels.items()):
        for i, (label, (xs, runs)) in enumerate(lines.items()):
            _draw_series(ax, list(xs), runs, label, i, band_kind, marker=".", labels=lines)
        _label_axes(ax, title, xlabel, ylabel, (panel_hlines or {}).get(title, hline), hline_label)
        if logx:
            ax.set_xscale("log")
        if logy or title in logy_panels:
            ax.set_yscale("log")
        elif ylim is not None:
            ax.set_ylim(*ylim)
    return _finish(fig, suptitle, path)


def metric_vs(
    panels: Mapping[str, Mapping[str, Mapping[float, Sequence[float]]]],
    path: str | os.PathLike,
    *,
    xlabel: str,
    ylabel: str,
    band_kind: str = "minmax",
    hline: float | None = None,
    hline_label: str = "chance",
    failed: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
    logx: bool = False,
    ylim: tuple[float, float] | None = None,
    suptitle: str | None = None,
) -> Path:
    """`panels`: panel title → {line label → {x → [value per seed]}}. `failed`: panel → {label → xs}
    at which every run of that point diverged or crashed (drawn as crosses on the x axis)."""
    fig, axes = _grid(len(panels))
    for ax, (title, lines) in zip(axes, panels.items()):
        for i, (label, points) in enumerate(lines.items()):
            xs = sorted(points)
            if not xs:
                continue
            runs_by_seed = _transpose([points[x] for x in xs])
            _draw_series(ax, xs, runs_by_seed, label, i, band_kind, labels=lines)
            for x in (failed or {}).get(title, {}).get(label, []):
                ax.plot([x], [0 if ylim is None else ylim[0]], marker="x", color=_color(label, i, lines), ms=7, clip_on=False)
        _label_axes(ax, title, xlabel, ylabel, hline, hline_label)
        if logx:
            ax.set_xscale("log")
        if ylim is not None:
            ax.set_ylim(*ylim)
    return _finish(fig, suptitle, path)


def _transpose(per_x: list[Sequence[float]]) -> list[list[float]]:
    """[values at x0 per seed, values at x1 per seed, …] → per seed rows over x (NaN where missing)."""
    n = max((len(v) for v in per_x), default=0)
    return [[(v[s] if s < len(v) else np.nan) for v in per_x] for s in range(n)]


def lr_sensitivity(
    panels: Mapping[str, Mapping[str, Mapping[float, Sequence[float]]]],
    path: str | os.PathLike,
    *,
    ylabel: str,
    band_kind: str = "minmax",
    hline: float | None = None,
    suptitle: str | None = None,
) -> Path:
    """`panels`: optimiser → {line label (e.g. "depth 10") → {lr → [value per seed]}}; log-x."""
    return metric_vs(panels, path, xlabel="learning rate", ylabel=ylabel, band_kind=band_kind, hline=hline,
                     logx=True, ylim=(0.0, 1.02) if "acc" in ylabel else None, suptitle=suptitle)


def best_per_category(
    values: Mapping[str, Mapping[str, float]],
    categories: Sequence[str],
    path: str | os.PathLike,
    *,
    ylabel: str,
    hline: float | None = None,
    hline_label: str = "",
    title: str = "",
    logy: bool = True,
) -> Path:
    """`values`: line label (an optimiser) → {category → value}; one marker per label and category,
    the labels side by side within each category (a dot plot, log-y by default)."""
    fig, (ax,) = _grid(1, size=(max(4.2, 1.3 * len(categories) + 2), 3.6))
    n = max(len(values), 1)
    for i, (label, by_cat) in enumerate(values.items()):
        xs = [categories.index(c) + (i - (n - 1) / 2) * 0.6 / n for c in categories if c in by_cat]
        ys = [by_cat[c] for c in categories if c in by_cat]
        ax.plot(xs, ys, ls="none", marker="o", ms=6, color=_color(label, i, values), label=label)
    ax.set_xticks(range(len(categories)), categories, fontsize=8, rotation=15)
    if logy:
        ax.set_yscale("log")
    _label_axes(ax, title, "", ylabel, hline, hline_label)
    return _finish(fig, None, path)


def step_profiles(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    *,
    xlabel: str,
    ylabel: str,
    xlim: tuple[float, float],
    title: str = "",
) -> Path:
    """`curves`: line label → (xs, ys) of a right-continuous step function (y holds from each x to the
    next), all on one axis; y in [0, 1]. Lines that coincide are drawn slightly apart so that each
    stays visible."""
    fig, (ax,) = _grid(1, size=(5.6, 3.8))
    n = max(len(curves), 1)
    for i, (label, (xs, ys)) in enumerate(curves.items()):
        shift = (i - (n - 1) / 2) * 0.008
        ax.step(list(xs), [y + shift for y in ys], where="post", color=_color(label, i, curves), label=label, lw=1.6)
    ax.set_xlim(*xlim)
    ax.set_ylim(-0.03, 1.03)
    _label_axes(ax, title, xlabel, ylabel, None, "")
    return _finish(fig, None, path)


def scaling(
    panels: Mapping[str, Mapping[str, Mapping[float, float]]],
    path: str | os.PathLike,
    *,
    xlabel: str,
    ylabel: str,
    suptitle: str | None = None,
) -> Path:
    """`panels`: panel title → {line label → {batch size → steps}} (an ∞ is left out of the line),
    log–log. Each line gets a dotted reference in its colour through its smallest-batch point with
    slope −1: perfect scaling, the steps halving with every doubling of the batch."""
    fig, axes = _grid(len(panels))
    for ax, (title, lines) in zip(axes, panels.items()):
        for i, (label, points) in enumerate(lines.items()):
            xs = [x for x in sorted(points) if math.isfinite(points[x])]
            if not xs:
                continue
            c = _color(label, i, lines)
            ax.plot(xs, [points[x] for x in xs], marker="o", ms=3, color=c, label=label)
            ends = [xs[0], max(points)]
            ax.plot(ends, [points[xs[0]] * xs[0] / x for x in ends], ls=":", lw=1, color=c)
        ax.set_xscale("log")
        ax.set_yscale("log")
        _label_axes(ax, title, xlabel, ylabel, None, "")
    return _finish(fig, suptitle, path)
