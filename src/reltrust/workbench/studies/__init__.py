"""The papers' studies, registered in one place: `STUDIES`, name → module.

Each study module is declarative: a config dataclass per size (``CONFIGS["quick" | "full" | "tiny"]``),
``grid(quick, seeds=None, tiny=False) -> list[RunSpec]`` built with the runner's `sweep`, and
``analyse(store, out_dir, specs=None, command=None) -> Path`` (the report it wrote), gathered in a
module-level ``STUDY`` (`reltrust.workbench.studies._common.Study`). A study knows nothing of
processes or SQL beyond the store's read API; `reltrust.workbench.cli` runs grid → runner → analyse.
Adding a study is one module and one line here.
"""
from __future__ import annotations

import importlib

from reltrust.workbench.studies._common import Study

STUDIES = {
    "depth": "reltrust.workbench.studies.depth",
    "depth-beyond": "reltrust.workbench.studies.depth_beyond",
    "trust": "reltrust.workbench.studies.trust",
    "lr-robustness": "reltrust.workbench.studies.lr_robustness",
    "variance": "reltrust.workbench.studies.variance",
    "warmup": "reltrust.workbench.studies.warmup",
    "large-batch": "reltrust.workbench.studies.large_batch",
    "norms": "reltrust.workbench.studies.norms",
    "practice": "reltrust.workbench.studies.practice",
}


def get_study(name: str) -> Study:
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; known: {', '.join(STUDIES)}")
    return importlib.import_module(STUDIES[name]).STUDY


def list_studies() -> list[Study]:
    return [get_study(name) for name in STUDIES]


__all__ = ["STUDIES", "Study", "get_study", "list_studies"]
