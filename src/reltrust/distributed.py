"""Running reltrust's optimisers under `torch.distributed`: process-group set-up and crash-safe checkpoints.

Launch helpers (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)::

    env = init_distributed("cpu")             # gloo on CPU, nccl on CUDA (device cuda:LOCAL_RANK)
    mesh = data_parallel_mesh(env)            # 1-D mesh over all ranks, for fully_shard(mesh=mesh)
    ...
    destroy_distributed()

Checkpoints (`torch.distributed.checkpoint`, sharded: every rank writes its own shards)::

    save_checkpoint(ckpt_dir, model, optimizer, step, extra={"tokens_seen": n})
    step = load_latest_checkpoint(ckpt_dir, model, optimizer)   # None: nothing to resume from

A checkpoint is written into ``<dir>/step_000123.tmp``; after every rank has finished (DCP's own
collectives) the ranks checksum the files (sha256, each rank a share), rank 0 writes
``reltrust_checkpoint.json`` (step, `extra`, save sequence number, every file's size and sha256) into
it, renames it to ``<dir>/step_000123`` (one atomic ``os.replace``) and points ``<dir>/latest`` at it
(a temporary file, then ``os.replace``). A rank that dies, or raises, before the rename leaves only a
``.tmp`` directory behind, which loading ignores, so the last complete checkpoint stays the one that
is loaded. Loading verifies the checksums and falls back, with a warning, to the checkpoint saved
before a damaged one; it never runs code from the files (DCP's ``.metadata`` pickle is read by a
restricted unpickler, every other entry by ``torch.load(weights_only=True)``). Multi-node jobs need a
file system shared by all ranks (rank 0 renames what the others wrote).

The model and optimizer state go through `torch.distributed.checkpoint.state_dict.get_state_dict` /
`set_state_dict`, which key the optimizer state by parameter name, so FSDP2 (DTensor) and DDP models,
and plain single-process models, can save and load — a checkpoint written by 2 ranks also loads on a
different number of ranks or into an unsharded model in one process (DCP reshards on load).
"""
from __future__ import annotations

import datetime
import functools
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import socket
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistEnv",
    "backend_for",
    "launched_by_torchrun",
    "free_port",
    "init_distributed",
    "destroy_distributed",
    "data_parallel_mesh",
    "is_main_process",
    "barrier",
    "Checkpoint",
    "CheckpointError",
    "checkpoint_name",
    "list_checkpoints",
    "latest_checkpoint",
    "save_checkpoint",
    "load_latest_checkpoint",
]

# ----------------------------------------------------------------------------------------------------
# Process group
# ----------------------------------------------------------------------------------------------------

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: its rank, the world size, its device and the backend in use."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def backend_for(device: str | torch.device) -> str:
    """The collective backend for a device type: ``nccl`` for CUDA, ``gloo`` otherwise (CPU)."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def launched_by_torchrun() -> bool:
    """Whether the rendezvous variables torchrun sets (RANK, WORLD_SIZE, MASTER_ADDR/PORT) are present."""
    return all(v in os.environ for v in _TORCHRUN_VARS)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bound to port 0, then released) — for MASTER_PORT."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def init_distributed(
    device: str | torch.device | None = None,
    *,
    backend: str | None = None,
    timeout: datetime.timedelta | float | None = None,
) -> DistEnv:
    """Initialise the default process group from torchrun's environment variables.

    `device`: ``"cpu"``, ``"cuda"`` (each rank takes ``cuda:LOCAL_RANK``) or None (CUDA if available).
    `backend`: default `backend_for(device)` — gloo on CPU, nccl on CUDA. `timeout`: seconds or a
    timedelta for collectives (torch's default otherwise). Without torchrun's variables a process
    group of one rank is set up on 127.0.0.1 and a free port, so the same script runs as
    ``python script.py``. If a default group already exists it is reused.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if not dist.is_initialized() and not launched_by_torchrun():
        if int(os.environ.get("WORLD_SIZE", "1")) != 1:
            raise RuntimeError(
                "init_distributed: WORLD_SIZE > 1 but RANK/MASTER_ADDR/MASTER_PORT are not all set; "
                "start the script with torchrun"
            )
        for key, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    default_local = str(dist.get_rank()) if dist.is_initialized() else "0"
    local_rank = int(os.environ.get("LOCAL_RANK", default_local))
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend or backend_for(device)}
        if timeout is not None:
            kwargs["timeout"] = timeout if isinstance(timeout, datetime.timedelta) else datetime.timedelta(seconds=timeout)
        dist.init_process_group(**kwargs)
    return DistEnv(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=device,
        backend=str(dist.get_backend()),
    )


