"""The papers' studies, each a module with ``grid(quick, ...) -> list[RunSpec]`` and
``analyse(store, out_dir, specs=None) -> Path`` (the report it wrote).

A study knows nothing of processes or SQL beyond the store's read API; `reltrust.workbench.cli` runs
``grid → runner → analyse``.
"""
from __future__ import annotations

import importlib
from types import ModuleType

STUDIES = ("depth", "trust")


def get_study(name: str) -> ModuleType:
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; known: {', '.join(STUDIES)}")
    return importlib.import_module(f"reltrust.workbench.studies.{name}")
