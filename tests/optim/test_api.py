"""torch.optim behaviour: resume, copy, schedulers, closures, dtypes, and every bad input."""
import copy
import io
import pickle

import pytest
import torch
from torch import nn

from reltrust import LAMB, LARS, Fromage, Nero

from .training import batches, model, train

FACTORIES = {
    "fromage": lambda p: Fromage(p, lr=0.05, momentum=0.9, p_bound=1.5),
    "lars": lambda p: LARS(p, lr=1.0, weight_decay=1e-3, nesterov=True),
    "lamb": lambda p: LAMB(p, lr=0.01, weight_decay=0.01),
    "nero": lambda p: Nero(p, lr=0.02, beta=0.99),
}


@pytest.mark.parametrize("name", FACTORIES)
def test_resume_from_state_dict_is_bit_for_bit(name, tmp_path):
    data = batches(10)
    m1 = model()
    o1 = FACTORIES[name](m1.parameters())
    s1 = torch.optim.lr_scheduler.StepLR(o1, step_size=3, gamma=0.5)
    train(m1, o1, data, s1)

    m2 = model()
    o2 = FACTORIES[name](m2.parameters())
    s2 = torch.optim.lr_scheduler.StepLR(o2, step_size=3, gamma=0.5)
    train(m2, o2, data[:4], s2)
    torch.save({"model": m2.state_dict(), "opt": o2.state_dict(), "sched": s2.state_dict()}, tmp_path / "ck.pt")
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    m3 = model()
    m3.load_state_dict(ck["model"])
    o3 = FACTORIES[name](m3.parameters())
    o3.load_state_dict(ck["opt"])
    s3 = torch.optim.lr_scheduler.StepLR(o3, step_size=3, gamma=0.5)
    s3.load_state_dict(ck["sched"])
    train(m3, o3, data[4:], s3)
    for a, b in zip(m1.parameters(), m3.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", FACTORIES)
def test_deepcopy_and_pickle_continue_identically(name):
    data = batches(6)
    m = model()
    opt = FACTORIES[name](m.parameters())
    train(m, opt, data[:2])
    m_copy, opt_copy = copy.deepcopy((m, opt))
    m_pickled, opt_pickled = pickle.loads(pickle.dumps((m, opt)))
    for mm, oo in [(m, opt), (m_copy, opt_copy), (m_pickled, opt_pickled)]:
        train(mm, oo, data[2:])
    for a, b, c in zip(m.parameters(), m_copy.parameters(), m_pickled.parameters()):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize(
    "make_sched",
    [
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=5),
        # Nero has no momentum to cycle (its beta averages squared gradient norms)
        lambda o: torch.optim.lr_scheduler.OneCycleLR(
            o, max_lr=0.1, total_steps=10, cycle_momentum=bool({"momentum", "betas"} & set(o.defaults))),
        lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda t: 1 / (1 + t)),
        lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o),
        lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=4),
    ],
    ids=["cosine", "onecycle", "lambda", "plateau", "linear"],
)
def test_lr_schedulers_drive_lr(name, make_sched):
    m = model()
    opt = FACTORIES[name](m.parameters())
    sched = make_sched(opt)
    lrs = []
    for x, y in batches(5):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        sched.step(loss.item()) if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau) else sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert all(isinstance(v, float) for v in lrs)
    if not isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
        assert len(set(lrs)) > 1


@pytest.mark.parametrize("name", FACTORIES)
def test_step_with_closure_returns_loss_and_equals_plain_step(name):
    x, y = batches(1)[0]
    m1, m2 = model(), model()
    o1, o2 = FACTORIES[name](m1.parameters()), FACTORIES[name](m2.parameters())

    def closure():
        o1.zero_grad()
        loss = nn.functional.cross_entropy(m1(x), y)
        loss.backward()
        return loss

    loss = o1.step(closure)
    assert torch.is_tensor(loss) and loss.ndim == 0
    train(m2, o2, [(x, y)])
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", FACTORIES)
def test_parameters_without_gradient_are_untouched(name):
    a = nn.Parameter(torch.randn(4, 4))
    b = nn.Parameter(torch.randn(4, 4))
    before = b.detach().clone()
    opt = FACTORIES[name]([a, b])
    a.grad = torch.randn(4, 4)
    opt.step()
    assert torch.equal(b.detach(), before)
    assert len(opt.state[b]) == 0


