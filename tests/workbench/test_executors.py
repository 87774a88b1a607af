"""The Dask and SLURM (submitit) executors run for real in their local modes: the same store as local
worker processes, a crash recorded with its traceback, a SIGKILLed driver's submitted jobs collected
by the next driver (not resubmitted), the dry run, and the one-line error without the extra."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from reltrust.cli import main
from reltrust.workbench import executors
from reltrust.workbench.executors import DaskExecutor, MissingExtra, SlurmExecutor, make_executor
from reltrust.workbench.runner import run_sweep
from reltrust.workbench.store import Store

pytest.importorskip("distributed")
pytest.importorskip("submitit")

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _specs(tiny_spec):
    return [tiny_spec(epochs=1, lr=lr, model_kwargs={"depth": 1, "width": 8}) for lr in (0.05, 0.1)]


def _metrics(path: Path) -> dict:
    with Store(path) as store:
        return {r.key: (r.status, r.final, [{k: v for k, v in h.items() if k != "seconds"} for h in r.history])
                for r in store.records()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, request):
    from conftest import _tiny_spec

    path = tmp_path_factory.mktemp("ref") / "ref.sqlite"
    with Store(path) as store:
        run_sweep(_specs(_tiny_spec), store, workers=0, threads=1, progress=False)
    return _metrics(path)


def test_dask_local_cluster_gives_the_store_of_local_processes_and_records_a_crash(tmp_path, tiny_spec, reference):
    specs = _specs(tiny_spec)
    broken = specs[0].replace(model_kwargs={"depth": 1, "width": 8, "init": "no-such-init"})
    with Store(tmp_path / "dask.sqlite") as store:
        summary = run_sweep([*specs, broken], store, progress=False, executor=DaskExecutor(workers=2, threads=1))
        assert (summary.ok + summary.diverged, summary.crashed) == (2, 1)
        assert "Traceback" in store.get(broken).error and "no-such-init" in store.get(broken).error
    got = _metrics(tmp_path / "dask.sqlite")
    assert {s.key: got[s.key] for s in specs} == reference


def test_submitit_local_executor_gives_the_store_of_local_processes(tmp_path, tiny_spec, reference):
    ex = SlurmExecutor(tmp_path / "slurm", cluster="local", threads=1, poll_seconds=0.1)
    with Store(tmp_path / "slurm.sqlite") as store:
        summary = run_sweep(_specs(tiny_spec), store, progress=False, executor=ex)
        assert summary.ok + summary.diverged == 2 and summary.crashed == 0
    assert _metrics(tmp_path / "slurm.sqlite") == reference
    assert list((tmp_path / "slurm" / "jobs").iterdir()) == []  # every job collected


DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from conftest import _tiny_spec
    from test_executors import _specs
    from reltrust.workbench.executors import SlurmExecutor
    from reltrust.workbench.runner import run_sweep
    from reltrust.workbench.store import Store
    if __name__ == "__main__":
        with Store({db!r}) as store:
            run_sweep(_specs(_tiny_spec), store, progress=False,
                      executor=SlurmExecutor({folder!r}, cluster="local", threads=1, poll_seconds=0.1))
""")


def test_a_sigkilled_driver_loses_nothing_and_the_next_one_collects_instead_of_resubmitting(tmp_path, reference):
    db, folder = tmp_path / "r.sqlite", tmp_path / "slurm"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(tests=str(Path(__file__).parent), db=str(db), folder=str(folder)))
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    jobs = folder / "jobs"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and not (jobs.is_dir() and len(list(jobs.glob("*.json"))) == 2):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # the jobs are submitted and still running: the driver is gone
    finally:
        proc.wait()
    submitted = {json.loads(f.read_text())["job_id"] for f in jobs.glob("*.json")}
    assert len(submitted) == 2
    with Store(db) as store:
        assert len(store) < 2  # the driver died before it had both results
        ex = SlurmExecutor(folder, cluster="local", threads=1, poll_seconds=0.1)
        from conftest import _tiny_spec

        summary = run_sweep(_specs(_tiny_spec), store, progress=False, executor=ex)
        assert summary.ran + summary.skipped == 2
    assert len(list((folder / "logs").glob("*_submitted.pkl"))) == 2  # collected, not resubmitted
    assert _metrics(db) == reference


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_dry_run_prints_what_would_be_submitted_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "dry"
    argv = ["reproduce", "depth", "--tiny", "--out", str(out), "--executor", "slurm", "--partition", "cpu",
            "--time", "5", "--sbatch", "qos=low", "--dry-run", "--no-progress"]
    rc = main(argv)
    text = capsys.readouterr().out
    assert rc == 0 and "dry run, nothing submitted" in text and "'slurm_partition': 'cpu'" in text
    assert "'slurm_additional_parameters': {'qos': 'low'}" in text and "36 submitted as one job array" in text
    assert not out.exists()  # no folder, no store, no lock, no slurm/ folder
    # With a store there: what it holds is counted, and no file is created or changed (no -wal/-shm, no lock).
    from reltrust.workbench.results import RunRecord
    from reltrust.workbench.studies import get_study

    first = get_study("depth").grid(False, tiny=True)[0]
    with Store(out / "results.sqlite") as store:
        store.record(RunRecord(spec=first, status="ok", final={"train_loss": 1.0}))
    before = _tree(out)
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "36 runs in the grid, 1 already in" in text and "35 submitted as one job array" in text
    assert first.key not in text and _tree(out) == before


def test_without_the_extra_the_flag_fails_with_the_install_command(monkeypatch, tmp_path, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("distributed", "submitit") else real(name, *a))
    with pytest.raises(MissingExtra, match=r"pip install 'reltrust\[dask\]'"):
        make_executor("dask", out=tmp_path)
    rc = main(["reproduce", "depth", "--tiny", "--out", str(tmp_path / "x"), "--executor", "slurm"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == ("reltrust reproduce: error: argument --executor: --executor slurm needs submitit: "
                               "pip install 'reltrust[slurm]'")
    assert not (tmp_path / "x").exists()
    assert executors.EXECUTORS == ("local", "dask", "slurm")
