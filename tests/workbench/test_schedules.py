"""Each schedule's learning rates against values computed by hand."""
from __future__ import annotations

import math

import pytest
import torch

from reltrust.workbench.schedules import build_scheduler, lr_factor
from reltrust.workbench.train import fit

# (schedule, kwargs, total units, lr, expected lr at t = 0, 1, 2, ...)
CASES = [
    ("constant", {}, 4, 0.1, [0.1, 0.1, 0.1, 0.1]),
    ("step", {"step_size": 2, "gamma": 0.5}, 6, 0.1, [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]),
    ("exponential", {"gamma": 0.95}, 4, 1.0, [1.0, 0.95, 0.9025, 0.857375]),
    # a / (b + t) with b = 4 and a = lr * b = 0.8
    ("robbins_monro", {"b": 4}, 4, 0.2, [0.8 / 4, 0.8 / 5, 0.8 / 6, 0.8 / 7]),
    ("warmup", {"warmup": 4}, 6, 0.4, [0.1, 0.2, 0.3, 0.4, 0.4, 0.4]),
    # cosine over T = 4 units from 1 to min_factor 0: (1 + cos(pi t / 4)) / 2 (held at 0 after T)
    ("cosine", {}, 4, 1.0, [1.0, 0.8535533905932737, 0.5, 0.14644660940672627, 0.0]),
    # 2 warmup units, then cosine over the remaining 4 down to 0.1
    ("cosine", {"warmup": 2, "min_factor": 0.1}, 6, 1.0,
     [0.5, 1.0, 1.0, 0.1 + 0.9 * 0.8535533905932737, 0.55, 0.1 + 0.9 * 0.14644660940672627]),
    # linear decay over T = 4: 1 - t/4
    ("poly", {}, 4, 0.8, [0.8, 0.6, 0.4, 0.2]),
    # LAMB's shape: warmup 1/4 of T = 8 (2 units), then (1 - s/6)^2 over the remaining 6
    ("poly", {"warmup_fraction": 0.25, "power": 2}, 8, 1.0,
     [0.5, 1.0, 1.0, 25 / 36, 16 / 36, 9 / 36, 4 / 36, 1 / 36]),
    # a warmup fraction rounds up: 0.1 of 15 units is 2 warmup units
    ("constant", {"warmup_fraction": 0.1}, 15, 1.0, [0.5, 1.0, 1.0]),
]


@pytest.mark.parametrize("schedule,kwargs,total,lr,expected", CASES)
def test_scheduler_lrs_match_hand_computed(schedule, kwargs, total, lr, expected):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = build_scheduler(opt, schedule, total, **kwargs)
    seen = []
    for _ in expected:
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert [lr * lr_factor(schedule, t, total, **kwargs) for t in range(len(expected))] == pytest.approx(expected)


def test_unknown_arguments_fail_before_training():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError):
        build_scheduler(opt, "exponential", 3, step_size=2)
    with pytest.raises(ValueError):
        build_scheduler(opt, "warmup", 3)  # warmup needs its length


@pytest.mark.parametrize("kwargs,message", [
    ({"warmup_fraction": 1.0}, r"warmup_fraction must be in \[0, 1\) \(got 1.0\)"),
    ({"warmup_fraction": -0.1}, r"warmup_fraction must be in \[0, 1\)"),
    ({"warmup_fraction": 0.1, "warmup": 2}, "give warmup or warmup_fraction, not both"),
    ({"power": 0}, r"power must be > 0 \(got 0.0\)"),
])
def test_poly_and_warmup_fraction_reject_bad_arguments(kwargs, message):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match=message):
        build_scheduler(opt, "poly", 10, **kwargs)


def test_fit_records_the_lr_of_each_epoch(tiny_spec):
    res = fit(tiny_spec(epochs=4, schedule="exponential", schedule_kwargs={"gamma": 0.5}, lr=0.08))
    assert [h["lr"] for h in res.history[1:]] == pytest.approx([0.08, 0.04, 0.02, 0.01])


def test_per_step_schedule_advances_every_step(tiny_spec):
    # 4,500 training examples / batch 250 -> 18 steps per epoch
    res = fit(tiny_spec(epochs=2, schedule="robbins_monro", schedule_kwargs={"b": 10}, schedule_interval="step", lr=0.1))
    steps = res.final["steps"] // 2
    assert res.history[1]["lr"] == pytest.approx(0.1)
    assert res.history[2]["lr"] == pytest.approx(0.1 * 10 / (10 + steps))
    assert math.isfinite(res.final["train_loss"])


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_robbins_monro_lrs_are_a_over_b_plus_t_to_the_power(power):
    """The optimiser's lr at step t is a/(b + t)^power with a = lr · b^power (lr at t = 0)."""
    lr, b = 0.3, 7.0
    a = lr * b ** power
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = build_scheduler(opt, "robbins_monro", 100, b=b, power=power)
    for t in range(50):
        assert opt.param_groups[0]["lr"] == pytest.approx(a / (b + t) ** power, rel=1e-12)
        opt.step()
        sched.step()


def test_robbins_monro_power_defaults_to_one_and_rejects_non_positive():
    assert lr_factor("robbins_monro", 5, 10, b=2.0) == lr_factor("robbins_monro", 5, 10, b=2.0, power=1.0)
    with pytest.raises(ValueError, match="power must be > 0"):
        lr_factor("robbins_monro", 0, 10, b=2.0, power=0.0)
