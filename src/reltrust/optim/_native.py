"""Native CPU kernels for the layerwise optimisers: build on first use, cache, or fall back.

The kernels (`_cpp/kernels.c` and `kernels.h`, plain C + OpenMP, no torch headers, shipped as package
data) fuse what the torch path does
in several passes: a norm pass (with Fromage's momentum update, or LAMB's moments and direction) and
one update pass — Fromage's ``p ← (p + coef·u)·c`` (20 B/element in all, against 28), LARS's buffer
and weight update, LAMB's weight update — each optionally also returning the norm of the new weights
(`cache_weight_norm`). `split` sends each tensor one of three ways (see the C source's header):

* blocked — small unsharded tensors, whole per thread: norm pass, ratio, update pass back to back,
  the update reading from L2;
* grouped — the other unsharded tensors, in groups of about GROUP_BYTES: all threads run the norm
  pass over a group, then update the spans they normed, from the last-level cache, last-read
  first (a tensor larger than the cache then still gets about a cache's worth of its second read
  from cache);
* streamed — sharded (DTensor) tensors: a norm pass over all of them, the norms reduced across
  shards and turned into ratios by `trust_ratio` in torch, then an update pass.

The first two compute the ratio in C (`trust_ratio1`, tested bit-equal to `_ratio.trust_ratio`);
all three give identical bits. The step is written once on each side: in C, drivers over an
optimiser's norm pass, coefficient and update pass (one entry point rt_<name> per optimiser, its
`way` naming the driver); here, `Kernel` binds an optimiser's tensors and scalars to its entry point
and `layerwise_step` runs the ways a step needs.

They are compiled by the system C compiler (``$CC``, else ``cc``/``gcc``; about a second) into the
torch extensions directory (``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``), named by
a hash of the source, the flags, the compiler and the CPU and by a digest of the library's bytes, and
loaded with ctypes. A cached library that is damaged (its bytes do not match its digest) or fails to
load is deleted and built again, once; `describe()` then says why ("rebuilt: ..."). Anything else that
goes wrong — no compiler, a failed build, a platform other than Linux, torch not running on OpenMP —
makes `available()` false and the optimisers use their pure-PyTorch path; the reason is in `describe()`.

Environment: ``RELTRUST_NATIVE=0`` never builds or uses the kernels; ``RELTRUST_NATIVE=1`` raises if
they cannot be built (for CI jobs that mean to test them).

The kernels run on float32, contiguous CPU tensors (`supported`); they modify tensors in place
through their data pointers, so the wrappers bump the tensors' version counters as torch's own
in-place ops would. No wrapper reads a tensor value on the host beyond what the CPU computes anyway.
"""
from __future__ import annotations

import ctypes
import glob
import hashlib
import operator
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import re
import threading
from array import array
from collections.abc import Sequence
from contextlib import ExitStack
from importlib import resources

import torch

from reltrust._dtensor import reduce_norms, sharded_indices
from reltrust.optim._ratio import trust_ratio as _trust_ratio

_SOURCES = resources.files("reltrust.optim._cpp")

_FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno",
          "-std=c11"]
#: On x86-64, 256-bit vectors even where the CPU has 512-bit ones: on the benchmark machine (AMD
#: EPYC with AVX-512) the streaming passes ran faster so in 14 of 15 interleaved comparisons of
#: whole steps (Fromage, LARS, LAMB; one 4096² matrix and GPT-2 shapes), by up to 20 %.
_X86_FLAGS = ["-mprefer-vector-width=256"]


def _read_abi(header: str) -> int:
    """RT_ABI_VERSION as kernels.h defines it: the one place the ABI version is written."""
    found = re.search(r"^#define RT_ABI_VERSION (\d+)$", header, re.M)
    if found is None:
        raise RuntimeError("reltrust.optim._cpp/kernels.h does not define RT_ABI_VERSION")
    return int(found.group(1))


_ABI = _read_abi(_SOURCES.joinpath("kernels.h").read_text())
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_reason = "not built yet"
_tried = False


def _mode() -> str:
    return os.environ.get("RELTRUST_NATIVE", "auto").strip().lower()


def _compiler() -> str | None:
    for cand in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return ""


