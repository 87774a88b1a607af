"""`reltrust reproduce STUDY [--quick] [--out DIR]`: grid → runner → store → analysis → report.
`reltrust run STUDY [--quick] --index I`: one run of a study's grid, in this process or under torchrun.

Writes into DIR (default ``runs/<study>`` or ``runs/<study>-quick``):

- ``results.sqlite``: the store (rerunning the same command resumes: finished runs are not redone);
- ``results.csv`` (one row per run) and ``results.json`` (everything, per-epoch histories included);
- the study's figures (PNG) and ``report.md``.

Every argument is checked before anything is written (a usage mistake never touches DIR or its store):
a bad one is one line on stderr naming it and what it allows, exit status 2.

Exit status: 0 when every run of the grid finished (ok or diverged), 1 when some crashed (they are in
the report), 2 for a usage error, 130 when interrupted by Ctrl-C and 143 by SIGTERM (the worker
processes are ended, what finished is kept and reported; rerun to resume).
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import sys
import time
from pathlib import Path

from reltrust.workbench.runner import run_sweep
from reltrust.workbench.store import Store, StoreError
from reltrust.workbench.studies import get_study


# ------------------------------------------------------------------------- argument checks (argparse types)
def _whole_number(value: str, low: int, meaning: str) -> int:
    if not re.fullmatch(r"\s*[+-]?\d+\s*", value) or int(value) < low:
        raise argparse.ArgumentTypeError(f"must be a whole number >= {low}{meaning}, got {value!r}")
    return int(value)


def positive_int(value: str) -> int:
    """An argparse type: a whole number >= 1."""
    return _whole_number(value, 1, "")


def workers_int(value: str) -> int:
    """An argparse type for --workers: a whole number >= 0 (0: run in this process)."""
    return _whole_number(value, 0, " (0: run in this process)")


def device_arg(value: str) -> str:
    """An argparse type for --device: cpu, auto, cuda or cuda:N, where the cuda device exists here."""
    if not re.fullmatch(r"cpu|auto|cuda(:\d+)?", value):
        raise argparse.ArgumentTypeError(f"must be cpu, auto, cuda or cuda:N, got {value!r}")
    if value.startswith("cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(value.partition(":")[2] or 0)
        if count == 0:
            raise argparse.ArgumentTypeError(f"{value!r} requested but torch.cuda.is_available() is False here; "
                                             "use cpu or auto")
        if index >= count:
            raise argparse.ArgumentTypeError(f"{value!r} requested but this machine has {count} CUDA device(s): "
                                             f"cuda:0..cuda:{count - 1}")
    return value


def data_dir_arg(value: str) -> str:
    """An argparse type for --data-dir: an existing folder."""
    path = Path(value).expanduser()
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise argparse.ArgumentTypeError(f"{value!r} {what}; it must be a folder holding the dataset files")
    return value


def _usage_error(command: str, message: str) -> int:
    """Print a usage error as one line on stderr; its exit status, 2."""
    print(f"reltrust {command}: error: {message}", file=sys.stderr)
    return 2


def _out_problem(out: Path) -> str | None:
    """Why `out` cannot be the output folder (a file, under a file, not writable), or None."""
    if out.exists() and not out.is_dir():
        return f"{str(out)!r} is a file; it must be a folder (new or existing) you can write in"
    above = out
    while not above.exists():
        above = above.parent
    if not above.is_dir():
        return f"{str(out)!r} lies under the file {str(above)!r}; it must be a folder you can write in"
    if not os.access(above, os.W_OK | os.X_OK):
        return f"{str(above)!r} is not writable; --out must be a folder you can write in"
    return None


def _make_out(command: str, out: Path) -> int | None:
    """Create the output folder; the exit status 2 after one line when that fails anyway (a read-only
    file system, which `_out_problem` cannot see for root)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return _usage_error(command, f"argument --out: cannot create {str(out)!r} ({e.strerror}); "
                                     "it must be a folder you can write in")
    return None


def _open_store(command: str, out: Path, readonly: bool = False) -> Store | int:
    """The store in `out`, or the exit status 2 after one line saying why it cannot be used.
    `readonly`: an existing store opened without writing a file (`Store(readonly=True)`)."""
    try:
        return Store(out / "results.sqlite", readonly=readonly)
    except StoreError as e:
        return _usage_error(command, f"{e}: move it away or pass another --out")


