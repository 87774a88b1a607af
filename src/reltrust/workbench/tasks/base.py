"""The seam between the training loop and what it trains: a `Task`.

A task answers three questions for `reltrust.workbench.train.fit`, which names no task:

1. **What to build**: `__init__` loads the data the spec names (through `load_cached`, so a worker
   process loads each data set once); `build()` returns the model of every player (one for most
   tasks; a GAN has a generator and a discriminator, each with its own optimiser). `fit` seeds
   `torch.manual_seed(spec.seed)` just before it.
2. **How to take one step**: `epoch(generator)` yields the minibatches of one epoch (a permutation
   of the training set drawn from `fit`'s shuffling generator, or random blocks of text), and
   `train_step(models, optimizers, batch, shard)` takes one optimiser step of every player and returns
   a `Step`: the loss that `fit` watches for divergence and the sums it averages over the epoch.
3. **What to measure**: `evaluate(models, split)` returns the task's metrics (``METRICS``, e.g. loss
   and accuracy) on the ``"train"``, ``"val"`` or ``"test"`` split, in eval mode; `probe` runs an
   optional measurement.

Data parallelism: under DDP/FSDP2 `fit` passes a `Shard`; a task's step then trains this rank's part
of every minibatch with ``shard.backward(loss_sum, batch_size)`` so that the ranks' averaged gradient is
exactly the gradient of the minibatch's mean loss. A task that cannot be split says so
(``PARALLEL = False``) and `fit` refuses it with a clear error.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from reltrust.workbench.spec import RunSpec


@dataclasses.dataclass
class Step:
    """What one training step reports: `loss` (a Python float: a non-finite value ends the run as
    diverged), `n` (examples in the minibatch) and `sums`: name → the minibatch's sum of a running
    metric (e.g. ``{"loss": loss·n, "acc": correct}``), averaged by `fit` over the epoch as
    ``train_<name>_running``."""

    loss: float
    n: int
    sums: dict[str, float]


@dataclasses.dataclass(frozen=True)
class Shard:
    """This process's part of every minibatch under data parallelism (rank `rank` of `world`)."""

    rank: int
    world: int

    def part(self, idx: torch.Tensor) -> torch.Tensor:
        return idx.tensor_split(self.world)[self.rank]

    def backward(self, loss_sum: torch.Tensor, batch_size: int) -> None:
        """Backward of this rank's loss *sum* × world/batch: averaged over the ranks (as DDP and FSDP2
        do), the gradient is that of the whole minibatch's mean loss."""
        (loss_sum * (self.world / batch_size)).backward()

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        torch.distributed.all_reduce(t)
        return t


class TaskError(ValueError):
    """A spec that this task cannot run; the message names the field."""


