"""Sharded checkpoints (DCP) of FSDP2 models and reltrust optimisers on 2 ranks: resume = uninterrupted.

One spawned pair of ranks, for Fromage (p_bound + momentum), LARS (Nesterov) and LAMB:

1. trains 3 steps, `save_checkpoint` at step 3, trains on to step 6 (the uninterrupted run);
2. a save at step 6 in which rank 1 *raises* while writing: both ranks get `CheckpointError`, only
   ``step_000006.tmp`` is left and ``latest`` still names step 3;
3. a fresh model (other initialisation) and optimiser load the latest checkpoint → step 3, with
   parameters and optimiser state (Fromage's p_bound reference norms ``initial_norm``, momenta, LAMB's
   step/exp_avg/exp_avg_sq) equal to what was saved, train steps 4-6 and end *bit for bit* equal to
   the uninterrupted run;
4. saving step 6 again now succeeds (the stale .tmp is replaced).

Then rank 1 *dies* (``os._exit``) in the middle of writing a step-7 checkpoint; rank 0's save fails
with gloo's "connection closed". The test process (no process group, one rank, unsharded model)
then finds step 6 as the latest complete checkpoint and loads it — DCP reshards 2 ranks → 1 — and
gets exactly the step-6 state. A DDP save/load round trip and the file-level helpers are also checked.
"""
from __future__ import annotations

import json
import os
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import pytest
import torch

from .dist_common import CONFIGS, batch, loss_fn, make_model, named_params, named_state
from .dist_harness import run_workers
from reltrust.distributed import (
    CheckpointError,
    checkpoint_name,
    latest_checkpoint,
    list_checkpoints,
    load_latest_checkpoint,
    save_checkpoint,
)

CKPT_CONFIGS = ["fromage_pbound_momentum", "lars_nesterov_groups", "lamb_groups"]
DIE_CONFIG = "fromage_pbound_momentum"
DIE_EXIT = 17