class _Terminated(KeyboardInterrupt):
    """Raised by SIGTERM while a sweep runs: stops it like Ctrl-C (workers ended, results kept)."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated


# The studies' own options (`Study.options`): each is an argument of reproduce and run, refused with one
# line by a study that does not take it.
STUDY_OPTIONS = {
    "optimizers": dict(metavar="NAME,...", help="depth: the optimisers to run, comma-separated (default: the paper's "
                                                 "fromage,sgd,adam; also fromage_budget, nero, muon, lamb)"),
}


def add_study_options(p: argparse.ArgumentParser) -> None:
    for name, kw in STUDY_OPTIONS.items():
        p.add_argument(f"--{name}", default=None, **kw)


def _study_options(command: str, study, args: argparse.Namespace) -> dict | int:
    """The study options given on the command line, parsed by the study; the exit status 2 after one
    line when the study does not take one or its value is bad."""
    out = {}
    for name in STUDY_OPTIONS:
        value = getattr(args, name, None)
        if value is None:
            continue
        if name not in study.options:
            takes = ", ".join(f"--{o}" for o in study.options) or "none"
            return _usage_error(command, f"argument --{name}: study {study.name!r} does not take it (its options: {takes})")
        try:
            out[name] = study.options[name](value)
        except ValueError as e:
            return _usage_error(command, f"argument --{name}: {e}")
    return out


def add_reproduce_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `reproduce` beyond study/--quick/--out (called from `reltrust.cli`)."""
    add_study_options(p)
    p.add_argument("--workers", type=workers_int, default=None,
                   help="worker processes (default: one per CPU core, at most one per run; 0: run in this process)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads per worker (default: cores // workers)")
    p.add_argument("--seeds", type=positive_int, default=None,
                   help="number of seeds (0..N-1) instead of the study's default")
    p.add_argument("--data-dir", type=data_dir_arg, default=None,
                   help="folder with dataset files (see reltrust.workbench.data)")
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: rebuild results.csv/json, figures and report from the store")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # seconds-long grid for the tests
    p.add_argument("--list", action="store_true", help="list the studies, each with what it tests and its quick cost")
    add_executor_arguments(p)


def sbatch_arg(value: str) -> tuple[str, str]:
    """An argparse type for --sbatch: KEY=VALUE (an sbatch option without its leading dashes)."""
    key, eq, val = value.partition("=")
    if not eq or not key.strip() or key.startswith("-"):
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE (e.g. qos=high, an sbatch option without --), got {value!r}")
    return key.strip(), val


def scheduler_arg(value: str) -> str:
    if not re.fullmatch(r"(tcp|tls|inproc|ucx|ws|wss)://\S+", value):
        raise argparse.ArgumentTypeError(f"must be a Dask scheduler address like tcp://HOST:PORT, got {value!r}")
    return value


def add_executor_arguments(p: argparse.ArgumentParser) -> None:
    """--executor and its engines' options (see reltrust.workbench.executors)."""
    from reltrust.workbench.executors import EXECUTORS

    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="where runs execute: local worker processes (default), a Dask cluster, or SLURM job arrays")
    p.add_argument("--scheduler", type=scheduler_arg, default=None,
                   help="dask: the scheduler's address tcp://HOST:PORT (default: a LocalCluster of --workers processes)")
    p.add_argument("--partition", default=None, help="slurm: the partition")
    p.add_argument("--time", type=positive_int, default=60, dest="time_min", help="slurm: minutes per run (default 60)")
    p.add_argument("--cpus-per-task", type=positive_int, default=1, help="slurm: CPUs per run (default 1)")
    p.add_argument("--gpus-per-task", type=workers_int, default=0, help="slurm: GPUs per run (default 0)")
    p.add_argument("--array-parallelism", type=positive_int, default=64,
                   help="slurm: at most this many runs of the job array at once (default 64)")
    p.add_argument("--sbatch", type=sbatch_arg, action="append", default=[], metavar="KEY=VALUE",
                   help="slurm: an extra sbatch option, e.g. --sbatch qos=high --sbatch account=lab (repeatable)")
    p.add_argument("--slurm-cluster", choices=["slurm", "local"], default="slurm",
                   help="slurm: 'local' runs the job arrays as processes here with submitit's local executor (testing)")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would be submitted, run nothing and write nothing (not even --out)")