def destroy_distributed() -> None:
    """Destroy the default process group if there is one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def data_parallel_mesh(env: DistEnv | None = None):
    """A 1-D `DeviceMesh` over all ranks on this rank's device type: ``fully_shard(m, mesh=mesh)``."""
    from torch.distributed.device_mesh import init_device_mesh

    device_type = env.device.type if env is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    return init_device_mesh(device_type, (dist.get_world_size(),))


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


def is_main_process() -> bool:
    """Rank 0, or the only process when there is no process group."""
    return _rank() == 0


def barrier() -> None:
    """`dist.barrier()` when a process group exists; nothing otherwise."""
    if _distributed():
        dist.barrier()


def _broadcast_from_main(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (unchanged without a process group)."""
    if not _distributed() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------

LATEST = "latest"
META = "reltrust_checkpoint.json"
DCP_METADATA = ".metadata"
_NAME = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A save or load that failed on some rank (DCP's own `CheckpointException` is a BaseException)."""


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint directory, the step it was saved at and the `extra` dict saved with it.

    `sequence`: the number of the save in its directory (retention and fallback go by it; -1 for a
    checkpoint of an older reltrust). `files`: file name → ``{"bytes", "sha256"}`` recorded at save,
    None for a checkpoint of an older reltrust (it cannot be verified).
    """

    path: Path
    step: int
    extra: dict[str, Any] = field(default_factory=dict)
    sequence: int = -1
    files: dict[str, dict[str, Any]] | None = None


def checkpoint_name(step: int) -> str:
    """``step_000123``: the directory name of the checkpoint at `step` (``.tmp`` while it is written)."""
    return f"step_{step:06d}"


def _read_record(path: Path) -> Checkpoint:
    """The committed checkpoint at `path` (a ``step_N`` directory); ValueError saying why it is not one."""
    if not path.is_dir():
        raise ValueError("not a directory")
    if not (path / DCP_METADATA).is_file():
        raise ValueError(f"no {DCP_METADATA}")
    try:
        meta = json.loads((path / META).read_bytes())
        step = int(meta["step"])
        sequence = int(meta.get("sequence", -1))
        files = meta.get("files")
        if files is not None:
            files = {str(n): {"bytes": int(r["bytes"]), "sha256": str(r["sha256"])} for n, r in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{META} unreadable ({type(e).__name__}: {e})") from None
    if step != int(_NAME.match(path.name).group(1)):
        raise ValueError(f"{META} records step {step}")
    return Checkpoint(path=path, step=step, extra=dict(meta.get("extra") or {}), sequence=sequence, files=files)


def _scan(root: Path) -> tuple[list[Checkpoint], list[str]]:
    """The complete checkpoints under `root` and, for each other ``step_N`` directory, why it is not one."""
    found, broken = [], []
    if root.is_dir():
        for p in root.iterdir():
            if _NAME.match(p.name):
                try:
                    found.append(_read_record(p))
                except ValueError as e:
                    broken.append(f"{p}: {e}")
    return sorted(found, key=lambda c: c.step), sorted(broken)


def list_checkpoints(directory: str | os.PathLike) -> list[Checkpoint]:
    """The complete checkpoints in `directory`, by increasing step (``.tmp`` directories are skipped)."""
    return _scan(Path(directory))[0]


def _newest_first(checkpoints: list[Checkpoint]) -> list[Checkpoint]:
    """By save order, the most recent first (older reltrust's checkpoints, before all others, by step)."""
    return sorted(checkpoints, key=lambda c: (c.sequence, c.step), reverse=True)


def _candidates(root: Path) -> list[Checkpoint]:
    """The complete checkpoints in the order loading tries them: the one ``latest`` names, then the
    others from the most recently saved. Warns about a ``latest`` that cannot be used and about
    ``step_N`` directories that are not complete checkpoints."""
    complete, broken = _scan(root)
    for why in broken:
        warnings.warn(f"checkpoints: ignoring {why}", stacklevel=3)
    order = _newest_first(complete)
    try:
        name = (root / LATEST).read_bytes().decode("utf-8").strip()
    except FileNotFoundError:  # no save has finished yet, or one died between rename and pointer
        return order
    except (OSError, UnicodeDecodeError) as e:
        why = f"unreadable ({type(e).__name__}: {e})"
    else:
        named = [c for c in order if c.path.name == name]
        if named:
            return named + [c for c in order if c.path.name != name]
        why = f"names {name[:80]!r}, which is not a complete checkpoint"
    warnings.warn(f"checkpoints: ignoring {root / LATEST}: {why}; using the most recently saved complete checkpoint",
                  stacklevel=3)
    return order


def latest_checkpoint(directory: str | os.PathLike) -> Checkpoint | None:
    """The checkpoint `directory/latest` names if it is complete, else the most recently saved complete one.

    Reads the file system only (no collectives, no checksums: `load_latest_checkpoint` verifies and
    may fall back to an earlier one); None when there is no complete checkpoint. Warns when
    ``latest`` is unreadable or names no complete checkpoint.
    """
    order = _candidates(Path(directory))
    return order[0] if order else None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and `os.replace` (readers see old or new)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _file_record(path: Path) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex digest}`` of the file at `path`."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
        return {"bytes": os.fstat(f.fileno()).st_size, "sha256": digest}


def _share(names: list[str]) -> list[str]:
    """This rank's part of a sorted file list, to checksum: every world_size-th, from its rank.
    (``.metadata`` sorts first, so it is rank 0's.)"""
    return names[_rank() :: dist.get_world_size() if _distributed() else 1]


def _all_gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, by rank (``[obj]`` without a process group)."""
    if not _distributed() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


@contextmanager
def _single_process_ok():
    """Silence DCP's warning that it runs without a process group: here that is on purpose."""
    if _distributed():  # (catch_warnings would also make "once" warnings show again)
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def _state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optim": optim_sd}


# ---- reading checkpoint files without running code from them ----------------------------------------


def _metadata_globals() -> dict[tuple[str, str], Any]:
    """What a DCP ``.metadata`` pickle may name: DCP's metadata dataclasses and `_StorageInfo`,
    `torch.Size`, dtypes, layouts (`torch.serialization._get_layout`), paths, and set/frozenset."""
    import collections
    import pathlib

    from torch.distributed.checkpoint import filesystem, metadata

    objects = [getattr(metadata, n) for n in metadata.__all__] + [metadata._MEM_FORMAT_ENCODING]
    objects += [filesystem._StorageInfo, torch.Size, torch.serialization._get_layout, collections.OrderedDict]
    paths = [pathlib.PurePosixPath, pathlib.PureWindowsPath, pathlib.PosixPath, pathlib.WindowsPath]
    allowed = {(o.__module__, o.__qualname__): o for o in objects + paths}
    allowed.update({("pathlib", c.__name__): c for c in paths})
    allowed.update({("builtins", c.__name__): c for c in (set, frozenset)})
    allowed.update({("torch", n): v for n, v in vars(torch).items() if isinstance(v, torch.dtype)})
    return allowed


class _MetadataUnpickler(pickle._Unpickler):
    """`pickle`'s Python unpickler restricted to the globals of `_metadata_globals`, and BUILD (setting
    an object's state) to instances of those classes, so a ``.metadata`` can only describe data.
    (The Python one, not the C `pickle.Unpickler`: only its BUILD can be overridden, and the C one's
    would set attributes on an admitted class itself.)"""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, path: Path) -> None:
        super().__init__(file)
        self._path = path
        self._allowed = _metadata_globals()
        self._classes = {v for v in self._allowed.values() if isinstance(v, type)}

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            raise CheckpointError(
                f"{self._path}: refused to unpickle {module}.{name}: not a type DCP metadata holds "
                f"(a damaged or tampered file)"
            )
        return found

    def load_build(self) -> None:
        target = self.stack[-2]  # the stack ends with: the object, its state
        if type(target) not in self._classes:
            raise CheckpointError(f"{self._path}: refused to set the state of a {type(target).__name__}")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


