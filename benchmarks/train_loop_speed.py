"""Samples per second of `reltrust.workbench.train.fit` against a bare PyTorch loop.

Same data (the embedded 5,000-image MNIST, as tensors in memory), same model (`MLP`), same optimiser,
same batch size and number of epochs, same seed. The bare loop is what one writes by hand: reshuffle,
slice, zero_grad, forward, cross-entropy, backward, step — nothing else. `fit` adds per-step loss
checks (a `float(loss)` to catch divergence), running accuracy, the lr schedule, and an evaluation of
the whole training and validation sets after every epoch.

Printed: the training-only throughput of `fit` (its `train_seconds`, evaluation excluded) and its
end-to-end throughput (`wall_seconds`: model building, evaluation, everything), each as a ratio to the
bare loop. Runs are interleaved and repeated; the median is reported. Not a test.

    PYTHONPATH=src python benchmarks/train_loop_speed.py [--depth 10 --width 256 --epochs 3 --optimizer fromage]
"""
from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch import nn

from reltrust.optim import create
from reltrust.workbench.models import build_model
from reltrust.workbench.spec import RunSpec
from reltrust.workbench.tasks import load_cached as _load
from reltrust.workbench.train import fit


def bare_loop(spec: RunSpec) -> float:
    """Seconds for `spec.epochs` epochs of the plainest loop over the same data, model and optimiser."""
    data = _load(spec.dataset, None, spec.val_fraction, spec.split_seed)
    x, y = data.x_train.float(), data.y_train.long()
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, data, **spec.kwargs("model"))
    opt = create(spec.optimizer, model, lr=spec.lr, **spec.kwargs("optimizer"))
    gen = torch.Generator().manual_seed(spec.seed)
    n, bs = len(y), spec.batch_size
    t0 = time.perf_counter()
    for _ in range(spec.epochs):
        perm = torch.randperm(n, generator=gen)
        for i in range(math.ceil(n / bs)):
            idx = perm[i * bs : (i + 1) * bs]
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=10)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--optimizer", default="fromage")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    okw = {"momentum": 0.9} if args.optimizer == "sgd" else {}
    spec = RunSpec(study="benchmark", dataset="mnist", model="mlp", optimizer=args.optimizer, lr=args.lr,
                   optimizer_kwargs=okw, epochs=args.epochs, batch_size=args.batch_size,
                   model_kwargs={"depth": args.depth, "width": args.width})
    n = len(_load(spec.dataset, None, spec.val_fraction, spec.split_seed).y_train)
    samples = n * spec.epochs
    fit(spec.replace(epochs=1))  # warm-up: lazy imports, allocator
    bare_loop(spec.replace(epochs=1))
    bare, train, wall = [], [], []
    for _ in range(args.repeats):
        bare.append(bare_loop(spec))
        res = fit(spec, progress=False)
        train.append(res.info["train_seconds"])
        wall.append(res.info["wall_seconds"])
    b, t, w = (statistics.median(v) for v in (bare, train, wall))
    print(f"MLP depth {args.depth} width {args.width}, {args.optimizer} lr {args.lr:g}, batch {args.batch_size}, "
          f"{args.epochs} epochs × {n} samples, {args.threads} thread(s), median of {args.repeats}")
    print(f"bare PyTorch loop      : {samples / b:10.0f} samples/s")
    print(f"fit, training steps    : {samples / t:10.0f} samples/s   ratio to bare {b / t:.3f}")
    print(f"fit, end to end        : {samples / w:10.0f} samples/s   ratio to bare {b / w:.3f}"
          "   (includes a full train+val evaluation every epoch)")


if __name__ == "__main__":
    main()
