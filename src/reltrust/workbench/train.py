"""The training loop: `fit(spec) -> RunRecord`, the lecture notes' loop around any task. It names no
task and knows nothing of studies, processes or storage: the spec names its task
(`reltrust.workbench.tasks`), which builds the data and model(s), takes each step and measures.

What one run does:

- The task loads its data; then `torch.manual_seed(spec.seed)` before the model(s) are built
  (initialisation, then dropout), and a separate `torch.Generator` seeded with `spec.seed` from which
  the task draws every epoch's minibatches (a reshuffled training set, or random text blocks). The
  same spec gives bit-identical metrics in the same process setup (same torch build, device and
  thread count — the thread count can change the order of floating-point sums in CPU matmuls, so it
  is recorded).
- One optimiser per player of the task (`spec.optimizer`, `lr`, `optimizer_kwargs` for the first;
  `optimizer2`, `lr2`, `optimizer2_kwargs` for a second, e.g. a GAN's discriminator), each with
  `spec.weight_decay` (0: none at all; > 0: biases and norm layers excluded, see `build_optimizer`).
- The length: `spec.epochs` epochs, or a budget of `spec.steps` optimiser steps (whichever ends first
  when both are given; `epochs=0` with a step budget: as many epochs as the budget needs). The
  learning rate of every optimiser follows `spec.schedule` (`reltrust.workbench.schedules`), stepped
  once per epoch or once per optimiser step (`spec.schedule_interval`).
- After every epoch (and once before training, as epoch 0) the task evaluates its metrics in eval
  mode on the training and validation splits (``train_loss``, ``val_loss``, ... ; None where a split
  is empty), recorded with ``epoch`` and ``step`` (the optimiser steps taken so far). The running
  averages over the epoch's minibatches (weights changing as they go, dropout on) are kept too, as
  ``train_<metric>_running``.
- A non-finite training loss ends the run at once with status ``"diverged"`` (a result, not a crash);
  the model is evaluated as it stands and the last epoch is marked ``partial``.
- Early stopping (``spec.patience > 0``): stop after `patience` epochs without a value of the task's
  monitored metric (the validation loss) below the best so far minus `min_delta`; the weights of the
  best epoch are restored and the final metrics are those of that epoch.
- At the end the test split, when the task has one, is evaluated once (``test_<metric>``).
- `spec.probe` (optional) runs the task's measurement at chosen epochs (``"at_epochs"``) on an
  unwrapped copy of the first player's model; the run itself is not disturbed.
- ``parallel="fsdp"`` or ``"ddp"`` (under torchrun, the default process group initialised): every rank
  builds the same model(s) from the seed, wraps them (FSDP2: one `fully_shard` unit per module with
  parameters, then the root; or DDP), draws the same minibatches, and trains its slice of every one
  (see `reltrust.workbench.tasks.base.Shard`): the same steps as one process, up to float rounding.
  Evaluation and probes run on every rank on the whole data (probes on a gathered, unsharded copy);
  every rank returns the same result, and the caller records rank 0's.
"""
from __future__ import annotations

