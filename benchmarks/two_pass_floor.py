"""Where the step time of Fromage and LAMB goes on a tensor larger than the cache.

    python benchmarks/two_pass_floor.py                 # one 4096×4096 tensor, 41 rounds
    python benchmarks/two_pass_floor.py --size 8192 --rounds 21

A trust ratio needs the whole tensor's norms before any element can be updated, so on a tensor that
does not fit in cache the layerwise optimisers make two passes over memory where their torch
baselines make one:

* Fromage: a read-only norm pass (W and g: 8 bytes per float32 element) and an update pass (read W
  and g, write W: 12 bytes), against fused SGD-momentum's one read-write pass of 20 bytes;
* LAMB: pass 1 (read W, g, m, v; write m, v: 24 bytes; the norms of W and of the direction u) and
  pass 2 (read W, m, v; write W: 16 bytes; u recomputed), against fused Adam's one pass of 28 bytes.

This script times, in one process, in interleaved rounds, each after evicting the caches (as
`step_speed.py` does): the baselines, the native kernels' passes alone (`reltrust.optim._native`,
private), `x.add_(y)` (torch's 12-byte read-write pattern), the whole steps, and Fromage with
``cache_weight_norm=True`` (no read of W for its norm). It prints medians and ratios to each
baseline, and the sum of the passes timed on their own: the floor, on this machine at this moment,
of any method that takes the norms first. A step close to that sum loses nothing between its
passes; the sum's ratio to the baseline is the price of the extra pass (for Fromage, of reading 8
bytes per element in a read-only pass, which on many machines streams slower than a read-write one).
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
from step_speed import cache_flusher  # noqa: E402  (this folder is on sys.path when run as a script)


def contenders(shape, gen):
    """name → (step function, bytes per element it moves, the baseline it is compared with)."""
    p = torch.nn.Parameter(torch.randn(shape, generator=gen) * 0.02)
    p.grad = torch.randn(shape, generator=gen) * 1e-3
    cached = torch.nn.Parameter(p.detach().clone())
    cached.grad = p.grad
    w, g = [p.detach()], [p.grad]
    one = torch.ones(1)
    sgd = torch.optim.SGD([p], lr=1e-3, momentum=0.9, fused=True)
    adam = torch.optim.Adam([p], lr=1e-4, fused=True)
    fromage = ro.Fromage([p], lr=0.01)
    fromage_cached = ro.Fromage([cached], lr=0.01, cache_weight_norm=True)
    lamb = ro.LAMB([p], lr=1e-4, weight_decay=0.01)
    lamb.step()  # its moments exist
    m, v = [lamb.state[p]["exp_avg"]], [lamb.state[p]["exp_avg_sq"]]
    # one pass of a step alone: the kernels' streamed ways (coefficient = ratio·(−lr), c = 1)
    fromage_pass = _native.Kernel("fromage", [w, g, None], [1.0, -1e-5, 1.0], [w])
    lamb_pass = _native.Kernel("lamb", [w, g, m, v], [one, one, 0.1, 0.999, 0.001, 1e-6, 0.01, 0, -1e-9], [w, m, v])
    sgd_name, adam_name = "torch SGD-momentum fused (20 B/elt, one pass)", "torch Adam fused (28 B/elt, one pass)"
    return {
        sgd_name: (sgd.step, 20, sgd_name),
        "torch x.add_(y) (12 B/elt, read-write)": (lambda: w[0].add_(g[0], alpha=-1e-9), 12, sgd_name),
        "Fromage norm pass alone (8 B/elt, read-only)": (lambda: _native.norms(w, g), 8, sgd_name),
        "Fromage update pass alone (12 B/elt)": (
            lambda: fromage_pass(_native.UPDATE, ratio=one), 12, sgd_name),
        "reltrust Fromage step": (fromage.step, 20, sgd_name),
        "reltrust Fromage, cache_weight_norm (4 B read-only + 12)": (fromage_cached.step, 16, sgd_name),
        adam_name: (adam.step, 28, adam_name),
        "LAMB pass 1 alone (24 B/elt)": (
            lambda: lamb_pass(_native.NORMS, unorm=torch.empty(1)), 24, adam_name),
        "LAMB pass 2 alone (16 B/elt)": (
            lambda: lamb_pass(_native.UPDATE, ratio=one), 16, adam_name),
        "reltrust LAMB step": (lamb.step, 40, adam_name),
    }


SUMS = {  # the passes timed apart, summed
    "Fromage: norm pass + update pass, timed apart": (
        ["Fromage norm pass alone (8 B/elt, read-only)", "Fromage update pass alone (12 B/elt)"], 20),
    "LAMB: pass 1 + pass 2, timed apart": (["LAMB pass 1 alone (24 B/elt)", "LAMB pass 2 alone (16 B/elt)"], 40),
}


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
    shape = (args.size, args.size)
    steps = contenders(shape, torch.Generator().manual_seed(0))
    for step, _, _ in steps.values():  # warm-up: state, kernels, the weight-norm cache
        step()
        step()
    flush = cache_flusher()
    names = list(steps)
    times = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            flush()
            t = time.perf_counter()
            steps[name][0]()
            times[name].append(time.perf_counter() - t)
    med = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
    n = args.size * args.size
    print(f"# one {args.size}×{args.size} float32 tensor ({n * 4 / 2**20:.0f} MiB), {torch.get_num_threads()} "
          f"threads, medians of {args.rounds} interleaved rounds, caches evicted before each")
    print("| | ms | GB/s | ratio to its baseline |\n|---|---:|---:|---:|")
    for name, (_, nbytes, base) in steps.items():
        print(f"| {name} | {med[name]:.2f} | {nbytes * n / med[name] / 1e6:.1f} | {med[name] / med[base]:.2f} |")
    for name, (parts, nbytes) in SUMS.items():
        total = sum(med[part] for part in parts)
        base = steps[parts[0]][2]
        print(f"| {name} | {total:.2f} | {nbytes * n / total / 1e6:.1f} | {total / med[base]:.2f} |")


if __name__ == "__main__":
    main()
