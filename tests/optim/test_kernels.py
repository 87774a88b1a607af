"""The native CPU kernels (reltrust.optim._native) against the per-tensor torch path.

The kernels replay the torch path's float32 arithmetic op by op (fused multiply-adds where torch's
vectorised kernels use them), so without norms in play Fromage and LARS agree bit for bit; the norms
are accumulated more accurately (double per span), so full steps agree to float32 rounding. LAMB
also differs where torch's sqrt (MKL's, within 1 ulp) is not correctly rounded. No timing here.
"""
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from reltrust import LAMB, LARS, Fromage
from reltrust.optim import _native

pytestmark = pytest.mark.skipif(not _native.available(), reason=f"native kernels: {_native.describe()}")

# sizes chosen to cover: a span boundary (32768), a block tail (not a multiple of 1024), a tensor of
# one element, a zero-initialised bias, and a tensor of several spans
SHAPES = [(300, 200), (200,), (5000, 37), (1,), (70001,), (3, 4, 5)]

CASES = [
    (Fromage, dict(lr=0.01)),
    (Fromage, dict(lr=0.1, momentum=0.9)),
    (Fromage, dict(lr=0.1, momentum=0.3)),  # lerp weight ≥ 0.5: torch's other lerp formula
    (Fromage, dict(lr=0.1, p_bound=1.0)),
    (Fromage, dict(lr=0.1, p_bound=1.0, momentum=0.5)),
    (Fromage, dict(lr=0.05, maximize=True)),
    (LARS, dict(lr=2.0)),
    (LARS, dict(lr=2.0, weight_decay=0.01, eps=1e-8)),
    (LARS, dict(lr=2.0, nesterov=True)),
    (LARS, dict(lr=2.0, nesterov=True, weight_decay=0.01)),
    (LARS, dict(lr=0.5, momentum=0.0)),
    (LARS, dict(lr=0.5, momentum=0.0, weight_decay=0.01, trust_coefficient=0.02)),
    (LARS, dict(lr=1.0, maximize=True, weight_decay=1e-3)),
    (LAMB, dict(lr=0.01)),
    (LAMB, dict(lr=0.01, weight_decay=0.1, betas=(0.3, 0.99))),
    (LAMB, dict(lr=0.01, maximize=True, eps=1e-3)),
]
IDS = [f"{c.__name__}-" + "-".join(f"{k}={v}" for k, v in kw.items()) for c, kw in CASES]


