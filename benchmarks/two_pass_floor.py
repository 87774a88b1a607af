"""Where Fromage's step time goes on a tensor larger than the cache, against SGD with momentum.

    python benchmarks/two_pass_floor.py                 # one 4096×4096 tensor, 41 rounds
    python benchmarks/two_pass_floor.py --size 8192 --rounds 21

A trust ratio needs the whole tensor's norms before any element can be updated, so on a tensor that
does not fit in cache Fromage makes two passes over memory: a read-only norm pass (W and g: 8 bytes
per float32 element) and an update pass (read W and g, write W: 12 bytes). Fused SGD with momentum
moves 20 bytes in one read-write pass. This script times, in one process, in interleaved rounds, each
after evicting the caches (as `step_speed.py` does):

* torch's fused SGD-momentum step and `x.add_(y)` (the 12-byte read-write pattern);
* the native kernels' norm pass alone and update pass alone (`reltrust.optim._native`, private);
* the whole Fromage step, and Fromage with ``cache_weight_norm=True`` (no read of W for its norm).

It prints the medians and two ratios to SGD-momentum: the whole step's, and that of the sum of the
two passes timed on their own — the floor of any method that takes the norms first, on this machine
at this moment. If the step's ratio is close to the sum's, the step loses nothing between its passes,
and the gap to SGD is the price of reading 8 bytes per element in a read-only pass, which on many
machines streams slower than a read-write one.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import reltrust.optim as ro  # noqa: E402
from reltrust.optim import _native  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=4096, help="the tensor is size × size float32")
    ap.add_argument("--rounds", type=int, default=41)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not _native.available():
        sys.exit(f"the native kernels are needed: {_native.describe()}")
    gen = torch.Generator().manual_seed(0)
    shape = (args.size, args.size)
    p = torch.nn.Parameter(torch.randn(shape, generator=gen) * 0.02)
    p.grad = torch.randn(shape, generator=gen) * 1e-3
    cached = torch.nn.Parameter(p.detach().clone())
    cached.grad = p.grad
    w, g = [p.detach()], [p.grad]
    coef = torch.tensor([-1e-5])
    sgd = torch.optim.SGD([p], lr=1e-3, momentum=0.9, fused=True)
    fromage = ro.Fromage([p], lr=0.01)
    fromage_cached = ro.Fromage([cached], lr=0.01, cache_weight_norm=True)
    contenders = {
        "torch SGD-momentum fused (20 B/elt, one pass)": sgd.step,
        "torch x.add_(y) (12 B/elt, read-write)": lambda: w[0].add_(g[0], alpha=-1e-9),
        "norm pass alone (8 B/elt, read-only)": lambda: _native.norms(w, g),
        "update pass alone (12 B/elt, read-write)": lambda: _native.fromage_update(w, g, coef, 1.0, None),
        "reltrust Fromage step": fromage.step,
        "reltrust Fromage, cache_weight_norm (4 B read-only + 12)": fromage_cached.step,
    }
    for step in contenders.values():  # warm-up: state, kernels, the weight-norm cache
        step()
        step()
    scratch = torch.ones(2 * _native._l3_bytes() // 4)  # clean lines: the flush leaves nothing to write back
    names = list(contenders)
    times = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            scratch.sum()
            t = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - t)
    med = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
    n = p.numel()
    print(f"# one {args.size}×{args.size} float32 tensor ({n * 4 / 2**20:.0f} MiB), {torch.get_num_threads()} "
          f"threads, medians of {args.rounds} interleaved rounds, caches evicted before each")
    print("| | ms | GB/s | ratio to SGD-momentum |\n|---|---:|---:|---:|")
    sgd_ms = med[names[0]]
    bytes_per = [20, 12, 8, 12, 20, 16]
    for name, b in zip(names, bytes_per):
        print(f"| {name} | {med[name]:.2f} | {b * n / med[name] / 1e6:.1f} | {med[name] / sgd_ms:.2f} |")
    floor = med[names[2]] + med[names[3]]
    print(f"| norm pass + update pass, timed apart | {floor:.2f} | {20 * n / floor / 1e6:.1f} | {floor / sgd_ms:.2f} |")


if __name__ == "__main__":
    main()
