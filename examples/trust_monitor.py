"""Watch how far each layer moves per step: Fromage moves every layer by ≈ η, SGD by whatever the
gradient scale says. Also saves both runs' per-step records as CSV, and the distance between the
initial and final networks in deep relative trust.

    python examples/trust_monitor.py [--steps 300] [--out runs/trust_monitor]
"""
import argparse
import copy
import os

import torch
import torch.nn.functional as F
from torch import nn

from reltrust import Fromage
from reltrust.trust import TrustMonitor, distance_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default="runs/trust_monitor")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 32, generator=g)
    y = (x[:, :5].sum(1) > 0).long() + 2 * (x[:, 5:10].sum(1) > 0).long()  # 4 classes
    for name, make_opt in (("fromage", lambda p: Fromage(p, lr=0.01)),
                           ("sgd", lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                              nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 4))
        start = copy.deepcopy(model)
        opt = make_opt(model.parameters())
        with TrustMonitor(opt, model, every=50) as monitor:
            for _ in range(args.steps):
                idx = torch.randint(0, len(x), (128,), generator=g)
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        rel = monitor.relative_update  # (steps, layers), float64 on the CPU
        print(f"\n{name}: final loss {loss.item():.4f}")
        print("  layer      mean |dW|/|W| per step   min      max     |W| first -> last   sigma_1 first -> last")
        for j, layer in enumerate(monitor.layers):
            sv = monitor.top_singular_value[:, j]
            print(f"  {layer:9s}  {rel[:, j].mean():22.5f}  {rel[:, j].min():.5f}  {rel[:, j].max():.5f}"
                  f"  {monitor.norm[0, j]:7.3f} -> {monitor.norm[-1, j]:6.3f}  {sv[0]:10.3f} -> {sv[-1]:6.3f}")
        report = distance_report(start, model)
        print(f"  start -> end: deep relative trust {report.deep_relative_trust:.3f}, "
              f"surrogate {report.trust_surrogate:.3f}")
        monitor.to_csv(os.path.join(args.out, f"{name}.csv"))
    print(f"\nper-step records: {args.out}/fromage.csv, {args.out}/sgd.csv")


if __name__ == "__main__":
    main()
