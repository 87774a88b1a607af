"""One workbench run under data parallelism (2 ranks, gloo, CPU) = the same run in one process.

`fit(spec, parallel="fsdp" | "ddp")` slices every minibatch over the ranks and scales each rank's loss
so that the averaged gradient is the minibatch mean's: the history, final metrics and probe results
must match a single-process `fit` of the same spec within float32 rounding, on every rank. Also the
`reltrust run` command end to end under torchrun, recording into a study's store.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reltrust.workbench.spec import RunSpec

from .dist_harness import run_workers

ROOT = Path(__file__).resolve().parents[2]
SPEC = dict(study="test", dataset="mnist", model="mlp", seed=3, epochs=2, batch_size=250,
            model_kwargs={"depth": 4, "width": 24}, schedule="exponential", schedule_kwargs={"gamma": 0.95})
CASES = {
    "fromage": dict(optimizer="fromage", lr=0.01,
                    probe={"name": "perturbation", "at_epochs": [1], "etas": [0.0, 0.05, 0.1], "batch": 200}),
    "lamb_decay": dict(optimizer="lamb", lr=0.01, weight_decay=0.01),
    "sgd": dict(optimizer="sgd", lr=0.1, optimizer_kwargs={"momentum": 0.9}),
    # the other tasks that split over ranks: random text blocks, and least squares
    "charlm": dict(task="charlm", dataset="shakespeare", model="transformer", optimizer="adam", lr=3e-3,
                   model_kwargs={"block_size": 16, "d_model": 16, "n_layers": 1, "n_heads": 2}, epochs=0,
                   steps=10, batch_size=8, task_kwargs={"steps_per_epoch": 5, "eval_blocks": 8}),
    "regress": dict(task="regress", dataset="teacher", model="random_features", model_kwargs={"features": 32},
                    optimizer="sgd", lr=0.5, epochs=3, batch_size=50, task_kwargs={"n_train": 200, "n_val": 50}),
}
RTOL = 1e-4


def _numbers(result) -> list[float]:
    """Every metric of a result that must agree, flattened (counts and seconds left out)."""
    out = []
    for entry in result.history:
        out += [v for k, v in sorted(entry.items()) if k.startswith(("train_", "val_")) and v is not None]
    for probe in result.probes:
        out += probe["loss"] + probe["relative_function_change"] + probe["relative_gradient_change"]
    return [float(v) for v in out]


def _close(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b), (len(a), len(b))
    return max((abs(x - y) / max(abs(y), 1e-6) for x, y in zip(a, b)), default=0.0)


def worker(checks):
    torch.set_num_threads(1)
    from reltrust.workbench.train import fit

    for name, case in CASES.items():
        spec = RunSpec(**{**SPEC, **case})
        single = _numbers(fit(spec))  # every rank computes the reference itself
        for parallel in ("fsdp", "ddp"):
            with checks(f"{parallel}/{name}"):
                result = fit(spec, parallel=parallel)
                assert result.status == "ok" and result.info["world_size"] == 2
                assert len(result.probes) == len(spec.kwargs("probe").get("at_epochs", ()))
                err = _close(_numbers(result), single)
                checks.metrics[f"{parallel}/{name}"] = err
                assert err < RTOL, f"{parallel} vs one process: max relative difference {err:.3g}"


@pytest.fixture(scope="module")
def result():
    return run_workers(worker, world_size=2, deadline=150)


@pytest.mark.parametrize("parallel", ["fsdp", "ddp"])
@pytest.mark.parametrize("name", list(CASES))
def test_parallel_fit_equals_single_process(result, parallel, name):
    result.assert_ok(f"{parallel}/{name}")


def test_reltrust_run_under_torchrun_records_in_the_study_store(tmp_path):
    from reltrust.distributed import free_port
    from reltrust.workbench.store import Store
    from reltrust.workbench.studies import get_study

    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    out = tmp_path / "depth"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "-m", "reltrust", "run", "depth", "--tiny", "--index", "4",
           "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "parallel=fsdp" in proc.stdout
    spec = get_study("depth").grid(False, tiny=True)[4]
    with Store(out / "results.sqlite") as store:
        records = store.records()
        assert [r.key for r in records] == [spec.key]
        assert records[0].status == "ok" and records[0].info["world_size"] == 2
        assert math.isfinite(records[0].final["train_loss"])
        assert store.pending(get_study("depth").grid(False, tiny=True)).count(spec) == 0
    bad = subprocess.run([sys.executable, "-m", "reltrust", "run", "depth", "--tiny", "--index", "9999", "--out",
                          str(out)], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--index must be in" in bad.stderr
