"""The variance study (Liu et al., ICLR 2020, the RAdam paper's simulation): how variable is Adam's
adaptive learning rate in its first steps, and does RAdam's rectification term even it out?

Adam's adaptive learning rate is ψ_t = √((1−β₂ᵗ)/v_t), with v_t = β₂·v_{t−1} + (1−β₂)·g_t², v_0 = 0.
The paper's claims: its variance is problematically large in the first steps (divergent while
ρ_t ≤ 4 under its first-order approximation) and shrinks as ρ_t grows; r_t·ψ_t (r_t: the
rectification term, `reltrust.optim.radam.rectification`) has about constant variance once ρ_t > 4.

Here: gradients g_t ~ N(μ, 1), i.i.d., for μ in {0, 1e-3, 1e-2, 0.1, 1, 10}, β₂ = 0.999, many
independent trajectories (the same standard-normal draws for every μ); at every step t the variance
over trajectories of ψ_t and of r_t·ψ_t, beside two analytic curves for μ = 0 (σ = 1):

- the paper's first-order approximation Var[ψ_t] ≈ ρ_t / (2(ρ_t−2)(ρ_t−4)), for ρ_t > 4;
- the exact variance of ψ when ψ² follows the scaled inverse χ² law with ρ_t degrees of freedom
  (the paper's model; its Beta-function form equals ρ/(ρ−2) − (ρ/2)·(Γ((ρ−1)/2)/Γ(ρ/2))²), for ρ > 2.

What is exact: ψ_1 = 1/|g_1| (the bias correction cancels), and in general v_t is a positive
quadratic form in t Gaussian variables whose density at 0 is positive for every μ, so
P(v_t < ε) ∝ ε^{t/2} and P(ψ_t > x) ∝ x^{−t}: ψ_t has tail index t. Its variance is **infinite for
t ≤ 2 at every μ** and finite from t = 3 on (its sample estimate converges slowly while t ≤ 4,
where the fourth moment is infinite). The study reports ∞ there, not the sample variance, and checks
the tail index on the samples (Hill's estimator on the largest 1 %). For |μ| ≫ 1 the divergence
comes from gradients within ~1/x of 0, which have probability ~φ(μ) (1e-22 for μ = 10): no
simulation sees it, and the report says so.

The study trains nothing: its grid is empty and the simulation (a few seconds, seeded) runs in the
report step, writing ``variance.csv``, ``variance.png`` and ``report.md``. The simulation is the same
for ``--quick`` and the full study (it is cheap at full size); the hidden ``--tiny`` size runs the
same code on fewer steps and trajectories, for the tests.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from reltrust.optim.radam import rectification, sma_length
from reltrust.workbench import plots
from reltrust.workbench.report import Report, fmt
from reltrust.workbench.spec import RunSpec
from reltrust.workbench.store import Store, atomic_write_text
from reltrust.workbench.studies._common import Study

NAME = "variance"
TITLE = "The variance of Adam's adaptive learning rate, and RAdam's rectification (simulation)"
MUS = (0.0, 1e-3, 1e-2, 0.1, 1.0, 10.0)
FINITE_FROM = 3  # Var[ψ_t] < ∞ exactly when t ≥ 3 (tail index t > 2), at every μ
HILL_STEPS = (1, 2, 3, 4, 5)
HILL_FRACTION = 0.01  # Hill's estimator on the largest 1 % of the samples
CONSTANT_WITHIN = 4.0  # "about constant": max/min of Var[r_t ψ_t] over the steps with ρ_t > 4 at most this


@dataclasses.dataclass(frozen=True)
class Config:
    mus: tuple[float, ...]
    beta2: float
    trajectories: int
    steps: int
    table_steps: tuple[int, ...]
    seed: int = 0
    seeds: tuple[int, ...] = ()  # no training runs: the grid is empty whatever the seeds


_FULL = Config(MUS, 0.999, 50_000, 2_000, (1, 2, 3, 5, 6, 10, 100, 1_000, 2_000))
CONFIGS = {
    "full": _FULL,
    "quick": _FULL,
    "tiny": Config((0.0, 1.0), 0.999, 4_000, 40, (1, 2, 3, 5, 6, 10, 40)),
}


def build_grid(config: Config, seeds: Sequence[int]) -> list[RunSpec]:
    """No training runs: the simulation runs in `analyse`."""
    return []


def grid(quick: bool = False, *, seeds: Sequence[int] | None = None, tiny: bool = False) -> list[RunSpec]:
    return STUDY.grid(quick, seeds=seeds, tiny=tiny)


# ---------------------------------------------------------------------------------------- analytic
def first_order_variance(rho: float) -> float:
    """The paper's approximation Var[ψ] ≈ ρ/(2(ρ−2)(ρ−4)) for σ = 1; ∞ (divergent) for ρ ≤ 4."""
    return rho / (2.0 * (rho - 2.0) * (rho - 4.0)) if rho > 4.0 else math.inf