def make(dtype=torch.float32, seed=0, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    ws = [torch.randn(s, generator=g).to(dtype) for s in shapes]
    ws[1].zero_()
    return ws


def grads(shapes, steps, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = [[torch.randn(s, generator=g).to(dtype) for s in shapes] for _ in range(steps)]
    out[min(2, steps - 1)][3].zero_()  # a zero gradient at one step
    return out


def run(cls, kw, *, fused, foreach=None, trust=True, dtype=torch.float32, steps=5, shapes=SHAPES):
    params = [nn.Parameter(w) for w in make(dtype, shapes=shapes)]
    opt = cls([{"params": params, "trust_ratio": trust}], foreach=foreach, fused=fused, **kw)
    for gs in grads(shapes, steps, dtype):
        for p, g in zip(params, gs):
            p.grad = g
        opt.step()
    return [p.detach().clone() for p in params], opt


def assert_float32_close(got, expected):
    """Within a few float32 roundings of the tensor's scale (norms differ in their last bits)."""
    for a, b in zip(got, expected):
        scale = float(b.abs().max()) if b.numel() else 1.0
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("cls,kw", CASES, ids=IDS)
def test_native_equals_per_tensor_path(cls, kw):
    expected, _ = run(cls, kw, fused=False, foreach=False)
    got, _ = run(cls, kw, fused=True)
    assert_float32_close(got, expected)


@pytest.mark.parametrize("cls,kw", CASES, ids=IDS)
def test_native_state_equals_per_tensor_state(cls, kw):
    _, o_ref = run(cls, kw, fused=False, foreach=False)
    _, o_nat = run(cls, kw, fused=True)
    for (p_ref, s_ref), (p_nat, s_nat) in zip(o_ref.state.items(), o_nat.state.items()):
        assert s_ref.keys() == s_nat.keys()
        for key in s_ref:
            if key == "initial_norm":
                torch.testing.assert_close(s_nat[key], s_ref[key], rtol=1e-6, atol=0)
            else:
                assert_float32_close([s_nat[key]], [s_ref[key]])


@pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
    reason="bit-exactness assumes torch's FMA-vectorised CPU kernels",
)
@pytest.mark.parametrize(
    "cls,kw",
    [c for c in CASES if c[0] is not LAMB and "p_bound" not in c[1]],
    ids=[i for i, c in zip(IDS, CASES) if c[0] is not LAMB and "p_bound" not in c[1]],
)
def test_without_norms_the_arithmetic_is_bit_identical(cls, kw):
    """trust_ratio=False removes the norms (p_bound takes them; LAMB has torch's MKL sqrt): what is
    left must round exactly as torch rounds."""
    expected, _ = run(cls, kw, fused=False, foreach=False, trust=False)
    got, _ = run(cls, kw, fused=True, trust=False)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "cls,kw", [CASES[0], CASES[3], CASES[9], CASES[14]], ids=["fromage", "p_bound", "lars", "lamb"]
)
def test_trust_ratio_false_matches_per_tensor_path(cls, kw):
    expected, _ = run(cls, kw, fused=False, foreach=False, trust=False)
    got, _ = run(cls, kw, fused=True, trust=False)
    assert_float32_close(got, expected)


