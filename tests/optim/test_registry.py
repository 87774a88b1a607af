import pytest
import torch
from torch import nn

from reltrust import LAMB, LARS, Fromage
from reltrust.optim import available, create, param_groups, register


def test_every_name_builds_its_class():
    m = nn.Linear(3, 2)
    expected = {
        "fromage": Fromage, "lars": LARS, "lamb": LAMB, "sgd": torch.optim.SGD, "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam, "nadam": torch.optim.NAdam,
    }
    assert set(expected) <= set(available())
    for name, cls in expected.items():
        opt = create(name, m, lr=0.1)
        assert type(opt) is cls
        assert opt.param_groups[0]["lr"] == 0.1
    assert type(create("FroMage", m)) is Fromage
    assert type(create(LAMB, m.parameters())) is LAMB


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError) as info:
        create("adamm", nn.Linear(2, 2))
    for name in ("fromage", "lars", "lamb", "adam", "sgd"):
        assert name in str(info.value)


def test_create_skips_frozen_parameters():
    m = nn.Linear(3, 2)
    m.bias.requires_grad_(False)
    opt = create("fromage", m)
    assert len(opt.param_groups[0]["params"]) == 1


def test_param_groups_exclude_biases_and_norm_layers():
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.LazyLinear(4) if False else nn.Linear(8, 4), nn.LayerNorm(4))
    groups = param_groups(m, weight_decay=0.05)
    decay, excluded = groups
    assert decay["weight_decay"] == 0.05 and "trust_ratio" not in decay
    assert excluded["weight_decay"] == 0.0 and excluded["trust_ratio"] is False
    assert {id(p) for p in decay["params"]} == {id(m[0].weight), id(m[3].weight)}
    assert {id(p) for p in excluded["params"]} == {
        id(m[0].bias), id(m[1].weight), id(m[1].bias), id(m[3].bias), id(m[4].weight), id(m[4].bias)
    }
    # custom exclusion by name, and every optimiser accepts the groups
    groups = param_groups(m, weight_decay=0.05, no_decay=["3.weight"])
    assert len(groups[0]["params"]) == 1
    for name in ("fromage", "lars", "lamb", "adamw", "sgd"):
        create(name, groups, lr=0.1)


def test_param_groups_list_shared_parameters_once():
    lin = nn.Linear(4, 4)
    m = nn.Sequential(lin, nn.ReLU(), lin)
    groups = param_groups(m, 0.1)
    assert sum(len(g["params"]) for g in groups) == 2


def test_param_groups_rejects_negative_decay():
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups(nn.Linear(2, 2), -1.0)


def test_register_a_custom_optimizer():
    class MySGD(torch.optim.SGD):
        pass

    register("my-sgd", MySGD)
    assert type(create("my-sgd", nn.Linear(2, 2), lr=0.1)) is MySGD
    with pytest.raises(TypeError):
        register("bad", object)