def inverse_chi2_variance(rho: float) -> float:
    """Var[ψ] for ψ² ~ scaled inverse χ²(ρ, 1) (σ = 1): ρ/(ρ−2) − (ρ/2)(Γ((ρ−1)/2)/Γ(ρ/2))²; ∞ for ρ ≤ 2."""
    if rho <= 2.0:
        return math.inf
    return rho / (rho - 2.0) - rho / 2.0 * math.exp(2.0 * (math.lgamma((rho - 1.0) / 2.0) - math.lgamma(rho / 2.0)))


def hill_tail_index(samples: torch.Tensor, fraction: float = HILL_FRACTION) -> float:
    """Hill's estimate of α in P(X > x) ∝ x^{−α} from the largest `fraction` of positive samples."""
    k = max(2, int(len(samples) * fraction))
    top = torch.topk(samples, k + 1).values
    return float(1.0 / torch.log(top[:k] / top[k]).mean())


# -------------------------------------------------------------------------------------- simulation
@dataclasses.dataclass
class Simulation:
    """Per recorded step t: ρ_t, r_t (None for ρ_t ≤ 4), and per μ the variance over trajectories
    of ψ_t (∞ for t < FINITE_FROM) and of r_t·ψ_t (None for ρ_t ≤ 4); Hill's tail index of ψ_t at
    HILL_STEPS; the sample variance of ψ_t the simulation measured where the true one is ∞."""

    config: Config
    steps: list[int]
    rho: list[float]
    r: list[float | None]
    var_psi: dict[float, list[float]]
    var_rect: dict[float, list[float | None]]
    tail_index: dict[float, dict[int, float]]
    sample_var_where_infinite: dict[float, dict[int, float]]
    seconds: float

    def at(self, t: int) -> int:
        return self.steps.index(t)


def recorded_steps(config: Config) -> list[int]:
    """Every step up to 20, then about 100 log-spaced steps to the end, and the table's steps."""
    n = config.steps
    logs = {round(math.exp(math.log(20) + i * (math.log(n) - math.log(20)) / 100)) for i in range(101)} if n > 20 else set()
    return sorted({t for t in range(1, min(n, 20) + 1)} | {t for t in logs if t <= n} | set(config.table_steps) | {n})


def adaptive_lr(v: torch.Tensor, t: int, beta2: float) -> torch.Tensor:
    """ψ_t = √((1−β₂ᵗ)/v_t), elementwise."""
    return ((1.0 - beta2**t) / v).sqrt_()


