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
gets exactly the step-6 state. On the 2 ranks, a flipped bit in the shard file rank 1 hashes makes
both ranks fall back to step 3. A DDP save/load round trip and the file-level helpers are also checked.

In this process: damaged newest checkpoints (truncated, zeroed, garbled, one flipped bit; with and
without checksums) fall back to the previous one; hostile files (a ``.metadata`` or a param-group
value whose pickle would run code, checksums updated to match) run nothing; an undecodable ``latest``;
``keep_last`` by save order.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import re
import shutil
import warnings
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
    at3 = {}
    for name in CKPT_CONFIGS:
        factory = CONFIGS[name][0]
        ckpt = root / name
        with checks(f"resume/{name}"):
            model = _fsdp(make_model(0), mesh)
            opt = factory(model)
            _train(model, opt, rank, world, range(3))
            save_checkpoint(ckpt, model, opt, 3, extra={"config": name})
            saved = at3[name] = _snapshot(model, opt)
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

    with checks("damaged_shard_fallback"):
        name = "lamb_groups"
        ckpt, factory = root / name, CONFIGS[name][0]
        files = json.loads((ckpt / "step_000006" / "reltrust_checkpoint.json").read_text())["files"]
        assert sorted(files) == [".metadata", "__0_0.distcp", "__1_0.distcp"], files  # both ranks' shards
        if rank == 0:  # one bit of rank 0's shard; the file is rank 1's share of the hashing
            shard = ckpt / "step_000006" / "__0_0.distcp"
            data = bytearray(shard.read_bytes())
            data[len(data) // 2] ^= 1
            shard.write_bytes(bytes(data))
        torch.distributed.barrier()
        model = _fsdp(make_model(1), mesh)
        opt = factory(model)
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            step = load_latest_checkpoint(ckpt, model, opt)
        loaded = _snapshot(model, opt)
        ours = [str(w.message) for w in got if "load_latest_checkpoint" in str(w.message)]
        assert step == 3, step
        _assert_equal(loaded, at3[name], "fell back to step 3")
        if rank == 0:
            assert len(ours) == 1 and re.search(r"skipping damaged checkpoint step 6 .*step_000006/__0_0\.distcp: "
                                                r"sha256 differs", ours[0]), ours
        else:
            assert ours == [], ours  # said once, by rank 0

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


def test_damaged_shard_found_by_the_rank_that_hashes_it_and_all_ranks_fall_back(run):
    run[0].assert_ok("damaged_shard_fallback")


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
    (tmp_path / "latest").write_text("step_000077\n")  # dangling: fall back to the last saved
    with pytest.warns(UserWarning, match=r"latest: names 'step_000077', which is not a complete checkpoint"):
        assert latest_checkpoint(tmp_path).step == 1_000_000
    (tmp_path / "latest").write_text("step_1000000\n")
    (tmp_path / "step_2000000.tmp").mkdir()  # unfinished saves never count
    (tmp_path / "step_3000000").mkdir()  # nor a directory without DCP metadata and our record
    with pytest.warns(UserWarning, match=r"ignoring .*step_3000000: no \.metadata"):
        assert latest_checkpoint(tmp_path).step == 1_000_000
    (tmp_path / "step_3000000").rmdir()

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


# ---- damaged and tampered checkpoints, in this process ---------------------------------------------

PAIR_CONFIG = "lamb_groups"  # param groups: non-tensor entries (lr, betas, ...) in the shard file too
SHARD = "__0_0.distcp"  # the one shard file a single process writes


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Checkpoints at steps 1 and 2 (one process), the state each holds; tests damage copies of them."""
    root = tmp_path_factory.mktemp("pair")
    model = make_model(0)
    opt = CONFIGS[PAIR_CONFIG][0](model)
    snapshots = {}
    for step in (1, 2):
        _train(model, opt, 0, 1, range(step - 1, step))
        save_checkpoint(root, model, opt, step)
        snapshots[step] = _snapshot(model, opt)
    return root, snapshots


def _copy(pair, tmp_path) -> Path:
    shutil.copytree(pair[0], tmp_path / "ckpt")
    return tmp_path / "ckpt"


def _fresh():
    model = make_model(1)
    return model, CONFIGS[PAIR_CONFIG][0](model)


def _strip_checksums(ckpt: Path) -> None:
    """Make the checkpoints look written by an older reltrust: no file checksums, no save sequence."""
    for meta_path in ckpt.glob("step_*/reltrust_checkpoint.json"):
        meta = json.loads(meta_path.read_text())
        del meta["files"], meta["sequence"]
        meta_path.write_text(json.dumps(meta))


def _damage(path: Path, how: str, step2_params: dict) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "zeroed":
        data = bytearray(len(data))
    elif how == "garbled":  # the first entries' zip headers
        data[:4096] = torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                    dtype=torch.uint8).numpy().tobytes()
    elif how == "bit_flip":  # the top exponent bit of fc1.weight[0, 0]: 0.3 becomes ~1e38
        at = bytes(data).find(step2_params["fc1.weight"].numpy().tobytes())
        assert at > 0
        data[at + 3] ^= 0x40
    path.write_bytes(bytes(data))


# (file, damage, with checksums): without them (an older reltrust's checkpoint) a flipped payload bit
# cannot be seen; the other damage DCP notices while reading
DAMAGE = [(SHARD, how, checksums) for checksums in (True, False) for how in ("truncated", "zeroed", "garbled")]
DAMAGE += [(SHARD, "bit_flip", True), (".metadata", "truncated", True), (".metadata", "truncated", False)]


@pytest.mark.parametrize("name,how,checksums", DAMAGE,
                         ids=[f"{n}-{h}-{'checksummed' if c else 'older_reltrust'}" for n, h, c in DAMAGE])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(pair, tmp_path, name, how, checksums):
    """A damaged newest checkpoint is skipped with a warning naming it, and the one before loads exactly."""
    ckpt = _copy(pair, tmp_path)
    if not checksums:
        _strip_checksums(ckpt)
    _damage(ckpt / "step_000002" / name, how, pair[1][2]["params"])
    model, opt = _fresh()
    with pytest.warns(UserWarning) as got:
        assert load_latest_checkpoint(ckpt, model, opt) == 1
    _assert_equal(_snapshot(model, opt), pair[1][1], "fell back to step 1")
    texts = [str(w.message) for w in got]
    assert any(re.match(r"load_latest_checkpoint: skipping damaged checkpoint step 2 \(.*step_000002\): ", t)
               for t in texts), texts
    if checksums:
        why = "sha256 differs" if how in ("zeroed", "garbled", "bit_flip") else r"\d+ bytes, \d+ when saved"
        assert any(re.search(rf"step_000002/{re.escape(name)}: {why}", t) for t in texts), texts
    else:
        assert any("step_000001 has no checksums (saved by an older reltrust)" in t for t in texts), texts


def test_no_checkpoint_loadable_raises(pair, tmp_path):
    ckpt = _copy(pair, tmp_path)
    for step in (1, 2):
        _damage(ckpt / checkpoint_name(step) / SHARD, "truncated", {})
    model, opt = _fresh()
    with pytest.warns(UserWarning, match="skipping damaged checkpoint"):
        with pytest.raises(CheckpointError, match=r"no checkpoint in .* could be loaded: step 2 .*\| step 1 "):
            load_latest_checkpoint(ckpt, model, opt)


class _Touch:
    """Unpickling this creates `path`: the stand-in for code a hostile file would run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _sets_class_attribute() -> bytes:
    """A pickle that sets an attribute on DCP's `StorageMeta` class itself (BUILD with slot state on a
    class, not an instance): harmless classes, a process-wide change all the same."""
    return (b"\x80\x04ctorch.distributed.checkpoint.metadata\nStorageMeta\n"  # the class
            b"N}\x8c\x08hijacked\x88s\x86b.")  # BUILD (None, {"hijacked": True}) on it


@pytest.mark.parametrize("payload", ["runs_code", "sets_class_attribute"])
def test_hostile_metadata_runs_nothing_and_is_refused(pair, tmp_path, payload):
    """A ``.metadata`` replaced by a hostile pickle — with the checksums updated to match, so only the
    unpickler stands in the way — does nothing; it is refused, naming the file, and the checkpoint
    before it loads; with no checkpoint before it, loading raises."""
    from torch.distributed.checkpoint.metadata import StorageMeta

    marker = tmp_path / "marker"
    if payload == "runs_code":
        hostile = pickle.dumps(_Touch(marker))
        refused = r"step_000002/\.metadata: refused to unpickle pathlib\.Path\.touch: not a type DCP metadata holds"
    else:
        hostile = _sets_class_attribute()
        refused = r"step_000002/\.metadata: refused to set the state of a type"
    ckpt = _copy(pair, tmp_path)
    (ckpt / "step_000002" / ".metadata").write_bytes(hostile)
    meta_path = ckpt / "step_000002" / "reltrust_checkpoint.json"
    meta = json.loads(meta_path.read_text())
    meta["files"][".metadata"] = {"bytes": len(hostile), "sha256": hashlib.sha256(hostile).hexdigest()}
    meta_path.write_text(json.dumps(meta))

    def harmed() -> bool:
        hijacked = StorageMeta.__dict__.get("hijacked", False)
        if hijacked:
            del StorageMeta.hijacked
        return marker.exists() or hijacked

    model, opt = _fresh()
    with pytest.warns(UserWarning) as got:
        step = load_latest_checkpoint(ckpt, model, opt)
    assert not harmed()
    assert step == 1 and any(re.search(refused, str(w.message)) for w in got), [str(w.message) for w in got]
    _assert_equal(_snapshot(model, opt), pair[1][1], "fell back to step 1")
    shutil.rmtree(ckpt / "step_000001")
    with pytest.warns(UserWarning, match=refused), pytest.raises(CheckpointError, match=refused):
        load_latest_checkpoint(ckpt, *_fresh())
    assert not harmed()


def test_metadata_pointing_outside_the_checkpoint_is_refused(pair, tmp_path):
    """DCP metadata names the files that hold each entry; one naming a file outside the checkpoint
    directory (here ``../elsewhere.distcp``, a copy of the real shard) is refused, not read."""
    ckpt = _copy(pair, tmp_path)
    step2 = ckpt / "step_000002"
    (ckpt / "elsewhere.distcp").write_bytes((step2 / SHARD).read_bytes())
    metadata = pickle.loads((step2 / ".metadata").read_bytes())  # the file reltrust wrote: trusted here
    metadata.storage_data = {k: dataclasses.replace(v, relative_path="../elsewhere.distcp")
                             for k, v in metadata.storage_data.items()}
    edited = pickle.dumps(metadata)
    (step2 / ".metadata").write_bytes(edited)
    meta = json.loads((step2 / "reltrust_checkpoint.json").read_text())
    meta["files"][".metadata"] = {"bytes": len(edited), "sha256": hashlib.sha256(edited).hexdigest()}
    (step2 / "reltrust_checkpoint.json").write_text(json.dumps(meta))

    model, opt = _fresh()
    with pytest.warns(UserWarning, match=r"step_000002/\.metadata: refers to '\.\./elsewhere\.distcp', "
                                         r"not a file of the checkpoint"):
        assert load_latest_checkpoint(ckpt, model, opt) == 1
    _assert_equal(_snapshot(model, opt), pair[1][1], "fell back to step 1")


def test_hostile_non_tensor_entry_runs_nothing(tmp_path):
    """A non-tensor state entry (here a param-group value) whose pickle runs code is refused by
    ``torch.load(weights_only=True)`` — DCP's own planner loads such entries with weights_only=False."""
    marker = tmp_path / "marker"
    model = make_model(0)
    opt = CONFIGS[PAIR_CONFIG][0](model)
    _train(model, opt, 0, 1, range(1))
    opt.param_groups[0]["note"] = "plain"
    save_checkpoint(tmp_path / "ckpt", model, opt, 1)
    saved = _snapshot(model, opt)
    opt.param_groups[0]["note"] = _Touch(marker)
    save_checkpoint(tmp_path / "ckpt", model, opt, 2)
    assert not marker.exists()

    model, opt = _fresh()
    opt.param_groups[0]["note"] = "plain"
    with pytest.warns(UserWarning, match=r"step 2 .*entry 'optim\.param_groups\.0\.note': refused by "
                                         r"torch\.load\(weights_only=True\): Unsupported global"):
        assert load_latest_checkpoint(tmp_path / "ckpt", model, opt) == 1
    assert not marker.exists()
    assert opt.param_groups[0]["note"] == "plain"
    _assert_equal(_snapshot(model, opt), saved, "fell back to step 1")


def test_undecodable_latest_falls_back_to_the_last_saved(pair, tmp_path):
    ckpt = _copy(pair, tmp_path)
    (ckpt / "latest").write_bytes(b"\xffstep_000001\n")
    model, opt = _fresh()
    with pytest.warns(UserWarning, match=r"ignoring .*latest: unreadable \(UnicodeDecodeError"):
        assert load_latest_checkpoint(ckpt, model, opt) == 2
    _assert_equal(_snapshot(model, opt), pair[1][2], "loaded step 2")


def test_keep_last_keeps_the_most_recently_saved(tmp_path):
    """`keep_last` counts saves, not steps: after saving steps 5, 6, then 1 and 2 (a run restarted in
    the same directory) exactly the last two saves are left, and `latest` is the one just saved."""
    model = make_model(0)
    opt = CONFIGS[PAIR_CONFIG][0](model)
    _train(model, opt, 0, 1, range(1))
    kept = []
    for step in (5, 6, 1, 2):
        save_checkpoint(tmp_path, model, opt, step, keep_last=2)
        kept.append([c.step for c in list_checkpoints(tmp_path)])
        assert (tmp_path / "latest").read_text().strip() == checkpoint_name(step)
    assert kept == [[5], [5, 6], [1, 6], [1, 2]]
    (tmp_path / "latest").write_text("garbage\n")  # without the pointer: the last saved, not the highest step
    with pytest.warns(UserWarning, match="latest: names 'garbage'"):
        assert latest_checkpoint(tmp_path).step == 2