@pytest.mark.parametrize("cls,kw", [CASES[1], CASES[9], CASES[14]], ids=["fromage", "lars", "lamb"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_parameters_on_the_native_path(cls, kw, dtype):
    """16-bit parameters run on float32 work copies: equal to the float32 native step rounded once,
    and within one 16-bit rounding of the per-tensor path."""
    shapes = SHAPES[:4]
    params = [nn.Parameter(w) for w in make(dtype, shapes=shapes)]
    p32 = [nn.Parameter(p.detach().float()) for p in params]
    o16 = cls(params, fused=True, **kw)
    o32 = cls(p32, fused=True, **kw)
    ref = [nn.Parameter(p.detach().clone()) for p in params]
    oref = cls(ref, foreach=False, **kw)
    for gs in grads(shapes, 3, dtype):
        for p, q, r, g in zip(params, p32, ref, gs):
            p.grad, q.grad, r.grad = g, g.float(), g
        o16.step(), o32.step(), oref.step()
        for p, q in zip(params, p32):
            assert p.dtype == dtype
            assert torch.equal(p.detach(), q.detach().to(dtype))
            q.data.copy_(p.detach().float())
    for p, r in zip(params, ref):
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(p.detach().float(), r.detach().float(), rtol=2 * eps, atol=2 * eps)


def test_norms_are_accurate_and_independent_of_the_thread_count():
    ts = [torch.randn(s) for s in [(100_003,), (7,), (0,), (65536,)]]
    exact = torch.stack([t.double().norm() for t in ts])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _native.norms(ts)[0]
        torch.set_num_threads(max(2, threads))
        many = _native.norms(ts)[0]
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)
    torch.testing.assert_close(one.double(), exact, rtol=2e-7, atol=0)


def _thp_eligible(address: int) -> bool | None:
    """The THPeligible flag of the mapping holding `address` (/proc/self/smaps), None if unknown."""
    try:
        with open("/proc/self/smaps") as f:
            inside = False
            for line in f:
                head = line.split()[0]
                if "-" in head and not head.endswith(":"):
                    lo, hi = (int(x, 16) for x in head.split("-"))
                    inside = lo <= address < hi
                elif inside and head == "THPeligible:":
                    return line.split()[1] == "1"
    except OSError:
        pass
    return None


def test_large_state_is_advised_into_huge_pages(monkeypatch):
    """State of 4 MiB and more is madvised into transparent huge pages before it is zeroed: the
    values are those without the advice, bit for bit, and the kernel marks the mapping eligible."""
    shape = (1024, 2048)  # 8 MiB

    def two_steps():
        gen = torch.Generator().manual_seed(0)
        p = nn.Parameter(torch.randn(shape, generator=gen))
        opt = LAMB([p], lr=0.01, weight_decay=0.1)
        for _ in range(2):
            p.grad = torch.randn(shape, generator=gen)
            opt.step()
        return p, opt.state[p]

    p, state = two_steps()
    monkeypatch.setenv("RELTRUST_HUGE_PAGES", "0")
    assert not _native.advise_huge_pages(torch.empty(shape))
    p_off, state_off = two_steps()
    monkeypatch.delenv("RELTRUST_HUGE_PAGES")
    assert torch.equal(p, p_off)
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(state[key], state_off[key])
    assert not _native.advise_huge_pages(torch.empty(1000))  # below HUGE_PAGE_MIN_BYTES
    assert not _native.advise_huge_pages(torch.empty(shape, device="meta"))
    if _native.advise_huge_pages(torch.empty(shape)):
        middle = state["exp_avg"].data_ptr() + state["exp_avg"].nbytes // 2
        assert _thp_eligible(middle) in (True, None)
    else:
        pytest.skip("transparent huge pages are off on this machine")


def test_in_place_updates_bump_version_counters():
    """Autograd's check on tensors saved for backward must see the native in-place writes."""
    p = nn.Parameter(torch.randn(8, 8))
    opt = LAMB([p], fused=True)
    y = (p * p).sum()  # saves p for backward
    p.grad = torch.randn(8, 8)
    v = (p._version, opt.state.get(p, {}).get("exp_avg"))
    opt.step()
    assert p._version > v[0]
    assert opt.state[p]["exp_avg"]._version > 0
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_fused_none_falls_back_where_the_kernels_do_not_apply():
    """float64 and non-contiguous tensors run on the torch path; fused=True refuses non-contiguous
    ones and takes float64 ones (on the torch path), as torch's fused CPU optimisers take float64."""
    for dtype, transpose in [(torch.float64, False), (torch.float32, True)]:
        w = torch.randn(6, 5, dtype=dtype)
        a = nn.Parameter(w.t() if transpose else w.clone())
        b = nn.Parameter(a.detach().clone())
        g = torch.randn_like(a)
        a.grad, b.grad = g, g.clone()
        Fromage([a], lr=0.1).step()
        Fromage([b], lr=0.1, foreach=False).step()
        assert torch.equal(a.detach(), b.detach())
        c = nn.Parameter(a.detach().clone())
        c.grad = g.clone()
        if dtype is torch.float64:
            Fromage([c], lr=0.1, fused=True).step()
            d = nn.Parameter(a.detach().clone())
            d.grad = g.clone()
            Fromage([d], lr=0.1, foreach=False).step()
            assert torch.equal(c.detach(), d.detach())
        else:
            with pytest.raises(RuntimeError, match="fused=True needs"):
                Fromage([c], lr=0.1, fused=True).step()


@pytest.mark.parametrize("cls", [Fromage, LARS, LAMB])
def test_fused_true_takes_float64_beside_float32(cls):
    """A model with float32 and float64 parameters under fused=True: the float32 ones on the kernels
    (equal to fused=True alone), the float64 ones on the torch path (equal to foreach=False)."""
    torch.manual_seed(0)
    w32, w64 = torch.randn(8, 7), torch.randn(5, 3, dtype=torch.float64)
    g32, g64 = torch.randn(8, 7), torch.randn(5, 3, dtype=torch.float64)

    def run(pairs, **kw):
        ps = [nn.Parameter(w.clone()) for w, _ in pairs]
        opt = cls(ps, lr=0.1, **kw)
        for _ in range(3):
            for p, (_, g) in zip(ps, pairs):
                p.grad = g.clone()
            opt.step()
        return [p.detach() for p in ps]

    mixed = run([(w32, g32), (w64, g64)], fused=True)
    assert torch.equal(mixed[0], run([(w32, g32)], fused=True)[0])
    assert torch.equal(mixed[1], run([(w64, g64)], foreach=False)[0])


def test_fused_and_foreach_together_are_refused():
    with pytest.raises(ValueError, match="fused"):
        LARS([nn.Parameter(torch.randn(2))], lr=1.0, fused=True, foreach=True)
    with pytest.raises(ValueError, match="fused"):
        Fromage([nn.Parameter(torch.randn(2))], fused="yes")


def test_default_uses_the_native_path_and_explicit_foreach_the_torch_path(monkeypatch):
    used = []
    real = _native.route
    monkeypatch.setattr(_native, "route", lambda *a: used.append(real(*a) is not None) or real(*a))
    p = nn.Parameter(torch.randn(4, 4))
    p.grad = torch.randn(4, 4)
    for cls in (Fromage, LARS, LAMB):
        kw = dict(lr=0.1)
        cls([p], **kw).step()
        cls([p], foreach=True, **kw).step()
        cls([p], foreach=False, **kw).step()
    assert used == [True, False, False] * 3


ROUTED = {Fromage: "reltrust.optim.fromage._fromage_native", LARS: "reltrust.optim.lars._lars_native",
          LAMB: "reltrust.optim.lamb._lamb_native"}


@pytest.mark.parametrize("cls,kw", [CASES[1], CASES[4], CASES[9], CASES[12], CASES[14]],
                         ids=["fromage", "fromage-p_bound", "lars", "lars-maximize", "lamb"])
def test_a_tensor_the_kernels_cannot_take_leaves_the_others_on_them(cls, kw, monkeypatch):
    """One channels_last conv weight (and one transposed matrix) used to send the whole group to the
    torch path (1.7–3.1× slower). Now the other tensors run on the kernels in the same step, each
    with exactly the numbers it gets there alone, and the two odd ones exactly the torch path's."""
    import importlib

    shapes = [(8, 4, 3, 3), (16, 8), (16,), (5, 7), (1,), (300, 200)]
    gen = torch.Generator().manual_seed(0)
    ws = [torch.randn(s, generator=gen) for s in shapes]
    ws[0] = ws[0].contiguous(memory_format=torch.channels_last)
    ws[3] = ws[3].t().contiguous().t()  # non-contiguous
    gs = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(3)]
    for step in gs:
        step[0] = step[0].contiguous(memory_format=torch.channels_last)
    odd, plain = [0, 3], [1, 2, 4, 5]

    def run_on(keep, extra=None, **opt_kw):
        ps = [nn.Parameter(ws[i].clone(memory_format=torch.preserve_format)) for i in keep]
        opt = cls(ps, **opt_kw, **kw, **(extra or {}))
        for step in gs:
            for p, i in zip(ps, keep):
                p.grad = step[i].clone(memory_format=torch.preserve_format)
            opt.step()
        return [p.detach() for p in ps]

    module, name = ROUTED[cls].rsplit(".", 1)
    module = importlib.import_module(module)
    calls, real = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda params, *a, **k: calls.append(len(params)) or real(params, *a, **k))
    mixed = run_on(range(len(shapes)))
    assert calls == [len(plain)] * len(gs)  # the kernels ran, on the four they take
    monkeypatch.setattr(module, name, real)
    alone_native = run_on(plain, fused=True)
    alone_torch = run_on(odd, foreach=True)
    for got, expected in zip([mixed[i] for i in plain] + [mixed[i] for i in odd], alone_native + alone_torch):
        assert torch.equal(got, expected)
    all_torch = run_on(range(len(shapes)), foreach=True)  # the old behaviour for this group
    for i in odd:
        assert torch.equal(mixed[i], all_torch[i])
    assert_float32_close(mixed, all_torch)
    if cls is not LAMB:  # the weight-norm cache is off for such a bucket, with the same numbers
        cached = run_on(range(len(shapes)), extra=dict(cache_weight_norm=True))
        assert all(torch.equal(a, b) for a, b in zip(cached, mixed))