@pytest.mark.parametrize("name", FACTORIES)
def test_gradient_is_not_modified(name):
    p = nn.Parameter(torch.randn(5, 5))
    g = torch.randn(5, 5)
    p.grad = g.clone()
    opt = FACTORIES[name]([p])
    for _ in range(3):
        opt.step()
    assert torch.equal(p.grad, g)


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_parameters_compute_in_float32_and_round_once(name, dtype):
    """A 16-bit step equals the float32 step on the same values, rounded once to 16 bits."""
    torch.manual_seed(3)
    w = torch.randn(64, 64).to(dtype)
    p32 = nn.Parameter(w.float())
    plow = nn.Parameter(w.clone())
    o32, olow = FACTORIES[name]([p32]), FACTORIES[name]([plow])
    for _ in range(5):
        g = torch.randn(64, 64).to(dtype)
        p32.grad, plow.grad = g.float(), g
        o32.step()
        olow.step()
        assert plow.dtype == dtype
        assert torch.equal(plow.detach(), p32.detach().to(dtype))
        p32.data.copy_(plow.detach().float())  # continue both from the same 16-bit values
    state_tensors = [v for v in olow.state[plow].values() if torch.is_tensor(v) and v.ndim > 0]
    assert state_tensors == [] or all(t.dtype == torch.float32 for t in state_tensors)
    for key, value in olow.state[plow].items():
        other = o32.state[p32][key]
        assert (torch.equal(value, other) if torch.is_tensor(value) else value == other), key


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda p: Fromage(p, lr=-0.1), "lr"),
        (lambda p: Fromage(p, lr=float("nan")), "lr"),
        (lambda p: Fromage(p, p_bound=0.0), "p_bound"),
        (lambda p: Fromage(p, momentum=1.0), "momentum"),
        (lambda p: Fromage(p, momentum=-0.1), "momentum"),
        (lambda p: Fromage(p, lr=torch.tensor([0.1, 0.2])), "lr"),
        (lambda p: Fromage(p, lr=torch.tensor(-0.1)), "lr"),
        (lambda p: LAMB(p, lr=torch.tensor(1)), "lr"),
        (lambda p: LARS(p, lr=-1.0), "lr"),
        (lambda p: LARS(p, lr=1.0, momentum=1.5), "momentum"),
        (lambda p: LARS(p, lr=1.0, weight_decay=-1e-4), "weight_decay"),
        (lambda p: LARS(p, lr=1.0, trust_coefficient=0.0), "trust_coefficient"),
        (lambda p: LARS(p, lr=1.0, eps=-1.0), "eps"),
        (lambda p: LARS(p, lr=1.0, momentum=0.0, nesterov=True), "nesterov"),
        (lambda p: LAMB(p, lr=-1e-3), "lr"),
        (lambda p: LAMB(p, betas=(1.0, 0.999)), r"betas\[0\]"),
        (lambda p: LAMB(p, betas=(0.9, -0.1)), r"betas\[1\]"),
        (lambda p: LAMB(p, betas=0.9), "betas"),
        (lambda p: LAMB(p, eps=-1e-6), "eps"),
        (lambda p: LAMB(p, weight_decay=-0.1), "weight_decay"),
    ],
)
def test_invalid_hyperparameters_name_themselves_and_their_range(make, match):
    with pytest.raises(ValueError, match=match) as info:
        make([nn.Parameter(torch.randn(2))])
    assert "allowed range" in str(info.value) or "expected" in str(info.value) or "requires" in str(info.value) or "Tensor" in str(info.value)