def _build_dir() -> str:
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if not root:
        try:
            from torch.utils.cpp_extension import get_default_build_root

            root = get_default_build_root()
        except Exception:  # pragma: no cover - very old torch
            root = os.path.join(tempfile.gettempdir(), "torch_extensions")
    return os.path.join(root, "reltrust_kernels")


def _build(cc: str) -> tuple[str, bool, str | None]:
    """(the library for this source, compiler and CPU; whether it was compiled now; why a cached
    one was discarded, or None). Compiled if missing: with -march=native (and on x86-64 256-bit
    vectors), else with the flags a compiler accepts, down to the baseline target.

    The cached file is named reltrust_kernels_<key>_<digest>.so — <key> a hash of the source, the
    flags, the compiler and the CPU, <digest> one of the file's own bytes — and written under a
    temporary name, then renamed (atomic: concurrent builders each leave complete files). A file
    whose bytes do not match its digest (truncated, corrupted: loading one can kill the process
    with SIGBUS) is deleted and the library compiled again."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    directory = _build_dir()
    os.makedirs(directory, exist_ok=True)
    errors, discarded = [], None
    tries = [_FLAGS, [f for f in _FLAGS if f != "-march=native"]]
    if platform.machine().lower() in ("x86_64", "amd64"):
        tries.insert(0, _FLAGS + _X86_FLAGS)
    source = "\0".join(_SOURCES.joinpath(name).read_text() for name in ("kernels.c", "kernels.h"))
    with ExitStack() as stack:
        # the shipped file itself where the package is on disk (compiler messages point into it)
        c_file = str(stack.enter_context(resources.as_file(_SOURCES.joinpath("kernels.c"))))
        h_file = str(stack.enter_context(resources.as_file(_SOURCES.joinpath("kernels.h"))))
        include = ["-I", os.path.dirname(h_file)]
        for flags in tries:
            key = hashlib.sha256("\0".join([source, " ".join(flags), version, _cpu_id()]).encode()).hexdigest()[:16]
            stem = os.path.join(directory, f"reltrust_kernels_{key}_")
            for cached in sorted(glob.glob(glob.escape(stem) + "*.so")):
                if _digest(cached) == cached[len(stem):-3]:
                    return cached, False, discarded
                discarded = "its bytes do not match the digest in its name (truncated or corrupted)"
                _remove(cached)
            fd, tmp_so = tempfile.mkstemp(suffix=".so", dir=directory)
            os.close(fd)
            try:
                proc = subprocess.run([cc, *flags, *include, c_file, "-o", tmp_so, "-lm"], capture_output=True,
                                      text=True, timeout=120)
                if proc.returncode == 0:
                    target = f"{stem}{_digest(tmp_so)}.so"
                    os.replace(tmp_so, target)
                    return target, True, discarded
                errors.append(proc.stderr.strip()[-1000:])
            finally:
                _remove(tmp_so)
    raise RuntimeError(f"{cc} failed: {errors[-1]}")


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def _remove(path: str) -> None:
    """Delete a file if it is there (another process may have deleted or renamed it)."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _open(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    if lib.rt_abi_version() != _ABI:
        raise RuntimeError("ABI mismatch")
    _declare(lib)
    return lib


def _load() -> None:
    global _lib, _reason, _tried
    _tried = True
    if _mode() in ("0", "off", "false", "no"):
        _reason = "disabled by RELTRUST_NATIVE=0"
        return
    if not sys.platform.startswith("linux"):
        _reason = f"not built on {sys.platform} (Linux only)"
        return
    if "OpenMP" not in torch.__config__.parallel_info():
        _reason = "torch does not run on OpenMP here"
        return
    cc = _compiler()
    if cc is None:
        _reason = "no C compiler found ($CC, cc, gcc, clang)"
        return
    try:
        path, built, why = _build(cc)
        try:
            lib = _open(path)
        except Exception as exc:
            if built:
                raise
            why = f"{type(exc).__name__}: {exc}"  # a cached library that does not load is built again, once
            _remove(path)
            path, _, _ = _build(cc)
            lib = _open(path)
    except Exception as exc:
        _reason = f"build or load failed: {type(exc).__name__}: {exc}"
        return
    rebuilt = f" (rebuilt: cached library failed to load: {why})" if why else ""
    _lib, _reason = lib, f"loaded {path}{rebuilt}{_openmp_note()}"


