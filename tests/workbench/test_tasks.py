"""The task seam: each kind trains end to end, its metrics match hand-made cases, bad specs are refused
with an error naming the field, a killed GAN sweep resumes, and the store works without torch."""
from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from reltrust.workbench.runner import run_sweep, sweep
from reltrust.workbench.spec import RunSpec
from reltrust.workbench.store import Store
from reltrust.workbench.tasks import TaskError, make_task
from reltrust.workbench.tasks.regress import teacher_data
from reltrust.workbench.train import build_optimizer, fit

SRC = str(Path(__file__).resolve().parents[2] / "src")
CPU = torch.device("cpu")

LM = dict(study="test", task="charlm", dataset="shakespeare", model="transformer",
          model_kwargs={"block_size": 16, "d_model": 16, "n_layers": 1, "n_heads": 2},
          optimizer="adam", lr=3e-3, epochs=0, steps=30, batch_size=8,
          task_kwargs={"steps_per_epoch": 10, "eval_blocks": 16})
GAN = dict(study="test", task="gan", dataset="digits", model="mlp", model_kwargs={"hidden": 16, "latent_dim": 8},
           optimizer="adam", lr=1e-3, optimizer2="adam", lr2=1e-3, epochs=1, batch_size=128)
REG = dict(study="test", task="regress", dataset="teacher", model="linear", optimizer="sgd", lr=0.1,
           epochs=30, batch_size=10_000, task_kwargs={"n_train": 64, "n_val": 32, "dim": 8, "noise": 0.0})


# ------------------------------------------------------------------------------------ char LM
def test_a_language_model_that_predicts_uniformly_has_loss_log_vocab():
    task = make_task(RunSpec(**LM), device=CPU)
    model = task.build()["model"]
    with torch.no_grad():  # logits all zero: every character has probability 1/V
        model.head.weight.zero_()
        model.head.bias.zero_()
    vocab = len(task.data.vocab)
    for split in ("train", "val"):
        m = task.evaluate({"model": model}, split)
        assert m["loss"] == pytest.approx(math.log(vocab), rel=1e-6)
        assert m["bpc"] == pytest.approx(math.log2(vocab), rel=1e-6)
        # ties go to character 0: accuracy is the share of 0s among the evaluated next characters
        _, y = task._windows[split]
        assert m["acc"] == pytest.approx(float((y == 0).float().mean()))


def test_char_lm_trains_on_a_step_budget_with_blocks_from_the_seeded_generator():
    res = fit(RunSpec(**LM))
    assert res.status == "ok"
    assert res.final["steps"] == 30 and [h["epoch"] for h in res.history] == [0, 1, 2, 3]
    assert {"train_loss", "train_bpc", "train_acc", "val_loss", "val_bpc", "val_acc"} <= set(res.final)
    assert res.history[0]["val_loss"] == pytest.approx(math.log(res.info["num_classes"]), rel=0.05)
    assert res.final["val_loss"] < res.history[0]["val_loss"] - 0.3  # it learns
    again = fit(RunSpec(**LM))
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in again.history] == \
        [{k: v for k, v in h.items() if k != "seconds"} for h in res.history]
    other = fit(RunSpec(**LM).replace(seed=1))
    assert other.final["train_loss_running"] != res.final["train_loss_running"]


# ------------------------------------------------------------------------------------------ GAN
def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("lr,lr2,moves", [(1e-2, 1e-2, {"generator", "discriminator"}),
                                          (1e-2, 0.0, {"generator"}), (0.0, 1e-2, {"discriminator"})])
def test_a_gan_step_changes_both_players_and_each_optimiser_only_its_own(lr, lr2, moves):
    spec = RunSpec(**{**GAN, "optimizer": "sgd", "optimizer2": "sgd", "lr": lr, "lr2": lr2})
    task = make_task(spec, device=CPU)
    torch.manual_seed(0)
    models = task.build()
    opts = {p: build_optimizer(spec, models[p], i) for i, p in enumerate(task.PLAYERS)}
    assert {id(p) for p in opts["generator"].param_groups[0]["params"]} == {id(p) for p in models["generator"].parameters()}
    before = {k: _params(m) for k, m in models.items()}
    data_before = task.splits["train"][0].clone()
    step = task.train_step(models, opts, next(task.epoch(torch.Generator().manual_seed(0))), None)
    assert math.isfinite(step.loss) and set(step.sums) == {"d_loss", "g_loss"}
    changed = {k for k, m in models.items() if not _same(before[k], _params(m))}
    assert changed == moves
    assert torch.equal(task.splits["train"][0], data_before)


def test_gan_metrics_are_the_hinge_losses_of_both_players():
    spec = RunSpec(**{**GAN, "model_kwargs": {**GAN["model_kwargs"], "spectral_norm": False}})
    task = make_task(spec, device=CPU)
    torch.manual_seed(0)
    models = task.build()
    d = models["discriminator"]
    with torch.no_grad():  # a discriminator that scores everything 0
        d.out.weight.zero_()
        d.out.bias.zero_()
        d.embed.weight.zero_()
    m = task.evaluate(models, "val")
    assert m == {"d_loss": 2.0, "g_loss": 0.0}  # relu(1 - 0) + relu(1 + 0), and -0
    res = fit(spec)
    assert res.status == "ok" and res.final["steps"] == task.steps_per_epoch
    assert {"train_d_loss", "train_g_loss", "val_d_loss", "val_g_loss", "train_d_loss_running"} <= set(res.final)