@pytest.mark.parametrize("name", FACTORIES)
def test_sparse_gradient_raises_clear_error(name):
    emb = nn.Embedding(10, 4, sparse=True)
    opt = FACTORIES[name](emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


@pytest.mark.parametrize("name", FACTORIES)
def test_complex32_parameters_refused_with_the_supported_dtypes(name):
    supported = "Nero does not support complex parameters" if name == "nero" else "complex64 and complex128"
    with pytest.raises(ValueError, match=supported):
        FACTORIES[name]([nn.Parameter(torch.randn(3, dtype=torch.complex64).to(torch.complex32))])


def test_lr_set_to_a_bad_tensor_by_user_is_refused_at_step():
    p = nn.Parameter(torch.randn(3))
    opt = Fromage([p])
    opt.param_groups[0]["lr"] = torch.tensor([0.1, 0.1])
    p.grad = torch.randn(3)
    with pytest.raises(ValueError, match="one-element"):
        opt.step()


def test_enabling_momentum_later_creates_the_buffer():
    p = nn.Parameter(torch.randn(3, 3))
    opt = Fromage([p], lr=0.1)
    p.grad = torch.randn(3, 3)
    opt.step()
    assert "momentum_buffer" not in opt.state[p]
    opt.param_groups[0]["momentum"] = 0.9
    opt.step()
    assert "momentum_buffer" in opt.state[p]


def test_state_dict_holds_initial_norms_and_round_trips_through_bytes():
    p = nn.Parameter(torch.randn(4, 4))
    opt = Fromage([p], lr=0.1, p_bound=1.0, momentum=0.5)
    p.grad = torch.randn(4, 4)
    n0 = p.detach().norm()
    opt.step()
    sd = opt.state_dict()
    torch.testing.assert_close(sd["state"][0]["initial_norm"], n0)
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert torch.equal(loaded["state"][0]["momentum_buffer"], sd["state"][0]["momentum_buffer"])


BASE = {Fromage: dict(lr=0.01), LARS: dict(lr=1.0), LAMB: dict(lr=0.01)}
BAD_GROUP_SETTINGS = [
    (Fromage, dict(lr=float("inf"))),
    (Fromage, dict(lr=-0.1)),
    (Fromage, dict(lr="0.1")),
    (Fromage, dict(momentum=1.5)),
    (Fromage, dict(p_bound=-1.0)),  # would flip the sign of W
    (Fromage, dict(p_bound=float("inf"))),
    (Fromage, dict(maximize="no")),
    (Fromage, dict(foreach="yes")),
    (Fromage, dict(fused="yes")),
    (Fromage, dict(fused=True, foreach=True)),
    (Fromage, dict(cache_weight_norm=1)),
    (LARS, dict(momentum=1.5)),
    (LARS, dict(momentum=float("nan"))),
    (LARS, dict(trust_coefficient=-0.02)),  # gradient ascent
    (LARS, dict(weight_decay=-1.0)),
    (LARS, dict(eps=float("nan"))),
    (LARS, dict(eps=-1.0)),
    (LARS, dict(lr=float("inf"))),
    (LARS, dict(momentum=0.0, nesterov=True)),
    (LARS, dict(nesterov="yes")),
    (LARS, dict(foreach="yes")),
    (LAMB, dict(betas=(1.5, 0.9))),
    (LAMB, dict(betas=(0.9, float("nan")))),
    (LAMB, dict(betas=0.9)),
    (LAMB, dict(eps=float("nan"))),
    (LAMB, dict(eps=-1.0)),
    (LAMB, dict(weight_decay=-1.0)),
    (LAMB, dict(lr=float("inf"))),
    (LAMB, dict(foreach="yes")),
]


def _message(fn):
    with pytest.raises(ValueError) as info:
        fn()
    return str(info.value)


@pytest.mark.parametrize(
    "cls,bad", BAD_GROUP_SETTINGS, ids=[f"{c.__name__}-{b}" for c, b in BAD_GROUP_SETTINGS]
)
def test_every_group_is_validated_at_construction_add_param_group_and_step(cls, bad):
    """The constructor's message, word for word, for the same value given in a param group, in a
    group added later, or set in param_groups before a step — and that step changes nothing."""
    p, q = nn.Parameter(torch.randn(4, 4)), nn.Parameter(torch.randn(3))
    expected = _message(lambda: cls([p], **{**BASE[cls], **bad}))
    assert _message(lambda: cls([{"params": [p], **bad}], **BASE[cls])) == expected
    opt = cls([p], **BASE[cls])
    assert _message(lambda: opt.add_param_group({"params": [q], **bad})) == expected
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": [q]})
    opt.param_groups[1].update(bad)  # the second group: the first must not be updated either
    p.grad, q.grad = torch.randn(4, 4), torch.randn(3)
    before = [p.detach().clone(), q.detach().clone()]
    assert _message(opt.step) == expected
    assert torch.equal(p.detach(), before[0]) and torch.equal(q.detach(), before[1])


def test_trust_ratio_group_flag_is_validated():
    p = nn.Parameter(torch.randn(3))
    for cls in (Fromage, LARS, LAMB):
        with pytest.raises(ValueError, match=r"Invalid trust_ratio: 0; expected True or False"):
            cls([{"params": [p], "trust_ratio": 0}], **BASE[cls])


np = pytest.importorskip("numpy")


@pytest.mark.parametrize(
    "cls,scalars",
    [
        (Fromage, dict(lr=np.float32(0.05), momentum=np.float64(0.5), p_bound=np.float32(2.0))),
        (LARS, dict(lr=np.float32(2.0), momentum=np.float32(0.9), weight_decay=np.float32(1e-3),
                    trust_coefficient=np.float64(0.02), eps=np.int64(0))),
        (LAMB, dict(lr=np.float32(0.01), betas=(np.float32(0.9), np.float64(0.99)), eps=np.float32(1e-6),
                    weight_decay=np.float32(0.01))),
    ],
    ids=["fromage", "lars", "lamb"],
)
@pytest.mark.parametrize("path", [dict(), dict(foreach=True), dict(foreach=False)], ids=["default", "foreach", "loop"])
def test_numpy_scalars_are_accepted_and_step_as_python_floats(cls, scalars, path):
    """Any real number type (numpy's included) — at construction, in a group, set later — gives the
    steps of the same values as Python floats."""
    def as_float(v):
        return tuple(map(float, v)) if isinstance(v, tuple) else float(v)

    floats = {k: as_float(v) for k, v in scalars.items()}
    ws = [torch.randn(6, 5), torch.randn(5)]
    gs = [[torch.randn_like(w) for w in ws] for _ in range(3)]
    results = []
    for how in ("float", "ctor", "group", "later"):
        ps = [nn.Parameter(w.clone()) for w in ws]
        if how == "float":
            opt = cls(ps, **floats, **path)
        elif how == "ctor":
            opt = cls(ps, **scalars, **path)
        elif how == "group":
            opt = cls([{"params": ps, **scalars}], **floats, **path)
        else:
            opt = cls(ps, **floats, **path)
            opt.param_groups[0].update(scalars)
        for step in gs:
            for p, g in zip(ps, step):
                p.grad = g.clone()
            opt.step()
        results.append([p.detach() for p in ps])
    for got in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(got, results[0]))


