"""Where a sweep's runs execute: local worker processes (default), a Dask cluster, or SLURM job arrays.

    summary = run_sweep(specs, store, executor=DaskExecutor("tcp://head:8786"))
    summary = run_sweep(specs, store, executor=SlurmExecutor("runs/x/slurm", partition="cpu", time_min=60))

The seam: ``executor.run(todo, take)`` runs every spec of `todo` somewhere and calls ``take(record)`` in
the driver (this process) as soon as each result arrives; `take` writes the store, so the store keeps
one writer whatever the engine. Every engine runs `runner.execute`, which turns an exception into a
``crashed`` record carrying its traceback; an engine-level failure (a worker that died) becomes a
``crashed`` record too, saying so.

What happens to a run in flight when its worker dies:
- local: the pool is rebuilt and the run retried once, then recorded as crashed (see `runner`).
- dask: the scheduler reschedules it on another worker (its ``allowed-failures``, 3 by default), then
  it is recorded as crashed (``KilledWorker``).
- slurm: a job that ends without a result (node failure, time limit, scancel) is recorded as crashed
  with submitit's message (the tail of the job's stderr).
When the *driver* dies: local and dask workers end with it (their runs in flight are lost and rerun by
the next invocation; what finished is in the store). SLURM jobs keep running: each submitted run's job
id is written to ``<folder>/jobs/<spec key>.json`` before the driver waits on it, and the next
invocation of the same command collects the results of jobs that finished (or are still running)
instead of resubmitting them. A run whose job file was not yet written when the driver died (the
instant between sbatch and the write) is submitted again.

A user's optimiser named by an import path (``RunSpec.optimizer = "mymodule:MyOpt"``, as `reltrust
bench --optimizer` gives it) is imported afresh on the worker: the folder the driver imported its
top-level module from (`user_module_paths`) travels with each run and is appended to the worker's
``sys.path``, which is enough wherever the workers see the driver's files (this machine, a shared file
system). Where the module still cannot be imported, the run is recorded as crashed with one line
saying so (`not_importable`), and a Dask cluster is asked first (every worker connected when the sweep
starts), so that the sweep stops with that line before anything is submitted (`WorkersCannotImport`).
"""
from __future__ import annotations

import importlib.util
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from reltrust.workbench.results import RunRecord
from reltrust.workbench.spec import RunSpec
from reltrust.workbench.store import atomic_write_text

EXECUTORS = ("local", "dask", "slurm")


class MissingExtra(RuntimeError):
    """An executor's engine is not installed: the message is one line with the install command."""