def _read_dcp_metadata(path: Path):
    """DCP's `Metadata` from the ``.metadata`` file at `path`, unpickled with `_MetadataUnpickler`; every
    file it refers to must be a plain name in the checkpoint directory. CheckpointError otherwise."""
    from torch.distributed.checkpoint.metadata import Metadata

    try:
        with open(path, "rb") as f:
            found = _MetadataUnpickler(f, path).load()
    except CheckpointError:
        raise
    except Exception as e:  # truncated or garbled: EOFError, UnpicklingError, ValueError, ...
        raise CheckpointError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(found, Metadata) or not isinstance(found.storage_data, dict):
        raise CheckpointError(f"{path}: holds a {type(found).__name__}, not DCP metadata")
    for info in found.storage_data.values():
        name = getattr(info, "relative_path", None)
        if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or os.sep in name:
            raise CheckpointError(f"{path}: refers to {name!r}, not a file of the checkpoint")
    return found


@functools.cache
def _safe_dcp_io() -> tuple[type, type]:
    """DCP's file reader and load planner, changed so that loading runs no code from the files: the
    reader unpickles ``.metadata`` with `_read_dcp_metadata`; tensors DCP reads itself with
    ``torch.load(weights_only=True)``; the planner reads non-tensor entries (param-group values) with
    ``torch.load(weights_only=True)`` too (DCP's default planner uses ``weights_only=False``)."""
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    from .trust.distance import _load_error  # the informative line of torch.load's long message

    class Reader(FileSystemReader):
        def read_metadata(self):  # no rank-local metadata: save_checkpoint always writes the global one
            metadata = _read_dcp_metadata(Path(self.path) / DCP_METADATA)
            if metadata.storage_meta is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class Planner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value) -> None:
            try:
                obj = torch.load(value, weights_only=True)
            except pickle.UnpicklingError as e:
                raise CheckpointError(
                    f"entry {read_item.dest_index.fqn!r}: refused by torch.load(weights_only=True): {_load_error(e)}"
                ) from None
            # hand DCP the checked object, saved again: it holds only what weights_only admits
            checked = io.BytesIO()
            torch.save(obj, checked)
            checked.seek(0)
            super().load_bytes(read_item, checked)

    return Reader, Planner


