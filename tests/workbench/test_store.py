"""The SQLite results store: round trip, pending, statuses, exports, refusing what is no store, file modes."""
from __future__ import annotations

import csv
import json
import math
import os
import sqlite3
import stat

import pytest

from reltrust.workbench.spec import RunSpec
from reltrust.workbench.store import Store, StoreError, atomic_write_text
from reltrust.workbench.results import RunRecord
from reltrust.workbench.train import fit


def _fake(spec, status="ok", acc=0.5, loss=1.0, error=None):
    hist = [{"epoch": 0, "lr": None, "train_loss": 2.3, "train_acc": 0.1},
            {"epoch": 1, "lr": spec.lr, "train_loss": loss, "train_acc": acc}]
    return RunRecord(spec=spec, status=status, history=hist, final={"train_loss": loss, "train_acc": acc},
                     error=error, info={"wall_seconds": 0.1, "device": "cpu", "threads": 1})


def test_record_and_read_back_a_real_run(tmp_path, tiny_spec):
    spec = tiny_spec()
    res = fit(spec)
    with Store(tmp_path / "s.sqlite") as store:
        store.record(res)
        rec = store.get(spec)
    assert rec.spec == spec and rec.status == "ok" and rec.error is None
    assert rec.history == res.history and rec.final == res.final and rec.info == res.info
    # WAL mode, reopened from disk by a second connection
    with Store(tmp_path / "s.sqlite") as again:
        assert again._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert again.get(spec.key).final == res.final


def test_pending_skips_finished_and_retries_crashed(tmp_path, tiny_spec):
    a, b, c, d = (tiny_spec(seed=i) for i in range(4))
    with Store(tmp_path / "s.sqlite") as store:
        store.record(_fake(a))
        store.record(_fake(b, status="diverged", loss=float("nan"), acc=0.0))
        store.record(_fake(c, status="crashed", error="Traceback ...\nValueError: boom"))
        assert store.pending([a, b, c, d, d]) == [c, d]
        assert store.pending([a, b, c, d], retry_crashed=False) == [d]
        assert store.statuses() == {a.key: "ok", b.key: "diverged", c.key: "crashed"}
        # recording again replaces (a retried crash that now works)
        store.record(_fake(c))
        assert store.get(c).status == "ok" and store.get(c).error is None and len(store) == 3


def test_non_finite_numbers_round_trip(tmp_path, tiny_spec):
    spec = tiny_spec()
    with Store(tmp_path / "s.sqlite") as store:
        store.record(_fake(spec, status="diverged", loss=float("inf"), acc=0.0))
        rec = store.get(spec)
    assert math.isinf(rec.final["train_loss"]) and rec.history[1]["train_loss"] == float("inf")


