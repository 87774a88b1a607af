"""Markdown reports: a small builder plus the sections every study report has.

`Report` collects Markdown blocks and writes them atomically. The shared sections:

- `configuration(specs)`: the exact configuration — the fields common to every run, the fields that
  vary and their values, the seeds, and the number of runs — taken from the specs, not from prose.
- `failures(records, specs)`: every crashed run (with the last line of its traceback), every diverged
  run, and every run of the grid that is not in the store (not run).
- `environment(records)`: torch version, device, threads, data source, and total compute time.

Study modules write their own findings with numbers computed from the store; nothing here states a
conclusion.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from reltrust.workbench.spec import RunSpec
from reltrust.workbench.store import Record, atomic_write_text


def fmt(x: Any, digits: int = 3) -> str:
    """A number for a table: fixed `digits` decimals, 'nan'/'inf' spelled out, '—' for missing."""
    if x is None:
        return "—"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return f"{x:.{digits}f}"
    return str(x)


def fmt_lr(x: float | None) -> str:
    return "—" if x is None else f"{x:g}"


class Report:
    def __init__(self, title: str):
        self.blocks: list[str] = [f"# {title}\n"]

    def heading(self, text: str, level: int = 2) -> Report:
        self.blocks.append(f"{'#' * level} {text}\n")
        return self

    def para(self, text: str) -> Report:
        self.blocks.append(text.strip() + "\n")
        return self

    def bullets(self, items: Iterable[str]) -> Report:
        items = list(items)
        if items:
            self.blocks.append("\n".join(f"- {i}" for i in items) + "\n")
        return self

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> Report:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        for r in rows:
            lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
        self.blocks.append("\n".join(lines) + "\n")
        return self

    def figure(self, path: str | os.PathLike, caption: str, relative_to: str | os.PathLike | None = None) -> Report:
        p = Path(path)
        if relative_to is not None:
            p = Path(os.path.relpath(p, relative_to))
        self.blocks.append(f"![{caption}]({p.as_posix()})\n\n*{caption}*\n")
        return self

    def code(self, text: str, lang: str = "") -> Report:
        self.blocks.append(f"```{lang}\n{text.rstrip()}\n```\n")
        return self

    def text(self) -> str:
        return "\n".join(self.blocks)

    def write(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(path, self.text())


def _value_str(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, sort_keys=True)
    return str(v)


def configuration(report: Report, specs: Sequence[RunSpec], command: str | None = None) -> Report:
    """The exact grid: common fields, varying fields with their values, seeds, number of runs."""
    report.heading("Configuration")
    if command:
        report.para(f"Command: `{command}`")
    if not specs:
        return report.para("No runs in the grid.")
    flat = [{k: v for k, v in _flatten(s).items() if k not in ("optimizer", "lr", "optimizer_kwargs")} for s in specs]
    names = list(flat[0])
    for f in flat[1:]:
        names += [k for k in f if k not in names]
    common, varying = {}, {}
    for k in names:
        values = [f.get(k, "(unset)") for f in flat]
        distinct = []
        for v in values:
            if v not in distinct:
                distinct.append(v)
        if len(distinct) == 1:
            common[k] = distinct[0]
        else:
            varying[k] = distinct
    seeds = sorted({s.seed for s in specs})
    report.para(f"{len(specs)} runs; seeds {', '.join(map(str, seeds))}.")
    report.table(["setting (same for every run)", "value"], [(k, f"`{_value_str(v)}`") for k, v in common.items()])
    if varying:
        report.table(["setting (varies)", "values"],
                     [(k, ", ".join(f"`{_value_str(v)}`" for v in vs)) for k, vs in varying.items()])
    per_opt: dict[str, tuple[list, list]] = {}
    for sp in specs:
        lrs, kws = per_opt.setdefault(sp.optimizer, ([], []))
        if sp.lr not in lrs:
            lrs.append(sp.lr)
        kw = _value_str(sp.kwargs("optimizer"))
        if kw not in kws:
            kws.append(kw)
    report.table(["optimizer", "learning rates", "other arguments"],
                 [(name, ", ".join(f"{lr:g}" for lr in lrs), "; ".join(f"`{k}`" for k in kws))
                  for name, (lrs, kws) in per_opt.items()])
    return report


def _flatten(spec: RunSpec) -> dict[str, Any]:
    d = spec.to_dict()
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k in ("model_kwargs", "schedule_kwargs", "probe", "task_kwargs"):
            for kk, vv in v.items():
                out[f"{k.removesuffix('_kwargs')}.{kk}"] = vv
            if not v:
                out[k] = {}
        else:
            out[k] = v
    return out


def failures(report: Report, records: Sequence[Record], specs: Sequence[RunSpec] | None = None) -> Report:
    """Crashed runs with their error, diverged runs, and runs of the grid that were never recorded."""
    report.heading("Failures and missing runs")
    crashed = [r for r in records if r.status == "crashed"]
    diverged = [r for r in records if r.status == "diverged"]
    have = {r.key for r in records}
    missing = [s for s in (specs or []) if s.key not in have]
    if not (crashed or diverged or missing):
        return report.para(f"None: all {len(records)} runs finished without a non-finite loss.")
    report.para(f"{len(crashed)} crashed, {len(diverged)} diverged (non-finite training loss), "
                f"{len(missing)} not run, of {len(specs) if specs is not None else len(records)} runs in the grid.")
    if crashed:
        report.para("Crashed (no result; rerunning the command retries them):")
        report.table(["run", "error (last line)", "key"],
                     [(r.spec.label(), _last(r.error), f"`{r.key[:12]}`") for r in crashed])
    if diverged:
        report.para("Diverged (a result: the loss became non-finite, the run was stopped there):")
        report.table(["run", "at epoch", "at step"],
                     [(r.spec.label(), (r.final.get("diverged_at") or {}).get("epoch", "—"),
                       (r.final.get("diverged_at") or {}).get("step", "—")) for r in diverged])
    if missing:
        report.para("Not run (the sweep was interrupted; rerun the same command to resume):")
        report.bullets(s.label() for s in missing)
    return report


def _last(text: str | None) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "").replace("|", "/")[:200]


def environment(report: Report, records: Sequence[Record]) -> Report:
    report.heading("Where it ran")
    if not records:
        return report.para("No runs recorded.")

    def distinct(key: str) -> str:
        vals = sorted({str(r.info.get(key)) for r in records if r.info.get(key) is not None})
        return ", ".join(vals) if vals else "—"

    compute = sum(float(r.info.get("wall_seconds") or 0.0) for r in records)
    stamps = sorted(r.recorded for r in records)
    report.bullets([
        f"torch {distinct('torch')}; device {distinct('device')}; threads per run {distinct('threads')}",
        f"data: {distinct('data_source')}",
        f"compute: {compute:.0f} s summed over runs; recorded between {stamps[0]} and {stamps[-1]} (UTC)",
        f"report written {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}",
    ])
    return report
