"""Fromage, LARS and LAMB under FSDP2 and DDP (2 ranks, gloo, CPU) = one process on the global batch.

Each rank trains on its half of every global batch (FSDP2 and DDP average gradients across ranks);
the reference trains one unsharded copy on the whole batch with the mean loss. After a few steps the
parameters and the whole optimizer state (momenta, Adam moments, LAMB steps, Fromage's p_bound
reference norms) agree within float32 rounding. During `step()` a DTensor is never gathered
(`full_tensor`/`redistribute` raise) and the only communication is all-reduces of one float per tensor.
All checks run in one spawned pair of ranks (see dist_harness.py).
"""
from __future__ import annotations

from contextlib import contextmanager
from unittest import mock

import pytest
import torch
from torch import nn

from .dist_common import CONFIGS, batch, loss_fn, make_model, max_rel_diff, named_params, named_state, train_reference
from .dist_harness import run_workers

STEPS = 4
# float32: sharded norms are summed in a different order, matmuls run on half batches and gradients
# are averaged across ranks, so results differ by rounding (measured max ≈ 1e-6 relative, see report).
RTOL = 2e-5
COLLECTIVE_NAMESPACES = {"c10d", "_c10d_functional", "c10d_functional", "_c10d_functional_autograd"}


def _fsdp(model: nn.Module, mesh) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    fully_shard(model.fc1, mesh=mesh)
    fully_shard(model.fc2, mesh=mesh)
    fully_shard(model, mesh=mesh)  # the root owns norm and head
    return model


def _collective_log():
    from torch.distributed.tensor import DTensor
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class CollectiveLog(TorchDispatchMode):
        """Records (op, floats moved) for every collective dispatched while active, DTensor ones included."""

        def __init__(self) -> None:
            super().__init__()
            self.calls: list[tuple[str, int]] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if any(issubclass(t, DTensor) for t in types):
                return NotImplemented  # let DTensor run first; its local ops come back through this mode
            kwargs = kwargs or {}
            if func.namespace in COLLECTIVE_NAMESPACES:
                moved = sum(t.numel() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor))
                self.calls.append((func._overloadpacket.__name__, moved))
            return func(*args, **kwargs)

    return CollectiveLog()


@contextmanager
def _no_gather_step():
    """Inside: gathering a DTensor raises, and every collective is logged."""
    from torch.distributed.tensor import DTensor

    def refuse(*args, **kwargs):
        raise AssertionError("a DTensor was gathered/redistributed inside optimizer.step()")

    with mock.patch.object(DTensor, "full_tensor", refuse), mock.patch.object(DTensor, "redistribute", refuse):
        with _collective_log() as log:
            yield log


def _train(model, opt, rank, world, steps, logs=None):
    for s in range(steps):
        x, y = batch(s)
        opt.zero_grad(set_to_none=True)
        loss_fn(model, x.chunk(world)[rank], y.chunk(world)[rank]).backward()
        if logs is None:
            opt.step()
        else:
            with _no_gather_step() as log:
                opt.step()
            logs.append(log.calls)