def _need(module: str, extra: str, flag: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingExtra(f"{flag} needs {module}: pip install 'reltrust[{extra}]'")


class WorkersCannotImport(RuntimeError):
    """A user's optimiser module cannot be imported on the workers: one line saying which and where."""


def _user_module(spec: RunSpec) -> str | None:
    """The module of an import-path optimiser ("pkg.mod:Class" → "pkg.mod"), None for a registry name."""
    return spec.optimizer.partition(":")[0] if ":" in spec.optimizer else None


def _library_dirs() -> set[str]:
    import site
    import sysconfig

    dirs = {*site.getsitepackages(), site.getusersitepackages(), *sysconfig.get_paths().values()}
    return {os.path.realpath(d) for d in dirs if d}


def user_module_paths(specs: Sequence[RunSpec]) -> tuple[str, ...]:
    """The folders (absolute, in first-seen order) from which this process imports the top-level
    packages of the specs' import-path optimisers, leaving out the interpreter's own library folders
    (an installed package must be installed on the workers too); sent with every run to a worker."""
    out: list[str] = []
    libs = _library_dirs()
    for top in dict.fromkeys(m.split(".")[0] for m in map(_user_module, specs) if m):
        try:
            found = importlib.util.find_spec(top)
        except (ImportError, ValueError):  # a module with no spec (made in memory): nothing to send
            continue
        if found is None:
            continue
        if found.submodule_search_locations:  # a package: the folder above it
            where = [os.path.dirname(os.path.abspath(d)) for d in found.submodule_search_locations]
        elif found.origin and os.path.isfile(found.origin):
            where = [os.path.dirname(os.path.abspath(found.origin))]
        else:
            continue
        out += [d for d in where if os.path.realpath(d) not in libs and d not in out]
    return tuple(out)


def not_importable(module: str | None, paths: Sequence[str]) -> str | None:
    """On a worker: `paths` appended to ``sys.path``, then None when the optimiser module `module`
    imports here (or is None: a registry name), else one line saying it must be importable on the workers."""
    for d in paths:
        if d not in sys.path and os.path.isdir(d):
            sys.path.append(d)
    if module is None:
        return None
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
            return None  # the module itself is there; what it imports is missing: the run's traceback says so
        return (f"optimizer module {module!r} is not importable on the worker {socket.gethostname()} "
                f"(ModuleNotFoundError: {e}); a user's optimiser must be importable on the workers: install it "
                f"there, or keep its folder where they see it (sent with each run and appended to sys.path: "
                f"{', '.join(paths) or 'none, the driver imports it from no file'})")
    except Exception:  # noqa: BLE001 - the module's own error: `execute` records it with its traceback
        return None
    return None


def run_one(spec: RunSpec, device: str, data_dir: str | None, threads: int | None,
            paths: Sequence[str] = ()) -> RunRecord:
    """`runner.execute` on a remote worker, with its torch thread count set and `paths` (the folders of
    a user's optimiser module, `user_module_paths`) appended to ``sys.path`` first."""
    why = not_importable(_user_module(spec), paths)
    if why is not None:  # said before torch is imported: a job that cannot run ends in a second
        return _crash(spec, device, why)
    import torch

    from reltrust.workbench.runner import execute

    if threads:
        torch.set_num_threads(int(threads))
    return execute(spec, device, data_dir, False)


def _check_worker(modules: Sequence[str], paths: Sequence[str]) -> str | None:
    """Run on every Dask worker before the sweep: the first module that does not import, as one line."""
    for m in modules:
        why = not_importable(m, paths)
        if why is not None:
            return why
    return None


def _crash(spec: RunSpec, device: str, why: str) -> RunRecord:
    return RunRecord(spec=spec, status="crashed", error=why, info={"device": str(device)})


class LocalExecutor:
    """Today's worker processes (`runner._run_pool`); ``workers=0`` runs in the driver."""

    name = "local"

    def __init__(self, workers: int | None = None, threads: int | None = None):
        self.workers, self.threads = workers, threads

    def describe(self, todo: Sequence[RunSpec]) -> str:
        return f"local: {len(todo)} run(s) in worker processes on this machine"


class DaskExecutor:
    """Each run is one Dask task on a `distributed` cluster: `scheduler` ("tcp://HOST:PORT") or, when
    None, a `LocalCluster` of `workers` processes × 1 thread started (and ended) here."""

    name = "dask"

    def __init__(self, scheduler: str | None = None, *, workers: int | None = None, threads: int | None = None):
        _need("distributed", "dask", "--executor dask")
        self.scheduler, self.workers, self.threads = scheduler, workers, threads

    def describe(self, todo: Sequence[RunSpec]) -> str:
        where = self.scheduler or f"a LocalCluster of {self.workers or os.cpu_count() or 1} worker process(es) × 1 thread"
        return f"dask: {len(todo)} task(s) submitted to {where}" + _paths_note(todo)

    def run(self, todo: list[RunSpec], take: Callable[[RunRecord], None], device: str, data_dir: str | None) -> None:
        from distributed import Client, LocalCluster, as_completed

        cluster = None
        if self.scheduler is None:
            n = self.workers or min(len(todo), os.cpu_count() or 1)
            cluster = LocalCluster(n_workers=max(1, n), threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=40)
        client = Client(self.scheduler or cluster)
        try:
            paths = user_module_paths(todo)
            modules = sorted({m for m in map(_user_module, todo) if m})
            if modules:  # ask the workers there now, before anything is submitted
                for worker, why in sorted(client.run(_check_worker, modules, paths).items()):
                    if why is not None:
                        raise WorkersCannotImport(f"dask worker {worker}: {why}")
            futures = {client.submit(run_one, spec, device, data_dir, self.threads or 1, paths,
                                     key=f"reltrust-run-{spec.key}", pure=False): spec for spec in todo}
            for fut in as_completed(futures):
                spec = futures[fut]
                try:
                    take(fut.result())
                except Exception as e:  # noqa: BLE001 - KilledWorker and friends: the worker died, not the run
                    take(_crash(spec, device, f"dask worker died while running this spec: {e!r}"))
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


class SlurmExecutor:
    """Runs as submitit job arrays (`map_array`: one array per call, at most `array_parallelism` tasks
    at once); `cluster="local"` uses submitit's local executor (processes on this machine) for tests.
    Job ids are kept in ``folder/jobs/<spec key>.json`` so that a later driver collects them."""

    name = "slurm"

    def __init__(self, folder: str | os.PathLike, *, partition: str | None = None, time_min: int = 60,
                 cpus_per_task: int = 1, gpus_per_task: int = 0, array_parallelism: int = 64,
                 sbatch: dict[str, str] | None = None, cluster: str = "slurm", threads: int | None = None,
                 poll_seconds: float = 1.0):
        _need("submitit", "slurm", "--executor slurm")
        if cluster not in ("slurm", "local"):
            raise ValueError(f"cluster must be 'slurm' or 'local', got {cluster!r}")
        self.folder = Path(folder)
        self.partition, self.time_min = partition, int(time_min)
        self.cpus_per_task, self.gpus_per_task = int(cpus_per_task), int(gpus_per_task)
        self.array_parallelism, self.sbatch = int(array_parallelism), dict(sbatch or {})
        self.cluster, self.threads, self.poll_seconds = cluster, threads, poll_seconds

    def parameters(self) -> dict[str, Any]:
        p: dict[str, Any] = {"timeout_min": self.time_min, "cpus_per_task": self.cpus_per_task}
        if self.cluster == "slurm":
            p["slurm_array_parallelism"] = self.array_parallelism
            if self.partition:
                p["slurm_partition"] = self.partition
            if self.gpus_per_task:
                p["slurm_gpus_per_task"] = self.gpus_per_task
            if self.sbatch:
                p["slurm_additional_parameters"] = dict(self.sbatch)
        return p

    def describe(self, todo: Sequence[RunSpec]) -> str:
        waiting = sum((self.folder / "jobs" / f"{s.key}.json").exists() for s in todo)
        return (f"slurm ({self.cluster}): {waiting} run(s) already submitted (collected, not resubmitted), "
                f"{len(todo) - waiting} submitted as one job array into {self.folder} with {self.parameters()}"
                + _paths_note(todo))

    def _executor(self):
        import submitit

        ex = (submitit.LocalExecutor(folder=self.folder / "logs") if self.cluster == "local"
              else submitit.SlurmExecutor(folder=self.folder / "logs"))
        if self.cluster == "local":
            ex.update_parameters(timeout_min=self.time_min)
        else:
            p = self.parameters()
            ex.update_parameters(time=p.pop("timeout_min"), cpus_per_task=p.pop("cpus_per_task"),
                                 array_parallelism=p.pop("slurm_array_parallelism"),
                                 **{k.removeprefix("slurm_"): v for k, v in p.items()})
        return ex

    def _job(self, info: dict):
        """The submitit job of a job file (a fresh object: works in a driver that did not submit it)."""
        from submitit.local.local import LocalJob
        from submitit.slurm.slurm import SlurmJob

        cls = LocalJob if info["cluster"] == "local" else SlurmJob
        return cls(folder=info["folder"], job_id=info["job_id"])

    def _alive(self, info: dict, job) -> bool:
        if job.paths.result_pickle.exists():
            return False
        if info["cluster"] == "local":  # a reconstructed LocalJob has no process handle: ask the OS
            pid = info.get("pid")
            if pid is None:
                return not job.done()
            try:
                os.kill(int(pid), 0)
            except OSError:
                return False
            return not _zombie(int(pid))
        return not job.done(force_check=True)

    def run(self, todo: list[RunSpec], take: Callable[[RunRecord], None], device: str, data_dir: str | None) -> None:
        jobs_dir = self.folder / "jobs"
        jobs_dir.mkdir(parents=True, exist_ok=True)
        waiting: dict[str, tuple[RunSpec, dict]] = {}
        fresh = []
        for spec in todo:
            f = jobs_dir / f"{spec.key}.json"
            if f.exists():
                waiting[spec.key] = (spec, json.loads(f.read_text()))
            else:
                fresh.append(spec)
        if fresh:
            ex = self._executor()
            n = len(fresh)
            paths = user_module_paths(fresh)
            jobs = ex.map_array(run_one, fresh, [device] * n, [data_dir] * n, [self.threads or self.cpus_per_task] * n,
                                [paths] * n)
            for spec, job in zip(fresh, jobs):
                info = {"job_id": str(job.job_id), "folder": str(job.paths.folder), "cluster": self.cluster,
                        "spec": spec.key}
                proc = getattr(job, "_process", None)
                if proc is not None:
                    info["pid"] = proc.pid
                atomic_write_text(jobs_dir / f"{spec.key}.json", json.dumps(info))
                waiting[spec.key] = (spec, info)
        while waiting:
            for key, (spec, info) in list(waiting.items()):
                job = self._job(info)
                if self._alive(info, job):
                    continue
                del waiting[key]
                take(self._collect(spec, job, device))
                (jobs_dir / f"{key}.json").unlink(missing_ok=True)
            if waiting:
                time.sleep(self.poll_seconds)

    @staticmethod
    def _collect(spec: RunSpec, job, device: str) -> RunRecord:
        if not job.paths.result_pickle.exists():
            return _crash(spec, device, f"slurm job {job.job_id} ended without a result (state {job.state}); "
                                        f"stderr tail:\n{(job.stderr() or '')[-2000:]}")
        from submitit.core import utils

        outcome, result = utils.pickle_load(job.paths.result_pickle)
        if outcome == "success":
            return result
        return _crash(spec, device, f"slurm job {job.job_id} failed outside the run:\n{result}")


def _paths_note(todo: Sequence[RunSpec]) -> str:
    paths = user_module_paths(todo)
    return f"; sys.path entries sent with each run for the optimiser modules: {', '.join(paths)}" if paths else ""


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def make_executor(name: str, *, out: Path, workers: int | None = None, threads: int | None = None,
                  scheduler: str | None = None, partition: str | None = None, time_min: int = 60,
                  cpus_per_task: int = 1, gpus_per_task: int = 0, array_parallelism: int = 64,
                  sbatch: dict[str, str] | None = None, slurm_cluster: str = "slurm"):
    """The executor `name` (one of EXECUTORS) for a sweep writing into `out`; MissingExtra without its engine."""
    if name == "local":
        return LocalExecutor(workers, threads)
    if name == "dask":
        return DaskExecutor(scheduler, workers=workers, threads=threads)
    if name == "slurm":
        return SlurmExecutor(out / "slurm", partition=partition, time_min=time_min, cpus_per_task=cpus_per_task,
                             gpus_per_task=gpus_per_task, array_parallelism=array_parallelism, sbatch=sbatch,
                             cluster=slurm_cluster, threads=threads)
    raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