def _check_files(ckpt: Checkpoint) -> list[str]:
    """What is wrong with this rank's share of `ckpt`'s files: a size or sha256 other than recorded at
    save, a missing file; on rank 0 also a ``.metadata`` that `_read_dcp_metadata` refuses."""
    problems, bad = [], set()
    for name in _share(sorted(ckpt.files or {})):
        want, path = ckpt.files[name], ckpt.path / name
        try:
            size = path.stat().st_size
            got = _file_record(path) if size == want["bytes"] else None
        except OSError as e:
            problems.append(f"{path}: {e.strerror or e}")
        else:
            if got is None:
                problems.append(f"{path}: {size} bytes, {want['bytes']} when saved")
            elif got["sha256"] != want["sha256"]:
                problems.append(f"{path}: sha256 differs from the one recorded at save")
            else:
                continue
        bad.add(name)
    if _rank() == 0 and DCP_METADATA not in bad:
        try:
            _read_dcp_metadata(ckpt.path / DCP_METADATA)
        except CheckpointError as e:
            problems.append(str(e))
    return problems


def _failures(e: BaseException) -> str:
    """One line per failing rank of a DCP `CheckpointException`."""
    parts = []
    for rank, (exc, _) in sorted(e.failures.items()):
        text = str(exc).strip().splitlines()
        parts.append(f"rank {rank}: {type(exc).__name__}: {text[0] if text else ''}")
    return "; ".join(parts)


