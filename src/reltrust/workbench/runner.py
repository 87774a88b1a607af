"""The runner: a list of `RunSpec` → worker processes → `fit` → the store.

    specs = sweep(base, problems=["mnist"], optimizers={"fromage": {}, "sgd": {"momentum": 0.9}},
                  lrs={"fromage": [0.01], "sgd": [0.1]}, seeds=[0, 1])
    summary = run_sweep(specs, Store("runs/x/results.sqlite"), workers=2)

- Only `store.pending(specs)` runs: a sweep that was killed resumes where it stopped.
- Runs go to `workers` processes started with the *spawn* context (no forked torch state), each with
  `torch.set_num_threads(threads)`; by default workers = min(runs, CPU cores) and threads = cores //
  workers (2 cores → 2 workers × 1 thread: small models gain more from processes than from threads).
  ``workers=0`` runs everything in this process (debugging; no isolation).
- The parent process is the store's only writer: each result is recorded as soon as it arrives.
- A run that raises is recorded as ``crashed`` with its traceback and the sweep goes on; a worker
  process that dies (killed, out of memory) is replaced and its runs retried once, then recorded as
  crashed. A diverged run is a result (``diverged``), not a crash.
- Workers end with their parent: an exception that stops the sweep in the parent (Ctrl-C, the CLI's
  SIGTERM) terminates them at once (their runs in flight are lost, what finished is stored), and a
  worker whose parent is gone (SIGKILL) notices within half a second and exits.
- Runs are started longest first (by a rough cost estimate) so that the last minutes are not spent
  waiting on one long run.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import itertools
import multiprocessing as mp
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from reltrust.workbench.results import RunRecord
from reltrust.workbench.spec import RunSpec
from reltrust.workbench.store import Store


def sweep(
    base: RunSpec,
    *,
    settings: Sequence[Mapping[str, Any]] | None = None,
    problems: Sequence[str] | None = None,
    models: Sequence[Mapping[str, Any]] | None = None,
    optimizers: Mapping[str, Mapping[str, Any]] | Sequence[str] | None = None,
    lrs: Mapping[str, Sequence[float]] | Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
) -> list[RunSpec]:
    """settings × problems × model variants × optimisers × learning rates × seeds, as specs derived
    from `base`, in that order (the last varies fastest).

    `settings`: a list of RunSpec field updates, one per setting (e.g. one per task: its task,
    dataset, model, budget); `problems`: dataset names; `models`: a list of model_kwargs updates (e.g.
    one per depth); `optimizers`: names (any of `reltrust.optim.available()`), or name →
    optimizer_kwargs; `lrs`: one list for all, or optimiser name → list. An axis left out keeps
    `base`'s value.
    """
    settings = list(settings) if settings is not None else [{}]
    models = list(models) if models is not None else [{}]
    seeds = list(seeds) if seeds is not None else [base.seed]
    out = []
    for setting in settings:
        first = base.replace(**dict(setting))
        opts = optimizers if optimizers is not None else {first.optimizer: first.kwargs("optimizer")}
        if not isinstance(opts, Mapping):
            opts = {name: {} for name in opts}
        for problem, model_update, (opt, okw) in itertools.product(
                problems if problems is not None else [first.dataset], models, opts.items()):
            if lrs is None:
                opt_lrs: Sequence[float] = [first.lr]
            elif isinstance(lrs, Mapping):
                opt_lrs = lrs[opt]
            else:
                opt_lrs = lrs
            mk = {**first.kwargs("model"), **dict(model_update)}
            for lr, seed in itertools.product(opt_lrs, seeds):
                out.append(first.replace(dataset=problem, model_kwargs=mk, optimizer=opt, optimizer_kwargs=dict(okw),
                                         lr=float(lr), seed=int(seed)))
    return out


@dataclasses.dataclass
class SweepSummary:
    total: int  # specs asked for (distinct)
    skipped: int  # already finished in the store before this call
    ran: int  # recorded by this call
    ok: int = 0
    diverged: int = 0
    crashed: int = 0
    not_run: int = 0  # left pending (interrupted)
    workers: int = 0
    threads: int = 0
    wall_seconds: float = 0.0

    def line(self) -> str:
        return (f"{self.ran} run(s) recorded ({self.ok} ok, {self.diverged} diverged, {self.crashed} crashed), "
                f"{self.skipped} already done, {self.not_run} not run; {self.workers} worker(s) × "
                f"{self.threads} thread(s); {self.wall_seconds:.1f} s")


def estimate_cost(spec: RunSpec) -> float:
    """A rough relative cost (epochs × depth × width²) used only to start long runs first."""
    mk = spec.kwargs("model")
    depth = mk.get("depth", 1) or 1
    width = mk.get("width", 64) or 64
    return float(max(spec.epochs, 1)) * float(depth) * float(width) ** 2


def default_workers(n_runs: int) -> tuple[int, int]:
    """(workers, threads per worker) for this machine: one single-threaded process per core."""
    cores = os.cpu_count() or 1
    workers = max(1, min(n_runs, cores))
    return workers, max(1, cores // workers)


def execute(spec: RunSpec, device: str = "cpu", data_dir: str | None = None, progress: bool = False) -> RunRecord:
    """`fit(spec)`, with any exception turned into a ``crashed`` result carrying the traceback."""
    from reltrust.workbench.train import fit

    t0 = time.perf_counter()
    try:
        return fit(spec, device=device, data_dir=data_dir, progress=progress)
    except Exception:  # noqa: BLE001 - a crash is recorded, never allowed to stop the sweep
        import torch

        return RunRecord(
            spec=spec, status="crashed", error=traceback.format_exc(),
            info={"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
                  "wall_seconds": time.perf_counter() - t0},
        )


def _watch_parent(parent: int) -> None:
    """Exit this worker as soon as its parent process `parent` is gone (it was reparented)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _init_worker(threads: int, parent: int) -> None:
    import threading

    import torch

    threading.Thread(target=_watch_parent, args=(parent,), name="watch-parent", daemon=True).start()

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


