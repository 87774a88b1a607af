"""How much does TrustMonitor slow a training step? Prints ms/step without and with it, and the ratio.

    PYTHONPATH=src python benchmarks/monitor_overhead.py [--blocks 40] [--every 50] [--threads 1] [--reuse-snapshot on|off]

A small MLP (784-256-256-10, batch 128) trained with SGD + momentum on a fixed random batch. One
model and one monitor; the monitor is attached and detached in alternating blocks of `every` steps
(so each "on" block holds exactly one σ_1 measurement, the amortised cost), in rounds of one block
each, the order within a round alternating (off-on, on-off, ...) so that neither mode always runs
first. Each block is timed by the wall clock and by the process's CPU time (which leaves out the time
the system gives other processes: on a shared machine the steadier of the two). Reported: the
median and min ms/step per mode, the ratio of the medians, and the median over rounds of each
round's on/off ratio (neighbours that slow one round slow both of its blocks). The monitor's hooks
are also timed alone (best of many) as a floor of its cost.
Target: overhead at most 5 % with every=50 (issue 12). A script: never run by the test suite.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from reltrust.trust import TrustMonitor


def make(widths=(784, 256, 256, 10), seed: int = 0):
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=40, help="rounds, i.e. blocks per mode")
    ap.add_argument("--every", type=int, default=50, help="monitor's σ_1 interval, also the block length")
    ap.add_argument("--spectral", default="lanczos", choices=["lanczos", "exact"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--widths", default="784,256,256,10", help="layer widths of the MLP")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared box)")
    ap.add_argument("--reuse-snapshot", choices=["on", "off"], default="on",
                    help="TrustMonitor(reuse_snapshot=...): off is the monitor before the one-pass refresh")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    widths = tuple(int(w) for w in args.widths.split(","))
    block = max(args.every, 10)

    model, opt = make(widths)
    x = torch.randn(args.batch, widths[0])
    y = torch.randint(0, widths[-1], (args.batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    mon = TrustMonitor(opt, model, every=args.every, spectral=args.spectral,
                       reuse_snapshot=args.reuse_snapshot == "on")
    for _ in range(block):  # warm-up: allocator, the monitor's first (longer) Lanczos run
        step()
    mon.detach()
    for _ in range(block):
        step()

    clocks = ("wall", "cpu")
    times = {(clock, attached): [] for clock in clocks for attached in (False, True)}
    for r in range(args.blocks):
        for attached in ((False, True) if r % 2 == 0 else (True, False)):
            if attached:
                mon.attach()
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(block):
                step()
            times["wall", attached].append(1e3 * (time.perf_counter() - w0) / block)
            times["cpu", attached].append(1e3 * (time.process_time() - c0) / block)
            mon.detach()
    assert len(mon) == block * (args.blocks + 1)

    # the hooks alone, best of many: what the monitor itself costs per step (σ_1 amortised)
    def hooks_once():
        mon._pre_hook(opt, (), {})
        mon._post_hook(opt, (), {})

    best = float("inf")
    for _ in range(10):
        t0 = time.perf_counter()
        for _ in range(block):
            hooks_once()
        best = min(best, 1e3 * (time.perf_counter() - t0) / block)

    print(f"MLP {'-'.join(map(str, widths))}, batch {args.batch}, SGD+momentum, {args.threads} thread(s); "
          f"{args.blocks} rounds of an off and an on block of {block} steps; monitor every={args.every}, "
          f"spectral={args.spectral}, lanczos_steps={mon.lanczos_steps}")
    for clock in clocks:
        off, on = times[clock, False], times[clock, True]
        for name, t in (("without monitor", off), ("with monitor   ", on)):
            print(f"{clock:4s} {name}: median {statistics.median(t):.3f} ms/step, min {min(t):.3f} ms/step")
        r_med = statistics.median(on) / statistics.median(off)
        r_pair = statistics.median([a / b for a, b in zip(on, off)])
        print(f"{clock:4s} overhead: {100 * (r_med - 1):+.1f} % (ratio of medians), "
              f"{100 * (r_pair - 1):+.1f} % (median of the rounds' ratios)")
    print(f"monitor hooks alone (best of 10 blocks, sigma_1 amortised): {best:.3f} ms/step "
          f"= {100 * best / min(times['wall', False]):.1f} % of the fastest plain step")


if __name__ == "__main__":
    main()
