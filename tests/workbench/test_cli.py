"""`reltrust reproduce depth` end to end on the hidden --tiny grid: outputs, resume after a kill,
worker processes matching in-process runs and ending with their driver, a failed `run` rerun keeping
the finished result."""
from __future__ import annotations

import csv
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reltrust.cli import main
from reltrust.workbench.runner import run_sweep
from reltrust.workbench.store import Store
from reltrust.workbench.studies import depth

from seam_baseline import runs_before_the_task_seam, runs_in

SRC = str(Path(__file__).resolve().parents[2] / "src")
TINY = ["--tiny", "--threads", "1", "--no-progress"]


def _metrics(store_path: Path) -> dict:
    """key → (status, final, history without wall-clock seconds): what must match between two sweeps."""
    with Store(store_path) as store:
        return {r.key: (r.status, r.final, [{k: v for k, v in h.items() if k != "seconds"} for h in r.history])
                for r in store.records()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    rc = main(["reproduce", "depth", "--out", str(out), "--workers", "0", *TINY])
    return out, rc


def test_outputs_are_written_and_report_numbers_come_from_the_data(reference):
    out, rc = reference
    assert rc == 0
    specs = depth.grid(tiny=True)
    for name in ("results.sqlite", "results.csv", "results.json", "report.md", "depth_summary.csv",
                 "depth.png", "lr_sensitivity.png", "curves.png"):
        assert (out / name).is_file(), name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    umask = os.umask(0o022)
    os.umask(umask)
    for f in out.iterdir():  # what the user's umask gives any new file (mkstemp alone would give 0600)
        if f.name != ".lock":
            assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f.name
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == len(specs) and {r["status"] for r in rows} <= {"ok", "diverged"}
    assert {r["init"] for r in rows} == {"default", "kaiming"} and {r["depth"] for r in rows} == {"1", "3"}

    # The report's headline sentence equals the best-over-lr value computed from results.csv.
    report = (out / "report.md").read_text()
    for init in ("default", "kaiming"):
        best = max(float(r["train_acc"]) for r in rows
                   if r["init"] == init and r["depth"] == "3" and r["optimizer"] == "fromage")
        m = re.search(rf"At depth 3 under {init} init, best final train accuracy: Fromage (\d\.\d\d)", report)
        assert m and float(m.group(1)) == pytest.approx(best, abs=0.006), (m, best)
    for png in ("depth.png", "lr_sensitivity.png", "curves.png"):
        assert f"]({png})" in report
    assert "Command: `reltrust reproduce depth" in report and "seeds 0" in report
    assert "None: all 36 runs finished" in report


def test_the_tiny_depth_grid_gives_the_results_recorded_before_the_task_seam(reference):
    out, rc = reference
    assert rc == 0
    assert runs_in(out / "results.json") == runs_before_the_task_seam("depth")  # same keys, bit-identical


def test_killed_sweep_resumes_without_redoing_finished_runs(tmp_path, reference):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "reltrust", "reproduce", "depth", "--out", str(out), "--workers", "0", *TINY]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    db = out / "results.sqlite"
    done_before: dict[str, str] = {}
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if db.exists():
                try:
                    with sqlite3.connect(db) as con:
                        rows = con.execute("SELECT key, recorded FROM runs").fetchall()
                except sqlite3.OperationalError:
                    rows = []
                if len(rows) >= 3:
                    proc.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    with sqlite3.connect(db) as con:
        done_before = dict(con.execute("SELECT key, recorded FROM runs").fetchall())
    n_specs = len(depth.grid(tiny=True))
    assert 3 <= len(done_before) < n_specs, "the sweep was not interrupted part-way"

    with Store(db) as store:  # resume (the CLI would do the same, plus the report)
        summary = run_sweep(depth.grid(tiny=True), store, workers=0, threads=1, progress=False)
    assert summary.skipped == len(done_before) and summary.ran == n_specs - len(done_before)
    with sqlite3.connect(db) as con:
        after = dict(con.execute("SELECT key, recorded FROM runs").fetchall())
    assert len(after) == n_specs
    assert {k: after[k] for k in done_before} == done_before  # finished runs were not redone
    assert _metrics(db) == _metrics(reference[0] / "results.sqlite")  # same store as an uninterrupted sweep