def _dead_worker_result(spec: RunSpec, device: str, why: str) -> RunRecord:
    return RunRecord(spec=spec, status="crashed", error=f"worker process died while running this spec: {why}",
                     info={"device": str(device)})


def run_sweep(
    specs: Iterable[RunSpec],
    store: Store,
    *,
    workers: int | None = None,
    threads: int | None = None,
    device: str = "cpu",
    data_dir: str | None = None,
    progress: bool | None = None,
    retry_crashed: bool = True,
    on_result: Callable[[RunRecord], None] | None = None,
    executor: Any = None,
) -> SweepSummary:
    """Run every spec not yet finished in `store`, record each result as it arrives; see module doc.
    `executor`: where the runs execute (`reltrust.workbench.executors`; None or a LocalExecutor:
    worker processes here); whatever it is, results come back to this process, the store's one writer."""
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be >= 0 (0: run in this process), got {workers}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    t0 = time.perf_counter()
    specs = list(specs)
    distinct = {s.key for s in specs}
    todo = store.pending(specs, retry_crashed=retry_crashed)
    todo.sort(key=estimate_cost, reverse=True)  # stable: equal costs keep the caller's order
    auto_w, auto_t = default_workers(len(todo) or 1)
    workers = auto_w if workers is None else int(workers)
    if threads is None:
        threads = auto_t if workers else None
    summary = SweepSummary(total=len(distinct), skipped=len(distinct) - len(todo), ran=0,
                           workers=workers, threads=threads or 0)
    if progress is None:
        progress = sys.stderr.isatty()
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), unit="run", desc="runs", disable=not progress, dynamic_ncols=True)

    def take(result: RunRecord) -> None:
        store.record(result)
        summary.ran += 1
        setattr(summary, result.status, getattr(summary, result.status) + 1)
        if result.status == "crashed":
            last = (result.error or "").strip().splitlines()[-1:] or [""]
            bar.write(f"crashed: {result.spec.label()}: {last[0]}")
        bar.update(1)
        bar.set_postfix(ok=summary.ok, diverged=summary.diverged, crashed=summary.crashed)
        if on_result is not None:
            on_result(result)

    try:
        if executor is not None and getattr(executor, "name", "local") != "local":
            summary.workers, summary.threads = 0, threads or 0
            executor.run(todo, take, device, data_dir)
        elif workers == 0:
            import torch

            if threads:
                torch.set_num_threads(threads)
            summary.threads = torch.get_num_threads()
            for spec in todo:
                take(execute(spec, device, data_dir, False))
        else:
            _run_pool(todo, workers, threads, device, data_dir, take)
    finally:
        bar.close()
        summary.not_run = len(store.pending(specs, retry_crashed=False))
        summary.wall_seconds = time.perf_counter() - t0
    return summary


def _run_pool(todo: list[RunSpec], workers: int, threads: int, device: str, data_dir: str | None,
              take: Callable[[RunRecord], None]) -> None:
    queue = list(reversed(todo))  # pop() from the end = longest first
    deaths: dict[str, int] = {}
    ctx = mp.get_context("spawn")
    while queue:
        pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                      initargs=(threads, os.getpid()))
        in_flight: dict[cf.Future, RunSpec] = {}
        broken = False
        try:
            # Never more runs submitted than workers: everything in flight is really running, so a dead
            # worker can only be blamed on the runs in flight.
            while queue or in_flight:
                while queue and len(in_flight) < workers:
                    spec = queue.pop()
                    in_flight[pool.submit(execute, spec, device, data_dir, False)] = spec
                done, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    spec = in_flight.pop(fut)
                    try:
                        result = fut.result()
                    except BrokenProcessPool as e:
                        broken = True
                        deaths[spec.key] = deaths.get(spec.key, 0) + 1
                        if deaths[spec.key] >= 2:
                            take(_dead_worker_result(spec, device, repr(e)))
                        else:
                            queue.append(spec)
                        continue
                    take(result)
                if broken:
                    for fut, spec in list(in_flight.items()):
                        deaths[spec.key] = deaths.get(spec.key, 0) + 1
                        if deaths[spec.key] >= 2:
                            take(_dead_worker_result(spec, device, "process pool broken"))
                        else:
                            queue.append(spec)
                    in_flight.clear()
                    break
        except BaseException:
            _terminate_workers(pool)
            broken = True  # nothing left to wait for
            raise
        finally:
            pool.shutdown(wait=not broken, cancel_futures=True)


def _terminate_workers(pool: cf.ProcessPoolExecutor) -> None:
    """SIGTERM every worker process of `pool` and reap it (``_processes`` is the executor's own map of
    them; Python 3.14's ``terminate_workers`` does the same)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for p in procs:
        p.terminate()
    for p in procs:
        p.join(timeout=5)
