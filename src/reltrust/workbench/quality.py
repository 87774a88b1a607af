"""Numbers for the quality of generated images: a classifier trained once on the real training images
scores them.

- `Scorer`: a classifier (the workbench's MLP, trained by `fit` as a ``classify`` run: its spec is
  `scorer_spec`) applied to images in the GAN's pixel range [-1, 1] (mapped to the classify task's
  standardised pixels first). `Scorer.logits_and_features(x)` returns its logits and its
  *penultimate* features (the input of its last Linear layer).
- `label_accuracy(logits, labels)`: the fraction of images whose predicted class is the label they were
  generated for (a row with a non-finite logit is a wrong answer).
- `frechet_distance(a, b)`: the Fréchet distance between Gaussians fitted to two sets of feature
  rows, ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2(Σ_a^½ Σ_b Σ_a^½)^½), in float64. With the scorer's
  penultimate features this is a *classifier Fréchet distance*: FID's formula in the features of a
  small classifier trained here, not Inception's, so its values are not comparable with FID.
- `load_scorer(spec)`: trained once and cached: in this process, and as a file
  ``scorer-<dataset>-<key>.pt`` in `cache_dir` (or the folder named by the environment variable
  ``RELTRUST_SCORER_DIR``, which the norm study sets to its output folder before its workers start).
  A cached file is used only when its stored spec equals `spec`.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reltrust.workbench.spec import RunSpec

SCORER_DIR_ENV = "RELTRUST_SCORER_DIR"
SCORER_DEFAULTS = {"epochs": 10, "width": 128, "seed": 0}
_MEMO: dict[str, "Scorer"] = {}


def scorer_spec(dataset: str, *, val_fraction: float = 0.1, split_seed: int = 0, epochs: int = 10,
                width: int = 128, seed: int = 0) -> RunSpec:
    """The ``classify`` run that trains the scorer: an MLP (3 Linear layers, `width` wide, so the
    penultimate features are `width`-dimensional) with Adam lr 1e-3, batch 128, on the same
    train/validation split as the GAN (`val_fraction`, `split_seed`)."""
    for name, v, low in (("epochs", epochs, 1), ("width", width, 2), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"scorer {name} must be an int >= {low}, got {v!r}")
    return RunSpec(study="scorer", dataset=dataset, model="mlp", optimizer="adam", lr=1e-3, seed=seed,
                   epochs=epochs, batch_size=128, model_kwargs={"depth": 3, "width": width},
                   val_fraction=val_fraction, split_seed=split_seed)


class Scorer:
    """A trained classifier that scores images in [-1, 1]; see the module doc."""

    def __init__(self, spec: RunSpec, model: nn.Module, mean: float, std: float, held_out: dict[str, Any]):
        self.spec, self.model, self.mean, self.std = spec, model.eval(), float(mean), float(std)
        self.held_out = dict(held_out)  # {"split": "test"|"val", "acc": float, "n": int}
        h = hashlib.sha256()
        for name, t in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        self.sha = h.hexdigest()

    @torch.no_grad()
    def logits_and_features(self, x: torch.Tensor, batch_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (n, classes) and penultimate features (n, width) of images `x` in [-1, 1]."""
        head = self.model.layers[-1]
        seen: list[torch.Tensor] = []
        handle = head.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
        try:
            device = next(self.model.parameters()).device
            logits = []
            for i in range(0, len(x), batch_size):
                xb = x[i : i + batch_size].to(device, torch.float32)
                logits.append(self.model(((xb + 1) / 2 - self.mean) / self.std))
        finally:
            handle.remove()
        return torch.cat(logits), torch.cat(seen)

    def to(self, device: torch.device | str) -> Scorer:
        self.model.to(device)
        return self