def _openmp_note() -> str:
    """Whether the kernels share torch's OpenMP runtime (they do where torch ships libgomp.so.1)."""
    try:
        with open("/proc/self/maps") as f:
            runtimes = {line.split()[-1] for line in f if "gomp" in line.rsplit("/", 1)[-1]}
    except OSError:
        return ""
    return "" if len(runtimes) <= 1 else f" (two OpenMP runtimes loaded: {', '.join(sorted(runtimes))})"


def _declare(lib: ctypes.CDLL) -> None:
    P, I, F, L = ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_int64
    job = [I, I, P, P, I, L, P, P, P, P, P, P, I]  # RT_JOB_ARGS: way, n, sizes, sel, nsel, group_elems, ... nthreads
    sig = {
        "rt_norms": [I, I, P, P, P, I, P, I],
        "rt_fromage": [*job, P, P, P, F, F, F],
        "rt_lars": [*job, P, P, P, F, F, F, F, I, F, I],
        "rt_lamb": [*job, P, P, P, P, P, P, F, F, F, F, F, I, F],
        "rt_scale": [I, P, P, P, I],
        "rt_count_steps": [I, P, P],
        "rt_snapshot_norms": [I, I, P, P, P, P, I],
        "rt_refresh_norms": [I, P, P, P, P, P, I],
        "rt_trust_ratio": [I, P, P, F, F, F, P],
        "rt_lanczos": [L, L, P, I, ctypes.c_double, P, P, P, P, P],
    }
    for name, argtypes in sig.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, I


def available() -> bool:
    """True when the kernels are built and loaded (builds them on the first call)."""
    if not _tried:
        with _lock:
            if not _tried:
                _load()
                if _lib is None and _mode() in ("1", "on", "true", "yes", "require"):
                    raise RuntimeError(f"RELTRUST_NATIVE=1 but the native kernels are unavailable: {_reason}")
    return _lib is not None


def describe() -> str:
    available()
    return ("available: " if _lib is not None else "unavailable: ") + _reason


_f32 = torch.float32
_is_cpu = operator.attrgetter("is_cpu")
_is_contiguous = torch.Tensor.is_contiguous


def supported(*tensor_lists: Sequence[torch.Tensor] | None) -> bool:
    """Whether the kernels can run on these aligned lists: every tensor a contiguous float32 CPU
    tensor, and entry i of every list as long as entry i of the first (the kernels index them alike)."""
    first = None
    for ts in tensor_lists:
        if ts is None:
            continue
        if not (all(map(_is_cpu, ts)) and all(map(_is_contiguous, ts)) and all(t.dtype is _f32 for t in ts)):
            return False
        sizes = list(map(torch.Tensor.numel, ts))
        if first is None:
            first = sizes
        elif sizes != first:
            return False
    return True


def route(fused: bool | None, *tensor_lists: Sequence[torch.Tensor] | None) -> Sequence[int] | None:
    """The tensors of an update that run on the native kernels, as indices into the aligned lists
    (``range(n)``: all; None: none). `fused` None → every tensor they take (`supported`, checked per
    tensor only when not all are), the others taking the torch path in the same step, so that one
    tensor the kernels cannot take (a channels_last weight, say) does not send the whole group there;
    True → all of them but float64 ones, which the float32 kernels do not take and which run the torch
    path (torch's fused CPU optimisers take float64 too; RuntimeError naming the reason for any other
    tensor they cannot take); False → none."""
    if fused is False:
        return None
    n = len(tensor_lists[0])
    if supported(*tensor_lists):
        chosen: Sequence[int] = range(n)
    else:
        lists = [ts for ts in tensor_lists if ts is not None]
        chosen = [i for i in range(n) if supported(*([ts[i]] for ts in lists))]
        if fused and len(chosen) + sum(lists[0][i].dtype is torch.float64 for i in range(n)) < n:
            raise RuntimeError(
                "fused=True needs contiguous CPU tensors computed in float32 (float32, bfloat16 or float16 "
                "parameters; float64 ones take the torch path) with gradients and state of the parameters' sizes"
            )
    if not chosen:
        return None
    if not available():
        if fused:
            raise RuntimeError(f"fused=True but the native kernels are unavailable: {_reason}")
        return None
    return chosen


