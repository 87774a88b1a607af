"""MuonAdamW ("muon"): routing as documented, the steps of torch's own Muon and AdamW, one optimiser's
behaviour (schedulers, state_dict resume bit for bit, deepcopy), bad inputs."""
import copy

import pytest
import torch
from torch import nn

from reltrust.optim import MuonAdamW, create, get


class LM(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(11, 8)
        self.fc1 = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 16, bias=False)
        self.head = nn.Linear(16, 11)

    def forward(self, x):
        return self.head(torch.tanh(self.fc2(self.norm(torch.tanh(self.fc1(self.embed(x)))))))


def ids(params):
    return {id(p) for p in params}


def test_a_model_routes_hidden_linear_weights_to_muon_and_the_rest_to_adamw():
    m = LM()
    opt = create("muon", m)
    assert type(opt) is MuonAdamW and get("muon") is MuonAdamW
    muon = [g for g in opt.param_groups if g["use_muon"]]
    adamw = [g for g in opt.param_groups if not g["use_muon"]]
    assert len(muon) == len(adamw) == 1
    assert ids(muon[0]["params"]) == ids([m.fc1.weight, m.fc2.weight])
    assert ids(adamw[0]["params"]) == ids([m.embed.weight, m.fc1.bias, m.norm.weight, m.norm.bias,
                                           m.head.weight, m.head.bias])
    assert muon[0]["lr"] == 0.02 and adamw[0]["lr"] == 1e-3 and "betas" in adamw[0] and "ns_steps" in muon[0]


def test_a_tied_head_and_a_list_and_groups_route_as_documented():
    m = LM()
    m.fc2 = nn.Linear(16, 11)
    m.fc2.weight = m.head.weight  # a hidden layer's weight tied to the head: AdamW
    muon = [g for g in MuonAdamW(m).param_groups if g["use_muon"]][0]
    assert ids(muon["params"]) == ids([m.fc1.weight])
    w, b, conv = torch.randn(4, 3, requires_grad=True), torch.randn(4, requires_grad=True), torch.randn(2, 3, 3, 3, requires_grad=True)
    groups = MuonAdamW([w, b, conv]).param_groups
    assert [(g["use_muon"], ids(g["params"])) for g in groups] == [(True, ids([w])), (False, ids([b, conv]))]
    groups = MuonAdamW([{"params": [w], "use_muon": False}, {"params": [b, conv], "lr": 0.5}]).param_groups
    assert [(g["use_muon"], ids(g["params"])) for g in groups] == [(False, ids([w])), (False, ids([b, conv]))]
    assert groups[1]["lr"] == 0.5
    with pytest.raises(ValueError, match="use_muon=True must hold 2-D tensors only"):
        MuonAdamW([{"params": [b], "use_muon": True}])


def batches(n):
    g = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 11, (4, 5), generator=g), torch.randint(0, 11, (4, 5), generator=g)) for _ in range(n)]


def train(m, opt, data, sched=None):
    for x, y in data:
        opt.zero_grad()
        nn.functional.cross_entropy(m(x).flatten(0, 1), y.flatten()).backward()
        opt.step()
        if sched is not None:
            sched.step()


def test_steps_are_torchs_muon_and_adamw():
    data = batches(4)
    m1, m2 = LM(), LM()
    opt = MuonAdamW(m1, lr=0.05, weight_decay=0.01, adamw_lr=3e-3, adamw_weight_decay=0.1)
    hidden = [m2.fc1.weight, m2.fc2.weight]
    rest = [p for p in m2.parameters() if id(p) not in ids(hidden)]
    muon = torch.optim.Muon(hidden, lr=0.05, weight_decay=0.01, momentum=0.95)
    adamw = torch.optim.AdamW(rest, lr=3e-3, weight_decay=0.1)
    for x, y in data:
        for mm in (m1, m2):
            mm.zero_grad()
            nn.functional.cross_entropy(mm(x).flatten(0, 1), y.flatten()).backward()
        opt.step()
        muon.step()
        adamw.step()
    moved = [not torch.equal(a, b) for a, b in zip(m1.parameters(), LM().parameters())]
    assert all(moved)
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_resume_from_state_dict_with_a_scheduler_is_bit_for_bit(tmp_path):
    data = batches(8)
    make = lambda m: MuonAdamW(m, lr=0.05, adamw_lr=3e-3)  # noqa: E731
    m1 = LM()
    o1 = make(m1)
    s1 = torch.optim.lr_scheduler.CosineAnnealingLR(o1, T_max=8)
    train(m1, o1, data, s1)
    m2 = LM()
    o2 = make(m2)
    s2 = torch.optim.lr_scheduler.CosineAnnealingLR(o2, T_max=8)
    train(m2, o2, data[:3], s2)
    assert o2.param_groups[0]["lr"] != 0.05 and o2.param_groups[1]["lr"] / o2.param_groups[0]["lr"] == pytest.approx(3e-3 / 0.05)
    torch.save({"model": m2.state_dict(), "opt": o2.state_dict(), "sched": s2.state_dict()}, tmp_path / "ck.pt")
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    m3 = LM()
    m3.load_state_dict(ck["model"])
    o3 = make(m3)
    o3.load_state_dict(ck["opt"])
    s3 = torch.optim.lr_scheduler.CosineAnnealingLR(o3, T_max=8)
    s3.load_state_dict(ck["sched"])
    train(m3, o3, data[3:], s3)
    for a, b in zip(m1.parameters(), m3.parameters()):
        assert torch.equal(a, b)
    m4, o4 = copy.deepcopy((m2, o2))  # a copy continues identically, its inner optimisers relinked
    train(m4, o4, data[3:])
    train(m2, o2, data[3:])
    for a, b in zip(m2.parameters(), m4.parameters()):
        assert torch.equal(a, b)


def test_bad_inputs_one_line_errors():
    m = LM()
    for kw, message in [(dict(lr=-1.0), "Invalid lr: -1.0; allowed range [0.0, inf)"),
                        (dict(adamw_lr=float("nan")), "Invalid adamw_lr: nan; allowed range [0.0, inf)"),
                        (dict(momentum=1.0), "Invalid momentum: 1.0; allowed range [0.0, 1.0)")]:
        with pytest.raises(ValueError) as info:
            MuonAdamW(m, **kw)
        assert str(info.value) == message
    opt = MuonAdamW(m)
    other = MuonAdamW([p for p in m.parameters() if p.ndim != 2])
    with pytest.raises(ValueError, match="not routed as these"):
        opt.load_state_dict(other.state_dict())


def test_the_workbench_with_weight_decay_still_routes_by_module():
    """build_optimizer used to hand muon param_groups(model, wd) when weight_decay > 0: unmarked groups,
    so the embedding and the head (2-D) went to Muon."""
    from reltrust.workbench.spec import RunSpec
    from reltrust.workbench.train import build_optimizer

    m = LM()
    opt = build_optimizer(RunSpec(study="t", dataset="digits", model="mlp", optimizer="muon", lr=0.02, weight_decay=0.1), m)
    (muon,) = [g for g in opt.param_groups if g["use_muon"]]
    assert ids(muon["params"]) == ids([m.fc1.weight, m.fc2.weight]) and muon["weight_decay"] == 0.1