def test_empty_and_tiny_tensors():
    ps = [nn.Parameter(torch.randn(s)) for s in [(0,), (1,), (2, 0), (3,)]]
    qs = [nn.Parameter(p.detach().clone()) for p in ps]
    for p, q in zip(ps, qs):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.clone()
    for cls, kw in [(Fromage, dict(lr=0.1, p_bound=2.0)), (LARS, dict(lr=1.0, weight_decay=0.1)), (LAMB, {})]:
        cls(ps, fused=True, **kw).step()
        cls(qs, foreach=False, **kw).step()
        assert_float32_close([p.detach() for p in ps], [q.detach() for q in qs])


def test_mismatched_state_size_is_not_sent_to_the_kernels():
    """A state tensor of the wrong size (e.g. a bad state_dict) must never reach the C side."""
    p = nn.Parameter(torch.randn(10))
    p.grad = torch.randn(10)
    opt = LARS([p], lr=1.0)
    opt.step()
    opt.state[p]["momentum_buffer"] = torch.zeros(5)
    assert not _native.supported([p], [p.grad], [opt.state[p]["momentum_buffer"]])
    with pytest.raises(RuntimeError):
        opt.step()  # the torch path refuses the shapes


def test_disabled_by_environment_variable_and_optimisers_still_work():
    code = (
        "import torch; from reltrust import Fromage; from reltrust.optim import _native\n"
        "p = torch.nn.Parameter(torch.randn(3)); p.grad = torch.randn(3); Fromage([p]).step()\n"
        "print(_native.available(), _native.describe())\n"
    )
    import reltrust

    src = os.path.dirname(os.path.dirname(reltrust.__file__))
    env = dict(os.environ, RELTRUST_NATIVE="0", PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.startswith("False unavailable: disabled")


def test_a_damaged_cached_library_is_deleted_and_rebuilt(tmp_path):
    """A truncated library (loading one can kill the process with SIGBUS) or one that fails to load
    used to be kept: every later process took the slow torch path. It is deleted and built again,
    once, and describe() says why; the next load takes the new one as it is. A fresh process loads
    from each damaged cache in turn (module state reset between them) and takes a step."""
    import glob
    import hashlib

    name = os.path.basename(_native._lib._name)  # reltrust_kernels_<key>_<digest>.so, same key there
    with open(_native._lib._name, "rb") as f:
        library = f.read()
    garbage = b"not a shared object"  # bytes that match their digest, yet the load fails
    damaged = {
        "truncated": (name, library[: len(library) // 2],
                      "its bytes do not match the digest in its name (truncated or corrupted)"),
        "no library": (name.rsplit("_", 1)[0] + f"_{hashlib.sha256(garbage).hexdigest()[:16]}.so", garbage,
                       "OSError"),
    }
    for case, (file, data, _) in damaged.items():
        (tmp_path / case / "reltrust_kernels").mkdir(parents=True)
        (tmp_path / case / "reltrust_kernels" / file).write_bytes(data)
    code = (
        "import os, sys, torch; from reltrust import LAMB; from reltrust.optim import _native\n"
        "for root in sys.argv[1:]:\n"
        "    os.environ['TORCH_EXTENSIONS_DIR'] = root\n"
        "    for _ in range(2):\n"
        "        _native._tried, _native._lib = False, None\n"
        "        p = torch.nn.Parameter(torch.randn(3)); p.grad = torch.randn(3); LAMB([p], fused=True).step()\n"
        "        print(_native.describe())\n"
    )
    import reltrust

    src = os.path.dirname(os.path.dirname(reltrust.__file__))
    env = dict(os.environ, RELTRUST_NATIVE="1", PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    roots = [str(tmp_path / case) for case in damaged]
    out = subprocess.run([sys.executable, "-c", code, *roots], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    for k, (case, (file, _, why)) in enumerate(damaged.items()):
        first, again = lines[2 * k], lines[2 * k + 1]
        cache = tmp_path / case / "reltrust_kernels"
        assert f"(rebuilt: cached library failed to load: {why}" in first, case
        # the damaged bytes are gone (the rebuilt library may take the same name: builds of the
        # shipped file are reproducible, so its digest can be the one the damaged file claimed)
        assert not (cache / file).exists() or _native._digest(str(cache / file)) == file.rsplit("_", 1)[1][:-3]
        assert all((cache / f).read_bytes() != data for f in os.listdir(cache) for data in [damaged[case][1]])
        libraries = glob.glob(str(cache / "*.so"))
        assert len(libraries) == 1 and first.startswith(f"available: loaded {libraries[0]} "), case
        assert again.startswith(f"available: loaded {libraries[0]}") and "rebuilt" not in again, case


def test_no_compiler_means_torch_path_or_a_clear_error(monkeypatch):
    """Where nothing can be compiled the default path still works; fused=True and RELTRUST_NATIVE=1 say why."""
    monkeypatch.setattr(_native, "_lib", None)
    monkeypatch.setattr(_native, "_tried", False)
    monkeypatch.setattr(_native, "_compiler", lambda: None)
    monkeypatch.setenv("RELTRUST_NATIVE", "auto")
    assert not _native.available()
    assert "no C compiler" in _native.describe()
    p = nn.Parameter(torch.randn(4))
    p.grad = torch.randn(4)
    Fromage([p]).step()
    with pytest.raises(RuntimeError, match="unavailable: no C compiler"):
        Fromage([p], fused=True).step()
    monkeypatch.setattr(_native, "_tried", False)
    monkeypatch.setenv("RELTRUST_NATIVE", "1")
    with pytest.raises(RuntimeError, match="RELTRUST_NATIVE=1"):
        _native.available()


CACHE_CASES = [c for c in CASES if c[0] is not LAMB]


@pytest.mark.parametrize("cls,kw", CACHE_CASES, ids=[i for i, c in zip(IDS, CASES) if c[0] is not LAMB])
def test_cached_weight_norm_gives_the_same_steps(cls, kw):
    """The norm taken in the update pass is the one the next norm pass would take (same blocks, same
    order): the steps are identical; with p_bound the rescaled norm is scale·‖W‖, equal to rounding."""
    plain, _ = run(cls, kw, fused=True, steps=6)
    cached, opt = run(cls, dict(kw, cache_weight_norm=True), fused=True, steps=6)
    if "p_bound" in kw:
        assert_float32_close(cached, plain)
    else:
        for a, b in zip(cached, plain):
            assert torch.equal(a, b)
    assert opt._weight_norm_cache  # it was used


@pytest.mark.parametrize("cls,kw", [CASES[0], CASES[1], CASES[9]], ids=["fromage", "fromage-momentum", "lars"])
def test_cached_weight_norm_is_dropped_when_weights_change(cls, kw):
    """In-place writes, model load_state_dict and a swapped .data all invalidate the cache."""
    def go(cache):
        params = [nn.Parameter(w) for w in make()]
        model = nn.Module()
        model.w = params[4]
        new = make(seed=5)
        opt = cls(params, fused=True, cache_weight_norm=cache, **kw)
        for k, gs in enumerate(grads(SHAPES, 6)):
            for p, g in zip(params, gs):
                p.grad = g
            opt.step()
            with torch.no_grad():
                if k == 0:
                    params[0].mul_(3.0)  # an in-place op
                if k == 1:
                    params[2][:10].zero_()  # through a view
                if k == 2:
                    model.load_state_dict({"w": new[4]})  # copies in place
                if k == 3:
                    params[0].data = new[0].clone()  # new storage
        return [p.detach() for p in params]

    for a, b in zip(go(True), go(False)):
        assert torch.equal(a, b)


def test_cached_weight_norm_is_not_in_state_dict_and_load_drops_it():
    p = nn.Parameter(torch.randn(8, 8))
    opt = Fromage([p], cache_weight_norm=True)
    p.grad = torch.randn(8, 8)
    opt.step()
    assert opt._weight_norm_cache
    sd = opt.state_dict()
    assert "cache_weight_norm" in sd["param_groups"][0] and not any("norm" in k for k in sd["state"][0])
    opt.load_state_dict(sd)
    assert "_weight_norm_cache" not in opt.__dict__
    import copy

    assert "_weight_norm_cache" not in copy.deepcopy(opt).__dict__


def test_blocked_grouped_and_streamed_kernels_give_identical_bits(monkeypatch):
    """Unsharded tensors go through the blocked kernels (whole small tensor per thread) or the
    grouped ones (all threads, group by group), both with the ratio in C; the streamed passes take
    the ratio from _ratio.trust_ratio. All three must give the same bits."""
    shapes = [(64, 64), (64,), (300, 200), (1,), (5000,), (40000,)]
    cases = [c for c in CASES if "p_bound" not in c[1]] + [(Fromage, dict(lr=0.1, p_bound=1.0))]
    ways = {
        "blocked": dict(BLOCKED_BYTES=1 << 30, GROUP_BYTES=0, IN_KERNEL_RATIO=True),
        "grouped": dict(BLOCKED_BYTES=0, GROUP_BYTES=64 << 10, IN_KERNEL_RATIO=True),
        "one group per tensor": dict(BLOCKED_BYTES=0, GROUP_BYTES=0, IN_KERNEL_RATIO=True),
        "mixed": dict(BLOCKED_BYTES=1 << 16, GROUP_BYTES=1 << 20, IN_KERNEL_RATIO=True),
        "streamed": dict(IN_KERNEL_RATIO=False),
    }
    for cls, kw in cases:
        for cache in ([False, True] if cls is not LAMB else [False]):
            extra = dict(cache_weight_norm=True) if cache else {}
            results = {}
            for way, settings in ways.items():
                with monkeypatch.context() as m:
                    for name, value in settings.items():
                        m.setattr(_native, name, value)
                    results[way], _ = run(cls, dict(kw, **extra), fused=True, shapes=shapes)
            for way, got in results.items():
                for a, b in zip(got, results["streamed"]):
                    assert torch.equal(a, b), (cls.__name__, kw, cache, way)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_grouped_kernels_with_uneven_thread_shares_equal_streamed(monkeypatch, threads):
    """The grouped kernels give each thread a contiguous share of a group's spans, walk it forward
    in the norm pass and backward in the update pass (to start on what is still cached): with
    shares of unequal length (5 spans, 1–3 threads) every span must still be updated exactly once."""
    shapes = [(5 * 32768 + 7,), (3, 1000), (64,), (2, 40000)]  # make() zeroes tensor 1, grads() one of 3
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for cls, kw in [(Fromage, dict(lr=0.1)), (Fromage, dict(lr=0.1, momentum=0.9)),
                        (LARS, dict(lr=1.0, weight_decay=0.01)), (LAMB, dict(lr=0.01, weight_decay=0.1))]:
            results = {}
            for way, settings in {"grouped": dict(BLOCKED_BYTES=0, GROUP_BYTES=1 << 20),
                                  "streamed": dict(IN_KERNEL_RATIO=False)}.items():
                with monkeypatch.context() as m:
                    for name, value in settings.items():
                        m.setattr(_native, name, value)
                    results[way], _ = run(cls, kw, fused=True, shapes=shapes, steps=2)
            for a, b in zip(results["grouped"], results["streamed"]):
                assert torch.equal(a, b), (cls.__name__, kw, threads)
    finally:
        torch.set_num_threads(saved)


def test_split_by_size_and_sharding(monkeypatch):
    monkeypatch.setattr(_native, "BLOCKED_BYTES", 8 * 100)
    ts = [torch.zeros(100), torch.zeros(101), torch.zeros(3)]
    small, grouped, streamed = _native.split(ts, ts, 8)
    assert list(small) == [0, 2] and list(grouped) == [1] and streamed is None
    monkeypatch.setattr(_native, "IN_KERNEL_RATIO", False)
    assert _native.split(ts, ts, 8) == (None, None, _native.array("i", [0, 1, 2]))


def test_kernel_trust_ratio_is_the_twin_of_trust_ratio():
    """The blocked kernels compute the ratio in C: it must round exactly as _ratio.trust_ratio."""
    from reltrust.optim import trust_ratio

    g = torch.Generator().manual_seed(0)
    edge = [0.0, 1.0, 0.0, float("inf"), float("nan"), 1e-30]
    w = torch.cat([torch.rand(2000, generator=g) * 10, torch.tensor(edge)])
    u = torch.cat([torch.rand(2000, generator=g) * 1e-3, torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1e-30])])
    for kw in [dict(), dict(coefficient=0.001), dict(coefficient=0.02, weight_decay=1e-4, eps=1e-8),
               dict(weight_decay=0.1), dict(eps=1e-3), dict(coefficient=3.0, eps=1e-9)]:
        expected = trust_ratio(w, u, **kw)
        got = _native.trust_ratio(w, u, **kw)
        assert torch.equal(got, expected) or torch.allclose(got, expected, rtol=0, atol=0, equal_nan=True), kw


@pytest.mark.parametrize(
    "cls,kw", [CASES[1], CASES[4], CASES[9], CASES[14]], ids=["fromage", "p_bound", "lars", "lamb"]
)
def test_dtensor_shards_take_the_streamed_path_and_match_plain_tensors(one_rank_mesh, cls, kw):
    """Sharded DTensors need their norms reduced between the passes: they are streamed (ratio by
    _ratio.trust_ratio on reduced norms), replicated ones and plain tensors are not; on one
    rank all give the same bits."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    ws, gs = make(shapes=SHAPES[:4]), grads(SHAPES[:4], 3)
    plain = [nn.Parameter(w.clone()) for w in ws]
    sharded = [nn.Parameter(distribute_tensor(w.clone(), one_rank_mesh, [Shard(0)])) for w in ws]
    replicated = [nn.Parameter(distribute_tensor(w.clone(), one_rank_mesh, [Replicate()])) for w in ws]
    locals_ = [p.to_local() for p in sharded]
    assert _native.split(locals_, sharded, 8)[2] is not None and _native.split(locals_, sharded, 8)[:2] == (None, None)
    assert _native.split([p.to_local() for p in replicated], replicated, 8)[2] is None
    opts = [cls(ps, fused=True, **kw) for ps in (plain, sharded, replicated)]
    for step_grads in gs:
        for ps in (plain, sharded, replicated):
            for p, g in zip(ps, step_grads):
                p.grad = g.clone() if ps is plain else distribute_tensor(g.clone(), one_rank_mesh, p.placements)
        for o in opts:
            o.step()
    for a, b, c in zip(plain, sharded, replicated):
        assert torch.equal(a.detach(), b.full_tensor()) and torch.equal(a.detach(), c.full_tensor())
