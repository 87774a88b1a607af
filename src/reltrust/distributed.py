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
collectives, then a barrier) rank 0 writes ``reltrust_checkpoint.json`` into it, renames it to
``<dir>/step_000123`` (one atomic ``os.replace``) and points ``<dir>/latest`` at it (a temporary file,
then ``os.replace``). A rank that dies, or raises, before the rename leaves only a ``.tmp`` directory
behind, which loading ignores, so the last complete checkpoint stays the one that is loaded. Multi-node
jobs need a file system shared by all ranks (rank 0 renames what the others wrote).

The model and optimizer state go through `torch.distributed.checkpoint.state_dict.get_state_dict` /
`set_state_dict`, which key the optimizer state by parameter name, so FSDP2 (DTensor) and DDP models,
and plain single-process models, can save and load — a checkpoint written by 2 ranks also loads on a
different number of ranks or into an unsharded model in one process (DCP reshards on load).
"""
from __future__ import annotations

import datetime
import json
import os
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
_NAME = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A save or load that failed on some rank (DCP's own `CheckpointException` is a BaseException)."""


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint directory, the step it was saved at and the `extra` dict saved with it."""

    path: Path
    step: int
    extra: dict[str, Any] = field(default_factory=dict)


def checkpoint_name(step: int) -> str:
    """``step_000123``: the directory name of the checkpoint at `step` (``.tmp`` while it is written)."""
    return f"step_{step:06d}"


def _read_complete(path: Path) -> Checkpoint | None:
    """The checkpoint at `path` if it is complete (final name, DCP metadata and our record present)."""
    match = _NAME.match(path.name)
    if match is None or not path.is_dir() or not (path / ".metadata").is_file():
        return None
    try:
        meta = json.loads((path / META).read_text())
        step = int(meta["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if step != int(match.group(1)):
        return None
    return Checkpoint(path=path, step=step, extra=dict(meta.get("extra") or {}))


def list_checkpoints(directory: str | os.PathLike) -> list[Checkpoint]:
    """The complete checkpoints in `directory`, by increasing step (``.tmp`` directories are skipped)."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found = [c for c in (_read_complete(p) for p in root.iterdir()) if c is not None]
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(directory: str | os.PathLike) -> Checkpoint | None:
    """The checkpoint `directory/latest` names if it is complete, else the complete one of highest step.

    Reads the file system only (no collectives); None when there is no complete checkpoint.
    """
    root = Path(directory)
    try:
        name = (root / LATEST).read_text().strip()
    except OSError:
        name = ""
    if name and _NAME.match(name):
        found = _read_complete(root / name)
        if found is not None:
            return found
    complete = list_checkpoints(root)
    return complete[-1] if complete else None


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


def _commit(root: Path, tmp: Path, final: Path, step: int, extra: dict[str, Any], keep_last: int | None) -> None:
    """Rank 0: record, rename `tmp` → `final` atomically, point `latest` at it, prune."""
    meta = {
        "step": step,
        "extra": extra,
        "world_size": dist.get_world_size() if _distributed() else 1,
        "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    with open(tmp / META, "w") as f:
        json.dump(meta, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
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
        for old in list_checkpoints(root)[:-keep_last]:
            if old.path != final:
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
    back with `latest_checkpoint(directory).extra`). `keep_last`: delete all but the newest
    `keep_last` complete checkpoints after this one is in place. Returns the checkpoint's path.
    If any rank fails (raises, or dies so that a collective fails) before the final rename, nothing
    but ``step_<step>.tmp`` is left and ``latest`` still names the previous checkpoint.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"save_checkpoint: step must be an int >= 0, got {step!r}")
    if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 1):
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
    barrier()  # every rank's shards are written before the checkpoint becomes visible
    error = None
    if is_main_process():
        try:
            _commit(root, tmp, final, step, extra, keep_last)
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
    """Load the latest complete checkpoint in `directory` into `model` (and `optimizer`); collective.

    Returns its step, or None (nothing loaded) if there is none. Rank 0 picks the checkpoint and
    tells the others, so all ranks load the same one. ``.tmp`` directories of unfinished saves are
    ignored. The model and optimizer must have the parameter names and param-group layout of the
    saved ones; the wrapping may differ (FSDP2, DDP's ``module.`` prefix or none) and so may the
    number of ranks (DCP reshards).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    chosen = latest_checkpoint(directory) if is_main_process() else None
    found = _broadcast_from_main(None if chosen is None else (str(chosen.path), chosen.step))
    if found is None:
        return None
    path, step = found
    state = _state(model, optimizer)
    try:
        with _single_process_ok():
            dcp.load(state, checkpoint_id=path, no_dist=not _distributed())
    except CheckpointException as e:
        raise CheckpointError(f"load_latest_checkpoint: reading {path} failed on rank(s) {sorted(e.failures)}") from e
    if optimizer is None:
        set_model_state_dict(model, state["model"])
    else:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return int(step)
