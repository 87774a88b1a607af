"""`reltrust reproduce trust` end to end on the hidden --tiny grid."""
from __future__ import annotations

import json
import re

import pytest

from reltrust.cli import main
from reltrust.workbench.studies import trust

from seam_baseline import runs_before_the_task_seam, runs_in


def test_trust_study_writes_probe_curves_figure_and_report(tmp_path):
    out = tmp_path / "trust"
    assert main(["reproduce", "trust", "--tiny", "--out", str(out), "--workers", "0", "--threads", "1",
                 "--no-progress"]) == 0
    specs = trust.grid(tiny=True)
    for name in ("results.sqlite", "results.csv", "results.json", "report.md", "trust.png"):
        assert (out / name).is_file(), name
    assert runs_in(out / "results.json") == runs_before_the_task_seam("trust")  # the move changed nothing
    runs = json.loads((out / "results.json").read_text())
    assert len(runs) == len(specs) and all(r["status"] == "ok" for r in runs)
    etas = specs[0].kwargs("probe")["etas"]
    assert etas[0] == 0.0 and etas[-1] == pytest.approx(trust.ETA_MAX)
    for r in runs:
        assert [p["epoch"] for p in r["probes"]] == specs[0].kwargs("probe")["at_epochs"]
        for p in r["probes"]:
            assert p["etas"] == etas and len(p["loss"]) == len(etas)

    # The table's relative gradient change at η_max is the stored probe value (one seed: no averaging).
    report = (out / "report.md").read_text()
    deep = next(r for r in runs if r["spec"]["model_kwargs"]["depth"] == 4 and not r["spec"]["model_kwargs"]["residual"])
    stored = deep["probes"][-1]["relative_gradient_change"][-1]
    row = re.search(r"^\| depth 4 \| 1 \| [^|]+ \| [^|]+ \| [^|]+ \| ([0-9.]+) \|", report, re.M)
    assert row and float(row.group(1)) == pytest.approx(stored, abs=6e-4)
    assert "](trust.png)" in report and "## Configuration" in report
