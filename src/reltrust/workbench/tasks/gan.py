"""Class-conditional GAN: a generator and a discriminator, each with its own optimiser (hinge loss).

- Players: ``"generator"`` takes `spec.optimizer`, `lr`, `optimizer_kwargs`; ``"discriminator"``
  takes `spec.optimizer2`, `lr2`, `optimizer2_kwargs` (both required).
- Data: image data loaded with ``normalize="symmetric"`` (pixels in [-1, 1], the generator's tanh range).
- Model ``"mlp"``: `reltrust.workbench.models.Generator` and `Discriminator` (a projection
  discriminator); model_kwargs ``latent_dim`` (64), ``hidden`` (256, both players), ``spectral_norm``
  (True: on every layer of the discriminator).
- One epoch: a permutation of the training images (from `fit`'s generator) in minibatches; for each,
  latents and fake labels are drawn from the same generator. A step is one discriminator update on
  the hinge loss  L_D = mean(relu(1 − D(x, y))) + mean(relu(1 + D(G(z, y'), y'))), then one generator
  update on  L_G = −mean(D(G(z', y'), y'))  (fresh latents z'). Each optimiser holds only its own
  player's parameters, and each player's gradients are cleared before its update.
- Metrics, in eval mode, on up to ``eval_examples`` (task_kwargs, default 2048) real images of a
  split against as many fakes from latents and labels fixed for the split: ``d_loss`` and ``g_loss``
  as above. There is no metric to stop early on, and no data-parallel split.
- Optional (task_kwargs; off by default, so specs without them run as before):
  ``monitor_every`` (int k > 0): a `reltrust.trust.TrustMonitor` on each player's optimiser (σ₁
  every k steps); `info()` then holds ``trust``: player → layers, shapes, ``steps`` (0, k, 2k, …,
  last), ``norm`` (‖W‖_F of each monitored tensor after those steps) and ``spectral_steps`` /
  ``top_singular_value``. Monitored: the ≥ 2-d parameters the optimisers update (biases excluded;
  under spectral norm the stored ``parametrizations.weight.original``, not W/σ₁).
  ``scorer`` (dict of `reltrust.workbench.quality.scorer_spec` settings: epochs, width, seed): the
  metrics gain ``label_acc`` (the scorer's accuracy at recovering each fake's label) and ``cfd``
  (classifier Fréchet distance between the split's real images and the fakes, in the scorer's
  penultimate features).
- Probe ``{"name": "samples", "at_epochs": [...], "per_class": n, "seed": s}`` (on the generator):
  n images per class from latents drawn with seed s (the same for every run), as uint8 pixels.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import base64

import torch
from torch import nn

from reltrust.workbench.tasks.base import Shard, ShuffledTask, Step, TaskError, eval_mode, load_cached

MODEL_DEFAULTS = {"latent_dim": 64, "hidden": 256, "spectral_norm": True}
_EVAL_SEED = {"train": 1, "val": 2, "test": 3}  # the fixed latents of each split


def hinge_d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    return torch.relu(1 - real_scores).mean() + torch.relu(1 + fake_scores).mean()


def hinge_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    return -fake_scores.mean()


class GANTask(ShuffledTask):
    KIND = "gan"
    DESCRIPTION = "class-conditional GAN (generator + discriminator, two optimisers, hinge loss)"
    PLAYERS = ("generator", "discriminator")
    MODELS = ("mlp",)
    DATA_KINDS = ("image",)
    METRICS = ("d_loss", "g_loss")
    RUNNING = ("d_loss", "g_loss")
    MONITOR = None
    PARALLEL = False
    TASK_KWARGS = {"eval_examples": 2048, "monitor_every": 0, "scorer": {}}

    def __init__(self, spec, *, device, data_dir=None):
        super().__init__(spec, device=device, data_dir=data_dir)
        unknown = sorted(set(spec.kwargs("model")) - set(MODEL_DEFAULTS))
        if unknown:
            raise TaskError(f"RunSpec.model_kwargs: {unknown} not known to task 'gan'; allowed: {', '.join(MODEL_DEFAULTS)}")
        self.model_kwargs = {**MODEL_DEFAULTS, **spec.kwargs("model")}
        k = self.options["eval_examples"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise TaskError(f"RunSpec.task_kwargs.eval_examples must be an int >= 1, got {k!r}")
        self.data = self._check_data(load_cached(spec.dataset, data_dir, spec.val_fraction, spec.split_seed, "symmetric"))
        self.splits = {
            "train": (self.data.x_train.to(device), self.data.y_train.to(device)),
            "val": (self.data.x_val.to(device), self.data.y_val.to(device)),
            "test": None if self.data.x_test is None else (self.data.x_test.to(device), self.data.y_test.to(device)),
        }
        self.n = len(self.splits["train"][1])
        self._fixed: dict[str, tuple[torch.Tensor, ...]] = {}
        every = self.options["monitor_every"]
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise TaskError(f"RunSpec.task_kwargs.monitor_every must be an int >= 0 (0: off), got {every!r}")
        self._monitors = None
        self.scorer = None
        scorer = self.options["scorer"]
        if not isinstance(scorer, dict):
            raise TaskError(f"RunSpec.task_kwargs.scorer must be a dict of scorer settings, got {scorer!r}")
        if scorer:
            from reltrust.workbench import quality

            unknown = sorted(set(scorer) - set(quality.SCORER_DEFAULTS))
            if unknown:
                raise TaskError(f"RunSpec.task_kwargs.scorer: {unknown} not known; allowed: {', '.join(quality.SCORER_DEFAULTS)}")
            try:
                sspec = quality.scorer_spec(spec.dataset, val_fraction=spec.val_fraction, split_seed=spec.split_seed,
                                            **{**quality.SCORER_DEFAULTS, **scorer})
            except ValueError as e:
                raise TaskError(f"RunSpec.task_kwargs.scorer: {e}") from None
            self.scorer = quality.load_scorer(sspec, data_dir=data_dir, device=device)
            self.METRICS = (*self.METRICS, "label_acc", "cfd")
            self._real_features: dict[str, torch.Tensor] = {}

    def build(self) -> dict[str, nn.Module]:
        from reltrust.workbench.models import Discriminator, Generator

        mk, shape, k = self.model_kwargs, tuple(self.data.input_shape), self.data.num_classes
        return {
            "generator": Generator(mk["latent_dim"], k, shape, hidden=mk["hidden"]).to(self.device),
            "discriminator": Discriminator(k, shape, spectral_norm=mk["spectral_norm"], hidden=mk["hidden"]).to(self.device),
        }

    def epoch(self, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        latent, k = self.model_kwargs["latent_dim"], self.data.num_classes
        for idx in super().epoch(generator):
            b = len(idx)
            z = torch.randn(2, b, latent, generator=generator)
            y_fake = torch.randint(0, k, (b,), generator=generator)
            yield idx, z.to(self.device), y_fake.to(self.device)

    def train_step(self, models, optimizers, batch, shard: Shard | None) -> Step:
        g, d = models["generator"], models["discriminator"]
        opt_g, opt_d = optimizers["generator"], optimizers["discriminator"]
        idx, z, y_fake = batch
        if self._monitors is None and self.options["monitor_every"]:
            from reltrust.trust import TrustMonitor

            self._monitors = {p: TrustMonitor(optimizers[p], models[p], every=self.options["monitor_every"])
                              for p in self.PLAYERS}
        x, y = self.splits["train"][0][idx], self.splits["train"][1][idx]
        opt_d.zero_grad(set_to_none=True)
        with torch.no_grad():
            fake = g(z[0], y_fake)
        d_loss = hinge_d_loss(d(x, y), d(fake, y_fake))
        d_loss.backward()
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        g_loss = hinge_g_loss(d(g(z[1], y_fake), y_fake))
        g_loss.backward()
        opt_g.step()
        dl, gl = float(d_loss.detach()), float(g_loss.detach())
        n = len(idx)
        return Step(loss=dl + gl, n=n, sums={"d_loss": dl * n, "g_loss": gl * n})

    def has_split(self, split: str) -> bool:
        return self.splits[split] is not None and len(self.splits[split][1]) > 0

    def _eval_batch(self, split: str) -> tuple[torch.Tensor, ...]:
        if split not in self._fixed:
            x, y = self.splits[split]
            m = min(self.options["eval_examples"], len(y))
            gen = torch.Generator().manual_seed(_EVAL_SEED[split])
            pick = torch.randperm(len(y), generator=gen)[:m].to(self.device)
            z = torch.randn(m, self.model_kwargs["latent_dim"], generator=gen).to(self.device)
            y_fake = torch.randint(0, self.data.num_classes, (m,), generator=gen).to(self.device)
            self._fixed[split] = (x[pick], y[pick], z, y_fake)
        return self._fixed[split]

    @torch.no_grad()
    def evaluate(self, models, split: str) -> dict[str, float]:
        x, y, z, y_fake = self._eval_batch(split)
        with eval_mode(models):
            fake = models["generator"](z, y_fake)
            fake_scores = models["discriminator"](fake, y_fake)
            real_scores = models["discriminator"](x, y)
        out = {"d_loss": float(hinge_d_loss(real_scores, fake_scores)), "g_loss": float(hinge_g_loss(fake_scores))}
        if self.scorer is not None:
            from reltrust.workbench.quality import frechet_distance, label_accuracy

            if split not in self._real_features:
                self._real_features[split] = self.scorer.logits_and_features(x)[1]
            logits, feats = self.scorer.logits_and_features(fake)
            out["label_acc"] = label_accuracy(logits, y_fake)
            out["cfd"] = frechet_distance(self._real_features[split], feats)
        return out

    @torch.no_grad()
    def probe(self, model: nn.Module, probe) -> dict[str, Any]:
        name = probe.get("name")
        if name != "samples":
            raise TaskError(f"RunSpec.probe: unknown probe {name!r} for task 'gan'; known: samples")
        per_class, seed = probe.get("per_class", 8), probe.get("seed", 0)
        if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
            raise TaskError(f"RunSpec.probe.per_class must be an int >= 1, got {per_class!r}")
        k = self.data.num_classes
        gen = torch.Generator().manual_seed(int(seed))
        z = torch.randn(k * per_class, self.model_kwargs["latent_dim"], generator=gen).to(self.device)
        y = torch.arange(k).repeat_interleave(per_class).to(self.device)
        with eval_mode({"generator": model}):
            img = model(z, y)
        pixels = ((img.float().cpu().nan_to_num(0.0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return {"per_class": per_class, "seed": int(seed), "shape": [k, per_class, *pixels.shape[1:]],
                "pixels_uint8_base64": base64.b64encode(pixels.numpy().tobytes()).decode("ascii")}

    def trust_traces(self) -> dict[str, Any]:
        """player → the monitor's trace (see the module doc); {} when no monitor ran."""
        out = {}
        for p, m in (self._monitors or {}).items():
            m.detach()
            k, norm, steps = m.every, m.norm, len(m)
            keep = sorted({t for t in range(0, steps, k)} | {steps})
            rows = [(m.current_norm() if t == steps else norm[t]).tolist() for t in keep]
            out[p] = {"layers": list(m.layers), "shapes": [list(s) for s in m.shapes], "steps": keep, "norm": rows,
                      "spectral_steps": m.spectral_steps, "top_singular_value": m.top_singular_value.tolist()}
        return out

    def info(self) -> dict[str, Any]:
        return {"data_source": getattr(self.data, "source", None), "num_classes": self.data.num_classes,
                "n_train": self.n, "n_val": len(self.splits["val"][1]),
                **({"trust": self.trust_traces()} if self._monitors else {}),
                **({"scorer": {"spec": self.scorer.spec.to_dict(), "sha256": self.scorer.sha,
                               "held_out": self.scorer.held_out}} if self.scorer is not None else {})}
