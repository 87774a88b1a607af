"""The depth and trust --tiny grids as they were before the task seam, to compare today's runs with."""
from __future__ import annotations

import json
from pathlib import Path


BASELINES = Path(__file__).parent / "baselines"


def runs_before_the_task_seam(study: str) -> dict:
    """key → {status, final, history (no wall-clock seconds), probes} of the study's --tiny grid, as
    recorded by reltrust at commit 0a3e729 (before `fit` became the loop around a Task), with
    `reproduce --tiny --workers 0 --threads 1` on torch 2.13.0 CPU."""
    return json.loads((BASELINES / "tiny_before_tasks.json").read_text())["runs"][study]


def runs_in(results_json: Path) -> dict:
    """The same view of a results.json written now (without ``step``, which histories record since)."""
    return {r["key"]: {"status": r["status"], "final": r["final"], "probes": r["probes"],
                       "history": [{k: v for k, v in h.items() if k not in ("seconds", "step")} for h in r["history"]]}
            for r in json.loads(Path(results_json).read_text())}