import copy
import inspect
import math
import sys
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from reltrust.workbench.results import RunRecord
from reltrust.workbench.schedules import build_scheduler
from reltrust.workbench.spec import RunSpec
from reltrust.workbench.tasks import Shard, Task, make_task


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` → cuda when available, else cpu; a cuda request without cuda is a clear error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but torch.cuda.is_available() is False")
    return dev


# -------------------------------------------------------------------------------------- optimiser
def build_optimizer(spec: RunSpec, model: nn.Module, player: int = 0) -> torch.optim.Optimizer:
    """The optimiser of player `player` (0: `spec.optimizer`, `lr`, `optimizer_kwargs`; 1: `optimizer2`,
    `lr2`, `optimizer2_kwargs`) over `model`'s parameters, with `spec.weight_decay`."""
    from reltrust.optim import create, get, param_groups

    field = "optimizer" if player == 0 else "optimizer2"
    name, lr = (spec.optimizer, spec.lr) if player == 0 else (spec.optimizer2, spec.lr2)
    kwargs = spec.kwargs(field)
    if "weight_decay" in kwargs or "lr" in kwargs:
        raise ValueError(f"RunSpec.{field}_kwargs: give lr and weight_decay as RunSpec.{'lr' if player == 0 else 'lr2'}"
                         " / RunSpec.weight_decay")
    cls = get(name)
    if spec.weight_decay > 0 and getattr(cls, "routes_modules", False):
        # an optimiser that routes by module type (muon) needs the model itself, not param_groups'
        # unmarked groups: weight decay goes to its hidden matrices (its AdamW part: adamw_weight_decay)
        return create(cls, model, lr=lr, weight_decay=spec.weight_decay, **kwargs)
    if spec.weight_decay > 0:
        return create(cls, param_groups(model, spec.weight_decay), lr=lr, **kwargs)
    # weight_decay 0 means none at all: AdamW's default of 0.01 must not slip in unasked.
    if "weight_decay" in inspect.signature(cls.__init__).parameters:
        kwargs["weight_decay"] = 0.0
    return create(cls, model, lr=lr, **kwargs)


# ----------------------------------------------------------------------------- data parallelism
PARALLEL = ("fsdp", "ddp")


def _parallelize(model: nn.Module, parallel: str, dev: torch.device) -> nn.Module:
    """Wrap `model` for data parallelism over the default process group (see the module doc)."""
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(dev.type, (dist.get_world_size(),))
    for module in list(model.modules())[1:]:
        if any(True for _ in module.parameters(recurse=False)):
            fully_shard(module, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _unwrapped(task: Task, models: Mapping[str, nn.Module], parallel: str | None) -> nn.Module:
    """A plain module with the first player's current weights: itself, DDP's module, or a gathered
    FSDP copy."""
    model = models[task.PLAYERS[0]]
    if parallel is None:
        return model
    if parallel == "ddp":
        return model.module
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))  # a collective
    with torch.random.fork_rng(devices=[]):
        plain = task.build()[task.PLAYERS[0]]
    plain.load_state_dict(full)
    plain.train(model.training)
    return plain


def _evaluate(task: Task, models: Mapping[str, nn.Module], split: str) -> dict[str, Any]:
    """``<split>_<metric>`` for every metric of the task (None where the split is empty)."""
    if not task.has_split(split):
        return {f"{split}_{m}": None for m in task.METRICS}
    return {f"{split}_{m}": v for m, v in task.evaluate(models, split).items()}


# -------------------------------------------------------------------------------------------- fit
def fit(
    spec: RunSpec,
    *,
    device: str | torch.device | None = "cpu",
    data_dir: str | None = None,
    progress: bool | None = None,
    parallel: str | None = None,
    models_out: dict[str, nn.Module] | None = None,
) -> RunRecord:
    """Train and evaluate one run as `spec` says (see the module doc). Errors propagate to the caller
    (the runner records them as crashes); divergence does not raise. `parallel`: None, "fsdp" or
    "ddp" (needs an initialised default process group; every rank calls `fit`). `models_out`: a dict
    that, when given, receives the trained models (player → module, as they end the run) for a caller
    that uses them afterwards (e.g. the norm study's scoring classifier)."""
    t_start = time.perf_counter()
    shard = None
    if parallel is not None:
        import torch.distributed as dist

        if parallel not in PARALLEL:
            raise ValueError(f"parallel must be None or one of {PARALLEL}, got {parallel!r}")
        if not dist.is_initialized():
            raise RuntimeError("fit(parallel=...) needs the default process group: start under torchrun "
                               "and call reltrust.distributed.init_distributed() first")
        shard = Shard(dist.get_rank(), dist.get_world_size())
    dev = resolve_device(device)
    task = make_task(spec, device=dev, data_dir=data_dir)
    if parallel is not None and not task.PARALLEL:
        raise ValueError(f"parallel={parallel!r}: task {spec.task!r} cannot be split over ranks")
    if spec.patience > 0 and (task.MONITOR is None or not task.has_split("val")):
        raise ValueError("early stopping (patience > 0) needs a validation set (val_fraction > 0)"
                         if task.MONITOR else f"RunSpec.patience: task {spec.task!r} has no metric to stop on")

    torch.manual_seed(spec.seed)
    models = task.build()
    if parallel is not None:
        models = {k: _parallelize(m, parallel, dev) for k, m in models.items()}
    optimizers = {p: build_optimizer(spec, models[p], i) for i, p in enumerate(task.PLAYERS)}
    steps_per_epoch = task.steps_per_epoch
    n_epochs = spec.epochs
    if spec.steps:
        budget_epochs = -(-spec.steps // steps_per_epoch)
        n_epochs = budget_epochs if spec.epochs == 0 else min(spec.epochs, budget_epochs)
    max_steps = spec.steps or n_epochs * steps_per_epoch
    per_step = spec.schedule_interval == "step"
    total_units = min(max_steps, n_epochs * steps_per_epoch) if per_step else n_epochs
    schedulers = [build_scheduler(opt, spec.schedule, total_units, **spec.kwargs("schedule"))
                  for opt in optimizers.values()]
    shuffle = torch.Generator().manual_seed(spec.seed)
    first = optimizers[task.PLAYERS[0]]

    probe = spec.kwargs("probe")
    probe_epochs = set(int(e) for e in probe.get("at_epochs", ())) if probe else set()
    probes: list[dict[str, Any]] = []

    def evaluated(epoch: int, step: int, lr: float | None, extra: dict[str, Any]) -> dict[str, Any]:
        return {"epoch": epoch, "step": step, "lr": lr, **_evaluate(task, models, "train"),
                **_evaluate(task, models, "val"), **extra}

    no_running = {f"train_{m}_running": None for m in task.RUNNING}
    t_eval = time.perf_counter()
    history = [evaluated(0, 0, None, {**no_running, "seconds": 0.0})]
    eval_seconds = time.perf_counter() - t_eval
    if 0 in probe_epochs:
        probes.append({"epoch": 0, "step": 0, **task.probe(_unwrapped(task, models, parallel), probe)})

    if progress is None:
        progress = sys.stderr.isatty()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_epochs, desc=spec.label(), unit="epoch", leave=False, disable=not progress)

    step, train_seconds, samples = 0, 0.0, 0
    best_val, best_epoch, best_state, bad_epochs, stopped_early = math.inf, None, None, 0, False
    diverged_at = None
    for m in models.values():
        m.train()
    for epoch in range(1, n_epochs + 1):
        t0 = time.perf_counter()
        lr_epoch = first.param_groups[0]["lr"]
        sums = dict.fromkeys(task.RUNNING, 0.0)
        run_n = 0
        for batch in task.epoch(shuffle):
            out = task.train_step(models, optimizers, batch, shard)
            step += 1
            samples += out.n
            if not math.isfinite(out.loss):
                diverged_at = {"epoch": epoch, "step": step, "loss": out.loss}
                break
            for k, v in out.sums.items():
                sums[k] += v
            run_n += out.n
            if per_step:
                for s in schedulers:
                    s.step()
            if step >= max_steps:
                break
        if not per_step and diverged_at is None:
            for s in schedulers:
                s.step()
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        t_eval = time.perf_counter()
        extra = {f"train_{k}_running": (v / run_n if run_n else None) for k, v in sums.items()}
        extra["seconds"] = seconds
        if diverged_at is not None:
            extra["partial"] = True
        entry = evaluated(epoch, step, lr_epoch, extra)
        history.append(entry)
        eval_seconds += time.perf_counter() - t_eval
        if bar is not None:
            bar.update(1)
            bar.set_postfix({k: f"{entry[k]:.3g}" for k in list(entry)[2:4] if entry[k] is not None})
        if diverged_at is not None:
            break
        if epoch in probe_epochs:
            probes.append({"epoch": epoch, "step": step, **task.probe(_unwrapped(task, models, parallel), probe)})
        if spec.patience > 0:
            vl = entry[task.MONITOR]
            if math.isfinite(vl) and vl < best_val - spec.min_delta:
                best_val, best_epoch, bad_epochs = vl, epoch, 0
                best_state = {k: copy.deepcopy(m.state_dict()) for k, m in models.items()}
            else:
                bad_epochs += 1
                if bad_epochs >= spec.patience:
                    stopped_early = True
                    break
        if step >= max_steps:
            break
    if bar is not None:
        bar.close()

    final_entry = history[-1]
    if spec.patience > 0 and best_state is not None and diverged_at is None:
        for k, m in models.items():
            m.load_state_dict(best_state[k])
        final_entry = history[best_epoch]
    final = {k: v for k, v in final_entry.items() if k.startswith(("train_", "val_"))}
    final.update(
        epochs_run=history[-1]["epoch"],
        steps=step,
        best_epoch=best_epoch,
        stopped_early=stopped_early,
        diverged_at=diverged_at,
    )
    final.update(_evaluate(task, models, "test"))
    if models_out is not None:
        models_out.update(models)

    return RunRecord(
        spec=spec,
        status="diverged" if diverged_at is not None else "ok",
        history=history,
        final=final,
        probes=probes,
        info={
            "device": str(dev),
            "parallel": parallel,
            "world_size": 1 if shard is None else shard.world,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            **task.info(),
            "parameters": sum(p.numel() for m in models.values() for p in m.parameters()),
            "wall_seconds": time.perf_counter() - t_start,
            "train_seconds": train_seconds,
            "eval_seconds": eval_seconds,
            "samples_per_second": samples / train_seconds if train_seconds > 0 else None,
        },
    )