def test_a_killed_gan_sweep_resumes_and_equals_an_uninterrupted_one(tmp_path):
    specs = sweep(RunSpec(**GAN), seeds=range(4))
    db = tmp_path / "gan.sqlite"
    script = textwrap.dedent(f"""
        import torch
        from reltrust.workbench.runner import run_sweep, sweep
        from reltrust.workbench.spec import RunSpec
        from reltrust.workbench.store import Store
        torch.set_num_threads(1)
        with Store({str(db)!r}) as store:
            run_sweep(sweep(RunSpec(**{GAN!r}), seeds=range(4)), store, workers=0, threads=1, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": SRC},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            n = 0
            if db.exists():  # connecting first would create an empty file, which is no store
                try:
                    with sqlite3.connect(db) as con:
                        n = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
                except sqlite3.OperationalError:
                    pass
            if n >= 1:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    with Store(db) as store:
        done = len(store)
        assert 1 <= done < len(specs), "the sweep was not interrupted part-way"
        summary = run_sweep(specs, store, workers=0, threads=1, progress=False)
        assert (summary.skipped, summary.ran) == (done, len(specs) - done)
        resumed = {r.key: (r.status, r.final, [{k: v for k, v in h.items() if k != "seconds"} for h in r.history])
                   for r in store.records()}
    with Store(tmp_path / "straight.sqlite") as store:
        run_sweep(specs, store, workers=0, threads=1, progress=False)
        straight = {r.key: (r.status, r.final, [{k: v for k, v in h.items() if k != "seconds"} for h in r.history])
                    for r in store.records()}
    assert resumed == straight


# ----------------------------------------------------------------------------------- regression
def test_regression_starts_at_the_mean_square_of_the_targets_and_reaches_least_squares():
    spec = RunSpec(**REG)
    data = teacher_data(64, 32, 8, 0.0, spec.split_seed)
    res = fit(spec)
    x, y = data["train"]
    assert res.history[0]["train_loss"] == pytest.approx(float((y.double() ** 2).mean()), rel=1e-6)  # zero init
    # noise 0: the teacher is linear, so least squares fits the training set exactly and generalises
    assert res.final["train_loss"] < 1e-3 * res.history[0]["train_loss"]
    assert res.final["val_loss"] < 1e-3 * res.history[0]["val_loss"]
    assert "train_acc" not in res.final


def test_random_features_regression_on_class_labels_reports_mse_and_accuracy():
    spec = RunSpec(**{**REG, "dataset": "digits", "model": "random_features", "model_kwargs": {"features": 64},
                      "task_kwargs": {}, "epochs": 2, "batch_size": 64, "optimizer": "adam", "lr": 1e-2})
    res = fit(spec)
    assert res.status == "ok" and res.history[0]["train_loss"] == pytest.approx(0.1)  # zero head: mean of one-hot²
    assert res.final["train_acc"] > 0.5 and res.final["val_loss"] < 0.1


def test_a_step_budget_stops_mid_epoch(tiny_spec):
    res = fit(tiny_spec(epochs=3, steps=5))
    assert res.final["steps"] == 5 and res.final["epochs_run"] == 1 and len(res.history) == 2


# ----------------------------------------------------------------------------------- bad specs
@pytest.mark.parametrize("changes,field", [
    ({"task": "segmentation"}, "RunSpec.task"),
    ({"task": "gan", "dataset": "digits", "model": "mlp"}, "RunSpec.optimizer2"),
    ({"dataset": "shakespeare"}, "RunSpec.dataset"),
    ({"task": "charlm", "dataset": "mnist", "model": "transformer"}, "RunSpec.dataset"),
    ({"model": "transformer"}, "RunSpec.model"),
    ({"task_kwargs": {"eval_blocks": 3}}, "RunSpec.task_kwargs"),
    ({"optimizer2": "adam", "lr2": 0.1}, "RunSpec.optimizer2"),
])
def test_a_bad_task_spec_is_a_clear_error_naming_the_field(tiny_spec, changes, field):
    with pytest.raises(TaskError, match=field.replace(".", r"\.")):
        fit(tiny_spec(**changes))


def test_early_stopping_is_refused_for_a_task_without_a_metric_to_stop_on():
    with pytest.raises(ValueError, match=r"RunSpec\.patience"):
        fit(RunSpec(**{**GAN, "patience": 2}))


# ----------------------------------------------------------------------------------- the store
def test_the_store_opens_resumes_and_exports_without_importing_torch(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        store.record(fit(RunSpec(**{**REG, "epochs": 2})))
    script = textwrap.dedent(f"""
        import sys
        from reltrust.workbench.results import RunRecord
        from reltrust.workbench.spec import RunSpec
        from reltrust.workbench.store import Store
        with Store({str(tmp_path / 's.sqlite')!r}) as store:
            (rec,) = store.records()
            assert rec.spec.task == "regress" and rec.status == "ok" and rec.history
            assert store.pending([rec.spec, rec.spec.replace(seed=1)]) == [rec.spec.replace(seed=1)]
            store.record(RunRecord(spec=rec.spec.replace(seed=2), status="crashed", error="x"))
            store.export_csv({str(tmp_path / 'r.csv')!r})
            store.export_json({str(tmp_path / 'r.json')!r})
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))[:3]
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": SRC},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert (tmp_path / "r.csv").read_text().count("\n") == 3