def test_csv_and_json_exports(tmp_path, tiny_spec):
    specs = [tiny_spec(seed=i, model_kwargs={"depth": 2 + i, "width": 8}) for i in range(3)]
    with Store(tmp_path / "s.sqlite") as store:
        store.record(_fake(specs[0], acc=0.75))
        store.record(_fake(specs[1], status="diverged", loss=float("nan"), acc=0.0))
        store.record(_fake(specs[2], status="crashed", error="Traceback (most recent call last):\nValueError: boom"))
        store.export_csv(tmp_path / "r.csv")
        store.export_json(tmp_path / "r.json")
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert len(rows) == 3
    by_seed = {int(r["seed"]): r for r in rows}
    for col in ("study", "problem", "optimizer", "lr", "seed", "depth", "train_acc", "train_loss", "diverged", "status"):
        assert col in rows[0], col
    assert float(by_seed[0]["train_acc"]) == 0.75 and by_seed[0]["diverged"] == "False"
    assert by_seed[1]["status"] == "diverged" and by_seed[1]["diverged"] == "True" and by_seed[1]["train_loss"] == "nan"
    assert by_seed[2]["status"] == "crashed" and by_seed[2]["error"] == "ValueError: boom"
    assert [int(by_seed[i]["depth"]) for i in range(3)] == [2, 3, 4]

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    data = json.loads((tmp_path / "r.json").read_text(), parse_constant=no_constants)
    assert {d["key"] for d in data} == {s.key for s in specs}
    div = next(d for d in data if d["status"] == "diverged")
    assert div["final"]["train_loss"] is None and len(div["history"]) == 2
    # no temporary files left behind by the atomic writes
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")

    with pytest.raises(TypeError):
        atomic_write_text(target, 12345)  # not text: fails while writing the temporary file
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_crash_never_replaces_a_finished_result(tmp_path, tiny_spec):
    ok, div, crash = tiny_spec(seed=0), tiny_spec(seed=1), tiny_spec(seed=2)
    with Store(tmp_path / "s.sqlite") as store:
        assert store.record(_fake(ok, acc=0.75))
        assert store.record(_fake(div, status="diverged", loss=float("nan"), acc=0.0))
        assert store.record(_fake(crash, status="crashed", error="Traceback ...\nValueError: first"))
        before = {s.key: store.get(s) for s in (ok, div)}
        for spec in (ok, div):  # a failed rerun of a finished run: refused, the finished result stays
            assert store.record(_fake(spec, status="crashed", error="Traceback ...\nRuntimeError: no cuda")) is False
            rec = store.get(spec)
            assert (rec.status, rec.final, rec.history, rec.recorded) == (
                before[spec.key].status, before[spec.key].final, before[spec.key].history, before[spec.key].recorded)
            assert rec.error is None
        # a crash over a crash is stored (the newer error), and a finished result replaces a crash
        assert store.record(_fake(crash, status="crashed", error="Traceback ...\nValueError: second"))
        assert store.get(crash).error.endswith("second")
        assert store.record(_fake(crash, acc=0.5)) and store.get(crash).status == "ok"


def _truncated_store(path):
    with Store(path) as store:
        for i in range(40):
            store.record(_fake(RunSpec(study="t", dataset="mnist", model="mlp", optimizer="sgd", lr=0.1, seed=i,
                                       epochs=2, batch_size=250, model_kwargs={"note": "x" * 500})))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _foreign_db(path, sql):
    con = sqlite3.connect(path)
    con.executescript(sql)
    con.close()


@pytest.mark.parametrize("kind, make, why", [
    ("garbage header", lambda p: p.write_bytes(b"this is not a database\n" * 100), "not an SQLite database"),
    ("zero bytes", lambda p: p.write_bytes(b""), "an empty file; a store reltrust made always holds its tables"),
    ("truncated", _truncated_store, "damaged or truncated"),
    ("other tables", lambda p: _foreign_db(p, "CREATE TABLE photos (id INTEGER, name TEXT)"),
     "its tables are photos; a store has epochs, runs"),
    ("other columns", lambda p: _foreign_db(p, "CREATE TABLE runs (key TEXT); CREATE TABLE epochs (key TEXT)"),
     "other columns in table epochs, runs"),
])
def test_a_file_that_is_no_store_is_refused_and_left_untouched(tmp_path, kind, make, why):
    path = tmp_path / "results.sqlite"
    make(path)
    before = path.read_bytes()
    with pytest.raises(StoreError) as e:
        Store(path)
    msg = str(e.value)
    assert msg == f"{path} is not a reltrust results store ({why})" or (
        kind == "truncated" and msg.startswith(f"{path} is not a reltrust results store ({why}: "))
    assert "\n" not in msg
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.sqlite"]  # no -wal/-shm, no temporary file


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_every_file_written_gets_the_umask_permissions(tmp_path, tiny_spec, umask):
    from reltrust.workbench.plots import curves
    from reltrust.workbench.report import Report

    old = os.umask(umask)
    try:
        with Store(tmp_path / "results.sqlite") as store:
            store.record(_fake(tiny_spec()))
            store.export_csv(tmp_path / "results.csv")
            store.export_json(tmp_path / "results.json")
        Report("t").para("x").write(tmp_path / "report.md")
        curves({"p": {"fromage": ([0, 1], [[0.1, 0.9]])}}, tmp_path / "curves.png", xlabel="epoch", ylabel="acc")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {name: 0o666 & ~umask for name in
                     ("results.sqlite", "results.csv", "results.json", "report.md", "curves.png")}
