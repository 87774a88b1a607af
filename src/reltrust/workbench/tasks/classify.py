"""Image (and vector) classification: an MLP or a small CNN, cross-entropy, accuracy.

- Data: `spec.dataset` loaded with `spec.val_fraction` and `spec.split_seed` (image or vector data).
- One epoch: a permutation of the training set drawn from `fit`'s generator, cut into minibatches
  of `spec.batch_size` (the last, smaller one kept).
- Metrics on every split, in eval mode over the whole split: ``loss`` (mean cross-entropy) and
  ``acc`` (accuracy; a row with a non-finite logit is a wrong answer). The running averages of the
  minibatch loss and accuracy over an epoch are ``train_loss_running`` and ``train_acc_running``.
- Probe ``{"name": "perturbation", "at_epochs": [...], "etas": [...], "batch": n}``:
  `reltrust.trust.perturbation_probe` on a fixed set of `n` training examples (drawn with
  `spec.split_seed`), on a copy of the model: the run itself is not disturbed.
- Probe ``{"name": "grad_variance", "batch_sizes": [...], "draws": k}``: E‖g_B − g‖² at the model's
  current point, measured over `k` minibatches per batch size and exactly
  (`reltrust.workbench.measures.gradient_variance`; draws seeded with `spec.seed`).
- Probe ``{"name": "activations", "batch": n}``: the variance of every Linear layer's output on the
  fixed `n` training examples (`reltrust.workbench.measures.activation_variances`).
- task_kwargs: ``test_fraction`` (0): carve a fixed-seed test split from a data set without one (see
  `reltrust.workbench.data.load_dataset`); ``train_subset`` (0 = all): train on only the first `k`
  examples of a permutation of the training split drawn with `spec.split_seed` (the same subset for
  every training seed; validation and test splits unchanged); ``eval_every`` (0 = a pass): one
  "epoch" of the loop is `eval_every` minibatches of a running sequence of reshuffled passes, so that
  the metrics are evaluated every `eval_every` optimiser steps.
- Optional (task_kwargs; off by default, so specs without it run as before): ``monitor_every`` (int
  k > 0): a `reltrust.trust.TrustMonitor` on the optimiser (its ≥ 2-d parameters, biases excluded;
  exact σ₁, ``update_spectral=True``) measuring at step 1 and every k-th step. `info()` then holds
  ``trust``: ``layers``, ``shapes``, ``every``, ``spectral_steps``, and per layer the median over
  those steps of the relative Frobenius change ‖ΔW‖_F/‖W‖_F (``relative_update``) and of the
  relative spectral change ‖ΔW‖₂/‖W‖₂ (``relative_spectral_update``); the median over every step of
  the deep relative trust Π_l(1+‖ΔW_l‖_F/‖W_l‖_F) − 1 (``deep_relative_trust``), its value at the
  spectral steps (``deep_relative_trust_trace``) and, per layer l, the median over every step of the
  deep relative trust of the layers up to l (``deep_relative_trust_by_layer``; its last entry is
  ``deep_relative_trust``). Layers in the model's order (input first, head last). Medians skip NaN; a
  non-finite one is null.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from reltrust.workbench.tasks.base import Shard, ShuffledTask, Step, TaskError, load_cached


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


def _as_tensors(x: Any, y: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    if x is None or y is None or len(y) == 0:
        return None
    xt = torch.as_tensor(x)
    if xt.is_floating_point():
        xt = xt.float()
    return xt.to(device), torch.as_tensor(y).long().to(device)


class ClassifyTask(ShuffledTask):
    KIND = "classify"
    DESCRIPTION = "image/vector classification (MLP, CNN): cross-entropy loss and accuracy"
    MODELS = ("mlp", "cnn")
    DATA_KINDS = ("image", "vector")
    METRICS = ("loss", "acc")
    RUNNING = ("loss", "acc")
    TASK_KWARGS = {"test_fraction": 0.0, "train_subset": 0, "eval_every": 0, "monitor_every": 0}

    def __init__(self, spec, *, device, data_dir=None):
        super().__init__(spec, device=device, data_dir=data_dir)
        o = self.options
        tf = o["test_fraction"]
        if isinstance(tf, bool) or not isinstance(tf, (int, float)) or not 0.0 <= tf < 1.0:
            raise TaskError(f"RunSpec.task_kwargs.test_fraction must be a number in [0, 1), got {tf!r}")
        for name in ("train_subset", "eval_every"):
            if isinstance(o[name], bool) or not isinstance(o[name], int) or o[name] < 0:
                raise TaskError(f"RunSpec.task_kwargs.{name} must be an int >= 0 (0: off), got {o[name]!r}")
        self.data = self._check_data(load_cached(spec.dataset, data_dir, spec.val_fraction, spec.split_seed,
                                                 test_fraction=float(tf)))
        self.splits = {
            "train": _as_tensors(self.data.x_train, self.data.y_train, device),
            "val": _as_tensors(self.data.x_val, self.data.y_val, device),
            "test": _as_tensors(getattr(self.data, "x_test", None), getattr(self.data, "y_test", None), device),
        }
        if self.splits["train"] is None:
            raise TaskError(f"RunSpec.dataset: {spec.dataset!r} has an empty training set")
        k = o["train_subset"]
        if k:
            n_all = len(self.splits["train"][1])
            if k > n_all:
                raise TaskError(f"RunSpec.task_kwargs.train_subset must be in [0, {n_all}] (the training split), got {k}")
            keep = torch.randperm(n_all, generator=torch.Generator().manual_seed(spec.split_seed))[:k].to(device)
            self.splits["train"] = tuple(t[keep] for t in self.splits["train"])
        self.n = len(self.splits["train"][1])
        self._probe_batch = None
        k = self.options["monitor_every"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise TaskError(f"RunSpec.task_kwargs.monitor_every must be an int >= 0 (0: off), got {k!r}")
        self._monitor = None
        self._every = o["eval_every"]
        self._stream: tuple[torch.Tensor, int] | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self._every or super().steps_per_epoch

    def epoch(self, generator: torch.Generator):
        if not self._every:
            yield from super().epoch(generator)
            return
        bs = self.spec.batch_size
        for _ in range(self._every):
            if self._stream is None or self._stream[1] >= self.n:
                self._stream = (torch.randperm(self.n, generator=generator).to(self.device), 0)
            perm, pos = self._stream
            self._stream = (perm, pos + bs)
            yield perm[pos : pos + bs]

    def build(self) -> dict[str, nn.Module]:
        from reltrust.workbench.models import build_model

        return {"model": build_model(self.spec.model, self.data, **self.spec.kwargs("model")).to(self.device)}

    def train_step(self, models, optimizers, batch: torch.Tensor, shard: Shard | None) -> Step:
        model, optimizer = models["model"], optimizers["model"]
        if self._monitor is None and self.options["monitor_every"]:
            from reltrust.trust import TrustMonitor

            self._monitor = TrustMonitor(optimizer, model, every=self.options["monitor_every"], spectral="exact",
                                         update_spectral=True)
            names = [n for n, _ in model.named_parameters()]
            self._monitor_order = sorted(range(len(self._monitor.layers)),
                                         key=lambda j: names.index(self._monitor.layers[j]))
        x, y = self.splits["train"]
        bs = len(batch)
        optimizer.zero_grad(set_to_none=True)
        if shard is None:
            xb, yb = x[batch], y[batch]
            out = model(xb)
            loss = nn.functional.cross_entropy(out, yb)
            loss.backward()
            correct = (out.detach().argmax(dim=1) == yb).sum()
        else:
            mine = shard.part(batch)
            xb, yb = x[mine], y[mine]
            out = model(xb)
            loss_sum = nn.functional.cross_entropy(out, yb, reduction="sum")
            shard.backward(loss_sum, bs)
            stats = shard.all_reduce(torch.stack([loss_sum.detach(),
                                                  (out.detach().argmax(dim=1) == yb).sum().to(loss_sum.dtype)]))
            loss, correct = stats[0] / bs, stats[1]
        optimizer.step()
        lv = float(loss.detach())
        return Step(loss=lv, n=bs, sums={"loss": lv * bs, "acc": int(correct)})

    def has_split(self, split: str) -> bool:
        return self.splits[split] is not None

    def evaluate(self, models, split: str) -> dict[str, float]:
        loss, acc = evaluate(models["model"], *self.splits[split])
        return {"loss": loss, "acc": acc}

    def probe(self, model: nn.Module, probe: Mapping[str, Any]) -> dict[str, Any]:
        name = probe.get("name", "perturbation")
        if name == "grad_variance":
            from reltrust.workbench.measures import gradient_variance

            x, y = self.splits["train"]
            gen = torch.Generator().manual_seed(self.spec.seed)
            return gradient_variance(model, nn.functional.cross_entropy, x, y, probe["batch_sizes"],
                                     int(probe.get("draws", 100)), gen)
        if name == "activations":
            from reltrust.workbench.measures import activation_variances

            x, _ = self.splits["train"]
            pn = min(int(probe.get("batch", self.n)), self.n)
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.spec.split_seed))[:pn]
            return activation_variances(model, x[order.to(self.device)])
        if name != "perturbation":
            raise TaskError(f"RunSpec.probe: unknown probe {name!r}; known: perturbation, grad_variance, activations")
        from reltrust.trust import perturbation_probe

        if self._probe_batch is None:
            x, y = self.splits["train"]
            pn = min(int(probe.get("batch", self.n)), self.n)
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.spec.split_seed))[:pn]
            order = order.to(self.device)
            self._probe_batch = (x[order], y[order])
        # The probe works on a deep copy in eval mode and leaves the model, its grads and the RNG as they were.
        kwargs = {k: v for k, v in probe.items() if k in ("layers", "mode") and v is not None}
        result = perturbation_probe(model, nn.functional.cross_entropy, self._probe_batch,
                                    [float(e) for e in probe["etas"]], **kwargs)
        return result.to_dict()

    def trust_summary(self) -> dict[str, Any]:
        """The monitor's geometry of a step, aggregated over training (see the module doc); {} without one."""
        m = self._monitor
        if m is None:
            return {}
        m.detach()
        at = [s - 1 for s in m.spectral_steps]  # rows of the per-step trace at the spectral steps
        order = self._monitor_order
        drt = m.deep_relative_trust()
        by_layer = torch.cumprod(1.0 + m.relative_update[:, order], dim=1) - 1.0

        def med(x: torch.Tensor) -> list:
            x = x if x.numel() else torch.full((1, x.shape[-1]), float("nan"), dtype=torch.float64)
            return [v if math.isfinite(v) else None for v in torch.nanmedian(x, dim=0).values.tolist()]

        def clean(xs: list) -> list:
            return [v if math.isfinite(v) else None for v in xs]

        return {"layers": [m.layers[j] for j in order], "shapes": [list(m.shapes[j]) for j in order], "every": m.every,
                "spectral_steps": m.spectral_steps, "steps": len(m),
                "relative_update": med(m.relative_update[at][:, order]),
                "relative_spectral_update": med(m.relative_spectral_update[:, order]),
                "deep_relative_trust": med(drt[:, None])[0], "deep_relative_trust_trace": clean(drt[at].tolist()),
                "deep_relative_trust_by_layer": med(by_layer)}

    def info(self) -> dict[str, Any]:
        val = self.splits["val"]
        return {"data_source": getattr(self.data, "source", None), "num_classes": getattr(self.data, "num_classes", None),
                "n_train": self.n, "n_val": 0 if val is None else len(val[1]),
                **({"trust": self.trust_summary()} if self._monitor is not None else {})}
