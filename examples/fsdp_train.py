"""Train a character Transformer on Shakespeare with FSDP2 and Fromage, on CPUs (gloo) or GPUs (nccl).

    torchrun --nproc-per-node 2 examples/fsdp_train.py --steps 50                 # 2 CPU processes
    torchrun --nproc-per-node 2 examples/fsdp_train.py --steps 100 --resume       # continue to step 100
    torchrun --nproc-per-node 8 examples/fsdp_train.py --device cuda --steps 5000 --batch-size 256

Every rank builds the same `CharTransformer` (same seed), `fully_shard`s each block and the root over
a 1-D mesh of all ranks, and trains on its slice of every global batch (FSDP2 averages gradients, so
this is the single-process mean-loss step on the whole batch). Fromage's norms are of whole tensors:
its step costs two all-reduces of one float per tensor. Checkpoints (`reltrust.distributed`, sharded
DCP) go to ``--ckpt-dir`` every ``--save-every`` steps and at the end; ``--resume`` continues from the
latest complete one, with the same data order (the global batch of step s depends only on --seed and
s, not on the number of ranks). Rank 0 logs the loss (mean over all ranks) and, per layer, the relative
update ‖ΔW‖/‖W‖ of the last step — of the whole tensor, not of the rank's shard: with Fromage each is
η/√(1+η²) up to O(η²), the point of the optimiser. ``--metrics FILE`` also writes them as JSON lines.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from reltrust.distributed import (
    data_parallel_mesh,
    destroy_distributed,
    init_distributed,
    load_latest_checkpoint,
    save_checkpoint,
)
from reltrust.optim import Fromage
from reltrust.trust import TrustMonitor
from reltrust.workbench.data import load_dataset, text_batches
from reltrust.workbench.models import CharTransformer


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cpu: gloo; cuda: nccl, one GPU per rank")
    p.add_argument("--steps", type=int, default=50, help="train until this many optimizer steps in total")
    p.add_argument("--batch-size", type=int, default=32, help="global batch (sequences), split evenly over ranks")
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.01, help="Fromage's η: the relative step of every layer")
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--p-bound", type=float, default=None, help="cap each ‖W‖ at p_bound × its initial norm")
    p.add_argument("--bf16", action="store_true", help="bfloat16 compute, float32 sharded params and reductions")
    p.add_argument("--ckpt-dir", default="runs/fsdp_train/ckpt")
    p.add_argument("--save-every", type=int, default=25, help="steps between checkpoints (0: only at the end)")
    p.add_argument("--keep-last", type=int, default=3, help="complete checkpoints to keep")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --ckpt-dir")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--metrics", default=None, help="rank 0 appends one JSON line per logged step here")
    p.add_argument("--eval-batches", type=int, default=4, help="validation batches at the end (0: none)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def global_batch(tokens: torch.Tensor, step: int, args) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of `step`: a function of (seed, step) only, so resuming repeats the data order."""
    g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
    return text_batches(tokens, args.block_size, args.batch_size, g)


def mean_over_ranks(value: torch.Tensor) -> float:
    value = value.detach().clone()
    dist.all_reduce(value)
    return value.item() / dist.get_world_size()


def main(argv=None) -> None:
    args = parse_args(argv)
    env = init_distributed(args.device)
    rank, world = env.rank, env.world_size
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} must be divisible by the number of ranks ({world})")
    per_rank = args.batch_size // world

    def log(msg: str) -> None:
        if rank == 0:
            print(msg, flush=True)

    # fully_shard's root returns the logits as a view; nothing here modifies them in place.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    t0 = time.perf_counter()
    data = load_dataset("shakespeare")
    torch.manual_seed(args.seed)  # the same initial weights on every rank: fully_shard keeps its slice
    model = CharTransformer(len(data.vocab), args.block_size, args.d_model, args.n_layers, args.n_heads)
    model.to(env.device)

    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = data_parallel_mesh(env)
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if args.bf16 else MixedPrecisionPolicy()
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)

    opt = Fromage(model.parameters(), lr=args.lr, momentum=args.momentum, p_bound=args.p_bound)
    # per-layer ‖ΔW‖/‖W‖ of whole tensors: shard norms all-reduced (every=0: no spectral gathers)
    monitor = TrustMonitor(opt, model, every=0)
    layer_names = [name.removesuffix(".weight") for name in monitor.layers]

    start = 0
    if args.resume:
        found = load_latest_checkpoint(args.ckpt_dir, model, opt)
        if found is None:
            log(f"--resume: no complete checkpoint in {args.ckpt_dir}; starting from step 0")
        else:
            start = found
            log(f"resumed from {args.ckpt_dir} at step {start}")
    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"{world} rank(s), {env.backend} on {env.device.type}; CharTransformer {n_params:,} parameters "
        f"(FSDP2, each rank holds ~1/{world}); vocab {len(data.vocab)}; global batch {args.batch_size}×"
        f"{args.block_size}; Fromage lr={args.lr}; set-up {time.perf_counter() - t0:.1f}s"
    )
    metrics = None
    if args.metrics and rank == 0:
        Path(args.metrics).parent.mkdir(parents=True, exist_ok=True)
        metrics = open(args.metrics, "a")

    def save(step: int, loss: float | None) -> None:
        path = save_checkpoint(args.ckpt_dir, model, opt, step, extra={"loss": loss}, keep_last=args.keep_last)
        log(f"checkpoint {path}")

    loss_value, t_log, tokens = None, time.perf_counter(), 0
    for step in range(start + 1, args.steps + 1):
        x, y = global_batch(data.x_train, step, args)
        x = x[rank * per_rank : (rank + 1) * per_rank].to(env.device)
        y = y[rank * per_rank : (rank + 1) * per_rank].to(env.device)
        logits = model(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tokens += args.batch_size * args.block_size
        if step == start + 1 or step % args.log_every == 0 or step == args.steps:
            loss_value = mean_over_ranks(loss)
            rel = monitor.relative_update[-1].tolist()
            elapsed = time.perf_counter() - t_log
            log(
                f"step {step:5d}  loss {loss_value:.4f}  {tokens / elapsed:,.0f} tok/s  "
                f"‖ΔW‖/‖W‖ (η/√(1+η²) = {args.lr / math.sqrt(1 + args.lr**2):.5f}): "
                + "  ".join(f"{name} {r:.5f}" for name, r in zip(layer_names, rel))
            )
            if metrics is not None:
                metrics.write(json.dumps({"step": step, "loss": loss_value,
                                          "relative_update": dict(zip(layer_names, rel))}) + "\n")
                metrics.flush()
            t_log, tokens = time.perf_counter(), 0
        if args.save_every and step % args.save_every == 0 and step != args.steps:
            save(step, loss_value)
    if args.steps > start:
        save(args.steps, loss_value)

    if args.eval_batches and len(data.x_val) > args.block_size + 1:
        model.eval()
        total = torch.zeros((), device=env.device)
        with torch.no_grad():
            for i in range(args.eval_batches):
                g = torch.Generator().manual_seed(10**9 + i)
                x, y = text_batches(data.x_val, args.block_size, args.batch_size, g)
                x = x[rank * per_rank : (rank + 1) * per_rank].to(env.device)
                y = y[rank * per_rank : (rank + 1) * per_rank].to(env.device)
                logits = model(x)
                total += F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.view(-1))
        log(f"validation loss {mean_over_ranks(total) / args.eval_batches:.4f} ({args.eval_batches} batches)")
    if metrics is not None:
        metrics.close()
    monitor.detach()
    destroy_distributed()


if __name__ == "__main__":
    main()