@pytest.mark.parametrize("name", FACTORIES)
def test_a_parameter_listed_twice_is_refused(name):
    """The same Parameter twice made the native, foreach and per-tensor paths disagree (by up to
    0.07): refused in one group (torch only warns), across groups and by add_param_group."""
    import warnings

    p, q = nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused before torch's duplicate warning
        with pytest.raises(ValueError, match=r"parameter 2 of param group 0 \(shape \(4, 3\)\) is already listed "
                                             r"earlier in the same group \(as parameter 0\)"):
            FACTORIES[name]([p, q, p])
    with pytest.raises(ValueError, match=r"parameter 1 of param group 1 \(shape \(4, 3\)\) is already listed in "
                                         r"param group 0 \(as parameter 0\)"):
        FACTORIES[name]([{"params": [p]}, {"params": [q, p]}])
    opt = FACTORIES[name]([p])
    with pytest.raises(ValueError, match="already listed in param group 0"):
        opt.add_param_group({"params": p})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": iter([q])})  # an iterator is read once, and still works
    assert opt.param_groups[1]["params"] == [q]


OTHERS = {
    **FACTORIES,
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01),
}


def trained(factory, steps=2):
    m = model()
    opt = factory(m.parameters())
    train(m, opt, batches(steps))
    return m, opt


@pytest.mark.parametrize("name,source", [(n, s) for n in FACTORIES for s in OTHERS if s != n])
def test_another_optimisers_state_is_refused_and_changes_nothing(name, source):
    _, other = trained(OTHERS[source])
    m, opt = trained(FACTORIES[name])
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=rf"{type(opt).__name__}\.load_state_dict: param group 0 (has keys|missing)"):
        opt.load_state_dict(other.state_dict())
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for k, st in before["state"].items():
        assert all(torch.equal(v, after["state"][k][key]) if torch.is_tensor(v) else v == after["state"][k][key]
                   for key, v in st.items())


