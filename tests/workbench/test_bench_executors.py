"""`reltrust bench` on the Dask and SLURM (submitit) executors, for real in their local modes, with a
user's optimiser from a module the workers did not start with; and what happens when a worker dies
with a run in flight (docs/scaling.md, "A worker dies with a run in flight"): a Dask worker SIGKILLed
mid-run, a submitit job SIGKILLed outside Python (no result file), each against what the docs say."""
from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import pytest
import torch

from reltrust.cli import main
from reltrust.workbench.executors import DaskExecutor, SlurmExecutor, user_module_paths
from reltrust.workbench.runner import execute, run_sweep
from reltrust.workbench.spec import RunSpec
from reltrust.workbench.store import Store

distributed = pytest.importorskip("distributed")
pytest.importorskip("submitit")

# A user's optimisers, written into a folder that only the driver's sys.path names (the Dask workers
# were started before it existed, each submitit job is a fresh process with another working folder).
USER_MODULE = textwrap.dedent('''
    import os, time
    from pathlib import Path
    import torch

    class ScaledSGD(torch.optim.Optimizer):
        def __init__(self, params, lr=0.1, scale=1.0):
            super().__init__(params, {"lr": lr, "scale": scale})

        @torch.no_grad()
        def step(self, closure=None):
            for g in self.param_groups:
                for p in g["params"]:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-g["lr"] * g["scale"])

    class GatedSGD(ScaledSGD):
        """Leaves GATE/started-<pid> when built; its steps wait until GATE/open exists (60 s at most)."""
        def __init__(self, params, lr=0.1, gate=None):
            if gate:
                Path(gate, f"started-{os.getpid()}").touch()
            super().__init__(params, lr)
            self.gate = gate

        def step(self, closure=None):
            deadline = time.monotonic() + 60
            while self.gate and not Path(self.gate, "open").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            return super().step(closure)
''')