def partition(indices: Sequence[int], *lists: Sequence | None) -> tuple[list, list]:
    """([each list's entries at `indices`], [each list's other entries]), None lists staying None."""
    chosen = set(indices)
    rest = [i for i in range(len(lists[0])) if i not in chosen]
    return ([None if ts is None else [ts[i] for i in indices] for ts in lists],
            [None if ts is None else [ts[i] for i in rest] for ts in lists])


# ---------------------------------------------------------------------------------------------------
# wrappers: aligned lists of tensors in, float32 (N,) vectors out. The arrays of pointers and sizes
# are held in local variables until the call returns. Tensors written in place get their version
# counters bumped, as torch's in-place ops do (autograd's check for saved tensors relies on it).

def _ptrs(ts: Sequence[torch.Tensor] | None) -> array | None:
    return None if ts is None else array("q", map(torch.Tensor.data_ptr, ts))


def _addr(buf: array | None) -> int | None:
    return None if buf is None else buf.buffer_info()[0]


def _sizes(ts: Sequence[torch.Tensor]) -> array:
    return array("q", map(torch.Tensor.numel, ts))


def _vec(x: torch.Tensor | None) -> torch.Tensor | None:
    """A per-tensor scalar vector as contiguous float32 (what the C side reads), or None."""
    return None if x is None else x.to(_f32).contiguous()


def _out(n: int, wanted: bool = True) -> torch.Tensor | None:
    return torch.empty(n, dtype=_f32) if wanted else None


def _p(x: torch.Tensor | None) -> int | None:
    return None if x is None else x.data_ptr()


def _bump(*lists: Sequence[torch.Tensor] | None) -> None:
    for ts in lists:
        if ts is not None:
            torch._C._increment_version(list(ts))


def _cache_bytes(level: int, default: int) -> int:
    """Size of cpu0's level-`level` cache from sysfs (L2: a core's own; L3: shared); `default` if unknown."""
    try:
        for index in sorted(os.listdir("/sys/devices/system/cpu/cpu0/cache")):
            base = f"/sys/devices/system/cpu/cpu0/cache/{index}/"
            with open(base + "level") as f:
                if f.read().strip() != str(level):
                    continue
            with open(base + "size") as f:
                text = f.read().strip().upper()
            scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
            return int(text.rstrip("KMB")) * scale
    except (OSError, ValueError):
        pass
    return default


def _l2_bytes() -> int:
    """A core's L2 cache, which bounds the tensors the blocked kernels take; 512 KiB if unknown."""
    return _cache_bytes(2, 512 << 10)


def _l3_bytes() -> int:
    """The last-level cache, shared by the cores; 8 MiB if unknown."""
    return _cache_bytes(3, 8 << 20)


