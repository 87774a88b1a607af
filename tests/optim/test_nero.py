"""Nero: the float64 reference (references.nero, written from algorithms.md), the paper's properties
(balanced unit-norm neurons, per-neuron relative steps η·σ), both code paths, DTensor rows, bad inputs."""
import math

import pytest
import torch
from torch import nn

from reltrust.optim import Nero, create, get

from . import references as ref
from .training import batches, model, train

SHAPES = [(7, 5), (5,), (3, 2, 4), (1,), (4, 1), ()]


def problem(n_steps=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(s, generator=g, dtype=torch.float64) for s in SHAPES]
    ws[1].zero_()  # a zero bias: σ = 0.01
    ws[0][2].fill_(0.5)  # a constant row: projected to zero, stays zero until a gradient moves it
    grads = [[torch.randn(s, generator=g, dtype=torch.float64) * (1 + k % 3) for s in SHAPES] for k in range(n_steps)]
    grads[2][0][1].zero_()  # a neuron with a zero gradient at the first step: v = 0, no step
    grads[3][2].zero_()  # a whole tensor's zero gradient at one step
    return ws, grads


def run(kw, ws, grads, dtype=torch.float64, foreach=True):
    params = [nn.Parameter(w.to(dtype).clone()) for w in ws]
    opt = Nero(params, foreach=foreach, **kw)
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.to(dtype).clone()
        opt.step()
    return params, opt


def reference(kw, ws, grads):
    state, cur = {}, [w.clone() for w in ws]
    for gs in grads:
        cur = ref.nero(cur, gs, state, **kw)
    return cur


