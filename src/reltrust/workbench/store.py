"""The results store: one SQLite file (stdlib `sqlite3`, WAL journal) that holds every run.

Tables
  ``runs``    one row per run, keyed by `RunSpec.key`: the spec (columns for the common fields and the
              full spec as JSON), status (ok / diverged / crashed), the error text of a crash, the final
              metrics (JSON), the probe results (JSON), where it ran (JSON), and when it was recorded.
  ``epochs``  one row per (run, evaluated epoch): the per-epoch metrics as JSON.

One writer: the process that owns the `Store` (the runner's parent process); workers return results to
it. Each `record` is one transaction, so a sweep that is killed leaves every run it finished intact and
nothing half-written; `pending(specs)` then returns exactly the runs still to do. Crashed runs are
retried by `pending` unless ``retry_crashed=False`` (a crash says nothing about the optimiser; a
diverged run is a finished result and is never redone). A crash is never recorded over a finished
(ok / diverged) result of the same run: a failed rerun loses nothing.

A new store is built under a temporary name and linked into place with its tables, so a file at the
store's path is always a complete store; an existing file that is not one (not SQLite, empty,
truncated, other tables) raises `StoreError` and is left untouched. Every file written here (the store,
the exports) gets the permissions the user's umask gives a new file.

Numbers that are not finite (a diverged loss) are kept as JSON ``NaN``/``Infinity`` inside the store,
written as ``nan``/``inf`` in CSV and as ``null`` in the strict JSON export.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from reltrust.workbench.results import FINISHED, RunRecord
from reltrust.workbench.spec import RunSpec

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key        TEXT PRIMARY KEY,
    study      TEXT NOT NULL,
    dataset    TEXT NOT NULL,
    model      TEXT NOT NULL,
    optimizer  TEXT NOT NULL,
    lr         REAL NOT NULL,
    seed       INTEGER NOT NULL,
    spec       TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('ok', 'diverged', 'crashed')),
    error      TEXT,
    final      TEXT NOT NULL,
    probes     TEXT NOT NULL,
    info       TEXT NOT NULL,
    recorded   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_study ON runs (study);
CREATE TABLE IF NOT EXISTS epochs (
    key     TEXT NOT NULL REFERENCES runs (key) ON DELETE CASCADE,
    epoch   INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    PRIMARY KEY (key, epoch)
);
"""


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, allow_nan=True)


def _strict(obj: Any) -> Any:
    """Replace non-finite floats by None (strict JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def _last_line(text: str | None) -> str | None:
    """The last non-empty line of a traceback: the exception and its message."""
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1] if lines else None


def new_file_mode() -> int:
    """The permissions ``open()`` gives a new file under the current umask (0o666 & ~umask)."""
    umask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; see `atomic_write_bytes`."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to a temporary file beside `path`, give it the umask's permissions (`new_file_mode`;
    ``mkstemp`` makes it 0600), fsync it, then `os.replace` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


class StoreError(Exception):
    """The file at a store's path is not a results store this version can use; it was not changed."""


_SQLITE_HEADER = b"SQLite format 3\x00"


