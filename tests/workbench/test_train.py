"""fit(): repeatable under a seed, divergence is a result, early stopping, evaluation semantics."""
from __future__ import annotations

import math

import pytest
import torch

from reltrust.workbench.tasks.classify import evaluate
from reltrust.workbench.train import build_optimizer, fit


def _strip_timing(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def test_same_spec_gives_bit_identical_metrics(tiny_spec):
    spec = tiny_spec(optimizer="adam", optimizer_kwargs={}, lr=1e-2, model_kwargs={"depth": 3, "width": 16, "dropout": 0.1})
    a, b = fit(spec), fit(spec)
    assert a.status == b.status == "ok"
    assert _strip_timing(a.history) == _strip_timing(b.history)  # exact equality, not approx
    assert a.final == b.final
    c = fit(spec.replace(seed=1))
    assert _strip_timing(c.history) != _strip_timing(a.history)


def test_history_has_init_and_every_epoch_and_learns(tiny_spec):
    res = fit(tiny_spec(epochs=3))
    assert [h["epoch"] for h in res.history] == [0, 1, 2, 3]
    assert res.history[0]["lr"] is None and res.history[0]["train_loss_running"] is None
    for h in res.history[1:]:
        assert 0.0 <= h["train_acc"] <= 1.0 and 0.0 <= h["val_acc"] <= 1.0
        assert h["train_acc_running"] is not None
    # a small MLP on MNIST learns in 3 epochs: well above chance (0.1)
    assert res.final["train_acc"] > 0.5 > res.history[0]["train_acc"]
    assert res.final["train_acc"] == res.history[-1]["train_acc"]
    assert res.final["epochs_run"] == 3 and res.final["steps"] == 3 * math.ceil(res.info["n_train"] / 250)
    assert (res.info["n_train"], res.info["n_val"]) == (4500, 500)
    assert res.final["test_acc"] is None  # the 5,000-image subset has no test split unless one is carved


def test_huge_learning_rate_is_recorded_as_diverged_not_crashed(tiny_spec):
    res = fit(tiny_spec(lr=1e12, optimizer_kwargs={}, epochs=3))
    assert res.status == "diverged"
    assert res.error is None
    at = res.final["diverged_at"]
    assert at["epoch"] == 1 and at["step"] >= 1 and not math.isfinite(at["loss"])
    assert res.history[-1].get("partial") is True
    # a model whose outputs are not finite is right about nothing
    assert res.final["train_acc"] <= 0.2


def test_early_stopping_stops_and_restores_the_best_epoch(tiny_spec):
    # min_delta larger than any possible improvement: only epoch 1 ever counts as "best", so with
    # patience 2 the run stops after epoch 3 and ends with epoch 1's weights and metrics.
    res = fit(tiny_spec(epochs=10, patience=2, min_delta=1e9))
    assert res.final["stopped_early"] is True
    assert res.final["epochs_run"] == 3 and len(res.history) == 4
    assert res.final["best_epoch"] == 1
    for k in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert res.final[k] == res.history[1][k]


def test_early_stopping_keeps_the_best_validation_epoch_without_stopping(tiny_spec):
    res = fit(tiny_spec(epochs=3, patience=5, lr=0.5, optimizer_kwargs={}))
    assert res.final["stopped_early"] is False and res.final["epochs_run"] == 3
    vals = [h["val_loss"] for h in res.history[1:]]
    best = 1 + vals.index(min(vals))
    assert res.final["best_epoch"] == best
    assert res.final["val_loss"] == min(vals) and res.final["train_acc"] == res.history[best]["train_acc"]


def test_zero_weight_decay_means_none_and_positive_uses_param_groups(tiny_spec):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    opt = build_optimizer(tiny_spec(optimizer="adamw", optimizer_kwargs={}, lr=1e-3), model)
    assert all(g["weight_decay"] == 0.0 for g in opt.param_groups)  # AdamW's own default (0.01) not used
    opt = build_optimizer(tiny_spec(optimizer="adamw", optimizer_kwargs={}, lr=1e-3, weight_decay=0.1), model)
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.1]  # bias excluded
    with pytest.raises(ValueError):
        build_optimizer(tiny_spec(optimizer_kwargs={"weight_decay": 0.1}), model)


def test_evaluate_counts_non_finite_rows_as_wrong():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(len(x), 3)
            out[:, 1] = 1.0
            out[0, 0] = float("nan")
            return out

    y = torch.tensor([1, 1, 1, 0])
    loss, acc = evaluate(Fixed(), torch.zeros(4, 2), y)
    assert acc == 0.5  # rows 1 and 2 right; row 0 (NaN) and row 3 wrong
    assert math.isnan(loss)


@pytest.mark.parametrize("optimizer,lr", [("fromage", 0.01), ("lamb", 1e-2), ("lars", 1.0), ("radam", 1e-3)])
def test_any_registered_optimizer_trains(tiny_spec, optimizer, lr):
    res = fit(tiny_spec(optimizer=optimizer, optimizer_kwargs={}, lr=lr, epochs=1))
    assert res.status == "ok" and math.isfinite(res.final["train_loss"])
    assert res.final["train_loss"] < res.history[0]["train_loss"]


def test_a_probe_measures_without_disturbing_the_run(tiny_spec):
    spec = tiny_spec(epochs=2, model_kwargs={"depth": 3, "width": 16, "dropout": 0.1})
    probed = spec.replace(probe={"name": "perturbation", "at_epochs": [0, 2], "etas": [0.0, 0.05, 0.1], "batch": 300})
    a, b = fit(spec), fit(probed)
    assert _strip_timing(a.history) == _strip_timing(b.history) and a.final == b.final
    assert [p["epoch"] for p in b.probes] == [0, 2] and a.probes == []
    for p in b.probes:
        assert p["etas"] == [0.0, 0.05, 0.1]
        assert p["relative_gradient_change"][0] == 0.0 and p["relative_function_change"][0] == 0.0
        assert all(v > 0 for v in p["relative_gradient_change"][1:])
        assert len(p["layers"]) == 3  # the three weight matrices; biases are not moved
        # every layer moved by exactly η relative to its norm
        for name in p["layers"]:
            assert p["relative_parameter_change_per_layer"][name] == pytest.approx([0.0, 0.05, 0.1], abs=1e-6)