@pytest.fixture(scope="module")
def cluster():
    """A Dask LocalCluster of 2 worker processes × 1 thread (its scheduler runs in this process)."""
    c = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                 silence_logs=40)
    yield c
    c.close()


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """The name of a fresh module holding USER_MODULE, importable here through sys.path only."""
    name = f"user_opt_{tmp_path.name.replace('-', '_')}"
    folder = tmp_path / "mods"
    folder.mkdir()
    (folder / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.setattr(sys, "path", [str(folder), *sys.path])  # restored afterwards (bench adds the cwd)
    src = str(Path(__file__).resolve().parents[2] / "src")  # the jobs import this tree's reltrust from any folder
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.chdir(tmp_path)  # not the module's folder: the jobs' working folder does not hold it
    yield name
    sys.modules.pop(name, None)


def _runs(out: Path) -> dict:
    """Every run of a bench's results.json, without what depends on the machine (times, the device info)."""
    runs = json.loads((out / "results.json").read_text())
    return {json.dumps(r["spec"], sort_keys=True): (r["status"], r["final"],
                                                    [{k: v for k, v in h.items() if k != "seconds"} for h in r["history"]])
            for r in runs}


def test_bench_on_dask_and_submitit_gives_the_runs_and_summary_of_local_processes(tmp_path, user_module, cluster, capsys):
    from reltrust.workbench import bench

    argv = ["bench", "--tiny", "--optimizer", f"{user_module}:ScaledSGD", "--hp", "scale=0.5", "--tasks", "mlp-mnist",
            "--threads", "1", "--no-progress"]
    # submitit: stage 1 is put in its store first (run here, as --executor local runs it), so that only
    # stage 2 goes to submitit: each job is a fresh Python importing torch, the slow part of this test
    # (stage 1 on submitit: test_executors.py). The bench resumes from it as from any store.
    protocol = bench.PROTOCOLS["tiny"]
    (entrant,) = bench.parse_entrants([("optimizer", f"{user_module}:ScaledSGD"), ("hp", "scale=0.5")], protocol)
    with Store(tmp_path / "slurm" / "results.sqlite") as store:
        run_sweep(bench.tuning_grid([bench.TINY_TASKS["mlp-mnist"]], [entrant], protocol), store, workers=0,
                  threads=1, progress=False)
    engines = {"local": ["--workers", "0"], "dask": ["--executor", "dask", "--scheduler", cluster.scheduler_address],
               "slurm": ["--executor", "slurm", "--slurm-cluster", "local"]}
    for name, extra in engines.items():
        assert main([*argv, "--out", str(tmp_path / name), *extra]) == 0, name
    printed = capsys.readouterr().out.split("bench, tiny protocol")
    assert "stage 1 (tuning): 2 run(s) to do" in printed[2] and "stage 2 (rerun): 1 run(s) to do" in printed[2]  # dask
    assert "stage 1 (tuning): 0 run(s) to do" in printed[3] and "stage 2 (rerun): 1 run(s) to do" in printed[3]  # slurm
    assert user_module_paths([RunSpec(study="x", dataset="mnist", model="mlp", optimizer=f"{user_module}:ScaledSGD",
                                      lr=0.1)]) == (str(tmp_path / "mods"),)
    local = _runs(tmp_path / "local")
    assert len(local) == 3 and {s for s, _, _ in local.values()} == {"ok"}
    summary = json.loads((tmp_path / "local" / "bench_summary.json").read_text())
    for name in ("dask", "slurm"):
        assert _runs(tmp_path / name) == local, name
        got = json.loads((tmp_path / name / "bench_summary.json").read_text())
        assert (got["results"], got["optimizers"]) == (summary["results"], summary["optimizers"]), name
    assert list((tmp_path / "slurm" / "slurm" / "jobs").iterdir()) == []  # every job collected
    assert len(list((tmp_path / "slurm" / "slurm" / "logs").glob("*_submitted.pkl"))) == 1
    report = (tmp_path / "dask" / "report.md").read_text()
    assert f"--executor dask --scheduler {cluster.scheduler_address}`" in report  # the command line says where
    assert "--executor slurm --slurm-cluster local`" in (tmp_path / "slurm" / "report.md").read_text()


def test_an_optimiser_module_the_workers_cannot_import_is_one_line_not_a_traceback(tmp_path, monkeypatch, cluster, capsys):
    # A module that exists in the driver only (made in memory: no file whose folder could be sent).
    ghost = types.ModuleType("ghost_opt")
    ghost.GhostSGD = type("GhostSGD", (torch.optim.SGD,), {"__module__": "ghost_opt"})
    monkeypatch.setitem(sys.modules, "ghost_opt", ghost)
    argv = ["bench", "--tiny", "--optimizer", "ghost_opt:GhostSGD", "--tasks", "mlp-mnist", "--threads", "1",
            "--no-progress", "--out", str(tmp_path / "dask"), "--executor", "dask", "--scheduler",
            cluster.scheduler_address]
    assert main(argv) == 2  # the workers are asked before anything is submitted
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("reltrust bench: --optimizer: dask worker tcp://"), err
    assert "optimizer module 'ghost_opt' is not importable on the worker" in err
    assert "a user's optimiser must be importable on the workers" in err
    with Store(tmp_path / "dask" / "results.sqlite") as store:
        assert len(store) == 0
    # SLURM cannot be asked first: each run is recorded as crashed with that line.
    spec = RunSpec(study="t", task="regress", dataset="teacher", model="linear", lr=0.1, epochs=1, batch_size=50,
                   optimizer="ghost_opt:GhostSGD")
    with Store(tmp_path / "slurm.sqlite") as store:
        summary = run_sweep([spec], store, progress=False,
                            executor=SlurmExecutor(tmp_path / "slurm", cluster="local", threads=1, poll_seconds=0.1))
        error = store.get(spec).error
    assert summary.crashed == 1 and "\n" not in error
    assert error.startswith("optimizer module 'ghost_opt' is not importable on the worker ")


# ----------------------------------------------------------------------- a worker dies mid-run
def _gated(module: str, gate: Path, seed: int = 0) -> RunSpec:
    gate.mkdir()
    return RunSpec(study="t", task="regress", dataset="teacher", model="linear", lr=0.1, seed=seed, epochs=2,
                   batch_size=50, optimizer=f"{module}:GatedSGD", optimizer_kwargs={"gate": str(gate)})


def _wait_for(find, seconds: float = 60.0) -> list:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = find()
        if found:
            return found
        time.sleep(0.02)
    return []


def _killer(gate: Path, *, wait_for_restart: bool) -> threading.Thread:
    """SIGKILL the process that started the gated run (it is in flight: its first step waits on the
    gate); then open the gate, after the run has started again elsewhere if `wait_for_restart`."""
    def go():
        first = _wait_for(lambda: sorted(gate.glob("started-*")))
        if first:
            os.kill(int(first[0].name.split("-")[1]), signal.SIGKILL)
            if wait_for_restart:
                _wait_for(lambda: [p for p in gate.glob("started-*") if p != first[0]])
        (gate / "open").touch()

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def _sweep(specs, db: Path, executor, seconds: float = 120.0):
    """run_sweep in a thread that must end within `seconds` (a dead job must not hang the driver)."""
    box = {}

    def go():
        with Store(db) as store:
            box["summary"] = run_sweep(specs, store, progress=False, executor=executor)
            box["records"] = {s.key: store.get(s) for s in specs}

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"the sweep did not end within {seconds} s"
    return box["summary"], box["records"]


def test_a_dask_worker_killed_mid_run_is_rerun_by_dask_then_recorded_as_crashed_when_retries_are_spent(
        tmp_path, user_module, cluster):
    gate = tmp_path / "a"
    spec, other = _gated(user_module, gate), RunSpec(study="t", task="regress", dataset="teacher", model="linear",
                                                     lr=0.05, epochs=2, batch_size=50, optimizer="sgd")
    killer = _killer(gate, wait_for_restart=True)
    executor = DaskExecutor(cluster.scheduler_address, threads=1)
    summary, recs = _sweep([spec, other], tmp_path / "r.sqlite", executor)
    killer.join(5)
    assert (summary.ok, summary.crashed) == (2, 0)  # the scheduler ran it again on a live worker
    assert len(list(gate.glob("started-*"))) == 2
    assert recs[spec.key].final == execute(spec, "cpu", None).final  # the same result as an undisturbed run

    # With no failures allowed the first death is final: recorded as crashed (KilledWorker), the other
    # finished run kept; the next sweep would run it again (crashed runs are pending).
    cluster.scheduler.allowed_failures, before = 0, cluster.scheduler.allowed_failures
    try:
        gate = tmp_path / "b"
        spec = _gated(user_module, gate, seed=1)
        killer = _killer(gate, wait_for_restart=False)
        summary, recs = _sweep([spec, other], tmp_path / "r.sqlite", executor)
        killer.join(5)
    finally:
        cluster.scheduler.allowed_failures = before
    assert (summary.skipped, summary.crashed) == (1, 1)
    assert recs[spec.key].status == "crashed" and recs[other.key].status == "ok"
    assert "dask worker died while running this spec" in recs[spec.key].error and "KilledWorker" in recs[spec.key].error
    with Store(tmp_path / "r.sqlite") as store:
        assert store.pending([spec, other]) == [spec]


def test_a_submitit_job_killed_outside_python_is_a_crashed_run_with_its_reason_and_the_rerun_retries_it(
        tmp_path, user_module):
    gate = tmp_path / "g"
    spec = _gated(user_module, gate)
    killer = _killer(gate, wait_for_restart=False)
    executor = SlurmExecutor(tmp_path / "slurm", cluster="local", threads=1, poll_seconds=0.1)
    summary, recs = _sweep([spec], tmp_path / "r.sqlite", executor)
    killer.join(5)
    assert summary.crashed == 1
    error = recs[spec.key].error
    assert error.startswith("slurm job ") and "ended without a result" in error
    assert list((tmp_path / "slurm" / "jobs").iterdir()) == []  # collected: the next command submits it again
    summary, recs = _sweep([spec], tmp_path / "r.sqlite", executor)
    assert (summary.ran, summary.ok) == (1, 1) and recs[spec.key].final == execute(spec, "cpu", None).final
    assert len(list((tmp_path / "slurm" / "logs").glob("*_submitted.pkl"))) == 2  # submitted once more


def test_bench_dry_run_prints_each_stage_from_the_store_and_writes_nothing(tmp_path, capsys):
    from reltrust.workbench import bench
    from reltrust.workbench.results import RunRecord

    out = tmp_path / "bench"
    argv = ["bench", "--tiny", "--optimizer", "sgd", "--tasks", "mlp-mnist", "--out", str(out), "--executor", "slurm",
            "--partition", "cpu", "--dry-run"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "stage 1 (tuning): 2 of 2 run(s) to do: slurm (slurm): 0 run(s) already submitted" in text
    assert "2 submitted as one job array" in text and "'slurm_partition': 'cpu'" in text
    assert "stage 2 (rerun): 0 run(s) to do for the 0 task × optimizer pair(s) tuned so far; 1 pair(s)" in text
    assert not out.exists()
    # Stage 1 in the store (lr 0.1 the better): stage 2 is known, the rerun at 0.1 on seed 1.
    lo, hi = bench.tuning_grid([bench.TINY_TASKS["mlp-mnist"]], [bench.Entrant("sgd")], bench.PROTOCOLS["tiny"])
    assert (lo.lr, hi.lr) == (0.01, 0.1)
    with Store(out / "results.sqlite") as store:
        for spec, acc in ((lo, 0.6), (hi, 0.9)):
            store.record(RunRecord(spec=spec, status="ok", final={"val_acc": acc}))
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "stage 1 (tuning): 0 of 2 run(s) to do" in text
    (rerun,) = [line for line in text.splitlines() if line.startswith("  ")]
    assert rerun.endswith("sgd@0.1/seed1") and "stage 2 (rerun): 1 run(s) to do for the 1 task" in text
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_the_reports_command_line_records_the_executor_options_given():
    from reltrust.cli import build_parser
    from reltrust.workbench import bench
    from reltrust.workbench.cli import _command_line

    args = build_parser().parse_args(["reproduce", "depth", "--quick", "--executor", "slurm", "--partition", "cpu",
                                      "--time", "5", "--sbatch", "qos=low", "--sbatch", "account=lab"])
    assert _command_line(args) == ("reltrust reproduce depth --quick --executor slurm --partition cpu --time 5 "
                                   "--sbatch qos=low --sbatch account=lab")
    args = build_parser().parse_args(["bench", "--optimizer", "adam", "--executor", "dask", "--scheduler",
                                      "tcp://head:8786", "--workers", "4"])
    assert bench._command_line(args) == ("reltrust bench --optimizer adam --workers 4 --executor dask "
                                         "--scheduler tcp://head:8786")
    args = build_parser().parse_args(["bench", "--optimizer", "adam", "--time", "60"])  # defaults: not repeated
    assert bench._command_line(args) == "reltrust bench --optimizer adam"


def test_bench_without_the_extra_fails_with_the_install_command_before_writing(monkeypatch, tmp_path, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "distributed" else real(name, *a))
    out = tmp_path / "b"
    assert main(["bench", "--tiny", "--optimizer", "sgd", "--tasks", "mlp-mnist", "--out", str(out), "--executor",
                 "dask"]) == 2
    assert capsys.readouterr().err == "reltrust bench: --executor dask needs distributed: pip install 'reltrust[dask]'\n"
    assert not out.exists()