def executor_from_args(args: argparse.Namespace, out: Path):
    """The executor that `add_executor_arguments`' options name (`executors.make_executor`); raises
    `executors.MissingExtra` when its engine is not installed."""
    from reltrust.workbench.executors import make_executor

    return make_executor(getattr(args, "executor", "local") or "local", out=out, workers=getattr(args, "workers", None),
                         threads=getattr(args, "threads", None), scheduler=getattr(args, "scheduler", None),
                         partition=getattr(args, "partition", None), time_min=getattr(args, "time_min", 60),
                         cpus_per_task=getattr(args, "cpus_per_task", 1),
                         gpus_per_task=getattr(args, "gpus_per_task", 0),
                         array_parallelism=getattr(args, "array_parallelism", 64),
                         sbatch=dict(getattr(args, "sbatch", None) or []),
                         slurm_cluster=getattr(args, "slurm_cluster", "slurm"))


_EXECUTOR_DEFAULTS = (("scheduler", "--scheduler", None), ("partition", "--partition", None),
                      ("time_min", "--time", 60), ("cpus_per_task", "--cpus-per-task", 1),
                      ("gpus_per_task", "--gpus-per-task", 0), ("array_parallelism", "--array-parallelism", 64),
                      ("slurm_cluster", "--slurm-cluster", "slurm"))


def executor_command_parts(args: argparse.Namespace) -> list[str]:
    """The executor options given in `args` (those not at their defaults) as command-line words, for a
    report's command line."""
    executor = getattr(args, "executor", "local") or "local"
    parts = [] if executor == "local" else ["--executor", executor]
    for dest, flag, default in _EXECUTOR_DEFAULTS:
        value = getattr(args, dest, default)
        if value is not None and value != default:
            parts += [flag, str(value)]
    for key, value in getattr(args, "sbatch", None) or []:
        parts += ["--sbatch", f"{key}={value}"]
    return parts


def pending_without_writing(command: str, out: Path, specs: list) -> tuple[list, list] | int:
    """A dry run's view of `out`: (the specs not finished in its store, the stored records of `specs`),
    read without creating or changing any file (no store yet: every spec pending); or exit status 2."""
    if not (out / "results.sqlite").exists():
        return list({s.key: s for s in specs}.values()), []
    store = _open_store(command, out, readonly=True)
    if isinstance(store, int):
        return store
    with store:
        return store.pending(specs), store.records(specs=specs)


def list_command() -> int:
    """`reltrust reproduce --list`: every registered study, a line each."""
    from reltrust.workbench.studies import list_studies

    studies = list_studies()
    width = max(len(s.name) for s in studies)
    for s in studies:
        print(f"{s.name:<{width}}  {s.description}  [{s.cost_line()}]")
    return 0


def _command_line(args: argparse.Namespace) -> str:
    parts = ["reltrust", "reproduce", args.study]
    if args.quick:
        parts.append("--quick")
    for opt in ("out", "workers", "threads", "seeds", "data_dir", "device", *STUDY_OPTIONS):
        v = getattr(args, opt, None)
        if v is not None and not (opt == "device" and v == "cpu"):
            parts += [f"--{opt.replace('_', '-')}", str(v)]
    if getattr(args, "tiny", False):
        parts.append("--tiny")
    return " ".join(shlex.quote(p) for p in parts + executor_command_parts(args))