CASES = {
    "default": dict(lr=0.01),
    "large-lr-beta": dict(lr=0.2, beta=0.9),
    "no-constraints": dict(lr=0.05, constraints=False),
    "maximize": dict(lr=0.05, maximize=True),
}


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("case", CASES)
def test_matches_float64_reference(case, foreach):
    kw = CASES[case]
    ws, grads = problem()
    expected = reference(kw, ws, grads)
    got, _ = run(kw, ws, grads, torch.float64, foreach)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g.detach(), e, rtol=1e-12, atol=1e-12)
    got32, _ = run(kw, ws, grads, torch.float32, foreach)
    for e, g in zip(expected, got32):
        torch.testing.assert_close(g.detach().double(), e, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("case", CASES)
def test_foreach_equals_per_tensor_exactly(case):
    ws, grads = problem()
    a, oa = run(CASES[case], ws, grads, torch.float32, True)
    b, ob = run(CASES[case], ws, grads, torch.float32, False)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    for x, y in zip(a, b):
        for key, value in oa.state[x].items():
            other = ob.state[y][key]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other


def test_neurons_stay_balanced_on_the_unit_sphere_and_turn_by_eta():
    """Every row of a ≥2-D weight has mean 0 and norm 1 after each step; at the first step each
    neuron's change before the projection is exactly η·σ (v̂ = ‖g‖²), and the angle it turns by is
    ≈ η for a small η (a step orthogonal to w gives tan θ = η)."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(6, 10, dtype=torch.float64))
    opt = Nero([w], lr=0.01)
    w.grad = torch.randn(6, 10, dtype=torch.float64)
    start = w.detach() - w.detach().mean(1, keepdim=True)
    start = start / start.norm(dim=1, keepdim=True)
    opt.step()
    assert opt.state[w]["scale"].item() == pytest.approx(1.0, abs=1e-15)
    rows = w.detach()
    torch.testing.assert_close(rows.mean(1), torch.zeros(6, dtype=torch.float64), atol=1e-15, rtol=0)
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(6, dtype=torch.float64), atol=1e-14, rtol=0)
    angles = torch.arccos((rows * start).sum(1).clamp(-1, 1))
    # the centred gradient's component orthogonal to w sets the angle: between 0 and atan(η)
    assert bool((angles <= math.atan(0.01) + 1e-12).all()) and bool((angles > 0.001).all())
    for _ in range(20):
        w.grad = torch.randn(6, 10, dtype=torch.float64) * 100.0  # any gradient scale: the same relative steps
        opt.step()
        torch.testing.assert_close(w.detach().norm(dim=1), torch.ones(6, dtype=torch.float64), atol=1e-14, rtol=0)
        torch.testing.assert_close(w.detach().mean(1), torch.zeros(6, dtype=torch.float64), atol=1e-15, rtol=0)


def test_one_dimensional_tensors_move_by_eta_sigma_and_are_not_projected():
    b = nn.Parameter(torch.tensor([0.5, -2.0, 1.5], dtype=torch.float64))
    zero = nn.Parameter(torch.zeros(4, dtype=torch.float64))
    opt = Nero([b, zero], lr=0.1)
    b.grad = torch.tensor([3.0, -0.01, 7.0], dtype=torch.float64)
    zero.grad = torch.tensor([1.0, -1.0, 0.0, 2.0], dtype=torch.float64)
    opt.step()
    sigma = (0.5 + 2.0 + 1.5) / 3
    assert opt.state[b]["scale"].item() == pytest.approx(sigma, rel=1e-15)
    assert opt.state[zero]["scale"].item() == pytest.approx(0.01, rel=1e-15)
    # step 1: v̂_i = g_i², so each entry moves by η·σ·sign(g_i)
    torch.testing.assert_close(b.detach(), torch.tensor([0.5 - 0.1 * sigma, -2.0 + 0.1 * sigma, 1.5 - 0.1 * sigma],
                                                        dtype=torch.float64), rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(zero.detach(), torch.tensor([-0.001, 0.001, 0.0, -0.001], dtype=torch.float64),
                               rtol=1e-15, atol=1e-15)


def test_a_nan_gradient_makes_only_its_neuron_nan():
    w = nn.Parameter(torch.randn(3, 4))
    opt = Nero([w], lr=0.01)
    w.grad = torch.randn(3, 4)
    w.grad[1, 2] = float("nan")
    opt.step()
    assert bool(w.detach()[1].isnan().all())
    assert bool(w.detach()[[0, 2]].isfinite().all())


def test_channels_last_and_16_bit_parameters_are_updated_in_place():
    torch.manual_seed(1)
    w = torch.randn(4, 3, 2, 2)
    a = nn.Parameter(w.clone())
    cl = nn.Parameter(w.clone().to(memory_format=torch.channels_last))
    half = nn.Parameter(w.clone().bfloat16())
    opts = [Nero([p], lr=0.05) for p in (a, cl, half)]
    for _ in range(3):
        g = torch.randn(4, 3, 2, 2)
        for p, o in zip((a, cl, half), opts):
            p.grad = g.clone().to(p.dtype)
            o.step()
        assert cl.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(a.detach(), cl.detach())
    assert half.dtype == torch.bfloat16 and opts[2].state[half]["exp_avg_sq"].dtype == torch.float32
    torch.testing.assert_close(half.detach().float(), a.detach(), rtol=0.02, atol=0.02)


def test_registered_and_buildable_by_name():
    assert get("nero") is Nero and get("NERO") is Nero
    opt = create("nero", nn.Linear(3, 2), lr=0.02)
    assert type(opt) is Nero and opt.param_groups[0]["lr"] == 0.02


@pytest.mark.parametrize("foreach", [True, False])
def test_resume_from_state_dict_is_bit_for_bit(foreach, tmp_path):
    data = batches(10)
    make = lambda m: Nero(m.parameters(), lr=0.05, beta=0.99, foreach=foreach)  # noqa: E731
    m1 = model()
    o1 = make(m1)
    s1 = torch.optim.lr_scheduler.StepLR(o1, step_size=3, gamma=0.5)
    train(m1, o1, data, s1)
    m2 = model()
    o2 = make(m2)
    s2 = torch.optim.lr_scheduler.StepLR(o2, step_size=3, gamma=0.5)
    train(m2, o2, data[:4], s2)
    torch.save({"model": m2.state_dict(), "opt": o2.state_dict(), "sched": s2.state_dict()}, tmp_path / "ck.pt")
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    assert ck["opt"]["state"][0]["step"] == 4
    m3 = model()
    m3.load_state_dict(ck["model"])
    o3 = make(m3)
    o3.load_state_dict(ck["opt"])
    s3 = torch.optim.lr_scheduler.StepLR(o3, step_size=3, gamma=0.5)
    s3.load_state_dict(ck["sched"])
    train(m3, o3, data[4:], s3)
    for a, b in zip(m1.parameters(), m3.parameters()):
        assert torch.equal(a, b)


def test_another_optimisers_state_is_refused():
    m = model()
    adam = torch.optim.Adam(m.parameters())
    train(m, adam, batches(1))
    opt = Nero(m.parameters())
    with pytest.raises(ValueError, match=r"Nero\.load_state_dict: param group 0 has keys"):
        opt.load_state_dict(adam.state_dict())


def test_no_tensor_is_read_back_to_the_host_in_a_step(monkeypatch):
    """`.item()`, `float()`, `bool()` and `.tolist()` of a tensor inside step() would synchronise
    on an accelerator; none happens, at a first step (σ recorded on the device) or a later one."""
    ps = [nn.Parameter(torch.randn(5, 4)), nn.Parameter(torch.randn(4))]
    opt = Nero(ps, lr=0.01)
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    ps.append(nn.Parameter(torch.randn(3, 3)))
    opt.add_param_group({"params": [ps[2]]})

    def refuse(*args, **kwargs):
        raise AssertionError("a tensor was read on the host inside step()")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(lr=-0.1), "Invalid lr: -0.1; allowed range [0.0, inf)"),
        (dict(lr=float("nan")), "Invalid lr: nan; allowed range [0.0, inf)"),
        (dict(beta=1.0), "Invalid beta: 1.0; allowed range [0.0, 1.0)"),
        (dict(beta=-0.5), "Invalid beta: -0.5; allowed range [0.0, 1.0)"),
        (dict(constraints="yes"), "Invalid constraints: 'yes'; expected True or False"),
        (dict(fused=True), "Invalid fused: True; Nero has no native kernels, expected None or False"),
        (dict(foreach=1), "Invalid foreach: 1; expected None, True or False"),
        (dict(maximize=None), "Invalid maximize: None; expected True or False"),
    ],
)
def test_invalid_hyperparameters_one_line_error_at_construction_group_and_step(kw, message):
    p, q = nn.Parameter(torch.randn(3, 2)), nn.Parameter(torch.randn(2))
    with pytest.raises(ValueError) as info:
        Nero([p], **kw)
    assert str(info.value) == message
    opt = Nero([p])
    with pytest.raises(ValueError) as info:
        opt.add_param_group({"params": [q], **kw})
    assert str(info.value) == message
    opt.param_groups[0].update(kw)
    p.grad = torch.randn(3, 2)
    before = p.detach().clone()
    with pytest.raises(ValueError) as info:
        opt.step()
    assert str(info.value) == message and torch.equal(p.detach(), before)


def test_complex_and_sparse_refused():
    with pytest.raises(ValueError, match="Nero does not support complex parameters"):
        Nero([nn.Parameter(torch.randn(3, 2, dtype=torch.complex64))])
    emb = nn.Embedding(10, 4, sparse=True)
    opt = Nero(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def test_dtensor_rows_and_columns_sharded_equal_plain_tensors(one_rank_mesh):
    """On one rank, Shard(0) (FSDP2's rows), Shard(1) (split rows, their sums all-reduced) and
    Replicate give the plain tensors' bits, and v is a DTensor with one entry per logical row. The
    2-rank test (tests/distributed/test_dist_nero.py) checks the sums across real shards."""
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

    ws, grads = problem(4)
    keep = [0, 1, 2, 4]  # ≥ 1 dims: shardable
    ws, grads = [ws[i].float() for i in keep], [[gs[i].float() for i in keep] for gs in grads]
    layouts = {"shard0": lambda w: [Shard(0)], "shard1": lambda w: [Shard(1 if w.ndim >= 2 else 0)],
               "replicate": lambda w: [Replicate()]}
    plain = [nn.Parameter(w.clone()) for w in ws]
    runs = {name: [nn.Parameter(distribute_tensor(w.clone(), one_rank_mesh, lay(w))) for w in ws]
            for name, lay in layouts.items()}
    opts = [Nero(plain, lr=0.1)] + [Nero(ps, lr=0.1) for ps in runs.values()]
    for gs in grads:
        for p, g in zip(plain, gs):
            p.grad = g.clone()
        for ps in runs.values():
            for p, g in zip(ps, gs):
                p.grad = distribute_tensor(g.clone(), one_rank_mesh, p.placements)
        for o in opts:
            o.step()
    for name, ps in runs.items():
        for a, b in zip(plain, ps):
            assert torch.equal(a.detach(), b.full_tensor()), name
        v = opts[1].state[runs["shard0"][0]]["exp_avg_sq"] if name == "shard0" else None
        if v is not None:
            assert isinstance(v, DTensor) and v.shape == (ws[0].shape[0],) and v.placements == (Shard(0),)
