"""Train a small MLP with Fromage on two interleaved spirals (generated here) and watch the loss fall.

    python examples/quickstart.py [--lr 0.01] [--steps 300]
"""
import argparse
import math

import torch
from torch import nn

from reltrust import Fromage


def spirals(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.rand(n, generator=generator) * 3 * math.pi
    label = torch.randint(0, 2, (n,), generator=generator)
    sign = 1 - 2 * label.float()
    xy = torch.stack([t * torch.cos(t) * sign, t * torch.sin(t) * sign], dim=1) / (3 * math.pi)
    return xy + 0.02 * torch.randn(n, 2, generator=generator), label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=0.01, help="Fromage's relative step per layer")
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()

    torch.manual_seed(0)
    x, y = spirals(2048, torch.Generator().manual_seed(0))
    model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    opt = Fromage(model.parameters(), lr=args.lr)
    for step in range(args.steps + 1):
        idx = torch.randint(0, len(x), (128,))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            with torch.no_grad():
                acc = (model(x).argmax(1) == y).float().mean()
            print(f"step {step:4d}  loss {loss.item():.4f}  accuracy {acc:.3f}")


if __name__ == "__main__":
    main()