def _lock(out: Path):
    """An exclusive lock on ``out/.lock`` held for the life of the process (two sweeps writing one
    store would run the same runs twice); False when another process holds it, None where fcntl
    does not exist."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        return None
    f = open(out / ".lock", "a+")  # noqa: SIM115 - kept open on purpose: closing releases the lock
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return False
    _held_locks.append(f)
    return f


_held_locks: list = []


def _unlock(lock) -> None:
    """Release a lock that `_lock` took (None: there was none)."""
    if lock:
        _held_locks.remove(lock)
        lock.close()


def reproduce_command(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    if getattr(args, "list", False):
        return list_command()
    if args.study is None:
        print("reltrust reproduce: give a study (reltrust reproduce --list shows them)", file=sys.stderr)
        return 2
    try:
        study = get_study(args.study)
    except ValueError as e:
        return _usage_error("reproduce", f"argument study: {e}")
    quick = bool(getattr(args, "quick", False))
    tiny = bool(getattr(args, "tiny", False))
    out = Path(args.out or f"runs/{args.study}{'-tiny' if tiny else '-quick' if quick else ''}")
    problem = _out_problem(out)
    if problem:
        return _usage_error("reproduce", f"argument --out: {problem}")
    seeds = None if getattr(args, "seeds", None) is None else list(range(int(args.seeds)))
    options = _study_options("reproduce", study, args)
    if isinstance(options, int):
        return options
    specs = study.grid(quick, seeds=seeds, tiny=tiny, **options)
    device = getattr(args, "device", "cpu") or "cpu"
    if device != "cpu":
        from reltrust.workbench.train import resolve_device

        device = str(resolve_device(device))  # auto → cpu or cuda (device_arg checked the rest)
    progress = not getattr(args, "no_progress", False) and sys.stderr.isatty()
    command = _command_line(args)
    from reltrust.workbench.executors import MissingExtra

    try:
        executor = executor_from_args(args, out)
    except MissingExtra as e:
        return _usage_error("reproduce", f"argument --executor: {e}")
    if getattr(args, "dry_run", False):  # reads the store if there is one; creates nothing
        seen = pending_without_writing("reproduce", out, specs)
        if isinstance(seen, int):
            return seen
        todo = seen[0]
        print(f"{args.study}: {len(specs)} runs in the grid, {len(specs) - len(todo)} already in {out / 'results.sqlite'}")
        print(f"dry run, nothing submitted: {executor.describe(todo)}")
        for spec in todo:
            print(f"  {spec.key}  {spec.label()}")
        return 0
    interrupted = None
    failed = _make_out("reproduce", out)
    if failed:
        return failed
    lock = _lock(out)
    if lock is False:
        print(f"reltrust reproduce: another reproduce is running in {out} (lock {out / '.lock'})", file=sys.stderr)
        return 2
    store = _open_store("reproduce", out)
    if isinstance(store, int):
        _unlock(lock)
        return store
    with store:
        todo = store.pending(specs)
        print(f"{args.study}: {len(specs)} runs in the grid, {len(specs) - len(todo)} already in {out / 'results.sqlite'}",
              flush=True)
        if not getattr(args, "report_only", False) and todo:
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
            try:
                if study.prepare is not None:
                    study.prepare(specs, out, data_dir=args.data_dir)
                summary = run_sweep(specs, store, workers=args.workers, threads=args.threads, device=device,
                                    data_dir=args.data_dir, progress=progress, executor=executor)
                print(summary.line(), flush=True)
            except KeyboardInterrupt as e:
                interrupted = 143 if isinstance(e, _Terminated) else 130
                why = "terminated" if isinstance(e, _Terminated) else "interrupted"
                print(f"{why}: finished runs are kept; rerun the same command to resume", file=sys.stderr)
            finally:
                signal.signal(signal.SIGTERM, previous)
        records = store.records(specs=specs)
        store.export_csv(out / "results.csv", records)
        store.export_json(out / "results.json", records)
        report = study.analyse(store, out, specs=specs, command=command)
    _unlock(lock)
    crashed = sum(r.status == "crashed" for r in records)
    missing = len(specs) - len(records)
    print(f"wrote {out / 'results.csv'}, {out / 'results.json'}, {report}")
    print(f"{len(records)}/{len(specs)} runs recorded ({crashed} crashed, {missing} not run); "
          f"total {time.perf_counter() - t0:.1f} s")
    if interrupted:
        return interrupted
    return 1 if crashed or missing else 0


# ------------------------------------------------------------------------------------ reltrust run
def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `run` beyond study/--quick/--out (called from `reltrust.cli`)."""
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--index", type=int, help="position of the run in the study's grid (see --list)")
    which.add_argument("--key", help="the run's key, or a unique prefix of it (see --list)")
    which.add_argument("--list", action="store_true", help="list the grid: index, key, status in --out, label")
    p.add_argument("--seeds", type=positive_int, default=None, help="number of seeds (0..N-1), as given to reproduce")
    add_study_options(p)
    p.add_argument("--parallel", choices=["fsdp", "ddp", "none"], default=None,
                   help="data parallelism over the torchrun ranks (default: fsdp under torchrun with "
                        "more than one rank, else none)")
    p.add_argument("--data-dir", type=data_dir_arg, default=None,
                   help="folder with dataset files (see reltrust.workbench.data)")
    p.add_argument("--device", type=device_arg, default="cpu",
                   help="cpu (default) or cuda (each rank takes cuda:LOCAL_RANK)")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)


