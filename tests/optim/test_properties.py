"""The paper's properties of Fromage, and convergence of all three on classic problems."""
import math

import pytest
import torch

from reltrust import LAMB, LARS, Fromage


@pytest.mark.parametrize("lr", [0.001, 0.01, 0.1, 0.5])
def test_fromage_relative_step_is_eta_over_sqrt_one_plus_eta_squared(lr):
    """W_new = c·W + ΔW with c = 1/√(1+η²) and ‖ΔW‖/‖W‖ = η·c exactly (away from the zero-norm branch)."""
    w0 = torch.randn(64, 32, dtype=torch.float64)
    p = torch.nn.Parameter(w0.clone())
    p.grad = torch.randn_like(w0) * 1e-3  # the ratio makes the gradient's scale irrelevant
    Fromage([p], lr=lr).step()
    c = 1 / math.sqrt(1 + lr * lr)
    step = p.detach() - c * w0
    assert float(step.norm() / w0.norm()) == pytest.approx(lr * c, rel=1e-12)
    # the total change is η up to O(η²) (paper eq. 5)
    total = float((p.detach() - w0).norm() / w0.norm())
    assert abs(total - lr) <= lr * lr + 1e-12


def test_fromage_norms_stay_flat_over_many_steps():
    """Frobenius-norm stability: gradients orthogonal to W leave ‖W‖ exactly fixed; random ones barely move it."""
    torch.manual_seed(1)
    p = torch.nn.Parameter(torch.randn(50, 50, dtype=torch.float64))
    q = torch.nn.Parameter(p.detach().clone())
    n0 = p.detach().norm()
    opt_p, opt_q = Fromage([p], lr=0.01), Fromage([q], lr=0.01)
    for _ in range(1000):
        g = torch.randn(50, 50, dtype=torch.float64)
        w = p.detach()
        p.grad = g - (g * w).sum() / (w * w).sum() * w  # ⟂ W
        opt_p.step()
        q.grad = torch.randn(50, 50, dtype=torch.float64)
        opt_q.step()
    assert float(p.detach().norm() / n0) == pytest.approx(1.0, abs=1e-10)
    assert abs(float(q.detach().norm() / n0) - 1.0) < 0.05
    # while plain SGD with steps of the same relative size lets the norm grow like √(1+η²)^t
    r = torch.nn.Parameter(p.detach().clone())
    for _ in range(1000):
        g = torch.randn(50, 50, dtype=torch.float64)
        w = r.detach()
        g = g - (g * w).sum() / (w * w).sum() * w
        r.data.add_(g, alpha=-0.01 * float(w.norm() / g.norm()))
    assert float(r.detach().norm() / p.detach().norm()) > 1.04


def test_mirsky_bound_on_a_fromage_step():
    """|σᵢ(W+ΔW) − σᵢ(W)| ≤ ‖ΔW‖_F, and for Fromage ‖ΔW‖_F ≈ η‖W‖_F."""
    for seed in range(5):
        torch.manual_seed(seed)
        w0 = torch.randn(40, 20, dtype=torch.float64)
        p = torch.nn.Parameter(w0.clone())
        p.grad = torch.randn_like(w0)
        Fromage([p], lr=0.05).step()
        delta = p.detach() - w0
        s0 = torch.linalg.svdvals(w0)
        s1 = torch.linalg.svdvals(p.detach())
        assert float((s1 - s0).abs().max()) <= float(delta.norm()) + 1e-12
        assert float(delta.norm() / w0.norm()) < 0.05 * 1.05


def test_zero_initialised_bias_moves_by_plain_sgd_step():
    b = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    g = torch.randn(5, dtype=torch.float64)
    b.grad = g.clone()
    Fromage([b], lr=0.1).step()
    torch.testing.assert_close(b.detach(), -0.1 * g / math.sqrt(1.01), rtol=1e-14, atol=0)


def test_p_bound_caps_norm_at_bound_times_initial_norm():
    torch.manual_seed(2)
    p = torch.nn.Parameter(torch.randn(30, 30, dtype=torch.float64))
    n0 = float(p.detach().norm())
    opt = Fromage([p], lr=0.1, p_bound=1.0)
    for _ in range(50):
        p.grad = -p.detach().clone()  # W − η·r·(−W) = (1+η)W: grows ‖W‖ every step
        opt.step()
        assert float(p.detach().norm()) <= n0 * (1 + 1e-12)
    assert float(p.detach().norm()) == pytest.approx(n0, rel=1e-12)
    # without the bound the same gradients grow the norm
    q = torch.nn.Parameter(torch.randn(30, 30, dtype=torch.float64))
    m0 = float(q.detach().norm())
    opt = Fromage([q], lr=0.1)
    for _ in range(5):
        q.grad = -q.detach().clone()
        opt.step()
    assert float(q.detach().norm()) > 1.3 * m0


def noisy_quadratic(opt_factory, steps, seed=0):
    """f(x) = ½ Σ hᵢ (xᵢ − x*ᵢ)², gradients with Gaussian noise; x is a 16×16 matrix."""
    g = torch.Generator().manual_seed(seed)
    h = torch.logspace(-1, 1, 256, dtype=torch.float64).reshape(16, 16)
    target = torch.randn(16, 16, generator=g, dtype=torch.float64)
    x = torch.nn.Parameter(torch.randn(16, 16, generator=g, dtype=torch.float64) * 3)
    opt = opt_factory([x])
    loss = lambda: float(0.5 * (h * (x.detach() - target) ** 2).sum())  # noqa: E731
    start = loss()
    for _ in range(steps):
        x.grad = h * (x.detach() - target) + 0.1 * torch.randn(16, 16, generator=g, dtype=torch.float64)
        opt.step()
    return start, loss()


@pytest.mark.parametrize(
    "factory",
    [
        lambda p: Fromage(p, lr=0.01),
        lambda p: LARS(p, lr=20.0, momentum=0.9),
        lambda p: LAMB(p, lr=0.02),
    ],
    ids=["fromage", "lars", "lamb"],
)
def test_converges_on_noisy_quadratic(factory):
    start, end = noisy_quadratic(factory, 1500)
    assert end < 0.05 * start


def rosenbrock(opt_factory, steps, start=(0.2, 2.5)):
    """f(x, y) = (1 − x)² + 100 (y − x²)², x and y as two scalar parameters (layerwise optimisers
    scale each tensor's step by its own norm, so each coordinate is its own "layer")."""
    x = torch.nn.Parameter(torch.tensor(start[0], dtype=torch.float64))
    y = torch.nn.Parameter(torch.tensor(start[1], dtype=torch.float64))
    opt = opt_factory([x, y])
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.999)
    for _ in range(steps):
        opt.zero_grad()
        ((1 - x) ** 2 + 100 * (y - x**2) ** 2).backward()
        opt.step()
        sched.step()
    return float(x.detach()), float(y.detach())


@pytest.mark.parametrize(
    "factory",
    [
        lambda p: Fromage(p, lr=0.005),
        lambda p: LARS(p, lr=1.0, momentum=0.9, trust_coefficient=0.01),
        lambda p: LAMB(p, lr=0.02),
    ],
    ids=["fromage", "lars", "lamb"],
)
def test_reaches_rosenbrock_minimum(factory):
    start = (0.2, 2.5)
    end = rosenbrock(factory, 4000, start)
    assert math.dist(end, (1.0, 1.0)) < 0.1 * math.dist(start, (1.0, 1.0))
