"""A NaN or inf in a tensor's weights or gradient makes that tensor's whole step NaN, on every path.

The zero-norm rule (ratio 1 where ‖W‖ = 0 or ‖u‖ = 0) is for zero norms only: a non-finite norm
used to fall into it, and the tensor's other entries then took an unscaled step (11.6·‖W‖ for
Fromage at η = 0.01). Now the ratio is NaN, every entry of that tensor becomes NaN (what a training
loop's divergence check looks for), and the other tensors step exactly as without it.
"""
import math

import pytest
import torch
from torch import nn

from reltrust import LAMB, LARS, Fromage
from reltrust.optim import _native
from reltrust.optim import trust_ratio

CASES = [
    (Fromage, dict(lr=0.01)),
    (Fromage, dict(lr=0.01, momentum=0.9, p_bound=1.0)),
    (LARS, dict(lr=10.0, weight_decay=1e-3)),
    (LARS, dict(lr=10.0, momentum=0.0, nesterov=False)),
    (LARS, dict(lr=10.0, nesterov=True, eps=1e-8)),
    (LAMB, dict(lr=0.01, weight_decay=0.01)),
]
IDS = [f"{c.__name__}-" + "-".join(f"{k}={v}" for k, v in kw.items()) for c, kw in CASES]

native = pytest.mark.skipif(not _native.available(), reason=f"native kernels: {_native.describe()}")
PATHS = {
    "torch-foreach": dict(fused=False, foreach=True),
    "torch-loop": dict(fused=False, foreach=False),
    "native-blocked": dict(fused=True),
    "native-grouped": dict(fused=True, BLOCKED_BYTES=0),
    "native-streamed": dict(fused=True, IN_KERNEL_RATIO=False),
}
PATH_PARAMS = [pytest.param(k, marks=native if k.startswith("native") else ()) for k in PATHS]

# where the bad value goes: (tensor, entry of the flat tensor, in the weight or the gradient)
BAD = {
    "nan-grad": (0, 7, "grad", math.nan),
    "inf-grad": (0, 7, "grad", math.inf),
    "nan-weight": (0, 3, "weight", math.nan),
    "nan-grad-of-zero-bias": (2, 1, "grad", math.nan),  # ‖W‖ = 0: the zero-norm rule must not apply
}


def tensors():
    gen = torch.Generator().manual_seed(0)
    ws = [torch.randn(8, 8, generator=gen), torch.randn(6, generator=gen), torch.zeros(5)]
    gs = [[torch.randn(w.shape, generator=gen) for w in ws] for _ in range(2)]
    return ws, gs


def steps(cls, kw, path, ws, gs, monkeypatch, keep=None):
    settings = dict(PATHS[path])
    opt_kw = {k: settings.pop(k) for k in ("fused", "foreach") if k in settings}
    keep = range(len(ws)) if keep is None else keep
    params = [nn.Parameter(ws[i].clone()) for i in keep]
    with monkeypatch.context() as m:
        for name, value in settings.items():
            m.setattr(_native, name, value)
        opt = cls(params, **opt_kw, **kw)
        for step_grads in gs:
            for p, i in zip(params, keep):
                p.grad = step_grads[i].clone()
            opt.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("path", PATH_PARAMS)
@pytest.mark.parametrize("cls,kw", CASES, ids=IDS)
def test_a_non_finite_norm_makes_the_tensors_whole_step_nan(cls, kw, path, bad, monkeypatch):
    ws, gs = tensors()
    t, entry, where, value = BAD[bad]
    if where == "weight":
        ws[t].view(-1)[entry] = value
    else:
        gs[0][t].view(-1)[entry] = value  # at the first of two steps
    got = steps(cls, kw, path, ws, gs, monkeypatch)
    assert got[t].isnan().all(), f"{int((~got[t].isnan()).sum())} entries of the tensor took a finite step"
    others = [i for i in range(len(ws)) if i != t]
    clean = steps(cls, kw, path, ws, gs, monkeypatch, keep=others)
    for i, expected in zip(others, clean):
        assert torch.equal(got[i], expected)


def test_trust_ratio_is_nan_for_non_finite_norms_and_one_for_zero_norms():
    nan, inf = math.nan, math.inf
    w = torch.tensor([2.0, 0.0, 2.0, 0.0, nan, inf, 0.0, 2.0, 0.0])
    u = torch.tensor([4.0, 4.0, 0.0, 0.0, 4.0, 4.0, nan, inf, inf])
    expected = torch.tensor([0.5, 1.0, 1.0, 1.0, nan, nan, nan, nan, nan])
    for kw in [dict(), dict(coefficient=0.02, weight_decay=1e-3, eps=1e-8)]:
        got = trust_ratio(w, u, **kw)
        assert torch.equal(got.isnan(), expected.isnan()), kw
        assert torch.equal(got[4:].isnan(), torch.ones(5, dtype=torch.bool))
        assert torch.equal(got[1:4], expected[1:4])
