"""`RunSpec`: one training run, described as data, with a stable key.

A spec is a frozen dataclass. Its `key` is the sha256 of a canonical JSON rendering of its fields (plus
`PROTOCOL`, the version of the training loop's semantics), so it is the same in every process, on every
machine and in every Python session: the results store uses it as the primary key, which is what lets an
interrupted sweep resume without redoing finished runs.

Fields added after the first protocol (`task`, `steps`, `task_kwargs`, the second optimiser's `optimizer2`,
`lr2`, `optimizer2_kwargs`) enter the key only where they differ from their defaults, so every spec that
could be written before they existed keeps its key and its stored result.

Keyword-argument fields (`model_kwargs`, `optimizer_kwargs`, `schedule_kwargs`, `probe`, `task_kwargs`,
`optimizer2_kwargs`) accept a dict and
are stored as a sorted tuple of ``(name, value)`` pairs, so a spec stays hashable and immutable; read them
back as dicts with `spec.kwargs("model")` etc. Execution details that do not change the experiment
(device, threads, data folder) are not part of a spec; `fit` records them beside the result.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

# Bump when the training loop's semantics change (what a given spec computes); old results then no longer
# match new specs and are rerun instead of silently mixed with new ones.
PROTOCOL = "reltrust.fit/1"

SCHEDULES = ("constant", "step", "exponential", "robbins_monro", "warmup", "cosine", "poly")
INTERVALS = ("epoch", "step")

_KWARG_FIELDS = ("model_kwargs", "optimizer_kwargs", "schedule_kwargs", "probe", "task_kwargs", "optimizer2_kwargs")
# Fields that entered the spec after PROTOCOL 1: left out of the canonical JSON at their default value.
_LATER_FIELDS = ("task", "steps", "task_kwargs", "optimizer2", "lr2", "optimizer2_kwargs")


def _freeze(value: Any) -> Any:
    """Turn dicts into sorted pair tuples and lists into tuples, recursively (hashable, canonical)."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _pairs_to_dict(pairs: tuple) -> dict[str, Any]:
    return {k: _thaw(v) for k, v in pairs}


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        if value and all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in value) and _looks_like_pairs(value):
            return _pairs_to_dict(value)
        return [_thaw(v) for v in value]
    return value


