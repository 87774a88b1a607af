"""The training loop: `fit(spec) -> RunResult`. It knows nothing of studies, processes or storage.

What one run does (the lecture notes' practice):

- `torch.manual_seed(spec.seed)` before the model is built (initialisation, then dropout), and a separate
  `torch.Generator` seeded with `spec.seed` that reshuffles the training set at every epoch. The same spec
  gives bit-identical metrics in the same process setup (same torch build, device and thread count —
  the thread count can change the order of floating-point sums in CPU matmuls, so it is recorded).
- Minibatches of `spec.batch_size` from the reshuffled order; the last, smaller batch is kept.
- The learning rate follows `spec.schedule` (see `reltrust.workbench.schedules`), stepped once per epoch
  or once per optimiser step (`spec.schedule_interval`).
- After every epoch (and once before training, as epoch 0) the model is evaluated **in eval mode over
  the whole training set** and over the validation set: ``train_loss``, ``train_acc``, ``val_loss``,
  ``val_acc``. The running averages over the epoch's minibatches (weights changing as they go, dropout
  on) are kept too, as ``train_loss_running`` and ``train_acc_running``. "Train accuracy of the last
  epoch" in the studies means ``train_acc`` of the last history entry: the eval-mode measurement.
- A non-finite minibatch loss ends the run at once with status ``"diverged"`` (a result, not a crash);
  the model is evaluated as it stands (a non-finite logit row counts as a wrong prediction).
- Early stopping (``spec.patience > 0``): stop after `patience` epochs without a validation loss below
  the best so far minus `min_delta`; the weights of the best epoch are restored and the final metrics
  are those of that epoch.
- At the end the test set, when the dataset has one, is evaluated once (``test_loss``, ``test_acc``).
- `spec.probe` (optional) runs a measurement at chosen epochs on a fixed batch of training examples; the
  one known is ``{"name": "perturbation", "at_epochs": [...], "etas": [...], "batch": n}`` which calls
  `reltrust.trust.perturbation_probe` on a copy of the model (the run itself is not disturbed: same
  weights, gradients and random-number state afterwards).
- ``parallel="fsdp"`` or ``"ddp"`` (under torchrun, the default process group initialised): every rank
  builds the same model from the seed, wraps it (FSDP2: one `fully_shard` unit per layer, then the
  root; or DDP), walks the same shuffled order, and takes its slice of every minibatch. Each rank's
  loss is its slice's *sum* × world/batch, so the averaged gradient is exactly the gradient of the
  minibatch's mean loss: the same steps as one process, up to float rounding. Evaluation and probes
  run on every rank on the whole data (probes on a gathered, unsharded copy); every rank returns the
  same result, and the caller records rank 0's.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import math
import sys
import time
from typing import Any

import torch
from torch import nn

from reltrust.workbench.schedules import build_scheduler
from reltrust.workbench.spec import RunSpec

STATUSES = ("ok", "diverged", "crashed")


@dataclasses.dataclass
class RunResult:
    """The outcome of one run.

    `history`: one dict per evaluated epoch (epoch 0 = before training), with ``epoch``, ``lr`` (the
    learning rate of the epoch's first step; None for epoch 0), the metrics named in the module doc and
    ``seconds`` (wall time of that epoch's training). `final`: the metrics the run ends with (see module
    doc) plus ``epochs_run``, ``steps``, ``best_epoch``, ``stopped_early``, ``diverged_at`` (None or
    ``{"epoch", "step"}``). `error`: traceback text of a crash. `info`: where and how fast it ran.
    """

    spec: RunSpec
    status: str
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    final: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None
    probes: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"RunResult.status must be one of {STATUSES}, got {self.status!r}")


# ------------------------------------------------------------------------------------------- data
@functools.lru_cache(maxsize=8)
def _load(name: str, data_dir: str | None, val_fraction: float, split_seed: int):
    from reltrust.workbench.data import load_dataset

    return load_dataset(name, data_dir=data_dir, val_fraction=val_fraction, seed=split_seed)


def _as_tensors(x: Any, y: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    if x is None or y is None or len(y) == 0:
        return None
    xt = torch.as_tensor(x)
    if xt.is_floating_point():
        xt = xt.float()
    return xt.to(device), torch.as_tensor(y).long().to(device)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` → cuda when available, else cpu; a cuda request without cuda is a clear error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but torch.cuda.is_available() is False")
    return dev


# -------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048) -> tuple[float, float]:
    """Mean cross-entropy and accuracy in eval mode. A row with a non-finite logit is a wrong answer."""
    was_training = model.training
    model.eval()
    total_loss, correct, n = 0.0, 0, len(y)
    for i in range(0, n, batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        out = model(xb)
        total_loss += float(nn.functional.cross_entropy(out, yb, reduction="sum"))
        ok = torch.isfinite(out).all(dim=1)
        correct += int(((out.argmax(dim=1) == yb) & ok).sum())
    model.train(was_training)
    return total_loss / n, correct / n


def _eval_entry(model, train, val, epoch, lr, extra) -> dict[str, Any]:
    entry: dict[str, Any] = {"epoch": epoch, "lr": lr}
    entry["train_loss"], entry["train_acc"] = evaluate(model, *train)
    if val is not None:
        entry["val_loss"], entry["val_acc"] = evaluate(model, *val)
    else:
        entry["val_loss"] = entry["val_acc"] = None
    entry.update(extra)
    return entry


# -------------------------------------------------------------------------------------- optimiser
def build_optimizer(spec: RunSpec, model: nn.Module) -> torch.optim.Optimizer:
    from reltrust.optim import create, get, param_groups

    kwargs = spec.kwargs("optimizer")
    if "weight_decay" in kwargs or "lr" in kwargs:
        raise ValueError("RunSpec.optimizer_kwargs: give lr and weight_decay as RunSpec.lr / RunSpec.weight_decay")
    cls = get(spec.optimizer)
    if spec.weight_decay > 0:
        return create(cls, param_groups(model, spec.weight_decay), lr=spec.lr, **kwargs)
    # weight_decay 0 means none at all: AdamW's default of 0.01 must not slip in unasked.
    if "weight_decay" in inspect.signature(cls.__init__).parameters:
        kwargs["weight_decay"] = 0.0
    return create(cls, model, lr=spec.lr, **kwargs)


# ------------------------------------------------------------------------------------------ probe
def _run_probe(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], probe: dict[str, Any]) -> dict[str, Any]:
    name = probe.get("name", "perturbation")
    if name != "perturbation":
        raise ValueError(f"unknown probe {name!r}; known: perturbation")
    from reltrust.trust import perturbation_probe

    # The probe works on a deep copy in eval mode and leaves the model, its grads and the RNG as they were.
    kwargs = {k: v for k, v in probe.items() if k in ("layers", "mode") and v is not None}
    result = perturbation_probe(model, nn.functional.cross_entropy, batch, [float(e) for e in probe["etas"]], **kwargs)
    return result.to_dict()


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


def _unwrapped(model: nn.Module, spec: RunSpec, data: Any, parallel: str | None, dev: torch.device) -> nn.Module:
    """A plain module with `model`'s current weights: itself, DDP's module, or a gathered FSDP copy."""
    if parallel is None:
        return model
    if parallel == "ddp":
        return model.module
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from reltrust.workbench.models import build_model

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))  # a collective
    with torch.random.fork_rng(devices=[]):
        plain = build_model(spec.model, data, **spec.kwargs("model")).to(dev)
    plain.load_state_dict(full)
    plain.train(model.training)
    return plain


# -------------------------------------------------------------------------------------------- fit
def fit(
    spec: RunSpec,
    *,
    device: str | torch.device | None = "cpu",
    data_dir: str | None = None,
    progress: bool | None = None,
    parallel: str | None = None,
) -> RunResult:
    """Train and evaluate one run as `spec` says (see the module doc). Errors propagate to the caller
    (the runner records them as crashes); divergence does not raise. `parallel`: None, "fsdp" or
    "ddp" (needs an initialised default process group; every rank calls `fit`)."""
    t_start = time.perf_counter()
    rank, world = 0, 1
    if parallel is not None:
        import torch.distributed as dist

        if parallel not in PARALLEL:
            raise ValueError(f"parallel must be None or one of {PARALLEL}, got {parallel!r}")
        if not dist.is_initialized():
            raise RuntimeError("fit(parallel=...) needs the default process group: start under torchrun "
                               "and call reltrust.distributed.init_distributed() first")
        rank, world = dist.get_rank(), dist.get_world_size()
    dev = resolve_device(device)
    data = _load(spec.dataset, data_dir, spec.val_fraction, spec.split_seed)
    if getattr(data, "kind", "image") == "text":
        raise NotImplementedError("fit: text datasets (next-token prediction) are not supported by this loop yet")
    train = _as_tensors(data.x_train, data.y_train, dev)
    if train is None:
        raise ValueError(f"dataset {spec.dataset!r} has an empty training set")
    val = _as_tensors(data.x_val, data.y_val, dev)
    test = _as_tensors(getattr(data, "x_test", None), getattr(data, "y_test", None), dev)
    if spec.patience > 0 and val is None:
        raise ValueError("early stopping (patience > 0) needs a validation set (val_fraction > 0)")

    torch.manual_seed(spec.seed)
    from reltrust.workbench.models import build_model

    model = build_model(spec.model, data, **spec.kwargs("model")).to(dev)
    if parallel is not None:
        model = _parallelize(model, parallel, dev)
    optimizer = build_optimizer(spec, model)
    n = len(train[1])
    steps_per_epoch = math.ceil(n / spec.batch_size)
    per_step = spec.schedule_interval == "step"
    total_units = spec.epochs * (steps_per_epoch if per_step else 1)
    scheduler = build_scheduler(optimizer, spec.schedule, total_units, **spec.kwargs("schedule"))
    shuffle = torch.Generator().manual_seed(spec.seed)

    probe = spec.kwargs("probe")
    probe_epochs = set(int(e) for e in probe.get("at_epochs", ())) if probe else set()
    probe_batch = None
    if probe:
        pn = min(int(probe.get("batch", n)), n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(spec.split_seed))[:pn].to(dev)
        probe_batch = (train[0][order], train[1][order])
    probes: list[dict[str, Any]] = []

    result = RunResult(spec=spec, status="ok")
    t_eval = time.perf_counter()
    history = [_eval_entry(model, train, val, 0, None, {"train_loss_running": None, "train_acc_running": None, "seconds": 0.0})]
    eval_seconds = time.perf_counter() - t_eval
    if 0 in probe_epochs:
        probes.append({"epoch": 0, "step": 0, **_run_probe(_unwrapped(model, spec, data, parallel, dev), probe_batch, probe)})

    if progress is None:
        progress = sys.stderr.isatty()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=spec.epochs, desc=spec.label(), unit="epoch", leave=False, disable=not progress)

    step, train_seconds, samples = 0, 0.0, 0
    best_val, best_epoch, best_state, bad_epochs, stopped_early = math.inf, None, None, 0, False
    diverged_at = None
    x, y = train
    model.train()
    for epoch in range(1, spec.epochs + 1):
        t0 = time.perf_counter()
        lr_epoch = optimizer.param_groups[0]["lr"]
        perm = torch.randperm(n, generator=shuffle).to(dev)
        run_loss, run_correct, run_n = 0.0, 0, 0
        for i in range(steps_per_epoch):
            idx = perm[i * spec.batch_size : (i + 1) * spec.batch_size]
            bs = len(idx)
            optimizer.zero_grad(set_to_none=True)
            if parallel is None:
                xb, yb = x[idx], y[idx]
                out = model(xb)
                loss = nn.functional.cross_entropy(out, yb)
                loss.backward()
                correct = (out.detach().argmax(dim=1) == yb).sum()
            else:  # this rank's slice; sum × world/bs so that the ranks' averaged gradient is the mean's
                mine = idx.tensor_split(world)[rank]
                xb, yb = x[mine], y[mine]
                out = model(xb)
                loss_sum = nn.functional.cross_entropy(out, yb, reduction="sum")
                (loss_sum * (world / bs)).backward()
                stats = torch.stack([loss_sum.detach(), (out.detach().argmax(dim=1) == yb).sum().to(loss_sum.dtype)])
                torch.distributed.all_reduce(stats)
                loss, correct = stats[0] / bs, stats[1]
            optimizer.step()
            step += 1
            lv = float(loss.detach())
            samples += bs
            if not math.isfinite(lv):
                diverged_at = {"epoch": epoch, "step": step, "loss": lv}
                break
            run_loss += lv * bs
            run_correct += int(correct)
            run_n += bs
            if per_step:
                scheduler.step()
        if not per_step and diverged_at is None:
            scheduler.step()
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        t_eval = time.perf_counter()
        extra = {
            "train_loss_running": run_loss / run_n if run_n else None,
            "train_acc_running": run_correct / run_n if run_n else None,
            "seconds": seconds,
        }
        if diverged_at is not None:
            extra["partial"] = True
        entry = _eval_entry(model, train, val, epoch, lr_epoch, extra)
        history.append(entry)
        eval_seconds += time.perf_counter() - t_eval
        if bar is not None:
            bar.update(1)
            bar.set_postfix(train_acc=f"{entry['train_acc']:.3f}", loss=f"{entry['train_loss']:.3g}")
        if diverged_at is not None:
            break
        if epoch in probe_epochs:
            probes.append({"epoch": epoch, "step": step,
                           **_run_probe(_unwrapped(model, spec, data, parallel, dev), probe_batch, probe)})
        if spec.patience > 0:
            vl = entry["val_loss"]
            if math.isfinite(vl) and vl < best_val - spec.min_delta:
                best_val, best_epoch, bad_epochs = vl, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                bad_epochs += 1
                if bad_epochs >= spec.patience:
                    stopped_early = True
                    break
    if bar is not None:
        bar.close()

    final_entry = history[-1]
    if spec.patience > 0 and best_state is not None and diverged_at is None:
        model.load_state_dict(best_state)
        final_entry = history[best_epoch]
    final = {k: final_entry[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")}
    final.update(
        train_loss_running=final_entry.get("train_loss_running"),
        train_acc_running=final_entry.get("train_acc_running"),
        epochs_run=history[-1]["epoch"],
        steps=step,
        best_epoch=best_epoch,
        stopped_early=stopped_early,
        diverged_at=diverged_at,
    )
    if test is not None:
        final["test_loss"], final["test_acc"] = evaluate(model, *test)
    else:
        final["test_loss"] = final["test_acc"] = None

    result.status = "diverged" if diverged_at is not None else "ok"
    result.history = history
    result.final = final
    result.probes = probes
    result.info = {
        "device": str(dev),
        "parallel": parallel,
        "world_size": world,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "data_source": getattr(data, "source", None),
        "num_classes": getattr(data, "num_classes", None),
        "n_train": n,
        "n_val": 0 if val is None else len(val[1]),
        "parameters": sum(p.numel() for p in model.parameters()),
        "wall_seconds": time.perf_counter() - t_start,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "samples_per_second": samples / train_seconds if train_seconds > 0 else None,
    }
    return result