def _tables(db: sqlite3.Connection) -> dict[str, list[str]]:
    """table → column names, for the user tables of `db`."""
    names = [n for (n,) in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    return {n: [row[1] for row in db.execute("SELECT * FROM pragma_table_info(?)", (n,))] for n in names}


def _schema_tables() -> dict[str, list[str]]:
    """The tables of a store, as `_SCHEMA` makes them."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(_SCHEMA)
        return _tables(db)
    finally:
        db.close()


def _schema_difference(found: dict[str, list[str]], expected: dict[str, list[str]]) -> str:
    """How the tables `found` differ from a store's, in a few words."""
    if set(found) != set(expected):
        return f"its tables are {', '.join(found) or 'none'}; a store has {', '.join(expected)}"
    return f"other columns in table {', '.join(t for t in expected if found[t] != expected[t])}"


def _create(path: Path) -> None:
    """Build a store with its tables (WAL mode) beside `path`, then hard-link it into place; when another
    process created `path` first, theirs is kept."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, new_file_mode())
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.executescript(_SCHEMA)
            db.execute("PRAGMA journal_mode=WAL")
        finally:
            db.close()
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


def _problem(path: Path) -> str | None:
    """Why the existing file `path` cannot be a store, from its size and header (None: it may be one)."""
    if path.is_dir():
        return "a folder"
    with open(path, "rb") as f:
        head = f.read(len(_SQLITE_HEADER))
    if not head:
        return "an empty file; a store reltrust made always holds its tables"
    if head != _SQLITE_HEADER:
        return "not an SQLite database"
    return None


Record = RunRecord  # what the store reads back is the record type the runner writes


class Store:
    """A results store in the SQLite file `path` (created, with its folder, if missing); with
    ``readonly=True`` an existing one opened for reading only, creating no file (a dry run's view).

    Raises `StoreError` (one line naming the file and what is wrong with it) when `path` exists but is
    not a results store: not an SQLite database, empty, damaged or truncated, or other tables."""

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False):
        self.path = Path(path)
        if readonly and not self.path.exists():
            raise StoreError(f"{self.path} does not exist (a read-only store is never created)")
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            _create(self.path)
        why = _problem(self.path)
        if why is not None:
            raise StoreError(f"{self.path} is not a reltrust results store ({why})")
        if readonly:  # writes nothing, not even a -wal/-shm (immutable) unless a writer left them (ro reads them)
            wal = Path(f"{self.path}-wal").exists()
            uri = f"{self.path.resolve().as_uri()}?{'mode=ro' if wal else 'immutable=1'}"
            self._db = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None)
        else:
            self._db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
        try:
            found = _tables(self._db)  # read before any pragma, which would write to a file that is no store
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise StoreError(f"{self.path} is not a reltrust results store (damaged or truncated: {e})") from None
        expected = _schema_tables()
        if found != expected:
            self._db.close()
            raise StoreError(f"{self.path} is not a reltrust results store "
                             f"({_schema_difference(found, expected)})")
        if readonly:
            return
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")

    # ---- lifecycle ---------------------------------------------------------------------------------
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- writing -----------------------------------------------------------------------------------
    def record(self, result: RunRecord) -> bool:
        """Insert or replace one run and its epochs, in one transaction; True when it was stored.

        A ``crashed`` result for a run whose stored result is finished (ok / diverged) is not stored
        (False): the finished result is kept, whatever went wrong with the rerun."""
        spec = result.spec
        key = spec.key
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            stored = db.execute("SELECT status FROM runs WHERE key = ?", (key,)).fetchone()
            if result.status == "crashed" and stored is not None and stored[0] in FINISHED:
                db.execute("ROLLBACK")
                return False
            db.execute("DELETE FROM epochs WHERE key = ?", (key,))
            db.execute("DELETE FROM runs WHERE key = ?", (key,))
            db.execute(
                "INSERT INTO runs (key, study, dataset, model, optimizer, lr, seed, spec, status, error,"
                " final, probes, info, recorded) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key, spec.study, spec.dataset, spec.model, spec.optimizer, spec.lr, spec.seed,
                    _dumps(spec.to_dict()), result.status, result.error, _dumps(result.final),
                    _dumps(result.probes), _dumps(result.info), now,
                ),
            )
            db.executemany(
                "INSERT INTO epochs (key, epoch, metrics) VALUES (?, ?, ?)",
                [(key, int(h["epoch"]), _dumps(h)) for h in result.history],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return True

    # ---- reading -----------------------------------------------------------------------------------
    def statuses(self) -> dict[str, str]:
        """key → status of every stored run."""
        return dict(self._db.execute("SELECT key, status FROM runs").fetchall())

    def pending(self, specs: Iterable[RunSpec], *, retry_crashed: bool = True) -> list[RunSpec]:
        """The specs (in their order, duplicates dropped) whose run is not finished in this store."""
        done = self.statuses()
        keep = FINISHED if retry_crashed else FINISHED + ("crashed",)
        out, seen = [], set()
        for s in specs:
            k = s.key
            if k in seen:
                continue
            seen.add(k)
            if done.get(k) not in keep:
                out.append(s)
        return out

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]

    def __contains__(self, spec: RunSpec) -> bool:
        return self._db.execute("SELECT 1 FROM runs WHERE key = ?", (spec.key,)).fetchone() is not None

    def get(self, spec_or_key: RunSpec | str) -> Record | None:
        key = spec_or_key.key if isinstance(spec_or_key, RunSpec) else spec_or_key
        recs = self._fetch("WHERE key = ?", (key,))
        return recs[0] if recs else None

    def records(self, *, study: str | None = None, specs: Iterable[RunSpec] | None = None) -> list[Record]:
        """Stored runs (all, one study's, or those of `specs` that are stored), in a stable order."""
        if specs is not None:
            wanted = [s.key for s in specs]
            by_key = {r.key: r for r in self._fetch("", ())} if wanted else {}
            recs, seen = [], set()
            for k in wanted:
                if k in by_key and k not in seen:
                    seen.add(k)
                    recs.append(by_key[k])
            return [r for r in recs if study is None or r.spec.study == study]
        if study is not None:
            return self._fetch("WHERE study = ?", (study,))
        return self._fetch("", ())

    def _fetch(self, where: str, params: tuple) -> list[Record]:
        rows = self._db.execute(
            f"SELECT key, spec, status, error, final, probes, info, recorded FROM runs {where}"
            " ORDER BY study, dataset, model, optimizer, lr, seed, key",
            params,
        ).fetchall()
        out = []
        for key, spec, status, error, final, probes, info, recorded in rows:
            hist = [
                json.loads(m)
                for (m,) in self._db.execute("SELECT metrics FROM epochs WHERE key = ? ORDER BY epoch", (key,))
            ]
            out.append(
                RunRecord(spec=RunSpec.from_dict(json.loads(spec)), status=status, history=hist, final=json.loads(final),
                          error=error, probes=json.loads(probes), info=json.loads(info), key=key, recorded=recorded)
            )
        return out

    # ---- export ------------------------------------------------------------------------------------
    CSV_COLUMNS = (
        "key", "study", "task", "problem", "model", "optimizer", "lr", "seed", "epochs", "batch_size",
        "weight_decay", "schedule", "status", "diverged", "train_acc", "train_loss", "train_acc_running", "val_acc", "val_loss",
        "test_acc", "test_loss", "epochs_run", "steps", "model_kwargs", "optimizer_kwargs",
        "schedule_kwargs", "wall_seconds", "device", "threads", "error",
    )

    def export_csv(self, path: str | os.PathLike, records: Sequence[Record] | None = None,
                   extra_columns: dict[str, Any] | None = None) -> Path:
        """One row per run (final metrics; model kwargs also as their own columns, e.g. ``depth``).

        ``problem`` is the spec's dataset; ``train_acc``/``train_loss`` are measured in eval mode over the
        whole training split, ``train_acc_running`` is the mean minibatch accuracy during the last epoch
        (the paper's depth-study metric); ``diverged`` is True/False; ``error`` is the last line of a
        crash's traceback (the full text is in the store and the JSON export).

        `extra_columns`: name → function(record) for study-specific columns. Written atomically.
        """
        recs = self.records() if records is None else list(records)
        mk_names = sorted({k for r in recs for k in r.spec.kwargs("model")})
        extra_columns = dict(extra_columns or {})
        head = self.CSV_COLUMNS.index("status")
        cols = list(self.CSV_COLUMNS[:head]) + [k for k in mk_names if k not in self.CSV_COLUMNS]
        cols += [c for c in extra_columns if c not in cols] + list(self.CSV_COLUMNS[head:])
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for r in recs:
            s, f = r.spec, r.final
            row: dict[str, Any] = {
                "key": r.key, "study": s.study, "task": s.task, "problem": s.dataset, "model": s.model, "optimizer": s.optimizer,
                "lr": s.lr, "seed": s.seed, "epochs": s.epochs, "batch_size": s.batch_size,
                "weight_decay": s.weight_decay, "schedule": s.schedule, "status": r.status,
                "diverged": r.status == "diverged",
                "model_kwargs": json.dumps(s.kwargs("model"), sort_keys=True),
                "optimizer_kwargs": json.dumps(s.kwargs("optimizer"), sort_keys=True),
                "schedule_kwargs": json.dumps(s.kwargs("schedule"), sort_keys=True),
                "wall_seconds": r.info.get("wall_seconds"), "device": r.info.get("device"),
                "threads": r.info.get("threads"), "error": _last_line(r.error),
            }
            for m in ("train_acc", "train_loss", "train_acc_running", "val_acc", "val_loss", "test_acc", "test_loss",
                      "epochs_run", "steps"):
                row[m] = f.get(m)
            for k, v in s.kwargs("model").items():
                if k in cols:
                    row[k] = v
            for name, fn in extra_columns.items():
                row[name] = fn(r)
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})
        return atomic_write_text(path, buf.getvalue())

    def export_json(self, path: str | os.PathLike, records: Sequence[Record] | None = None) -> Path:
        """Every run in full (spec, status, error, final, per-epoch history, probes, info); strict JSON."""
        recs = self.records() if records is None else list(records)
        data = [
            {
                "key": r.key, "spec": r.spec.to_dict(), "status": r.status, "error": r.error, "final": r.final,
                "history": r.history, "probes": r.probes, "info": r.info, "recorded": r.recorded,
            }
            for r in recs
        ]
        text = json.dumps(_strict(data), indent=1, sort_keys=True, allow_nan=False)
        return atomic_write_text(path, text + "\n")