@torch.no_grad()
def simulate(config: Config) -> Simulation:
    """Run `config.trajectories` independent trajectories of `config.steps` steps for every μ (float64),
    on one thread (the arrays are small: more threads cost more than they give)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _simulate(config)
    finally:
        torch.set_num_threads(threads)


def _simulate(config: Config) -> Simulation:
    t0 = time.perf_counter()
    b2 = config.beta2
    record = set(recorded_steps(config))
    gen = torch.Generator().manual_seed(config.seed)
    mu = torch.tensor(config.mus, dtype=torch.float64)[:, None]
    v = torch.zeros(len(config.mus), config.trajectories, dtype=torch.float64)
    steps, rhos, rs = [], [], []
    var_psi = {m: [] for m in config.mus}
    var_rect = {m: [] for m in config.mus}
    tails = {m: {} for m in config.mus}
    sampled = {m: {} for m in config.mus}
    for t in range(1, config.steps + 1):
        g = torch.randn(config.trajectories, generator=gen, dtype=torch.float64) + mu
        v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
        if t not in record and t not in HILL_STEPS:
            continue
        psi = adaptive_lr(v, t, b2)
        if t in HILL_STEPS:
            for i, m in enumerate(config.mus):
                tails[m][t] = hill_tail_index(psi[i])
        if t not in record:
            continue
        rho = sma_length(t, b2)
        r = rectification(rho, b2) if rho > 4.0 else None
        var = psi.var(dim=1).tolist()
        steps.append(t)
        rhos.append(rho)
        rs.append(r)
        for i, m in enumerate(config.mus):
            if t < FINITE_FROM:
                sampled[m][t] = var[i]
            var_psi[m].append(var[i] if t >= FINITE_FROM else math.inf)
            var_rect[m].append(None if r is None else r * r * var[i])
    return Simulation(config, steps, rhos, rs, var_psi, var_rect, tails, sampled, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------- findings
def rectified_spread(sim: Simulation, mu: float) -> tuple[float, float]:
    """(max/min of Var[r_t ψ_t], max/min of Var[ψ_t]) over the recorded steps with ρ_t > 4."""
    idx = [i for i, r in enumerate(sim.r) if r is not None]
    rect = [sim.var_rect[mu][i] for i in idx]
    raw = [sim.var_psi[mu][i] for i in idx]
    return max(rect) / min(rect), max(raw) / min(raw)


def verdicts(sim: Simulation) -> list[tuple[str, str]]:
    """The claims and what the simulation says about each, computed from it."""
    c = sim.config
    out = []
    mu0 = min(c.mus, key=abs)
    tails = sim.tail_index[mu0]
    near = all(abs(tails[t] - t) <= 0.25 * t for t in (1, 2) if t in tails)
    tail_text = ", ".join(f"t = {t}: {tails[t]:.2f}" for t in sorted(tails))
    out.append((
        "The adaptive learning rate has problematically large variance in the first steps",
        f"{'holds' if near else 'does not hold'}: Var[ψ_t] = ∞ for t ≤ 2 at every μ (ψ_t has tail index t); "
        f"the tail index estimated from the samples at μ = {mu0:g} is {tail_text} (theory: t)"))
    shrinking = []
    for m in c.mus:
        vals = [sim.var_psi[m][sim.at(t)] for t in c.table_steps if t >= FINITE_FROM]
        shrinking.append(all(a > b for a, b in zip(vals, vals[1:])))
    first, last = min(t for t in c.table_steps if t >= FINITE_FROM), c.table_steps[-1]
    falls = {m: sim.var_psi[m][sim.at(first)] / sim.var_psi[m][sim.at(last)] for m in c.mus}
    out.append((
        "Its variance shrinks as ρ_t grows",
        f"{'holds' if all(shrinking) else 'does not hold'}: at every μ Var[ψ_t] "
        f"{'falls' if all(shrinking) else 'does not always fall'} from step to step of the table; from t = {first} "
        f"to t = {last} by a factor {min(falls.values()):.0f}–{max(falls.values()):.0f}"))
    spreads = {m: rectified_spread(sim, m) for m in c.mus}
    flat = [m for m in c.mus if spreads[m][0] <= CONSTANT_WITHIN]
    steep = [m for m in c.mus if m not in flat]
    verdict = "holds" if not steep else "does not hold" if not flat else \
        f"holds for μ ∈ {{{', '.join(f'{m:g}' for m in flat)}}}, not for μ ∈ {{{', '.join(f'{m:g}' for m in steep)}}}"
    out.append((
        "r_t·ψ_t has about constant variance once ρ_t > 4",
        f"{verdict} (about constant: max/min ≤ {CONSTANT_WITHIN:g} over the steps with ρ_t > 4): Var[r_t ψ_t] changes "
        "by a factor " + ", ".join(f"{spreads[m][0]:.1f}" for m in c.mus) + " and Var[ψ_t] by "
        + ", ".join(f"{spreads[m][1]:.0f}" for m in c.mus) + f" for μ = {', '.join(f'{m:g}' for m in c.mus)}"))
    return out


def approximation_rows(sim: Simulation) -> list[list[str]]:
    """At μ = 0: simulated Var[ψ_t] against both analytic curves, and the ratios."""
    mu0 = min(sim.config.mus, key=abs)
    rows = []
    for t in sim.config.table_steps:
        i = sim.at(t)
        s, a, e = sim.var_psi[mu0][i], first_order_variance(sim.rho[i]), inverse_chi2_variance(sim.rho[i])
        rows.append([str(t), fmt(sim.rho[i], 2), _num(s), _num(a), _num(e),
                     _ratio(s, a), _ratio(s, e)])
    return rows


def _num(x: float | None) -> str:
    if x is None:
        return "—"
    return "∞" if math.isinf(x) else f"{x:.3g}"


def _ratio(a: float, b: float) -> str:
    if math.isinf(a) or math.isinf(b):
        return "—"
    return f"{a / b:.2f}"


# ------------------------------------------------------------------------------------------ report
def analyse(store: Store, out_dir: str | Path, specs: Sequence[RunSpec] | None = None,
            command: str | None = None, size: str | None = None) -> Path:
    """Run the simulation, write ``variance.csv``, ``variance.png`` and ``report.md``; returns the report.
    `size`: ``"tiny"`` for the tests' small simulation (read from the command line when not given)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if size is None:
        size = "tiny" if command and "--tiny" in command.split() else "full"
    config = CONFIGS[size]
    sim = simulate(config)
    csv_path = _write_csv(sim, out_dir / "variance.csv")
    mu0, mu_big = min(config.mus, key=abs), max(config.mus)
    first_rect = next(t for t, r in zip(sim.steps, sim.r) if r is not None)
    early = {m: sim.var_rect[m][sim.at(first_rect)] / sim.var_rect[m][-1] for m in config.mus}
    lowest_first = [m for m in config.mus
                    if min((v, t) for t, v in zip(sim.steps, sim.var_rect[m]) if v is not None)[1] == first_rect]

    rep = Report(TITLE)
    rep.para(
        f"Adam's adaptive learning rate ψ_t = √((1−β₂ᵗ)/v_t), simulated: gradients g_t ~ N(μ, 1), β₂ = {config.beta2:g}, "
        f"{config.trajectories:,} independent trajectories of {config.steps:,} steps for each μ in "
        f"{{{', '.join(f'{m:g}' for m in config.mus)}}} (the same standard-normal draws for every μ; seed {config.seed}). "
        "Variances are over trajectories, at each step. r_t is RAdam's rectification term; ρ_t is the length of the "
        f"moving average it assumes (ρ_t > 4 from t = {first_rect} "
        f"on at β₂ = {config.beta2:g}). No training runs: the simulation ran in {sim.seconds:.1f} s while this report "
        "was written."
    )
    rep.heading("Findings")
    rep.table(["claim", "this simulation"], verdicts(sim))
    rep.bullets([
        "Var[ψ_t] is infinite for t ≤ 2 whatever μ is: ψ_1 = 1/|g_1| exactly, and v_t has a positive density at 0, "
        "so ψ_t has tail index t (the variance needs more than 2). The tables print ∞ there, not the sample variance, "
        "which is finite for any finite sample: at μ = 0 it was "
        + ", ".join(f"{v:.3g} at t = {t}" for t, v in sim.sample_var_where_infinite[mu0].items())
        + ", numbers that grow without bound with more trajectories. The divergence comes from gradients near 0; "
        + ", ".join(f"at μ = {m:g} (density {math.exp(-m * m / 2) / math.sqrt(2 * math.pi):.1g} at 0) the samples "
                    f"{'show' if sim.tail_index[m][1] <= 2 else 'cannot show'} it (tail index at t = 1: "
                    f"{sim.tail_index[m][1]:.1f})" for m in (mu0, mu_big)) + ".",
        f"The paper's first-order approximation calls the variance divergent while ρ_t ≤ 4 (t ≤ {first_rect - 1}); "
        f"exactly, it is finite from t = {FINITE_FROM} on. Its sample estimate is noisy at t = 3 and 4, where ψ_t "
        "has no fourth moment.",
        f"Var[r_t ψ_t] is lowest at the first rectified step (t = {first_rect}) for μ ∈ "
        f"{{{', '.join(f'{m:g}' for m in lowest_first)}}} of {{{', '.join(f'{m:g}' for m in config.mus)}}}: "
        + ", ".join(f"{early[m]:.2f} of its value at t = {config.steps} for μ = {m:g}" for m in (mu0, mu_big))
        + ". r_t is derived from the first-order approximation, which overstates the variance at small ρ_t "
        f"(simulated / approximation {sim.var_psi[mu0][sim.at(first_rect)] / first_order_variance(sim.rho[sim.at(first_rect)]):.2f} "
        f"at t = {first_rect}, μ = {mu0:g}), so it damps the first rectified steps more than their variance requires"
        + (f", more so at μ = {mu_big:g}" if early[mu_big] < early[mu0] else "")
        + " (the analytic curves are for zero-mean gradients, σ = 1).",
    ])
    fig = _figure(sim, out_dir / "variance.png")
    rep.figure(fig, "Left: Var[ψ_t] against t, one line per μ, beside the paper's first-order approximation and "
                    "the scaled inverse χ² variance (both for μ = 0); t ≤ 2, where it is infinite, is left out. "
                    "Right: Var[r_t ψ_t] for ρ_t > 4; the dotted line is the approximation's limit at ρ∞.",
               relative_to=out_dir)
    rep.heading("Table: simulated Var[ψ_t] at μ = 0 against the analytic curves", 3)
    rep.table(["t", "ρ_t", "simulated", "first-order approx.", "scaled inv. χ²(ρ_t)", "sim / approx.", "sim / inv. χ²"],
              approximation_rows(sim))
    rep.heading("Table: Var[ψ_t] and Var[r_t ψ_t] per μ", 3)
    ts = list(config.table_steps)
    rep.table(["μ", "quantity"] + [f"t = {t}" for t in ts],
              [row for m in config.mus for row in (
                  [f"{m:g}", "Var[ψ_t]"] + [_num(sim.var_psi[m][sim.at(t)]) for t in ts],
                  [f"{m:g}", "Var[r_t ψ_t]"] + [_num(sim.var_rect[m][sim.at(t)]) for t in ts])])
    rep.heading("Table: tail index of ψ_t estimated from the samples (Hill, largest 1 %; theory: t)", 3)
    rep.table(["μ"] + [f"t = {t}" for t in HILL_STEPS],
              [[f"{m:g}"] + [f"{sim.tail_index[m][t]:.2f}" for t in HILL_STEPS if t in sim.tail_index[m]]
               for m in config.mus])
    rep.heading("Configuration")
    if command:
        rep.para(f"Command: `{command}`")
    rep.bullets([
        f"β₂ = {config.beta2:g}; μ ∈ {{{', '.join(f'{m:g}' for m in config.mus)}}}; {config.trajectories:,} trajectories; "
        f"{config.steps:,} steps; seed {config.seed}; float64; ψ_t and r_t·ψ_t at {len(sim.steps)} recorded steps "
        f"(every value in [{csv_path.name}]({csv_path.name}))",
        "r_t and ρ_t: `reltrust.optim.radam.rectification` and `sma_length`, the functions RAdamSkip steps with",
    ])
    rep.heading("Where it ran")
    rep.bullets([f"torch {torch.__version__}; cpu; {torch.get_num_threads()} thread(s); {sim.seconds:.1f} s"])
    return rep.write(out_dir / "report.md")