# ---- save and load ---------------------------------------------------------------------------------


def _commit(root: Path, tmp: Path, final: Path, step: int, extra: dict[str, Any], files: dict[str, Any],
            keep_last: int | None) -> None:
    """Rank 0: the record with every file's checksum, rename `tmp` → `final` atomically, point `latest`
    at it, prune to the `keep_last` most recently saved."""
    earlier = list_checkpoints(root)
    meta = {
        "step": step,
        "sequence": max((c.sequence for c in earlier), default=-1) + 1,
        "extra": extra,
        "world_size": dist.get_world_size() if _distributed() else 1,
        "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "files": files,
    }
    _write_atomic(tmp / META, json.dumps(meta, indent=1))
    _fsync_dir(tmp)
    aside = None
    if final.exists():  # the same step saved again (e.g. a restarted run): keep it until the new one is in
        aside = final.with_name(final.name + ".old")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
    os.replace(tmp, final)
    _fsync_dir(root)
    _write_atomic(root / LATEST, final.name + "\n")
    _fsync_dir(root)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    # attempts at earlier steps that never completed are dead now
    for p in root.glob("step_*.tmp"):
        m = _NAME.match(p.name[: -len(".tmp")])
        if m is not None and int(m.group(1)) < step and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
    if keep_last is not None:
        others = [c for c in _newest_first(list_checkpoints(root)) if c.path != final]
        for old in others[keep_last - 1 :]:
            shutil.rmtree(old.path, ignore_errors=True)


