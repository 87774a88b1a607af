"""Optimiser step speed against peers and against the machine's memory-bandwidth floor.

    python benchmarks/step_speed.py --quick              # < 1 minute: the deep-MLP set, 5 rounds
    python benchmarks/step_speed.py                      # the README table (all sets, 15-41 rounds)
    python benchmarks/step_speed.py --sets gpt2 --rounds 21 --threads 2

An optimiser step is memory-bound: it costs at least (bytes it must move) / (memory bandwidth). Per
float32 element: fused SGD with momentum and Fromage move 20 bytes, fused Adam and LARS (momentum,
decay) 28, LAMB 40. The script measures every contender on a parameter set in one process (a fresh
one per set), in interleaved rounds (each round runs every contender once, in a rotated order), so
that a noisy neighbour slows all of them alike; it reports medians over rounds, and each
contender's ratio to the fused torch optimiser with the same byte floor (Fromage → SGD-momentum;
LARS, LAMB → Adam). Before every timed step it evicts the caches (`cache_flusher`; --warm not):
each step starts cold, as after a backward pass, whichever contender ran before it.

All contenders update the SAME parameter tensors (with their own state), which keeps memory at about
(2 + Σ state) × model size; the values stay finite and in the normal range, so timings are unaffected.
The cache_weight_norm variants get parameters of their own (their cache is valid only while no one
else writes W). Gradients are restored from a master copy before every round (a peer may modify
p.grad in place).

Peers: torch.optim.SGD/Adam(fused=True); pytorch_optimizer's Fromage, LARS, Lamb (if installed;
LARS with weight_decay=1e-4, Lamb with weight_decouple=False: decay inside u, as reltrust's); timm's
Lamb (max_grad_norm=None: no global clipping) and Lars where they import: from an installed timm, or
from a timm wheel or unpacked source tree given by --timm or $RELTRUST_TIMM (`pip download --no-deps
timm -d /tmp/timm`), loaded without importing timm's package __init__ (no torchvision needed).
Nothing is installed. "torch path" rows: reltrust with foreach=True, what runs where the native
kernels do not (no C compiler, other devices).

The "× floor(add_)" column divides by (floor bytes × elements) / (GB/s of one x.add_(y) on a buffer
of the same size): how close a step comes to streaming its bytes at the speed torch's own simplest
op gets here.
"""
from __future__ import annotations

import argparse
import gc
import glob
import importlib
import os
import platform
import statistics
import subprocess
import sys
import time
import types

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import reltrust.optim as ro  # noqa: E402

# ---------------------------------------------------------------------------------------------------
# parameter sets