def _fsdp(model, mesh):
    from torch.distributed.fsdp import fully_shard

    fully_shard(model.fc1, mesh=mesh)
    fully_shard(model.fc2, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _train(model, opt, rank, world, steps):
    for s in steps:
        x, y = batch(s)
        opt.zero_grad(set_to_none=True)
        loss_fn(model, x.chunk(world)[rank], y.chunk(world)[rank]).backward()
        opt.step()


def _snapshot(model, opt):
    return {"params": named_params(model), "state": named_state(model, opt)}


def _assert_equal(got, want, what):
    assert got.keys() == want.keys(), (what, sorted(got), sorted(want))
    for k in want:
        if isinstance(want[k], dict):
            _assert_equal(got[k], want[k], f"{what}.{k}")
        else:
            assert torch.equal(got[k], want[k]) or (got[k].isnan().all() and want[k].isnan().all()), (
                f"{what}.{k} differs: max |diff| {(got[k].double() - want[k].double()).abs().max().item():.3g}"
            )


def _failing_write(mode: str):
    """Rank 1's shard writer: writes its files, then raises (mode "raise") or exits (mode "die")."""
    from torch.distributed.checkpoint import FileSystemWriter

    original = FileSystemWriter.write_data

    def write_data(self, plan, planner):
        future = original(self, plan, planner)
        future.wait()
        if mode == "raise":
            raise OSError("injected: disk full on rank 1")
        os._exit(DIE_EXIT)

    return mock.patch.object(FileSystemWriter, "write_data", write_data)


def worker(checks, root):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank, world = checks.rank, checks.world_size
    mesh = init_device_mesh("cpu", (world,))
    root = Path(root)
    for name in CKPT_CONFIGS:
        factory = CONFIGS[name][0]
        ckpt = root / name
        with checks(f"resume/{name}"):
            model = _fsdp(make_model(0), mesh)
            opt = factory(model)
            _train(model, opt, rank, world, range(3))
            save_checkpoint(ckpt, model, opt, 3, extra={"config": name})
            saved = _snapshot(model, opt)
            _train(model, opt, rank, world, range(3, 6))
            uninterrupted = _snapshot(model, opt)

            # 2. a rank raises while writing: nothing but the .tmp changes
            with _failing_write("raise") if rank == 1 else nullcontext():
                with pytest.raises(CheckpointError, match=r"rank\(s\) \[1\]"):
                    save_checkpoint(ckpt, model, opt, 6)
            assert (ckpt / "step_000006.tmp").is_dir() and not (ckpt / "step_000006").exists()
            assert (ckpt / "latest").read_text().strip() == "step_000003"
            found = latest_checkpoint(ckpt)
            assert found.step == 3 and found.extra == {"config": name}, found

            # 3. resume into a differently initialised model and a fresh optimiser
            model = _fsdp(make_model(1), mesh)
            opt = factory(model)
            step = load_latest_checkpoint(ckpt, model, opt)
            loaded = _snapshot(model, opt)
            _train(model, opt, rank, world, range(step, 6))
            resumed = _snapshot(model, opt)
            assert step == 3, step
            assert any("initial_norm" in s for s in saved["state"].values()) == (name == DIE_CONFIG)
            _assert_equal(loaded, saved, "loaded")
            _assert_equal(resumed, uninterrupted, "resumed")  # bit for bit

            # 4. the retry of the failed save goes through
            save_checkpoint(ckpt, model, opt, 6, extra={"config": name})
            assert latest_checkpoint(ckpt).step == 6
            assert sorted(p.name for p in ckpt.iterdir()) == ["latest", "step_000003", "step_000006"]

    with checks("ddp_roundtrip"):
        factory = CONFIGS["lamb_groups"][0]
        model = DDP(make_model(0))
        opt = factory(model)
        _train(model, opt, rank, world, range(2))
        save_checkpoint(root / "ddp", model, opt, 2)
        saved = _snapshot(model, opt)
        model = DDP(make_model(1))
        opt = factory(model)
        step = load_latest_checkpoint(root / "ddp", model, opt)
        loaded = _snapshot(model, opt)
        assert step == 2
        _assert_equal(loaded, saved, "ddp loaded")

    with checks("die/prepare"):
        factory = CONFIGS[DIE_CONFIG][0]
        ckpt = root / DIE_CONFIG
        model = _fsdp(make_model(0), mesh)
        opt = factory(model)
        assert load_latest_checkpoint(ckpt, model, opt) == 6
        at6 = _snapshot(model, opt)
        if rank == 0:
            torch.save(at6, root / "at6.pt")
        _train(model, opt, rank, world, range(6, 7))
    checks.metrics["before_die"] = True
    checks.save()
    with checks("die/survivor"):
        with _failing_write("die") if rank == 1 else nullcontext():
            with pytest.raises(Exception):  # rank 0: gloo "Connection closed by peer"
                save_checkpoint(ckpt, model, opt, 7)
        assert (ckpt / "step_000007.tmp").is_dir() and latest_checkpoint(ckpt).step == 6


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    res = run_workers(worker, str(root), world_size=2, deadline=150)
    print(f"\n2-rank checkpoint worker: {res.seconds:.1f} s")
    print("per-check seconds (rank 0):", res.check_seconds[0])
    return res, root


@pytest.mark.parametrize("name", CKPT_CONFIGS)
def test_resume_equals_uninterrupted_and_failed_save_keeps_previous(run, name):
    run[0].assert_ok(f"resume/{name}")


def test_ddp_checkpoint_roundtrip(run):
    run[0].assert_ok("ddp_roundtrip")


def test_rank_dying_mid_save_leaves_previous_checkpoint_loadable(run):
    res, root = run
    res.assert_ok("die/prepare")
    assert res.exitcodes == [0, DIE_EXIT], res.exitcodes
    res.assert_ok("die/survivor", ranks=[0])
    assert res.records[0].get("<worker>") == "ok", res.records[0]

    ckpt = root / DIE_CONFIG
    assert (ckpt / "step_000007.tmp").is_dir()  # the half-written one is there, and ignored
    assert [c.step for c in list_checkpoints(ckpt)] == [3, 6]
    assert latest_checkpoint(ckpt).step == 6

    # this process: no process group, one rank, an unsharded model — DCP reshards 2 → 1
    model = make_model(1)
    opt = CONFIGS[DIE_CONFIG][0](model)
    assert load_latest_checkpoint(ckpt, model, opt) == 6
    _assert_equal(_snapshot(model, opt), torch.load(root / "at6.pt"), "loaded in one process")


# ---- the file-level protocol, in this process -----------------------------------------------------


def test_checkpoint_names_and_pointer_fallback(tmp_path):
    model = make_model(0)
    opt = CONFIGS["lamb_groups"][0](model)
    x, y = batch(0)
    loss_fn(model, x, y).backward()
    opt.step()
    assert checkpoint_name(123) == "step_000123"
    assert load_latest_checkpoint(tmp_path / "none", model, opt) is None
    for step in (9, 10, 1_000_000):  # numeric, not lexicographic order
        save_checkpoint(tmp_path, model, opt, step, extra={"step": step})
    assert [c.step for c in list_checkpoints(tmp_path)] == [9, 10, 1_000_000]
    assert latest_checkpoint(tmp_path).extra == {"step": 1_000_000}
    meta = json.loads((tmp_path / "step_1000000" / "reltrust_checkpoint.json").read_text())
    assert meta["step"] == 1_000_000 and meta["world_size"] == 1

    (tmp_path / "latest").write_text("step_000010\n")  # the pointer wins when it names a complete one
    assert latest_checkpoint(tmp_path).step == 10
    (tmp_path / "latest").write_text("step_000077\n")  # dangling: fall back to the highest complete
    assert latest_checkpoint(tmp_path).step == 1_000_000
    (tmp_path / "step_2000000.tmp").mkdir()  # unfinished saves never count
    (tmp_path / "step_3000000").mkdir()  # nor a directory without DCP metadata and our record
    assert latest_checkpoint(tmp_path).step == 1_000_000

    save_checkpoint(tmp_path, model, opt, 10, extra={"again": True}, keep_last=2)  # same step again
    assert [c.step for c in list_checkpoints(tmp_path)] == [10, 1_000_000]
    assert latest_checkpoint(tmp_path).extra == {"again": True}
    assert not list(tmp_path.glob("*.old"))

    with pytest.raises(ValueError):
        save_checkpoint(tmp_path, model, opt, -1)
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, model, opt, 11, extra={"bad": object()})
    assert not (tmp_path / "step_000011.tmp").exists()