def test_worker_processes_reproduce_the_in_process_sweep_bit_for_bit(tmp_path, reference):
    # Spawned workers (2 × 1 thread) on part of the grid, plus a crash inside a worker process.
    specs = depth.grid(tiny=True)[::9]
    broken = specs[0].replace(model_kwargs={**specs[0].kwargs("model"), "init": "no-such-init"})
    with Store(tmp_path / "pool.sqlite") as store:
        summary = run_sweep([*specs, broken], store, workers=2, threads=1, progress=False)
        assert (summary.workers, summary.threads, summary.ok + summary.diverged, summary.crashed) == (2, 1, len(specs), 1)
        assert {r.info["threads"] for r in store.records(specs=specs)} == {1}
        assert "no-such-init" in store.get(broken).error
    pool = _metrics(tmp_path / "pool.sqlite")
    ref = _metrics(reference[0] / "results.sqlite")
    assert {s.key: pool[s.key] for s in specs} == {s.key: ref[s.key] for s in specs}


def test_a_second_sweep_into_the_same_folder_is_refused_while_one_runs(tmp_path):
    import fcntl

    out = tmp_path / "busy"
    out.mkdir()
    with open(out / ".lock", "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running sweep holds it
        assert main(["reproduce", "depth", "--out", str(out), "--workers", "0", *TINY]) == 2
    assert not (out / "results.sqlite").exists()


def test_a_rerun_that_fails_never_replaces_a_finished_run(tmp_path, capsys):
    out = tmp_path / "one"
    base = ["run", "depth", "--tiny", "--index", "0", "--out", str(out)]
    assert main(base) == 0

    def stored():
        with Store(out / "results.sqlite") as store:
            (rec,) = store.records()
            return rec.status, rec.error, rec.final, rec.history, rec.recorded

    finished = stored()
    assert finished[0] == "ok" and finished[3]
    # usage mistakes: refused before the store is touched
    for mistake in (["--device", "cuda:99"], ["--data-dir", str(tmp_path / "missing")]):
        with pytest.raises(SystemExit) as e:
            main([*base, *mistake])
        assert e.value.code == 2 and stored() == finished
    # a real crash of the rerun (a data folder without the MNIST files): raised, said, not stored over it
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="IDX files are not installed"):
        main([*base, "--data-dir", str(tmp_path / "empty")])
    assert f"the finished result already in {out / 'results.sqlite'} is kept" in capsys.readouterr().err
    assert stored() == finished


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (state, ppid, ...), or None when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _descendants(pid: int) -> dict[int, str]:
    """pid → command line of every live process below `pid` (scanning /proc/*/stat for parents)."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (f := _stat_fields(int(d.name))) is not None:
            parents[int(d.name)] = int(f[1])
    found, frontier = {}, [pid]
    while frontier:
        p = frontier.pop()
        for child, parent in parents.items():
            if parent == p and child not in found:
                try:
                    found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                frontier.append(child)
    return found


def _alive(pid: int) -> bool:
    f = _stat_fields(pid)
    return f is not None and f[0] != "Z"  # a zombie has ended (its reaper may be slow to collect it)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_worker_processes_end_with_their_driver(tmp_path, sig):
    out = tmp_path / "pool"
    cmd = [sys.executable, "-m", "reltrust", "reproduce", "depth", "--out", str(out), "--workers", "2", *TINY]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    db = out / "results.sqlite"
    below: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:  # both workers started, runs arriving
            below = _descendants(proc.pid)
            workers = [p for p, c in below.items() if "spawn_main" in c]
            if len(workers) == 2 and db.exists():
                with sqlite3.connect(db) as con:
                    recorded = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
                if recorded >= 1:
                    break
            time.sleep(0.02)
        assert proc.poll() is None and len(workers) == 2, "the sweep never got going (or finished too soon)"
        sent = time.monotonic()
        proc.send_signal(sig)
        while any(_alive(p) for p in workers) and time.monotonic() < sent + 5:
            time.sleep(0.05)
        gone_after = time.monotonic() - sent
        assert not any(_alive(p) for p in workers), f"workers still running 5 s after {sig.name}: {workers}"
        rc = proc.wait(timeout=60)
        exited = time.monotonic()
        while any(_alive(p) for p in below) and time.monotonic() < exited + 5:  # the resource tracker too
            time.sleep(0.05)
        assert not [below[p] for p in below if _alive(p)]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for p in below:  # leave no stray worker behind when the test fails
            if _alive(p):
                os.kill(p, signal.SIGKILL)
    print(f"{sig.name}: workers gone {gone_after:.2f} s after the signal")
    with sqlite3.connect(db) as con:
        statuses = [s for (s,) in con.execute("SELECT status FROM runs")]
    assert len(statuses) >= recorded and set(statuses) <= {"ok", "diverged"}  # what finished is kept
    if sig == signal.SIGTERM:
        assert rc == 143
        assert (out / "results.csv").is_file() and (out / "report.md").is_file()
    else:
        assert rc == -signal.SIGKILL