def gpt2_small_shapes() -> list[tuple[int, ...]]:
    """GPT-2 small (124M, tied LM head): wte, wpe, 12 blocks, final LayerNorm."""
    d, v, ctx, layers = 768, 50257, 1024, 12
    shapes: list[tuple[int, ...]] = [(v, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return shapes + [(d,), (d,)]


SETS = {
    "gpt2": ("GPT-2 small shapes (148 tensors)", gpt2_small_shapes),
    "mlp": ("deep narrow MLP: 200 × (256×256 + bias)", lambda: [(256, 256), (256,)] * 200),
    # 2-D: pytorch_optimizer's LARS adapts only tensors with ndim > 1 (on a 1-D tensor it skips its norms)
    "big": ("one 4096×4096 tensor (16M elements)", lambda: [(4096, 4096)]),
}


def make_params(shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params, grads = [], []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen) * 0.02)
        g = torch.randn(shape, generator=gen) * 1e-3
        p.grad = g
        params.append(p)
        grads.append(g.clone())  # master copy
    return params, grads


# ---------------------------------------------------------------------------------------------------
# peers


def load_timm(path: str | None):
    """timm's Lamb and Lars classes, or None. Never imports timm/__init__ (it may want torchvision)."""
    try:
        lamb = importlib.import_module("timm.optim.lamb")
        lars = importlib.import_module("timm.optim.lars")
        return lamb.Lamb, lars.Lars, "timm (installed)"
    except Exception:
        pass
    candidates = [path] if path else []
    if os.environ.get("RELTRUST_TIMM"):
        candidates.append(os.environ["RELTRUST_TIMM"])
    candidates += sorted(glob.glob("/tmp/**/timm-*.whl", recursive=True))
    for cand in candidates:
        if not cand or not os.path.exists(cand):
            continue
        root = cand
        if os.path.isdir(cand) and os.path.isdir(os.path.join(cand, "timm")):
            root = os.path.join(cand, "timm")
        optim_dir = os.path.join(root, "optim") if not cand.endswith(".whl") else cand + "/timm/optim"
        pkg = "_reltrust_bench_timm_optim"
        try:
            mod = types.ModuleType(pkg)
            mod.__path__ = [optim_dir]  # a wheel path works too: zipimport handles archive/subdir
            sys.modules[pkg] = mod
            lamb = importlib.import_module(pkg + ".lamb")
            lars = importlib.import_module(pkg + ".lars")
            return lamb.Lamb, lars.Lars, f"timm from {cand}"
        except Exception:
            for name in [n for n in sys.modules if n.startswith(pkg)]:
                del sys.modules[name]
    return None


def own_copy(params):
    """Parameters of their own (same gradients) for a contender that must see only its own writes:
    cache_weight_norm keeps ‖W‖ only while no one else writes W."""
    own = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for q, p in zip(own, params):
        q.grad = p.grad
    return own


def contenders(params, timm, only=None, cached=True):
    """name → (family, factory). family: the fused torch baseline with the same byte floor."""
    c = {
        "torch SGD-momentum fused": ("sgd", lambda: torch.optim.SGD(params, lr=1e-3, momentum=0.9, fused=True)),
        "torch Adam fused": ("adam", lambda: torch.optim.Adam(params, lr=1e-4, fused=True)),
        "reltrust Fromage": ("sgd", lambda: ro.Fromage(params, lr=0.01)),
        "reltrust LARS": ("adam", lambda: ro.LARS(params, lr=0.1, momentum=0.9, weight_decay=1e-4)),
        "reltrust LAMB": ("adam", lambda: ro.LAMB(params, lr=1e-4, weight_decay=0.01)),
        "reltrust Fromage, torch path": ("sgd", lambda: ro.Fromage(params, lr=0.01, foreach=True)),
        "reltrust LARS, torch path": (
            "adam", lambda: ro.LARS(params, lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=True)),
        "reltrust LAMB, torch path": ("adam", lambda: ro.LAMB(params, lr=1e-4, weight_decay=0.01, foreach=True)),
    }
    if cached:
        c["reltrust Fromage, cache_weight_norm"] = (
            "sgd", lambda: ro.Fromage(own_copy(params), lr=0.01, cache_weight_norm=True))
        c["reltrust LARS, cache_weight_norm"] = (
            "adam", lambda: ro.LARS(own_copy(params), lr=0.1, momentum=0.9, weight_decay=1e-4,
                                    cache_weight_norm=True))
    try:
        import pytorch_optimizer as po

        c["pytorch_optimizer Fromage"] = ("sgd", lambda: po.Fromage(params, lr=0.01))
        c["pytorch_optimizer LARS"] = (
            "adam", lambda: po.LARS(params, lr=0.1, momentum=0.9, weight_decay=1e-4))
        c["pytorch_optimizer Lamb"] = (
            "adam", lambda: po.Lamb(params, lr=1e-4, weight_decay=0.01, weight_decouple=False))
    except Exception as exc:  # pragma: no cover - optional peer
        print(f"# pytorch_optimizer not available: {exc}")
    if timm is not None:
        Lamb, Lars, _ = timm
        c["timm Lamb"] = ("adam", lambda: Lamb(params, lr=1e-4, weight_decay=0.01, max_grad_norm=None))
        c["timm Lars"] = ("adam", lambda: Lars(params, lr=0.1, momentum=0.9, weight_decay=1e-4))
    if only:
        c = {k: v for k, v in c.items() if any(o.lower() in k.lower() for o in only) or k in BASELINE.values()}
    return c


FLOOR_BYTES = {  # bytes per fp32 element the step must move at least (reads + writes)
    "torch SGD-momentum fused": 20, "torch Adam fused": 28,
    "reltrust Fromage": 20, "reltrust LARS": 28, "reltrust LAMB": 40,
    "reltrust Fromage, torch path": 20, "reltrust LARS, torch path": 28, "reltrust LAMB, torch path": 40,
    "reltrust Fromage, cache_weight_norm": 16, "reltrust LARS, cache_weight_norm": 24,
    "pytorch_optimizer Fromage": 20, "pytorch_optimizer LARS": 28, "pytorch_optimizer Lamb": 40,
    "timm Lamb": 40, "timm Lars": 28,
}
BASELINE = {"sgd": "torch SGD-momentum fused", "adam": "torch Adam fused"}
#: default rounds: more where steps are short and the shared machine's noise is a larger share
ROUNDS = {"gpt2": 15, "mlp": 25, "big": 41}


def state_bytes(opt) -> int:
    seen, total = set(), 0
    for st in opt.state.values():
        for v in st.values():
            if isinstance(v, torch.Tensor) and v.data_ptr() not in seen:
                seen.add(v.data_ptr())
                total += v.numel() * v.element_size()
    return total


# ---------------------------------------------------------------------------------------------------
# bandwidth floor


def bandwidth(n, reps=7, flush=None):
    """GB/s of x.add_(y) (12 B/elt: two reads, one write) and of ‖x‖ (4 B/elt) on two flat float32
    buffers of n elements each: what this machine's memory gives one torch op on this much data
    (each op after `flush`, as the steps)."""
    x, y = torch.randn(n), torch.randn(n)
    add, nrm = [], []
    flush = flush or (lambda: None)
    for _ in range(reps):
        flush()
        t = time.perf_counter()
        x.add_(y)
        add.append(time.perf_counter() - t)
        flush()
        t = time.perf_counter()
        torch.linalg.vector_norm(x)
        nrm.append(time.perf_counter() - t)
    return 12 * n / statistics.median(add) / 1e9, 4 * n / statistics.median(nrm) / 1e9


# ---------------------------------------------------------------------------------------------------


def cache_flusher():
    """A function that evicts the caches by reading a buffer of twice the last-level cache (written
    once, so the lines it leaves are clean and the timed step pays no write-back for them). Called
    before every timed step, so that each step starts cold, as after a backward pass, whatever
    contender ran before it (otherwise a step that follows one touching the same tensors finds
    their tails in cache, and the ratios depend on the order of the contenders)."""
    from reltrust.optim import _native

    scratch = torch.ones(2 * _native._l3_bytes() // 4)
    return scratch.sum


def run_set(key, rounds, only, timm, warmup=2, cached=True, flush=None):
    title, shapes_fn = SETS[key]
    shapes = shapes_fn()
    params, master = make_params(shapes)
    n = sum(p.numel() for p in params)
    print(f"\n## {key}: {title}: {len(params)} tensors, {n / 1e6:.1f}M parameters, "
          f"{n * 4 / 2**20:.0f} MiB per fp32 copy")
    add_bw, norm_bw = bandwidth(n, flush=flush)
    print(f"measured bandwidth: add_ {add_bw:.1f} GB/s, norm {norm_bw:.1f} GB/s "
          f"(floor at add_ bandwidth: 20 B/elt = {20 * n / add_bw / 1e6:.1f} ms, "
          f"28 B/elt = {28 * n / add_bw / 1e6:.1f} ms, 40 B/elt = {40 * n / add_bw / 1e6:.1f} ms)")
    opts, families, setup = {}, {}, {}
    for name, (family, factory) in contenders(params, timm, only, cached).items():
        t = time.perf_counter()
        try:
            opt = factory()
            for _ in range(warmup):
                opt.step()
        except Exception as exc:
            print(f"# {name}: skipped ({type(exc).__name__}: {exc})")
            continue
        setup[name] = time.perf_counter() - t
        opts[name], families[name] = opt, family
    for p in params:
        if not torch.isfinite(p).all():
            raise RuntimeError("warm-up made a parameter non-finite")
    times = {name: [] for name in opts}
    names = list(opts)
    for r in range(rounds):
        with torch.no_grad():
            for p, m in zip(params, master):
                p.grad.copy_(m)
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            if flush is not None:
                flush()
            t = time.perf_counter()
            opts[name].step()
            times[name].append(time.perf_counter() - t)
    med = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}
    print(f"\n| optimiser | ms/step (median of {rounds}) | min | state MiB | floor B/elt | × floor(add_) "
          "| ratio to fused torch (same floor) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name in names:
        base = BASELINE[families[name]]
        ratio = med[name] / med[base] if base in med else float("nan")
        fb = FLOOR_BYTES.get(name, 0)
        floor_ms = fb * n / add_bw / 1e6
        print(f"| {name} | {med[name]:.1f} | {min(times[name]) * 1e3:.1f} | {state_bytes(opts[name]) / 2**20:.0f} "
              f"| {fb} | {med[name] / floor_ms:.2f} | {ratio:.2f} × {base.split()[1]} |")
    slow = [n_ for n_ in names if setup[n_] > 5]
    if slow:
        print("setup incl. warm-up steps (s): " + ", ".join(f"{n_} {setup[n_]:.1f}" for n_ in slow))
    for p in params:
        if not torch.isfinite(p).all():
            raise RuntimeError("a parameter went non-finite during the benchmark")
    del opts
    gc.collect()
    return med


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:
        model = platform.processor() or "unknown CPU"
    return model


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default="gpt2,mlp,big", help="comma list of: " + ", ".join(SETS))
    ap.add_argument("--rounds", type=int, default=None,
                    help="interleaved rounds per set (default: "
                         + ", ".join(f"{k} {v}" for k, v in ROUNDS.items()) + ")")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--only", default=None, help="comma list of substrings of contender names (baselines kept)")
    ap.add_argument("--timm", default=None, help="timm wheel or source tree (see module docstring)")
    ap.add_argument("--quick", action="store_true",
                    help="the mlp set only, 5 rounds, no cache_weight_norm variants (< 1 minute)")
    ap.add_argument("--no-peers", action="store_true", help="only torch's fused optimisers and reltrust's")
    ap.add_argument("--warm", action="store_true",
                    help="do not evict the caches before each timed step (see cache_flusher)")
    ap.add_argument("--one-process", action="store_true",
                    help="run all sets in this process (default: each set in a fresh one, so that no set "
                         "inherits the allocator's and the page cache's state from the one before)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    sets = args.sets.split(",")
    if len(sets) > 1 and not args.quick and not args.one_process:
        rest = [a for i, a in enumerate(argv) if a != "--sets" and (i == 0 or argv[i - 1] != "--sets")
                and not a.startswith("--sets=")]
        for key in sets:
            sys.stdout.flush()
            code = subprocess.run([sys.executable, os.path.abspath(__file__), "--sets", key, *rest]).returncode
            if code:
                sys.exit(code)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds, cached, warmup = args.rounds, True, 2
    if args.quick:
        sets, rounds, cached, warmup = ["mlp"], args.rounds or 5, False, 1
    only = args.only.split(",") if args.only else None
    if args.no_peers:
        only = ["reltrust"]
    timm = None if args.no_peers else load_timm(args.timm)
    print(f"# {machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{timm[2] if timm else 'timm: not loaded'}; "
          f"{'warm caches' if args.warm else 'caches evicted before every timed step'}")
    from reltrust.optim import _native

    existed = os.path.isdir(_native._build_dir()) and bool(os.listdir(_native._build_dir()))
    t = time.perf_counter()
    _native.available()
    print(f"# reltrust native kernels: {_native.describe()} "
          f"({'loaded' if existed else 'built and loaded'} in {time.perf_counter() - t:.2f} s)")
    for key in sets:
        run_set(key, rounds or ROUNDS[key], only, timm, warmup=warmup, cached=cached,
                flush=None if args.warm else cache_flusher())


if __name__ == "__main__":
    main()