#: Tensors whose working set (numel × the bytes per element a step touches: 8 for Fromage, 12 with
#: momentum and for LARS, 16 for LAMB) is at most BLOCKED_BYTES take the blocked kernels (whole
#: tensor per thread, from L2); the other unsharded ones the grouped kernels, in groups whose
#: revisited bytes (W and u: 8 per element; LARS 12) are about GROUP_BYTES, from the shared
#: last-level cache; a larger tensor is a group of its own. LAMB keeps u between its passes in a
#: buffer of one group (GROUP_BYTES / 2). Measured on the GPT-2 set: groups of 8–24 MiB all help
#: (3/4 of a 32 MiB L3 lets LAMB keep u for 768×3072 matrices). 0 turns either off.
BLOCKED_BYTES = _l2_bytes()
GROUP_BYTES = min(_l3_bytes() * 3 // 4, 64 << 20)
#: False: every tensor takes the streamed passes with the ratio by _ratio.trust_ratio (tests
#: compare the three ways bit for bit).
IN_KERNEL_RATIO = True


def split(params: Sequence[torch.Tensor], like: Sequence[torch.Tensor], bytes_per_element: int):
    """(small, grouped, streamed): index arrays (None when empty) of the tensors for the blocked
    kernels, for the grouped kernels, and for the streamed passes with the ratio in torch — the
    sharded tensors, whose norms must be reduced across shards between the two passes."""
    limit = BLOCKED_BYTES // bytes_per_element
    sharded = sharded_indices(like) if IN_KERNEL_RATIO else range(len(params))
    small, grouped, streamed = array("i"), array("i"), array("i")
    for i, n in enumerate(map(torch.Tensor.numel, params)):
        if i in sharded:
            streamed.append(i)
        elif n <= limit:
            small.append(i)
        else:
            grouped.append(i)
    return (small or None), (grouped or None), (streamed or None)


def group_elems(bytes_per_element: int) -> int:
    return max(GROUP_BYTES // bytes_per_element, 0)


def _n(sel: array | None, n: int) -> int:
    return n if sel is None else len(sel)


def norms(*lists: Sequence[torch.Tensor], sel: array | None = None, out: Sequence[torch.Tensor] | None = None):
    """Norms of the tensors of each list (aligned lists), one float32 (N,) vector per list (`out`
    if given); with `sel`, only those entries are computed (and written)."""
    n = len(lists[0])
    outs = list(out) if out is not None else [_out(n) for _ in lists]
    ptrs = array("q")
    for ts in lists:
        ptrs.extend(map(torch.Tensor.data_ptr, ts))
    out_ptrs = array("q", (o.data_ptr() for o in outs))
    sizes = _sizes(lists[0])
    _lib.rt_norms(n, len(lists), _addr(ptrs), _addr(sizes), _addr(sel), _n(sel, 0), _addr(out_ptrs),
                  torch.get_num_threads())
    return outs


def snapshot_norms(dst, src, out: torch.Tensor) -> torch.Tensor:
    """dst_i ← src_i, out_i = ‖src_i‖ in the same pass (aligned lists of contiguous float32 CPU
    tensors); the monitor's snapshot before a step."""
    dp, sp, sizes = _ptrs(dst), _ptrs(src), _sizes(dst)  # named: the arrays must outlive the call
    _lib.rt_snapshot_norms(len(dst), 0, _addr(dp), _addr(sp), _addr(sizes), _p(out), torch.get_num_threads())
    _bump(dst)
    return out


def difference_norms(a, b, out: torch.Tensor) -> torch.Tensor:
    """out_i = ‖a_i − b_i‖, the difference never written (the monitor's update norms after a step)."""
    ap, bp, sizes = _ptrs(a), _ptrs(b), _sizes(a)
    _lib.rt_snapshot_norms(len(a), 1, _addr(ap), _addr(bp), _addr(sizes), _p(out), torch.get_num_threads())
    return out


def refresh_norms(a, b, diff: torch.Tensor, norm: torch.Tensor) -> None:
    """diff_i = ‖a_i − b_i‖, then b_i ← a_i with norm_i = ‖a_i‖, in one visit of each span (the monitor
    after a step: the update norms and the next step's snapshot); the same bits as `difference_norms`
    followed by `snapshot_norms`."""
    refresher(a, b)(_p(diff), _p(norm))
    _bump(b)


def lanczos(w: torch.Tensor, v0, k: int, eps: float):
    """Up to `k` steps of Golub-Kahan-Lanczos bidiagonalisation of the contiguous float32 CPU matrix
    `w` (m × n), in float64, from the unit float64 numpy vector `v0` (n): numpy arrays of B's
    diagonal α, its superdiagonal β, and the (k + 1) × n matrix whose first len(β) + 1 rows are the
    right Lanczos vectors. Stops early where a new vector's norm is at most eps·max(α_0, 1e-3·‖w‖_F)
    or is not finite (see rt_lanczos). numpy, not torch, for the work arrays: a dozen small torch
    operations would cost more than the kernel on small layers."""
    import numpy as np

    m, n = w.shape
    V, U = np.zeros((k + 1, n)), np.empty((k, m))
    V[0] = v0
    alpha, beta = np.empty(k), np.empty(k)
    nbeta = ctypes.c_int(0)
    na = _lib.rt_lanczos(m, n, w.data_ptr(), k, eps, V.ctypes.data, U.ctypes.data, alpha.ctypes.data,
                         beta.ctypes.data, ctypes.addressof(nbeta))
    return alpha[:na], beta[: nbeta.value], V


def refresher(a, b):
    """`refresh_norms` over fixed lists with its argument arrays built once, for a caller that runs it
    every step: returns ``call(diff_addr, norm_addr)``, which writes the float32 norms at those
    addresses. The tensors must keep their storage while `call` lives (it holds references to
    them); b is the caller's private buffer, so its version counter is not bumped."""
    ap, bp, sizes = _ptrs(a), _ptrs(b), _sizes(a)
    n, fn, threads = len(a), _lib.rt_refresh_norms, torch.get_num_threads
    args = (_addr(ap), _addr(bp), _addr(sizes))
    keep = (ap, bp, sizes, list(a), list(b))

    def call(diff_addr: int, norm_addr: int) -> None:
        fn(n, *args, diff_addr, norm_addr, threads())

    call.keep = keep
    return call


def scale_(params, scale: torch.Tensor) -> None:
    """p_i ← p_i·scale_i, skipping the tensors whose scale is exactly 1."""
    scale = _vec(scale)
    pp, sizes = _ptrs(params), _sizes(params)
    _lib.rt_scale(len(params), _addr(pp), _addr(sizes), _p(scale), torch.get_num_threads())
    _bump(params)


# ---------------------------------------------------------------------------------------------------
# the layerwise step (Fromage, LARS, LAMB), written once: see kernels.c

def _read_ways(header: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^#define RT_(BLOCKED|GROUPED|NORMS|UPDATE) (\d+)$",
                                                            header, re.M)}


_WAYS = _read_ways(_SOURCES.joinpath("kernels.h").read_text())
BLOCKED, GROUPED, NORMS, UPDATE = (_WAYS[w] for w in ("BLOCKED", "GROUPED", "NORMS", "UPDATE"))


class Kernel:
    """One optimiser's entry point rt_<name> with its own tensor lists and scalars bound (aligned
    lists, a list None where the optimiser goes without it, e.g. no momentum); called with a way
    (BLOCKED, GROUPED, NORMS, UPDATE) and what that way reads and writes. `written`: the lists the
    step modifies, whose version counters `bump` advances once the step is done."""

    __slots__ = ("n", "params", "_fn", "_sizes", "_keep", "_args", "_written")

    def __init__(self, name: str, tensors: Sequence[Sequence[torch.Tensor] | None], scalars: Sequence,
                 written: Sequence[Sequence[torch.Tensor] | None]) -> None:
        self.params = tensors[0]
        self.n = len(self.params)
        self._fn = getattr(_lib, "rt_" + name)
        self._sizes = _sizes(self.params)
        # the pointer arrays and vectors must outlive every call: held here
        self._keep = [_ptrs(ts) for ts in tensors] + [x for x in scalars if isinstance(x, torch.Tensor)]
        ptr_args = [_addr(a) for a in self._keep[: len(tensors)]]
        self._args = ptr_args + [_p(x) if isinstance(x, torch.Tensor) else x for x in scalars]
        self._written = written

    def __call__(self, way: int, sel: array | None = None, *, group_elems: int = 0, wnorm_in=None, ratio=None,
                 unorm_in=None, wnorm=None, unorm=None, newnorm=None) -> None:
        self._fn(way, self.n, _addr(self._sizes), _addr(sel), _n(sel, 0), group_elems, _p(wnorm_in), _p(ratio),
                 _p(unorm_in), _p(wnorm), _p(unorm), _p(newnorm), torch.get_num_threads(), *self._args)

    def bump(self) -> None:
        _bump(*self._written)


def layerwise_step(kernel: Kernel, like: Sequence[torch.Tensor], *, trust_ratio: bool, bytes_per_element: int,
                   group_bytes_per_element: int | None = None, ratio_hp: dict | None = None,
                   weight_norm: torch.Tensor | None = None, want_new_norm: bool = False,
                   norm_pass_writes: bool = False):
    """One step of a layerwise optimiser on the kernels (see `split`): (‖W‖ of the local tensors,
    ‖W‖ reduced across shards or None where not computed, the new weights' local ‖W‖ or None).

    Unsharded tensors run norm pass, ratio and update pass per tensor (blocked) or per group of
    tensors (grouped) with the ratio in C; sharded ones are streamed: a norm pass, the norms reduced
    across ranks and turned into ratios by `_ratio.trust_ratio` (κ, λ, ε: `ratio_hp`), an update pass.
    Without a trust ratio (r = 1) no norm is taken: the norm pass runs only where it updates state
    (`norm_pass_writes`: Fromage's momentum, LAMB's moments). `weight_norm`: local norms of the
    weights known from the previous step (then W is not read for them); `want_new_norm`: also take
    the new weights' norms in the update pass."""
    n = kernel.n
    new_local = _out(n, want_new_norm)
    if not trust_ratio:
        if norm_pass_writes:
            kernel(NORMS)
        kernel(UPDATE, ratio=torch.ones(n, dtype=_f32), newnorm=new_local)
        kernel.bump()
        return weight_norm, None, new_local
    small, grouped, streamed = split(kernel.params, like, bytes_per_element)
    local_weight_norm = _out(n) if weight_norm is None else weight_norm.clone()
    update_norm = _out(n)
    outs = dict(wnorm_in=weight_norm, wnorm=local_weight_norm, unorm=update_norm, newnorm=new_local)
    if small is not None:
        kernel(BLOCKED, small, **outs)
    if grouped is not None:
        kernel(GROUPED, grouped, group_elems=group_elems(group_bytes_per_element or bytes_per_element), **outs)
    reduced_weight_norm = None
    if streamed is not None:
        kernel(NORMS, streamed, wnorm=local_weight_norm if weight_norm is None else None, unorm=update_norm)
        reduced_weight_norm = reduce_norms(local_weight_norm.clone(), like)
        reduced_update_norm = reduce_norms(update_norm, like)
        ratio = _trust_ratio(reduced_weight_norm, reduced_update_norm, **(ratio_hp or {}))
        kernel(UPDATE, streamed, ratio=ratio, unorm_in=reduced_update_norm, newnorm=new_local)
    kernel.bump()
    return local_weight_norm, reduced_weight_norm, new_local


#: State tensors of at least this many bytes are backed by transparent huge pages (see advise_huge_pages).
HUGE_PAGE_MIN_BYTES = 4 << 20
_HUGE = 2 << 20
_madvise = None


def advise_huge_pages(t: torch.Tensor) -> bool:
    """Ask Linux to back a large CPU tensor's memory with 2 MiB transparent huge pages
    (``madvise(MADV_HUGEPAGE)`` on the 2 MiB-aligned pages inside it), to be called before the
    memory is first written. A pass over memory backed by 4 KiB pages takes a TLB miss every 4 KiB
    per stream, and the hardware prefetchers restart at every 4 KiB boundary; on the benchmark
    machine LAMB's step on a 4096² matrix took 8 % less time with its moments in huge pages. Only
    where the kernel's THP mode allows it (``madvise`` or ``always``); a no-op elsewhere, for small
    tensors, or with ``RELTRUST_HUGE_PAGES=0``. Returns whether the advice was given."""
    global _madvise
    nbytes = t.numel() * t.element_size()
    if nbytes < HUGE_PAGE_MIN_BYTES or not t.is_cpu or os.environ.get("RELTRUST_HUGE_PAGES", "1") == "0":
        return False
    if _madvise is None:
        _madvise = False
        try:
            with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
                if "[never]" not in f.read():
                    fn = ctypes.CDLL(None, use_errno=True).madvise
                    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
                    _madvise = fn
        except (OSError, AttributeError):  # not Linux, or no THP
            pass
    if not _madvise:
        return False
    start = -(-t.data_ptr() // _HUGE) * _HUGE
    end = (t.data_ptr() + nbytes) // _HUGE * _HUGE
    return end > start and _madvise(start, end - start, 14) == 0  # 14: MADV_HUGEPAGE


def trust_ratio(weight_norm: torch.Tensor, update_norm: torch.Tensor, *, coefficient: float = 1.0,
                weight_decay: float = 0.0, eps: float = 0.0) -> torch.Tensor:
    """The kernels' own trust ratio (used by the blocked kernels), over float32 CPU vectors; equal to
    `_ratio.trust_ratio` bit for bit (tested)."""
    w, u = _vec(weight_norm), _vec(update_norm)
    out = _out(len(w))
    _lib.rt_trust_ratio(len(w), w.data_ptr(), u.data_ptr(), coefficient, weight_decay, eps, out.data_ptr())
    return out


def count_steps(steps: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """steps_i += 1 for 0-dim float32 CPU step counters, returning the new counts as one (N,) vector
    (what `torch._foreach_add_(steps, 1.0)` then `torch.stack(steps)` give, without 2N dispatches);
    None where the counters are of another kind (the caller then uses torch)."""
    if not all(t.is_cpu and t.dtype is _f32 and t.dim() == 0 for t in steps):
        return None
    out = torch.empty(len(steps), dtype=_f32)
    sp = _ptrs(steps)
    _lib.rt_count_steps(len(steps), _addr(sp), out.data_ptr())
    _bump(steps)
    return out
