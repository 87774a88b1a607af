"""Start N ranks of a worker function on CPU/gloo from pytest and collect what each check found.

    def worker(checks, tmp):                  # runs on every rank, process group already up
        with checks("fsdp/fromage"):          # records "ok" or the traceback, then goes on
            ...

    result = run_workers(worker, tmp, world_size=2)
    result.assert_ok("fsdp/fromage")          # in the test, on every rank's record

Ranks are separate processes started with `torch.multiprocessing`'s spawn context (each imports torch
afresh), rendezvous on 127.0.0.1 and a free port (a socket bound to port 0), and set up the default
process group with `reltrust.distributed.init_distributed("cpu")` — the helper torchrun users call.
One spawn serves a whole test module: the worker runs many checks, each recorded separately, so one
failing check does not hide the others. Everything a check compares is computed before its
assertions, so a failing assertion on one rank cannot leave the other waiting in a collective.
"""
from __future__ import annotations

import faulthandler
import json
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp

WORKER = "<worker>"  # the record of the worker function as a whole


class Checks:
    """Per-rank recorder: ``with checks(name): ...`` stores "ok" or the failure's traceback."""

    def __init__(self, rank: int, world_size: int, path: Path) -> None:
        self.rank, self.world_size, self._path = rank, world_size, path
        self.records: dict[str, str] = {}
        self.metrics: dict[str, Any] = {}  # numbers a worker wants the test (and its report) to see
        self.seconds: dict[str, float] = {}  # wall time of each check

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        except Exception:
            self.records[name] = traceback.format_exc()
        else:
            self.records[name] = "ok"
        self.seconds[name] = round(time.perf_counter() - start, 3)
        self.save()

    def save(self) -> None:
        tmp = self._path.with_suffix(".part")
        tmp.write_text(json.dumps({"records": self.records, "metrics": self.metrics, "seconds": self.seconds}))
        os.replace(tmp, self._path)


def _bootstrap(fn: Callable, rank: int, world_size: int, port: int, outdir: str, args: tuple, timeout: float) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size),
    )
    # this rank's stderr into a file the test reports when the rank dies (an abort in a C++ library
    # prints its reason there and nowhere else), with Python tracebacks of every thread on a fatal signal
    err = open(Path(outdir) / f"rank{rank}.stderr", "w", buffering=1)
    os.dup2(err.fileno(), 2)
    faulthandler.enable(err, all_threads=True)
    import torch

    torch.set_num_threads(1)  # 2 ranks on 2 cores
    from reltrust.distributed import destroy_distributed, init_distributed

    checks = Checks(rank, world_size, Path(outdir) / f"rank{rank}.json")
    with checks(WORKER):
        init_distributed("cpu", timeout=timeout)
        try:
            fn(checks, *args)
        finally:
            destroy_distributed()


@dataclass
class Result:
    records: list[dict[str, str]]  # per rank: check name -> "ok" or traceback
    metrics: list[dict[str, Any]]  # per rank: what the worker put in checks.metrics
    check_seconds: list[dict[str, float]]  # per rank: wall time of each check
    exitcodes: list[int | None]
    seconds: float
    stderr: list[str] = ()  # per rank: the end of what it wrote to stderr


    def assert_ok(self, name: str, ranks: list[int] | None = None) -> None:
        ranks = list(range(len(self.records))) if ranks is None else ranks
        problems = []
        for r in ranks:
            got = self.records[r].get(name)
            if got is None:
                worker = self.records[r].get(WORKER, "did not finish")
                problems.append(f"rank {r}: check {name!r} never ran (exit code {self.exitcodes[r]}); worker: {worker}")
                if self.exitcodes[r] not in (0, None) and r < len(self.stderr) and self.stderr[r]:
                    problems.append(f"rank {r} stderr (end):\n{self.stderr[r]}")
            elif got != "ok":
                problems.append(f"rank {r}: {got}")
        if problems:
            raise AssertionError("\n".join(problems))


def run_workers(
    fn: Callable,
    *args: Any,
    world_size: int = 2,
    deadline: float = 120.0,
    collective_timeout: float = 60.0,
) -> Result:
    """Run ``fn(checks, *args)`` on `world_size` spawned ranks; kill them all after `deadline` seconds."""
    from reltrust.distributed import free_port

    start = time.monotonic()
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="reltrust-dist-") as outdir:
        port = free_port()
        procs = [
            ctx.Process(target=_bootstrap, args=(fn, r, world_size, port, outdir, args, collective_timeout))
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(max(0.0, deadline - (time.monotonic() - start)))
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        saved, stderr = [], []
        for r in range(world_size):
            path = Path(outdir) / f"rank{r}.json"
            saved.append(json.loads(path.read_text()) if path.exists() else {})
            err = Path(outdir) / f"rank{r}.stderr"
            stderr.append(err.read_text(errors="replace")[-4000:] if err.exists() else "")
    return Result(
        records=[s.get("records", {}) for s in saved],
        metrics=[s.get("metrics", {}) for s in saved],
        check_seconds=[s.get("seconds", {}) for s in saved],
        exitcodes=[p.exitcode for p in procs],
        seconds=time.monotonic() - start,
        stderr=stderr,
    )