def _select(specs: list, args: argparse.Namespace):
    if args.index is not None:
        if not 0 <= args.index < len(specs):
            raise ValueError(f"--index must be in [0, {len(specs) - 1}] for this grid, got {args.index}")
        return specs[args.index]
    found = {s.key: s for s in specs if s.key.startswith(args.key)}
    if len(found) != 1:
        raise ValueError(f"--key {args.key!r} matches {len(found)} runs of this grid; see --list")
    return next(iter(found.values()))


def run_command(args: argparse.Namespace) -> int:
    """One run of a study's grid, recorded in the study's store so that `reproduce` skips it.

    Under ``torchrun --nproc-per-node N -m reltrust run …`` every rank trains its slice of each
    minibatch (FSDP2 or DDP, see `reltrust.workbench.train.fit`) and rank 0 records the result.
    A rerun that crashes never replaces a finished result in the store (see `Store.record`)."""
    try:
        study = get_study(args.study)
    except ValueError as e:
        return _usage_error("run", f"argument study: {e}")
    quick, tiny = bool(args.quick), bool(getattr(args, "tiny", False))
    out = Path(args.out or f"runs/{args.study}{'-tiny' if tiny else '-quick' if quick else ''}")
    problem = _out_problem(out)
    if problem:
        return _usage_error("run", f"argument --out: {problem}")
    seeds = None if args.seeds is None else list(range(int(args.seeds)))
    options = _study_options("run", study, args)
    if isinstance(options, int):
        return options
    specs = study.grid(quick, seeds=seeds, tiny=tiny, **options)
    if args.list:
        statuses = {}
        if (out / "results.sqlite").exists():
            store = _open_store("run", out)
            if isinstance(store, int):
                return store
            with store:
                statuses = store.statuses()
        for i, s in enumerate(specs):
            print(f"{i:4d}  {s.key[:12]}  {statuses.get(s.key, 'pending'):8s}  {s.label()}")
        return 0
    try:
        spec = _select(specs, args)
    except ValueError as e:
        return _usage_error("run", str(e))

    from reltrust.distributed import destroy_distributed, init_distributed, launched_by_torchrun
    from reltrust.workbench.train import fit

    parallel = args.parallel
    if parallel is None:
        parallel = "fsdp" if launched_by_torchrun() and int(os.environ.get("WORLD_SIZE", "1")) > 1 else "none"
    parallel = None if parallel == "none" else parallel
    rank, device = 0, args.device
    if parallel is not None:
        env = init_distributed(args.device)
        rank, device = env.rank, env.device
    lock = None
    if rank == 0:
        failed = _make_out("run", out)
        if failed:
            return failed
        lock = _lock(out)
        if lock is False:
            print(f"reltrust run: a reproduce or run is writing {out} (lock {out / '.lock'})", file=sys.stderr)
            return 2
        store = _open_store("run", out)  # refuse a file that is no store before a run is spent on it
        if isinstance(store, int):
            _unlock(lock)
            return store
        store.close()
        print(f"{spec.label()}  key {spec.key[:12]}  parallel={parallel or 'none'}", flush=True)
    try:
        result = fit(spec, device=device, data_dir=args.data_dir, progress=rank == 0 and sys.stderr.isatty(),
                     parallel=parallel)
    except Exception:  # noqa: BLE001 - recorded like a sweep's crash, then re-raised for the exit status
        if rank == 0:
            import traceback

            from reltrust.workbench.results import RunRecord

            with Store(out / "results.sqlite") as store:
                if not store.record(RunRecord(spec=spec, status="crashed", error=traceback.format_exc(),
                                              info={"device": str(device), "parallel": parallel})):
                    print(f"reltrust run: this rerun crashed; the finished result already in "
                          f"{out / 'results.sqlite'} is kept", file=sys.stderr)
            _unlock(lock)
        raise
    finally:
        if parallel is not None:
            destroy_distributed()
    if rank == 0:
        with Store(out / "results.sqlite") as store:
            store.record(result)
        _unlock(lock)
        f = result.final
        print(f"{result.status}: train_acc {f.get('train_acc')}, train_loss {f.get('train_loss')}, "
              f"{result.info.get('wall_seconds', 0):.1f} s on {result.info.get('world_size')} rank(s); "
              f"recorded in {out / 'results.sqlite'}")
    return 0
