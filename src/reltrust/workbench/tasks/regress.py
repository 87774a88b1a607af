"""Regression by least squares: a linear or a random-features model (for the double-descent study).

- Data, either
  - ``"teacher"``: generated here from `spec.split_seed`: inputs x ~ N(0, I_dim), targets
    y = x·β + noise·ε with β ~ N(0, I_dim/dim) and ε ~ N(0, 1); task_kwargs ``n_train`` (200),
    ``n_val`` (1000), ``dim`` (50), ``noise`` (0.1). Metric: ``loss``.
  - or any image/vector classification data set (`spec.dataset`, `val_fraction`, `split_seed` as for
    classification), fitted to one-hot targets. Metrics: ``loss`` and ``acc`` (argmax = label).
- Models: ``"linear"`` (`nn.Linear` with bias, initialised to zero) or ``"random_features"``
  (`reltrust.workbench.models.RandomFeatures`, model_kwargs ``features``).
- Loss: the mean squared error, mean over examples and outputs; minibatches of `spec.batch_size` from
  a reshuffled training set (a batch at least the training set's size is full-batch gradient descent).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from reltrust.workbench.tasks.base import Shard, ShuffledTask, Step, TaskError, eval_mode, load_cached

TEACHER = "teacher"


def teacher_data(n_train: int, n_val: int, dim: int, noise: float, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The linear-teacher data set: {"train": (x, y), "val": (x, y)}, y of shape (n, 1)."""
    gen = torch.Generator().manual_seed(seed)
    beta = torch.randn(dim, 1, generator=gen) / math.sqrt(dim)
    out = {}
    for split, n in (("train", n_train), ("val", n_val)):
        x = torch.randn(n, dim, generator=gen)
        out[split] = (x, x @ beta + noise * torch.randn(n, 1, generator=gen))
    return out


class RegressTask(ShuffledTask):
    KIND = "regress"
    DESCRIPTION = "least-squares regression (linear, random features): mean squared error"
    MODELS = ("linear", "random_features")
    DATA_KINDS = ("image", "vector")
    METRICS = ("loss",)
    RUNNING = ("loss",)
    TASK_KWARGS = {"n_train": 200, "n_val": 1000, "dim": 50, "noise": 0.1}

    def __init__(self, spec, *, device, data_dir=None):
        super().__init__(spec, device=device, data_dir=data_dir)
        o = self.options
        if spec.dataset == TEACHER:
            for name in ("n_train", "dim"):
                if isinstance(o[name], bool) or not isinstance(o[name], int) or o[name] < 1:
                    raise TaskError(f"RunSpec.task_kwargs.{name} must be an int >= 1, got {o[name]!r}")
            if isinstance(o["n_val"], bool) or not isinstance(o["n_val"], int) or o["n_val"] < 0:
                raise TaskError(f"RunSpec.task_kwargs.n_val must be an int >= 0, got {o['n_val']!r}")
            if isinstance(o["noise"], bool) or not isinstance(o["noise"], (int, float)) or not o["noise"] >= 0:
                raise TaskError(f"RunSpec.task_kwargs.noise must be a number >= 0, got {o['noise']!r}")
            data = teacher_data(o["n_train"], o["n_val"], o["dim"], float(o["noise"]), spec.split_seed)
            self.splits = {**{k: (x.to(device), y.to(device), None) for k, (x, y) in data.items()}, "test": None}
            self.source = f"linear teacher (n_train {o['n_train']}, dim {o['dim']}, noise {o['noise']}, seed {spec.split_seed})"
            self.in_features, self.out_features = o["dim"], 1
        else:
            if spec.kwargs("task"):
                raise TaskError(f"RunSpec.task_kwargs: {sorted(spec.kwargs('task'))} apply to dataset 'teacher' only")
            d = self._check_data(load_cached(spec.dataset, data_dir, spec.val_fraction, spec.split_seed))
            k = d.num_classes

            def split(x, y):
                if x is None or y is None or len(y) == 0:
                    return None
                return x.flatten(1).to(device), nn.functional.one_hot(y, k).float().to(device), y.to(device)

            self.splits = {"train": split(d.x_train, d.y_train), "val": split(d.x_val, d.y_val),
                           "test": split(d.x_test, d.y_test)}
            self.source = getattr(d, "source", None)
            self.in_features, self.out_features = math.prod(d.input_shape), k
            self.METRICS = ("loss", "acc")
        self.n = len(self.splits["train"][0])

    def build(self) -> dict[str, nn.Module]:
        from reltrust.workbench.models import RandomFeatures

        mk = self.spec.kwargs("model")
        if self.spec.model == "linear":
            if mk:
                raise TaskError(f"RunSpec.model_kwargs: model 'linear' takes none, got {sorted(mk)}")
            model = nn.Linear(self.in_features, self.out_features)
            nn.init.zeros_(model.weight)
            nn.init.zeros_(model.bias)
        else:
            model = RandomFeatures(self.in_features, self.out_features, **mk)
        return {"model": model.to(self.device)}

    def train_step(self, models, optimizers, batch, shard: Shard | None) -> Step:
        model, optimizer = models["model"], optimizers["model"]
        x, y, _ = self.splits["train"]
        bs = len(batch)
        optimizer.zero_grad(set_to_none=True)
        if shard is None:
            loss = nn.functional.mse_loss(model(x[batch]), y[batch])
            loss.backward()
        else:
            mine = shard.part(batch)
            loss_sum = nn.functional.mse_loss(model(x[mine]), y[mine], reduction="sum") / self.out_features
            shard.backward(loss_sum, bs)
            loss = shard.all_reduce(loss_sum.detach().clone()) / bs
        optimizer.step()
        lv = float(loss.detach())
        return Step(loss=lv, n=bs, sums={"loss": lv * bs})

    def has_split(self, split: str) -> bool:
        return self.splits[split] is not None and len(self.splits[split][0]) > 0

    @torch.no_grad()
    def evaluate(self, models, split: str) -> dict[str, float]:
        x, y, labels = self.splits[split]
        with eval_mode(models):
            out = models["model"](x)
        metrics = {"loss": float(nn.functional.mse_loss(out, y))}
        if labels is not None:
            ok = torch.isfinite(out).all(dim=1)
            metrics["acc"] = float(((out.argmax(dim=1) == labels) & ok).float().mean())
        return metrics

    def info(self) -> dict[str, Any]:
        val = self.splits["val"]
        return {"data_source": self.source, "num_classes": self.out_features if self.METRICS == ("loss", "acc") else None,
                "n_train": self.n, "n_val": 0 if val is None else len(val[0])}