def _looks_like_pairs(value: tuple) -> bool:
    keys = [p[0] for p in value]
    return keys == sorted(set(keys))


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"RunSpec: non-finite number {value!r} has no canonical form")
        return value
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    raise TypeError(f"RunSpec: {value!r} ({type(value).__name__}) is not a JSON scalar/list/dict")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything that determines one training run.

    - `study`: a label that groups runs (``"depth"``); it is part of the key.
    - `dataset`: a name for `reltrust.workbench.data.load_dataset`; `split_seed`, `val_fraction` fix the
      train/validation split (the same for every training seed by default).
    - `model`, `model_kwargs`: `reltrust.workbench.models.build_model(model, dataset, **model_kwargs)`.
    - `optimizer`, `lr`, `optimizer_kwargs`: `reltrust.optim.create(optimizer, params, lr=lr, **kwargs)`.
    - `weight_decay`: 0 passes the model's parameters as one group; > 0 passes
      `reltrust.optim.param_groups(model, weight_decay)` (biases and norm layers excluded from decay).
    - `schedule`, `schedule_kwargs`, `schedule_interval`: see `reltrust.workbench.schedules`.
    - `seed`: initialisation, minibatch order and dropout. `epochs`, `batch_size`: the budget.
    - `patience`: early stopping on validation loss (0 = off); `min_delta` the required improvement.
    - `probe`: an optional measurement at checkpoints (see `reltrust.workbench.train.fit`).
    - `task`: what the run trains and measures, one of `reltrust.workbench.tasks.TASKS` (``"classify"``,
      ``"charlm"``, ``"gan"``, ``"regress"``); `task_kwargs` its own settings (see each task).
    - `steps`: a budget of optimiser steps (0 = none: `epochs` alone sets the length). With both, the
      run stops at whichever comes first; the last, partial epoch is evaluated.
    - `optimizer2`, `lr2`, `optimizer2_kwargs`: the second player's optimiser in a two-player task (the
      GAN's discriminator); empty for one-player tasks.
    """

    study: str
    dataset: str
    model: str
    optimizer: str
    lr: float
    seed: int = 0
    epochs: int = 1
    batch_size: int = 128
    model_kwargs: Any = ()
    optimizer_kwargs: Any = ()
    weight_decay: float = 0.0
    schedule: str = "constant"
    schedule_kwargs: Any = ()
    schedule_interval: str = "epoch"
    patience: int = 0
    min_delta: float = 0.0
    val_fraction: float = 0.1
    split_seed: int = 0
    probe: Any = ()
    task: str = "classify"
    steps: int = 0
    task_kwargs: Any = ()
    optimizer2: str = ""
    lr2: float = 0.0
    optimizer2_kwargs: Any = ()

    def __post_init__(self) -> None:
        for name in _KWARG_FIELDS:
            value = getattr(self, name)
            if value is None:
                value = ()
            if isinstance(value, Mapping):
                value = _freeze(value)
            elif isinstance(value, (list, tuple)):
                value = _freeze(dict(value)) if value else ()
            else:
                raise TypeError(f"RunSpec.{name}: expected a dict, got {type(value).__name__}")
            object.__setattr__(self, name, value)
        # Canonical number types: lr=1 and lr=1.0 are the same run and must have the same key.
        for name in ("lr", "weight_decay", "min_delta", "val_fraction", "lr2"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"RunSpec.{name}: expected a number, got {v!r}")
            object.__setattr__(self, name, float(v))
        for name in ("seed", "epochs", "batch_size", "patience", "split_seed", "steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"RunSpec.{name}: expected an int, got {v!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"RunSpec.schedule: {self.schedule!r} is not one of {SCHEDULES}")
        if self.schedule_interval not in INTERVALS:
            raise ValueError(f"RunSpec.schedule_interval: {self.schedule_interval!r} is not one of {INTERVALS}")
        if self.epochs < 0 or self.batch_size < 1 or self.patience < 0:
            raise ValueError("RunSpec: epochs >= 0, batch_size >= 1 and patience >= 0 are required")
        if self.steps < 0:
            raise ValueError(f"RunSpec.steps must be >= 0 (0: no step budget), got {self.steps}")
        for name in ("lr", "lr2"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise ValueError(f"RunSpec.{name} must be finite and >= 0, got {v}")
        for name in ("study", "dataset", "model", "optimizer", "task", "optimizer2"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"RunSpec.{name}: expected a str, got {getattr(self, name)!r}")
        if not self.task:
            raise ValueError("RunSpec.task must name a task (e.g. 'classify')")
        self.canonical_json()  # fail early on values without a canonical form

    # ---- views -----------------------------------------------------------------------------------
    def kwargs(self, which: str) -> dict[str, Any]:
        """`which` in model|optimizer|schedule|probe|task|optimizer2: that field as a plain dict."""
        name = which if which == "probe" else f"{which}_kwargs"
        return _pairs_to_dict(getattr(self, name))

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready dict (kwargs fields as dicts; the later fields only off their defaults, as
        in the key); `RunSpec.from_dict` inverts it."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in _LATER_FIELDS and v == _DEFAULTS[f.name]:
                continue
            out[f.name] = _pairs_to_dict(v) if f.name in _KWARG_FIELDS else v
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"RunSpec.from_dict: unknown fields {sorted(unknown)}")
        return cls(**dict(data))

    def canonical_json(self) -> str:
        body = {"protocol": PROTOCOL}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _LATER_FIELDS and value == _DEFAULTS[f.name]:
                continue
            body[f.name] = _jsonable(value)
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)

    @property
    def key(self) -> str:
        """sha256 (hex) of the canonical JSON: the same in every process and session."""
        return hashlib.sha256(self.canonical_json().encode("ascii")).hexdigest()

    def replace(self, **changes: Any) -> RunSpec:
        return dataclasses.replace(self, **changes)

    def label(self) -> str:
        """A short human-readable description (not unique; use `key` for identity)."""
        mk = ",".join(f"{k}={v}" for k, v in self.kwargs("model").items())
        opt = f"{self.optimizer}@{self.lr:g}"
        if self.optimizer2:
            opt += f"+{self.optimizer2}@{self.lr2:g}"
        task = "" if self.task == "classify" else f"{self.task}:"
        return f"{self.study}/{task}{self.dataset}/{self.model}({mk})/{opt}/seed{self.seed}"


_DEFAULTS = {f.name: (() if f.name in _KWARG_FIELDS else f.default) for f in dataclasses.fields(RunSpec)}