def label_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose argmax is the label; a row with a non-finite logit counts as wrong."""
    ok = torch.isfinite(logits).all(dim=1)
    return int(((logits.argmax(dim=1) == labels.to(logits.device)) & ok).sum()) / len(labels)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted (mean, covariance with n − 1) to the rows of `a` and
    of `b`, in float64; NaN when either holds a non-finite value. Needs at least 2 rows each."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance: a and b must be (n, d) with the same d, got {tuple(a.shape)}, {tuple(b.shape)}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"frechet_distance: needs >= 2 rows in each set, got {len(a)} and {len(b)}")
    a, b = a.double().cpu(), b.double().cpu()
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return math.nan
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = torch.cov(a.T), torch.cov(b.T)
    w, v = torch.linalg.eigh(ca)
    root_a = (v * w.clamp(min=0).sqrt()) @ v.T
    m = root_a @ cb @ root_a
    cross = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    return float(((mu_a - mu_b) ** 2).sum() + torch.trace(ca) + torch.trace(cb) - 2 * cross)


# ---------------------------------------------------------------------------------------- training
def _file(spec: RunSpec, cache_dir: Path) -> Path:
    return cache_dir / f"scorer-{spec.dataset}-{spec.key[:12]}.pt"


def _standardisation(spec: RunSpec, data_dir: str | None) -> tuple[float, float]:
    """The classify task's scalar pixel mean and std (of the [0, 1] train split) for this split."""
    from reltrust.workbench.tasks.base import load_cached

    x = load_cached(spec.dataset, data_dir, spec.val_fraction, spec.split_seed, "unit").x_train
    return float(x.mean()), float(x.std())


def train_scorer(spec: RunSpec, *, data_dir: str | None = None, device: str | torch.device = "cpu") -> Scorer:
    """Train the scorer with `reltrust.workbench.train.fit` and measure it on the held-out split (the
    data set's test split where it has one, else its validation split)."""
    from reltrust.workbench.train import fit

    models: dict[str, nn.Module] = {}
    record = fit(spec, device=device, data_dir=data_dir, progress=False, models_out=models)
    if record.status != "ok":
        raise RuntimeError(f"the scorer's training run {spec.label()} ended {record.status}")
    f = record.final
    split = "test" if f.get("test_acc") is not None else "val"
    n = record.info.get("n_val") if split == "val" else None
    held_out = {"split": split, "acc": f.get(f"{split}_acc"), "n": n, "train_acc": f.get("train_acc")}
    mean, std = _standardisation(spec, data_dir)
    return Scorer(spec, models["model"], mean, std, held_out)


def save_scorer(scorer: Scorer, path: str | os.PathLike) -> Path:
    from reltrust.workbench.store import atomic_write_bytes

    buf = io.BytesIO()
    torch.save({"spec": scorer.spec.to_dict(), "state_dict": {k: v.cpu() for k, v in scorer.model.state_dict().items()},
                "mean": scorer.mean, "std": scorer.std, "held_out": scorer.held_out, "sha": scorer.sha}, buf)
    return atomic_write_bytes(path, buf.getvalue())


def read_scorer(path: str | os.PathLike, spec: RunSpec, data_dir: str | None = None) -> Scorer | None:
    """The scorer stored in `path` when its spec is `spec` (None when the file is missing or another's)."""
    from reltrust.workbench.tasks.base import load_cached
    from reltrust.workbench.models import build_model

    path = Path(path)
    if not path.is_file():
        return None
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if RunSpec.from_dict(blob["spec"]).key != spec.key:
        return None
    data = load_cached(spec.dataset, data_dir, spec.val_fraction, spec.split_seed)
    with torch.random.fork_rng(devices=[]):  # construction draws initial weights, replaced at once
        model = build_model(spec.model, data, **spec.kwargs("model"))
    model.load_state_dict(blob["state_dict"])
    scorer = Scorer(spec, model, blob["mean"], blob["std"], blob["held_out"])
    if scorer.sha != blob["sha"]:
        raise ValueError(f"{path}: the stored weights do not match their recorded sha256; delete the file")
    return scorer


def load_scorer(spec: RunSpec, *, data_dir: str | None = None, cache_dir: str | os.PathLike | None = None,
                device: str | torch.device = "cpu") -> Scorer:
    """The scorer of `spec`: from this process's memo, else from the cache file, else trained (and
    written to the cache folder when there is one). See the module doc."""
    folder = cache_dir if cache_dir is not None else os.environ.get(SCORER_DIR_ENV) or None
    scorer = _MEMO.get(spec.key)
    if scorer is None and folder is not None:
        scorer = read_scorer(_file(spec, Path(folder)), spec, data_dir)
    if scorer is None:
        with torch.random.fork_rng(devices=[]):  # fit seeds the global generator: leave the caller's alone
            scorer = train_scorer(spec, data_dir=data_dir, device="cpu")
        if folder is not None:
            Path(folder).mkdir(parents=True, exist_ok=True)
            save_scorer(scorer, _file(spec, Path(folder)))
    _MEMO[spec.key] = scorer
    return scorer.to(device)


__all__ = ["SCORER_DEFAULTS", "SCORER_DIR_ENV", "Scorer", "frechet_distance", "label_accuracy", "load_scorer",
           "read_scorer", "save_scorer", "scorer_spec", "train_scorer"]