def worker(checks):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank, world = checks.rank, checks.world_size
    mesh = init_device_mesh("cpu", (world,))
    for name, (factory, expected_allreduces) in CONFIGS.items():
        ref_model, ref_opt = train_reference(factory, STEPS)
        want = {"params": named_params(ref_model), "state": named_state(ref_model, ref_opt)}

        logs, group_sizes = [], set()
        with checks(f"fsdp/{name}"):
            model = _fsdp(make_model(), mesh)
            opt = factory(model)
            group_sizes = {len(g["params"]) for g in opt.param_groups}
            _train(model, opt, rank, world, STEPS, logs)
            got = {"params": named_params(model), "state": named_state(model, opt)}  # gathers: outside step()
            err = max_rel_diff(got, want)
            checks.metrics[f"fsdp/{name}"] = err
            assert err < RTOL, f"FSDP2 vs single process: max relative difference {err:.3g} > {RTOL}"

        with checks(f"fsdp-comm/{name}"):
            assert len(logs) == STEPS, "training did not finish"
            for calls in logs:
                ops = sorted({op for op, _ in calls})
                assert ops == ["allreduce_"], f"step() communicated with {ops}, expected only all-reduces"
                assert len(calls) == expected_allreduces, (len(calls), expected_allreduces, calls)
                # one float per tensor of a param group: norms, never tensors
                assert {n for _, n in calls} <= group_sizes, (calls, group_sizes)

        with checks(f"ddp/{name}"):
            model = DDP(make_model())
            opt = factory(model)
            ddp_logs = []
            _train(model, opt, rank, world, STEPS, ddp_logs)
            got = {"params": named_params(model), "state": named_state(model, opt)}
            err = max_rel_diff(got, want)
            checks.metrics[f"ddp/{name}"] = err
            assert err < RTOL, f"DDP vs single process: max relative difference {err:.3g} > {RTOL}"
            # replicated parameters: norms are local, the optimizer step communicates nothing
            assert all(calls == [] for calls in ddp_logs), ddp_logs

    # HSDP layout: a 2-D mesh (replicate=1, shard=2); placements (Replicate(), Shard(0)), so the norms
    # are reduced over the shard dimension only.
    name = "fromage_pbound_momentum"
    factory, expected_allreduces = CONFIGS[name]
    with checks(f"hsdp/{name}"):
        mesh2d = init_device_mesh("cpu", (1, world), mesh_dim_names=("replicate", "shard"))
        model = _fsdp(make_model(), mesh2d)
        placements = model.fc1.weight.placements
        assert placements[0].is_replicate() and placements[1].is_shard(0), placements
        opt = factory(model)
        logs = []
        _train(model, opt, rank, world, STEPS, logs)
        ref_model, ref_opt = train_reference(factory, STEPS)
        got = {"params": named_params(model), "state": named_state(model, opt)}
        err = max_rel_diff(got, {"params": named_params(ref_model), "state": named_state(ref_model, ref_opt)})
        checks.metrics[f"hsdp/{name}"] = err
        assert err < RTOL, err
        assert all(len(calls) == expected_allreduces for calls in logs), logs

    # LAMB's large-tensor path, with its thresholds lowered so a small model takes it: a 37×16 weight
    # (19 or 18 rows per rank, > BLOCK elements per shard) is split into CHUNK-sized pieces whose ‖u‖²
    # are summed per tensor before the all-reduce, and its direction is computed twice (once for the
    # norm, once for the update). In float64: Adam's m/(√v+ε) amplifies float32 rounding of gradient
    # entries near ε (4e-5 relative after 3 steps at full size), so float32 could not tell a slip in the
    # piece bookkeeping from rounding; float64 can.
    with checks("fsdp/lamb_chunked_large_tensor"):
        from torch.distributed.fsdp import fully_shard

        from reltrust.optim import LAMB
        from reltrust.optim import _base as base_module

        def build():
            torch.manual_seed(0)
            return nn.Sequential(nn.Linear(16, 37), nn.Tanh(), nn.Linear(37, 1)).double()

        def data(step):
            g = torch.Generator().manual_seed(2000 + step)
            return torch.randn(8, 16, generator=g).double(), torch.randn(8, 1, generator=g).double()

        make_opt = lambda m: LAMB(m.parameters(), lr=0.01, weight_decay=0.01)  # noqa: E731
        ref = build()
        ref_opt = make_opt(ref)
        model = build()
        fully_shard(model[0], mesh=mesh)
        fully_shard(model, mesh=mesh)
        opt = make_opt(model)
        logs = []
        with mock.patch.object(base_module, "CHUNK", 64), mock.patch.object(base_module, "BLOCK", 256):
            assert 18 * 16 > base_module.BLOCK
            for s in range(3):
                x, y = data(s)
                ref_opt.zero_grad()
                ((ref(x) - y) ** 2).mean().backward()
                ref_opt.step()
                opt.zero_grad()
                ((model(x.chunk(world)[rank]) - y.chunk(world)[rank]) ** 2).mean().backward()
                with _no_gather_step() as log:
                    opt.step()
                logs.append(log.calls)
        err = max_rel_diff(named_params(model), named_params(ref))
        checks.metrics["fsdp/lamb_chunked_large_tensor (float64)"] = err
        assert err < 1e-10, err
        assert all(len(calls) == 2 for calls in logs), logs

    # TrustMonitor on FSDP2: each rank snapshots its shards and the shard norms are all-reduced, so the
    # per-layer norms and relative updates it records are those of the whole tensors, equal on every
    # rank and to a single-process monitor; the spectral measurement gathers each layer.
    with checks("fsdp/trust_monitor"):
        from reltrust.trust import TrustMonitor

        factory = CONFIGS["fromage_pbound_momentum"][0]
        ref_model = make_model()
        ref_opt = factory(ref_model)
        ref_monitor = TrustMonitor(ref_opt, ref_model, every=2, spectral="exact")
        model = _fsdp(make_model(), mesh)
        opt = factory(model)
        monitor = TrustMonitor(opt, model, every=2, spectral="exact")
        assert monitor.layers == ref_monitor.layers, (monitor.layers, ref_monitor.layers)
        for s in range(STEPS):
            x, y = batch(s)
            ref_opt.zero_grad()
            loss_fn(ref_model, x, y).backward()
            ref_opt.step()
            opt.zero_grad()
            loss_fn(model, x.chunk(world)[rank], y.chunk(world)[rank]).backward()
            opt.step()
        for field in ("norm", "relative_update", "top_singular_value"):
            got, want = getattr(monitor, field), getattr(ref_monitor, field)
            assert got.shape == want.shape and got.shape[0] > 0, (field, got.shape, want.shape)
            err = float(((got - want).abs() / want.abs().clamp_min(1e-12)).max())
            assert err < RTOL, (field, err)

    with checks("partial_refused"):
        from torch.distributed.tensor import DTensor, Partial

        from reltrust.optim import Fromage

        p = nn.Parameter(DTensor.from_local(torch.ones(3), mesh, [Partial()]))
        p.grad = DTensor.from_local(torch.ones(3), mesh, [Partial()])
        with pytest.raises(NotImplementedError, match="Partial"):
            Fromage([p]).step()


@pytest.fixture(scope="module")
def result():
    res = run_workers(worker, world_size=2, deadline=150)
    print(f"\n2-rank equivalence worker: {res.seconds:.1f} s; max relative differences: {res.metrics[0]}")
    print("per-check seconds (rank 0):", res.check_seconds[0])
    return res


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fsdp2_matches_single_process(result, name):
    result.assert_ok(f"fsdp/{name}")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fsdp2_step_only_all_reduces_norms(result, name):
    result.assert_ok(f"fsdp-comm/{name}")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_ddp_matches_single_process(result, name):
    result.assert_ok(f"ddp/{name}")


def test_fsdp2_lamb_chunked_large_tensor(result):
    result.assert_ok("fsdp/lamb_chunked_large_tensor")


def test_hsdp_2d_mesh_matches_single_process(result):
    result.assert_ok("hsdp/fromage_pbound_momentum")


def test_trust_monitor_under_fsdp2_reports_whole_tensors(result):
    result.assert_ok("fsdp/trust_monitor")


def test_partial_placement_refused(result):
    result.assert_ok("partial_refused")


def test_workers_exited_cleanly(result):
    assert result.exitcodes == [0, 0], result.records
    result.assert_ok("<worker>")