class Task:
    """Base class of the workbench's tasks; see the module doc. Subclasses set the class attributes
    and implement `build`, `epoch`, `train_step` and `evaluate`."""

    KIND: ClassVar[str] = ""
    DESCRIPTION: ClassVar[str] = ""
    PLAYERS: ClassVar[tuple[str, ...]] = ("model",)  # one optimiser each; the second takes spec.optimizer2
    MODELS: ClassVar[tuple[str, ...]] = ()  # the values spec.model may take
    DATA_KINDS: ClassVar[tuple[str, ...]] = ()  # the data kinds (Dataset.kind) this task trains on
    METRICS: ClassVar[tuple[str, ...]] = ("loss",)  # evaluated on every split, as <split>_<metric>
    RUNNING: ClassVar[tuple[str, ...]] = ("loss",)  # the Step.sums names, as train_<name>_running
    MONITOR: ClassVar[str | None] = "val_loss"  # early stopping: lower is better; None = not supported
    PARALLEL: ClassVar[bool] = True
    TASK_KWARGS: ClassVar[Mapping[str, Any]] = {}  # the task_kwargs it accepts, with their defaults

    def __init__(self, spec: RunSpec, *, device: torch.device, data_dir: str | None = None):
        self.spec = spec
        self.device = device
        self.data_dir = data_dir
        self.options = self._options(spec)
        self._check_players(spec)
        if spec.model not in self.MODELS:
            raise TaskError(f"RunSpec.model: {spec.model!r} is not a model of task {self.KIND!r}; "
                            f"allowed: {', '.join(self.MODELS)}")

    # ---- spec checks -----------------------------------------------------------------------------
    @classmethod
    def _options(cls, spec: RunSpec) -> dict[str, Any]:
        given = spec.kwargs("task")
        unknown = sorted(set(given) - set(cls.TASK_KWARGS))
        if unknown:
            allowed = ", ".join(cls.TASK_KWARGS) or "none"
            raise TaskError(f"RunSpec.task_kwargs: {unknown} not known to task {cls.KIND!r}; allowed: {allowed}")
        return {**cls.TASK_KWARGS, **given}

    @classmethod
    def _check_players(cls, spec: RunSpec) -> None:
        if len(cls.PLAYERS) > 1 and not spec.optimizer2:
            raise TaskError(f"RunSpec.optimizer2: task {cls.KIND!r} trains {len(cls.PLAYERS)} players "
                            f"({', '.join(cls.PLAYERS)}) and needs a second optimiser (optimizer2, lr2)")
        if len(cls.PLAYERS) == 1 and (spec.optimizer2 or spec.lr2 or spec.optimizer2_kwargs):
            raise TaskError(f"RunSpec.optimizer2: task {cls.KIND!r} has one player; leave optimizer2, lr2 "
                            "and optimizer2_kwargs empty")

    def _check_data(self, data: Any) -> Any:
        kind = getattr(data, "kind", None)
        if kind not in self.DATA_KINDS:
            raise TaskError(f"RunSpec.dataset: {self.spec.dataset!r} is {kind} data; task {self.KIND!r} "
                            f"trains on {' or '.join(self.DATA_KINDS)} data")
        return data

    # ---- what subclasses implement ---------------------------------------------------------------
    def build(self) -> dict[str, nn.Module]:
        """player → model, on `self.device` (fit seeds the global RNG just before)."""
        raise NotImplementedError

    @property
    def steps_per_epoch(self) -> int:
        raise NotImplementedError

    def epoch(self, generator: torch.Generator) -> Iterator[Any]:
        """The minibatches of one epoch, drawn from `generator` (fit's shuffling generator)."""
        raise NotImplementedError

    def train_step(self, models: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer],
                   batch: Any, shard: Shard | None) -> Step:
        raise NotImplementedError

    def has_split(self, split: str) -> bool:
        raise NotImplementedError

    def evaluate(self, models: Mapping[str, nn.Module], split: str) -> dict[str, float]:
        """The task's METRICS on `split` ("train", "val" or "test"), in eval mode."""
        raise NotImplementedError

    def probe(self, model: nn.Module, probe: Mapping[str, Any]) -> dict[str, Any]:
        raise TaskError(f"RunSpec.probe: task {self.KIND!r} has no probes")

    def info(self) -> dict[str, Any]:
        """What `fit` records about the data (``data_source``, ``n_train``, ...)."""
        return {}


class ShuffledTask(Task):
    """A task whose epoch is its `n` training examples reshuffled and cut into minibatches of
    `spec.batch_size` (the last, smaller one kept): index tensors into the training split."""

    n: int

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.n // self.spec.batch_size)

    def epoch(self, generator: torch.Generator) -> Iterator[torch.Tensor]:
        perm = torch.randperm(self.n, generator=generator).to(self.device)
        bs = self.spec.batch_size
        for i in range(self.steps_per_epoch):
            yield perm[i * bs : (i + 1) * bs]


# ------------------------------------------------------------------------------------------ data
@functools.lru_cache(maxsize=8)
def load_cached(name: str, data_dir: str | None, val_fraction: float, split_seed: int, normalize: str = "standardize",
                test_fraction: float = 0.0):
    """`reltrust.workbench.data.load_dataset`, loaded once per process for the same arguments."""
    from reltrust.workbench.data import load_dataset

    return load_dataset(name, data_dir=data_dir, val_fraction=val_fraction, seed=split_seed, normalize=normalize,
                        test_fraction=test_fraction)


def on_device(tensors: Sequence[torch.Tensor | None], device: torch.device) -> tuple[torch.Tensor | None, ...]:
    return tuple(None if t is None else t.to(device) for t in tensors)


@contextlib.contextmanager
def eval_mode(models: Mapping[str, nn.Module]) -> Iterator[None]:
    """Every model in eval mode inside the block; each model's own mode restored after."""
    modes = {k: m.training for k, m in models.items()}
    for m in models.values():
        m.eval()
    try:
        yield
    finally:
        for k, m in models.items():
            m.train(modes[k])