def save_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    step: int,
    extra: Mapping[str, Any] | None = None,
    *,
    keep_last: int | None = None,
) -> Path:
    """Save `model` and `optimizer` (sharded, with DCP) as ``directory/step_<step>``; collective.

    Every rank must call it. `extra`: a JSON-serialisable dict stored with the checkpoint (read it
    back with `latest_checkpoint(directory).extra`). After DCP has written the files, the ranks
    checksum them (sha256, each rank a share) and rank 0 records the sums in
    ``reltrust_checkpoint.json`` before the rename that makes the checkpoint visible. `keep_last`:
    then keep only the `keep_last` most recently saved checkpoints (this one and the ones saved just
    before it, whatever their steps). ``latest`` names this one. Returns the checkpoint's path.
    If any rank fails (raises, or dies so that a collective fails) before the final rename, nothing
    but ``step_<step>.tmp`` is left and ``latest`` still names the previous checkpoint.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"save_checkpoint: step must be an int >= 0, got {step!r}")
    if keep_last is not None and (isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1):
        raise ValueError(f"save_checkpoint: keep_last must be an int >= 1 or None, got {keep_last!r}")
    extra = dict(extra or {})
    json.dumps(extra)  # fail on every rank, before any collective, if it cannot be recorded
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    root = Path(directory)
    final = root / checkpoint_name(step)
    tmp = root / (final.name + ".tmp")
    error = None
    if is_main_process():
        try:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # a previous attempt at this step that died
            tmp.mkdir()
        except OSError as e:  # tell the other ranks instead of leaving them waiting
            error = f"{type(e).__name__}: {e}"
    error = _broadcast_from_main(error)
    if error is not None:
        raise CheckpointError(f"save_checkpoint: rank 0 could not create {tmp}: {error}")
    try:
        with _single_process_ok():
            dcp.save(_state(model, optimizer), checkpoint_id=str(tmp), no_dist=not _distributed())
    except CheckpointException as e:  # a BaseException: make it one `except Exception` catches
        raise CheckpointError(
            f"save_checkpoint: writing {tmp} failed on rank(s) {sorted(e.failures)}; "
            f"the previous checkpoint (if any) is intact"
        ) from e
    # DCP's save ends with a collective after every rank's writes, so rank 0 sees all files now
    listing = None
    if is_main_process():
        try:
            listing = sorted(p.name for p in tmp.iterdir() if p.is_file())
        except OSError as e:
            listing = f"{type(e).__name__}: {e}"
    listing = _broadcast_from_main(listing)
    if isinstance(listing, str):
        raise CheckpointError(f"save_checkpoint: rank 0 could not list {tmp}: {listing}")
    try:
        share: dict[str, Any] | str = {name: _file_record(tmp / name) for name in _share(listing)}
    except OSError as e:
        share = f"{type(e).__name__}: {e}"
    shares = _all_gather(share)
    failed = {r: s for r, s in enumerate(shares) if isinstance(s, str)}
    if failed:
        raise CheckpointError(f"save_checkpoint: checksumming {tmp} failed on rank(s) {sorted(failed)}: "
                              f"{next(iter(failed.values()))}")
    files = {name: record for s in shares for name, record in s.items()}
    error = None
    if is_main_process():
        try:
            _commit(root, tmp, final, step, extra, files, keep_last)
        except Exception as e:  # tell the other ranks instead of leaving them in the barrier
            error = f"{type(e).__name__}: {e}"
    error = _broadcast_from_main(error)
    if error is not None:
        raise CheckpointError(f"save_checkpoint: rank 0 could not commit {final}: {error}")
    return final


def load_latest_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> int | None:
    """Load the latest good checkpoint in `directory` into `model` (and `optimizer`); collective.

    Returns its step, or None (nothing loaded) if there is no complete checkpoint. Rank 0 lists the
    complete ones — the one ``latest`` names first, then the others from the most recently saved —
    and tells the others, so all ranks try the same one. Each is verified before DCP reads it: every
    file's size and sha256 against those recorded at save (the ranks share the hashing) and
    ``.metadata`` unpickled with only DCP's metadata types admitted. One that fails, or that DCP
    cannot read, is skipped with a warning naming it and why, and the one saved before it is tried.
    A checkpoint of an older reltrust (no checksums) loads with a warning that it is unverified.
    Loading runs no code from the files (see `_safe_dcp_io`). CheckpointError when none can be
    loaded (the model may then be partly overwritten). ``.tmp`` directories of unfinished saves are
    ignored. The model and optimizer must have the parameter names and param-group layout of the
    saved ones; the wrapping may differ (FSDP2, DDP's ``module.`` prefix or none) and so may the
    number of ranks (DCP reshards).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    root = Path(directory)
    candidates = _broadcast_from_main(_candidates(root) if is_main_process() else None)
    if not candidates:
        return None
    reader, planner = _safe_dcp_io()
    skipped = []
    for ckpt in candidates:
        problems = [p for share in _all_gather(_check_files(ckpt)) for p in share]
        if not problems:
            if ckpt.files is None and is_main_process():
                warnings.warn(f"load_latest_checkpoint: {ckpt.path} has no checksums (saved by an older "
                              f"reltrust): loading it unverified", stacklevel=2)
            state = _state(model, optimizer)
            try:
                with _single_process_ok():
                    dcp.load(state, storage_reader=reader(ckpt.path), planner=planner(), no_dist=not _distributed())
            except CheckpointException as e:
                problems = [f"reading it failed: {_failures(e)}"]
        if not problems:
            if optimizer is None:
                set_model_state_dict(model, state["model"])
            else:
                set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
            return ckpt.step
        why = f"step {ckpt.step} ({ckpt.path}): " + "; ".join(problems)
        skipped.append(why)
        if is_main_process():
            warnings.warn(f"load_latest_checkpoint: skipping damaged checkpoint {why}", stacklevel=2)
    raise CheckpointError(f"load_latest_checkpoint: no checkpoint in {root} could be loaded: " + " | ".join(skipped))