def test_the_refusal_names_what_differs():
    _, lars = trained(FACTORIES["lars"])
    _, lamb = trained(FACTORIES["lamb"])
    with pytest.raises(ValueError) as info:
        lamb.load_state_dict(lars.state_dict())
    assert str(info.value) == (
        "LAMB.load_state_dict: param group 0 has keys ['cache_weight_norm', 'momentum', 'nesterov', "
        "'trust_coefficient'] that LAMB does not use; missing ['betas'] (another optimiser's state?)"
    )
    sd = lamb.state_dict()
    del sd["state"][1]["exp_avg"]
    sd["state"][2]["momentum_buffer"] = sd["state"][2]["exp_avg"]
    with pytest.raises(ValueError, match=r"state of parameter 1 missing \['exp_avg'\]"):
        lamb.load_state_dict(sd)
    del sd["state"][1]
    with pytest.raises(ValueError, match=r"state of parameter 2 has keys \['momentum_buffer'\] that LAMB does not use"):
        lamb.load_state_dict(sd)


@pytest.mark.parametrize("name", FACTORIES)
def test_an_older_state_without_switches_and_with_torch_keys_loads_and_resumes(name):
    """Keys torch and its schedulers add, a user's own group keys, and a state saved before the
    switches (foreach, maximize, fused, trust_ratio, cache_weight_norm) existed: all load, and
    training resumes bit for bit."""
    data = batches(6)
    m1 = model()
    o1 = FACTORIES[name]([{"params": list(m1.parameters()), "name": "all"}])
    train(m1, o1, data[:3])
    sd = copy.deepcopy(o1.state_dict())
    for g in sd["param_groups"]:
        for key in ("foreach", "maximize", "fused", "trust_ratio", "cache_weight_norm"):
            g.pop(key, None)
        g.update(differentiable=False, initial_lr=g["lr"])
    m2 = copy.deepcopy(m1)
    o2 = FACTORIES[name]([{"params": list(m2.parameters()), "name": "all"}])
    o2.load_state_dict(sd)
    assert o2.param_groups[0]["trust_ratio"] is True and o2.param_groups[0]["name"] == "all"
    train(m1, o1, data[3:])
    train(m2, o2, data[3:])
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["fromage", "lars"])
def test_the_functional_updates_keep_the_weight_norm_cache_private(name):
    """`weight_norm`/`return_weight_norm` were public arguments of fromage_update and lars_update,
    though only the optimisers' weight-norm cache can vouch for them. They are private now; the old
    names still work, with a DeprecationWarning and the same numbers; anything else is a TypeError."""
    import inspect
    import warnings

    from reltrust.optim import _native, fromage_update, lars_update

    fn = {"fromage": fromage_update, "lars": lars_update}[name]
    public = [k for k in inspect.signature(fn).parameters if not k.startswith("_")]
    assert "weight_norm" not in public and "return_weight_norm" not in public
    gen = torch.Generator().manual_seed(0)
    w0 = [torch.randn(30, 20, generator=gen), torch.randn(7, generator=gen)]
    g = [torch.randn(30, 20, generator=gen), torch.randn(7, generator=gen)]
    args = {"fromage": lambda ps: (ps, g, None, None), "lars": lambda ps: (ps, g, None)}[name]
    kw = dict(lr=0.1, momentum=0.0)

    def run(**extra):
        ps = [w.clone() for w in w0]
        return ps, fn(*args(ps), **kw, **extra)

    private_ps, private_norms = run(_return_weight_norm=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(_return_weight_norm=True)  # the private keywords warn nothing
    with pytest.warns(DeprecationWarning, match="return_weight_norm= is the optimisers' internal"):
        old_ps, old_norms = run(return_weight_norm=True)
    assert all(torch.equal(a, b) for a, b in zip(private_ps, old_ps))
    if _native.available():  # the native path returns the new weights' norms, taken in the update pass
        assert torch.equal(private_norms, old_norms)
        expected = torch.stack([torch.linalg.vector_norm(p.double()) for p in private_ps])
        assert torch.allclose(private_norms.double(), expected, rtol=1e-6)
    with pytest.raises(TypeError, match="unexpected keyword argument 'weight_norms'"):
        run(weight_norms=None)
