"""Nero on 2 ranks (gloo, CPU): per-neuron statistics of sharded tensors are those of whole rows.

Row-sharded weights (Shard(0), FSDP2's layout, uneven: 3 + 2 rows), column-sharded ones (Shard(1): each
rank holds part of every row, so Σg², Σw and Σ(w−mean)² are all-reduced; uneven 3 + 2 columns) and a
sharded bias take the steps one process takes on the whole tensors; during step() nothing is gathered
and the only collectives are all-reduces of one float per local row (or one per tensor, for σ). Then
an FSDP2 model trained on half batches matches the single-process run on the whole batch.
"""
from __future__ import annotations

import pytest
import torch

from .dist_common import batch, loss_fn, make_model, max_rel_diff, named_params, named_state
from .dist_harness import run_workers
from .test_dist_equivalence import _fsdp, _no_gather_step

STEPS = 4
RTOL = 2e-5


def worker(checks):
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from reltrust.optim import Nero

    rank, world = checks.rank, checks.world_size
    mesh = init_device_mesh("cpu", (world,))

    with checks("dtensor/rows_and_columns"):
        g = torch.Generator().manual_seed(0)
        shapes = [((5, 4), Shard(0)), ((3, 5), Shard(1)), ((4, 5, 2), Shard(1)), ((5,), Shard(0))]
        ws = [torch.randn(s, generator=g, dtype=torch.float64) for s, _ in shapes]
        grads = [[torch.randn(s, generator=g, dtype=torch.float64) for s, _ in shapes] for _ in range(STEPS)]
        plain = [nn.Parameter(w.clone()) for w in ws]
        sharded = [nn.Parameter(distribute_tensor(w.clone(), mesh, [pl])) for w, (_, pl) in zip(ws, shapes)]
        assert sharded[1].to_local().shape == ((3, 3) if rank == 0 else (3, 2))
        o_plain, o_sharded = Nero(plain, lr=0.1, beta=0.9), Nero(sharded, lr=0.1, beta=0.9)
        logs = []
        for gs in grads:
            for p, q, gr in zip(plain, sharded, gs):
                p.grad = gr.clone()
                q.grad = distribute_tensor(gr.clone(), mesh, q.placements)
            o_plain.step()
            with _no_gather_step() as log:
                o_sharded.step()
            logs.append(log.calls)
        err = max(float((p.detach() - q.full_tensor()).abs().max()) for p, q in zip(plain, sharded))
        checks.metrics["dtensor/rows_and_columns (float64, max abs diff)"] = err
        assert err < 1e-12, err
        v = o_sharded.state[sharded[0]]["exp_avg_sq"]
        assert v.shape == (5,) and v.to_local().shape == ((3,) if rank == 0 else (2,)), (v.shape, v.to_local().shape)
        torch.testing.assert_close(v.full_tensor(), o_plain.state[plain[0]]["exp_avg_sq"], rtol=1e-12, atol=0)
        for calls in logs:
            assert {op for op, _ in calls} == {"allreduce_"}, calls
        # first step: Σw, Σ(w−mean)² of the 2 column-sharded tensors (3 + 4 rows), σ of the 2 row-sharded
        # ones (1 float each), Σg² (7 floats), then the projection's two (7 each); later steps: 3 × 7
        assert [n for _, n in logs[0]] == [7, 7, 2, 7, 7, 7], logs[0]
        assert all([n for _, n in calls] == [7, 7, 7] for calls in logs[1:]), logs

    with checks("fsdp/tiny_net"):
        factory = lambda m: Nero(m.parameters(), lr=0.05)  # noqa: E731
        ref = make_model()
        ref_opt = factory(ref)
        model = _fsdp(make_model(), mesh)
        opt = factory(model)
        for s in range(STEPS):
            x, y = batch(s)
            ref_opt.zero_grad()
            loss_fn(ref, x, y).backward()
            ref_opt.step()
            opt.zero_grad()
            loss_fn(model, x.chunk(world)[rank], y.chunk(world)[rank]).backward()
            with _no_gather_step() as log:
                opt.step()
            # FSDP2 shards rows whole: only σ at the first step needs communication
            assert len(log.calls) == (1 if s == 0 else 0), log.calls
        got = {"params": named_params(model), "state": named_state(model, opt)}
        want = {"params": named_params(ref), "state": named_state(ref, ref_opt)}
        err = max_rel_diff(got, want)
        checks.metrics["fsdp/tiny_net"] = err
        assert err < RTOL, err


@pytest.fixture(scope="module")
def result():
    res = run_workers(worker, world_size=2, deadline=120)
    print(f"\n2-rank Nero worker: {res.seconds:.1f} s; metrics: {res.metrics[0]}")
    return res


def test_sharded_rows_and_columns_match_whole_tensors(result):
    result.assert_ok("dtensor/rows_and_columns")


def test_fsdp2_matches_single_process(result):
    result.assert_ok("fsdp/tiny_net")


def test_workers_exited_cleanly(result):
    assert result.exitcodes == [0, 0], result.records
    result.assert_ok("<worker>")
