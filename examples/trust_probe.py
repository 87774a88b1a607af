"""The paper's Figure 2 in a minute: move every layer by relative size η along −‖W‖g/‖g‖ and watch
loss, output and gradient of a deep MLP break down far faster than those of a shallow one.

    python examples/trust_probe.py [--depths 2 16] [--width 64] [--plot probe.png]
"""
import argparse

import torch
import torch.nn.functional as F
from torch import nn

from reltrust.trust import perturbation_probe


def mlp(depth: int, width: int, d_in: int = 32, d_out: int = 10) -> nn.Sequential:
    dims = [d_in] + [width] * (depth - 1) + [d_out]
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(dims[i], dims[i + 1], bias=False)] + ([nn.ReLU()] if i < depth - 1 else [])
    for layer in layers[::2]:  # He initialisation: the signal keeps its scale through depth
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    return nn.Sequential(*layers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 16])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--plot", default=None, help="save a figure here (needs matplotlib)")
    args = parser.parse_args()

    torch.manual_seed(0)
    x, y = torch.randn(512, 32), torch.randint(0, 10, (512,))
    etas = [i / 100 for i in range(11)]  # the paper's range, 0 to 0.1
    results = {}
    for depth in args.depths:
        results[depth] = res = perturbation_probe(mlp(depth, args.width), F.cross_entropy, (x, y), etas)
        print(f"\ndepth {depth}")
        print("   eta     loss  rel. output change  rel. gradient change  deep relative trust")
        for i, eta in enumerate(res.etas):
            print(f"  {eta:4.2f}  {res.loss[i]:7.4f}  {res.relative_function_change[i]:18.4f}"
                  f"  {res.relative_gradient_change[i]:20.4f}  {res.deep_relative_trust[i]:19.4f}")

    if args.plot:
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
        for depth, res in results.items():
            for ax, key in zip(axes, ("loss", "relative_function_change", "relative_gradient_change")):
                ax.plot(res.etas, getattr(res, key), marker="o", label=f"depth {depth}")
                ax.set_xlabel("relative perturbation η")
                ax.set_title(key.replace("_", " "))
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"\nsaved {args.plot}")


if __name__ == "__main__":
    main()
