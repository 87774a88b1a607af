"""Character language model: the char Transformer on a text corpus (next-character prediction).

- Data: `spec.dataset` must be a text corpus (``"shakespeare"``); its train and validation text are
  consecutive parts of the corpus (`spec.val_fraction`).
- Model: ``"transformer"``, `reltrust.workbench.models.CharTransformer` with `spec.model_kwargs`
  (``block_size`` sets the context; 64 by default).
- One "epoch" is ``steps_per_epoch`` optimiser steps (task_kwargs, default 100), each on
  `spec.batch_size` windows of ``block_size`` characters at random places of the training text,
  drawn from `fit`'s seeded generator (`reltrust.workbench.data.text_batches`). Use `spec.steps` for
  a step budget; the metrics are evaluated after every epoch.
- Metrics on the train and validation text, in eval mode, over ``eval_blocks`` fixed windows per
  split (task_kwargs, default 256; evenly spaced, non-overlapping, the same for every run): ``loss``
  (mean cross-entropy in nats per character), ``bpc`` (bits per character, loss / ln 2) and ``acc``
  (next-character accuracy). A model that predicts every character with probability 1/V has loss
  exactly ln V.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from reltrust.workbench.tasks.base import Shard, Step, Task, TaskError, eval_mode, load_cached


class CharLMTask(Task):
    KIND = "charlm"
    DESCRIPTION = "character language model (char Transformer): loss and bits per character"
    MODELS = ("transformer",)
    DATA_KINDS = ("text",)
    METRICS = ("loss", "bpc", "acc")
    RUNNING = ("loss", "acc")
    TASK_KWARGS = {"steps_per_epoch": 100, "eval_blocks": 256}

    def __init__(self, spec, *, device, data_dir=None):
        super().__init__(spec, device=device, data_dir=data_dir)
        for name in ("steps_per_epoch", "eval_blocks"):
            v = self.options[name]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise TaskError(f"RunSpec.task_kwargs.{name} must be an int >= 1, got {v!r}")
        self.data = self._check_data(load_cached(spec.dataset, data_dir, spec.val_fraction, spec.split_seed))
        self.block_size = int(spec.kwargs("model").get("block_size", 64))
        self.text = {"train": self.data.x_train, "val": self.data.x_val, "test": self.data.x_test}
        if len(self.text["train"]) < self.block_size + 1:
            raise TaskError(f"RunSpec.dataset: the training text of {spec.dataset!r} is shorter than one block")
        self._windows = {split: self._eval_windows(t) for split, t in self.text.items() if self.has_split(split)}

    def _eval_windows(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`eval_blocks` evenly spaced non-overlapping windows of the text (inputs, next characters)."""
        n_blocks = (len(tokens) - 1) // self.block_size
        k = min(self.options["eval_blocks"], n_blocks)
        starts = (torch.arange(k) * n_blocks // k) * self.block_size
        idx = starts[:, None] + torch.arange(self.block_size)[None, :]
        return tokens[idx].to(self.device), tokens[idx + 1].to(self.device)

    def build(self) -> dict[str, nn.Module]:
        from reltrust.workbench.models import build_model

        return {"model": build_model("transformer", self.data, **self.spec.kwargs("model")).to(self.device)}

    @property
    def steps_per_epoch(self) -> int:
        return self.options["steps_per_epoch"]

    def epoch(self, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from reltrust.workbench.data import text_batches

        for _ in range(self.steps_per_epoch):
            x, y = text_batches(self.text["train"], self.block_size, self.spec.batch_size, generator=generator)
            yield x.to(self.device), y.to(self.device)

    def train_step(self, models, optimizers, batch, shard: Shard | None) -> Step:
        model, optimizer = models["model"], optimizers["model"]
        x, y = batch
        n = y.numel()  # characters predicted in this minibatch
        optimizer.zero_grad(set_to_none=True)
        if shard is None:
            logits = model(x)
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
            loss.backward()
            correct = (logits.detach().argmax(dim=-1) == y).sum()
        else:
            rows = shard.part(torch.arange(len(x), device=x.device))
            logits = model(x[rows])
            loss_sum = nn.functional.cross_entropy(logits.flatten(0, 1), y[rows].flatten(), reduction="sum")
            shard.backward(loss_sum, n)
            stats = shard.all_reduce(torch.stack([loss_sum.detach(),
                                                  (logits.detach().argmax(dim=-1) == y[rows]).sum().to(loss_sum.dtype)]))
            loss, correct = stats[0] / n, stats[1]
        optimizer.step()
        lv = float(loss.detach())
        return Step(loss=lv, n=n, sums={"loss": lv * n, "acc": int(correct)})

    def has_split(self, split: str) -> bool:
        t = self.text[split]
        return t is not None and len(t) > self.block_size

    @torch.no_grad()
    def evaluate(self, models, split: str) -> dict[str, float]:
        x, y = self._windows[split]
        model = models["model"]
        total, correct = 0.0, 0
        with eval_mode(models):
            for i in range(0, len(x), 64):
                logits = model(x[i : i + 64])
                total += float(nn.functional.cross_entropy(logits.flatten(0, 1), y[i : i + 64].flatten(), reduction="sum"))
                ok = torch.isfinite(logits).all(dim=-1)
                correct += int(((logits.argmax(dim=-1) == y[i : i + 64]) & ok).sum())
        loss = total / y.numel()
        return {"loss": loss, "bpc": loss / math.log(2), "acc": correct / y.numel()}

    def info(self) -> dict[str, Any]:
        return {"data_source": getattr(self.data, "source", None), "num_classes": len(self.data.vocab),
                "n_train": len(self.text["train"]), "n_val": len(self.text["val"]), "block_size": self.block_size}
