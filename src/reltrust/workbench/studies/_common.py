"""Helpers shared by the study modules: the `Study` record, grouping stored runs and picking the best
learning rate."""
from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

from reltrust.workbench.report import Report, configuration, environment, failures
from reltrust.workbench.spec import RunSpec
from reltrust.workbench.store import Record, Store


SIZES = ("quick", "full", "tiny")


@dataclasses.dataclass(frozen=True)
class Study:
    """One registered study: its name, title, a one-line description, its config per size, how its
    grid is built from a config, and its analysis. `quick_minutes` is the wall time of its quick grid
    as measured on a 2-core machine (stated by ``reltrust reproduce --list``). `options`: the command-line
    options the study takes beyond the workbench's own (e.g. ``{"optimizers": parse}``), name → a parser
    of the option's text that raises ValueError with a one-line message; `build_grid` then takes the
    parsed value as a keyword argument."""

    name: str
    title: str
    description: str
    configs: Mapping[str, Any]
    build_grid: Callable[..., list[RunSpec]]  # (config, seeds) -> specs
    analyse: Callable[..., Path]  # (store, out_dir, specs=None, command=None) -> report path
    quick_minutes: float
    # optional: (specs, out_dir, data_dir=...) -> None, run by `reproduce` before the sweep (e.g. to
    # train once what every run of the grid shares)
    prepare: Callable[..., None] | None = None
    options: Mapping[str, Callable[[str], Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [s for s in SIZES if s not in self.configs]
        if missing:
            raise ValueError(f"study {self.name!r}: configs for {missing} are missing")

    def config(self, quick: bool = False, *, tiny: bool = False) -> Any:
        return self.configs["tiny" if tiny else "quick" if quick else "full"]

    def grid(self, quick: bool = False, *, seeds: Sequence[int] | None = None, tiny: bool = False,
             **options: Any) -> list[RunSpec]:
        """The runs of the quick, full (default) or tiny grid; `seeds` replaces the config's seeds;
        `options`: parsed values of the study's own `options` (left out: the study's defaults)."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(f"study {self.name!r}: unknown options {unknown}; it takes: {', '.join(self.options) or 'none'}")
        config = self.config(quick, tiny=tiny)
        return self.build_grid(config, tuple(config.seeds if seeds is None else seeds), **options)

    def cost_line(self) -> str:
        return f"quick: {len(self.grid(quick=True))} runs, about {self.quick_minutes:g} min on 2 cores"


def load_records(store: Store, study: str, specs: Sequence[RunSpec] | None) -> list[Record]:
    """The stored runs of `specs` (the grid that was asked for), or every run of `study`."""
    return store.records(specs=specs) if specs is not None else store.records(study=study)


def finish_report(rep: Report, out_dir: Path, specs: Sequence[RunSpec] | None, records: Sequence[Record],
                  command: str | None) -> Path:
    """Every report's closing sections (exactly what ran, what failed, where it ran), then write it."""
    configuration(rep, list(specs) if specs is not None else [r.spec for r in records], command)
    failures(rep, records, specs)
    environment(rep, records)
    return rep.write(out_dir / "report.md")


def group(records: Sequence[Record], key: Callable[[Record], Hashable]) -> dict[Hashable, list[Record]]:
    out: dict[Hashable, list[Record]] = defaultdict(list)
    for r in records:
        out[key(r)].append(r)
    return dict(out)


def finite_or_none(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


class Point:
    """The runs of one learning rate at one setting: values over seeds, statuses."""

    def __init__(self, lr: float, records: Sequence[Record], metric: str):
        self.lr = lr
        self.records = sorted(records, key=lambda r: r.spec.seed)
        usable = [r for r in self.records if r.status in ("ok", "diverged")]
        # A diverged run is a result: its metric is that of the model where it stopped (a non-finite
        # output counts as a wrong answer), so it competes honestly in "best over lr".
        self.values = [float(r.final.get(metric) or 0.0) for r in usable]
        self.seeds = [r.spec.seed for r in usable]
        self.n_diverged = sum(r.status == "diverged" for r in self.records)
        self.n_crashed = sum(r.status == "crashed" for r in self.records)
        self.mean = mean(self.values) if self.values else None
        self.tied: list[float] = [lr]  # set by best_over_lr: every lr whose mean equals the best


def best_over_lr(records: Sequence[Record], metric: str = "train_acc") -> tuple[Point | None, list[Point]]:
    """Per learning rate, the mean of `metric` over seeds; the best lr (highest mean, the first lr
    in ascending order on ties). Crashed runs have no value; a point with none is not eligible."""
    by_lr = group(records, lambda r: r.spec.lr)
    points = [Point(lr, rs, metric) for lr, rs in sorted(by_lr.items())]
    eligible = [p for p in points if p.mean is not None]
    best = max(eligible, key=lambda p: p.mean) if eligible else None  # max keeps the first of ties
    if best is not None:
        best.tied = [p.lr for p in eligible if p.mean == best.mean]
    return best, points


def chance_level(records: Sequence[Record]) -> float | None:
    ks = {r.info.get("num_classes") for r in records if r.info.get("num_classes")}
    return 1.0 / ks.pop() if len(ks) == 1 else None


def rel(path: Path, out_dir: Path) -> str:
    return path.relative_to(out_dir).as_posix()
