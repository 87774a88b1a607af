"""`RunRecord`: the one type for the outcome of a run, shared by the training loop, the runner, the
store and the studies. It imports nothing but the standard library and `spec` (no torch), so the
store can read, resume and export a sweep without importing the training code.

- `spec`: the `RunSpec` that was run; `key` is its key.
- `status`: ``"ok"``, ``"diverged"`` (a non-finite training loss ended the run: a result) or
  ``"crashed"`` (an exception: `error` holds the traceback; says nothing about the optimiser).
- `history`: one dict per evaluated epoch (epoch 0 = before training) with ``epoch``, ``step`` (the
  optimiser steps taken so far), ``lr``, the task's metrics and ``seconds``.
- `final`: the metrics the run ends with, plus ``epochs_run``, ``steps``, ``best_epoch``,
  ``stopped_early`` and ``diverged_at``.
- `probes`: measurements taken during the run; `info`: where and how fast it ran.
- `key`: the store's key of the run: `spec.key` unless read back from a store (where it is the key the
  run was stored under, which differs from `spec.key` for a run recorded under an older `PROTOCOL`).
- `recorded`: when the store recorded it (None before it is stored).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from reltrust.workbench.spec import RunSpec

STATUSES = ("ok", "diverged", "crashed")
FINISHED = ("ok", "diverged")


@dataclasses.dataclass
class RunRecord:
    spec: RunSpec
    status: str
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    final: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None
    probes: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    key: str = ""
    recorded: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"RunRecord.status must be one of {STATUSES}, got {self.status!r}")
        if not self.key:
            self.key = self.spec.key

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def __repr__(self) -> str:
        return f"RunRecord({self.spec.label()}, status={self.status!r})"