@pytest.mark.parametrize("name", CKPT_CONFIGS)
def test_bfloat16_parameters_resume_with_float32_state(tmp_path, name):
    """16-bit parameters keep float32 optimiser state across save/load (torch's load_state_dict would
    cast it to bfloat16: Fromage and LAMB then failed with a dtype error, LARS lost precision)."""
    factory = CONFIGS[name][0]

    def train(model, opt, steps):
        for s in steps:
            x, y = batch(s)
            opt.zero_grad(set_to_none=True)
            loss_fn(model, x.bfloat16(), y.bfloat16()).backward()
            opt.step()

    model = make_model(0).bfloat16()
    opt = factory(model)
    train(model, opt, range(2))
    save_checkpoint(tmp_path, model, opt, 2)
    saved = _snapshot(model, opt)
    train(model, opt, range(2, 4))
    uninterrupted = _snapshot(model, opt)

    for via in ("dcp", "load_state_dict"):
        fresh = make_model(1).bfloat16()
        fresh_opt = factory(fresh)
        if via == "dcp":
            assert load_latest_checkpoint(tmp_path, fresh, fresh_opt) == 2
        else:
            ref = make_model(0).bfloat16()
            ref_opt = factory(ref)
            train(ref, ref_opt, range(2))
            fresh.load_state_dict(ref.state_dict())
            fresh_opt.load_state_dict(ref_opt.state_dict())
        assert all(v.dtype == torch.float32 for s in fresh_opt.state.values() for v in s.values()), via
        _assert_equal(_snapshot(fresh, fresh_opt), saved, f"{via}: loaded")
        train(fresh, fresh_opt, range(2, 4))
        _assert_equal(_snapshot(fresh, fresh_opt), uninterrupted, f"{via}: resumed")
