"""What does each sweep executor cost per run? Prints seconds per tiny run on local worker processes,
a Dask LocalCluster and submitit's local executor (the SLURM path, run as processes here), and the
ratios against local processes, all measured in this one run.

    PYTHONPATH=src python benchmarks/executor_overhead.py [--runs 8] [--workers 2]

Each executor runs the same `--runs` tiny specs (MNIST 5k, an MLP 784-8-10, one epoch, distinct
learning rates) into a fresh store with `--workers` parallel runs × 1 torch thread, cluster start
included (a LocalCluster is started per sweep, as `--executor dask` without --scheduler does; each
submitit job is a fresh Python process, as each SLURM array task is). "in-run" is the median of the
runs' own wall_seconds (the training itself, slower when more runs share the cores); "+s/run vs
local" is the wall seconds per run beyond local processes'. submitit's local executor starts every
job at once (no array-parallelism cap on this machine), so its runs share the cores N ways.
A script: never run by the test suite. Write `uptime`'s load average beside the numbers.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from reltrust.workbench.executors import DaskExecutor, SlurmExecutor
from reltrust.workbench.runner import run_sweep
from reltrust.workbench.spec import RunSpec
from reltrust.workbench.store import Store


def specs(n: int) -> list[RunSpec]:
    return [RunSpec(study="bench-executors", dataset="mnist", model="mlp", optimizer="sgd", lr=0.01 * (i + 1),
                    optimizer_kwargs={"momentum": 0.9}, seed=0, epochs=1, batch_size=250,
                    model_kwargs={"depth": 1, "width": 8}) for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if args.runs < 1 or args.workers < 1:
        raise SystemExit("--runs and --workers must be >= 1")
    todo = specs(args.runs)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("local", "dask", "slurm-local"):
            executor = {"local": None, "dask": DaskExecutor(workers=args.workers, threads=1),
                        "slurm-local": SlurmExecutor(Path(tmp) / "slurm", cluster="local", threads=1,
                                                     poll_seconds=0.1)}[name]
            with Store(Path(tmp) / f"{name}.sqlite") as store:
                t0 = time.perf_counter()
                s = run_sweep(todo, store, workers=args.workers, threads=1, progress=False, executor=executor)
                wall = time.perf_counter() - t0
                inrun = statistics.median(r.info.get("wall_seconds", float("nan")) for r in store.records())
            if s.ok + s.diverged != args.runs:
                print(f"{name}: {s.line()}")
            rows[name] = (wall / args.runs, inrun)
    print(f"{args.runs} tiny runs, {args.workers} parallel × 1 thread, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    print(f"{'executor':<12} {'s/run (wall)':>12} {'in-run s':>9} {'+s/run vs local':>16} {'wall ratio vs local':>20}")
    base = rows["local"][0]
    for name, (per, inrun) in rows.items():
        print(f"{name:<12} {per:>12.2f} {inrun:>9.2f} {per - base:>+16.2f} {per / base:>20.2f}")


if __name__ == "__main__":
    main()