def _write_csv(sim: Simulation, path: Path) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf)
    mus = sim.config.mus
    w.writerow(["t", "rho_t", "r_t", "first_order_var", "inverse_chi2_var"]
               + [f"var_psi_mu={m:g}" for m in mus] + [f"var_rect_mu={m:g}" for m in mus])
    for i, t in enumerate(sim.steps):
        w.writerow([t, repr(sim.rho[i]), "" if sim.r[i] is None else repr(sim.r[i]),
                    repr(first_order_variance(sim.rho[i])), repr(inverse_chi2_variance(sim.rho[i]))]
                   + [repr(sim.var_psi[m][i]) for m in mus]
                   + ["" if sim.var_rect[m][i] is None else repr(sim.var_rect[m][i]) for m in mus])
    return atomic_write_text(path, buf.getvalue())


def _figure(sim: Simulation, path: Path) -> Path:
    finite = [i for i, t in enumerate(sim.steps) if t >= FINITE_FROM]
    rect = [i for i, r in enumerate(sim.r) if r is not None]
    left: dict[str, tuple[list, list]] = {}
    right: dict[str, tuple[list, list]] = {}
    for m in sim.config.mus:
        left[f"μ = {m:g}"] = ([sim.steps[i] for i in finite], [[sim.var_psi[m][i] for i in finite]])
        right[f"μ = {m:g}"] = ([sim.steps[i] for i in rect], [[sim.var_rect[m][i] for i in rect]])
    approx = [i for i in finite if sim.rho[i] > 4.0]
    left["first-order approx. (μ = 0)"] = ([sim.steps[i] for i in approx],
                                           [[first_order_variance(sim.rho[i]) for i in approx]])
    left["scaled inv. χ² (μ = 0)"] = ([sim.steps[i] for i in finite],
                                      [[inverse_chi2_variance(sim.rho[i]) for i in finite]])
    rho_inf = 2.0 / (1.0 - sim.config.beta2) - 1.0
    return plots.curves({"Var[ψ_t]": left, "Var[r_t ψ_t], ρ_t > 4": right}, path, xlabel="step t",
                        ylabel="variance over trajectories", logx=True, logy=True, ncols=2,
                        hline=first_order_variance(rho_inf), hline_label="approx. at ρ∞ (μ = 0)",
                        suptitle=f"Adam's adaptive learning rate, g ~ N(μ, 1), β₂ = {sim.config.beta2:g}")


STUDY = Study(
    name=NAME, title=TITLE,
    description="simulated variance of Adam's adaptive lr and of RAdam's rectified one (no training runs)",
    configs=CONFIGS, build_grid=build_grid, analyse=analyse, quick_minutes=0.5,
)

__all__ = ["STUDY", "CONFIGS", "NAME", "Simulation", "analyse", "first_order_variance", "hill_tail_index",
           "inverse_chi2_variance", "simulate", "verdicts"]
