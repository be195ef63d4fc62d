"""The sparse-OT BFGS solve in plain C (routing/ot_native.c), built on first use and loaded with ctypes.

Why: on the CPU a router-sized problem (16 x 2048) costs tens of microseconds per evaluation in a tight
loop, while a torch step, compiled or not, pays a fixed framework cost per call that dominates at this
size. The C code is the same BFGS + polish as routing/ot_solvers.py, one problem at a time; a batch is
split into one contiguous share per torch thread (ctypes drops the GIL during the call).

The shared library is built with the system C compiler (`cc`, or $CC) into a cache folder
($WORKBENCH_CACHE, else ~/.cache/workbench) named by the source's hash, so it is built once per
machine (about a second) and rebuilt when the source changes. Without a compiler `available()` is
False (one warning) and solve_sparse_ot keeps its torch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("ot_native.c")
FLAGS = ["-O3", "-std=c99", "-fPIC", "-shared", "-Wno-psabi"]
NATIVE = ["-march=native"]  # the machine's vector units (as torch.compile's C++ builds); dropped if refused
_lib: ctypes.CDLL | None = None
_failed: str | None = None  # why the build failed (then the torch path is used)


class InvalidInput(ValueError):
    """Some problem failed the C solve's value checks (non-finite, signs, sums, sparsity budget); the caller
    names which with routing.sparse_ot.check_values."""


def cache_dir() -> Path:
    """Where built libraries live: $WORKBENCH_CACHE or ~/.cache/workbench, subfolder native/."""
    root = os.environ.get("WORKBENCH_CACHE") or Path.home() / ".cache" / "workbench"
    return Path(root) / "native"


def _cpu() -> str:
    """What -march=native compiles for: the CPU's model and feature flags (Linux), else the platform's name."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({x for x in info if x.startswith(("model name", "flags", "Features"))}))
    except OSError:
        return platform.processor() or platform.machine()


def _compile(cc: str, out: Path) -> None:
    """cc the source into out, with -march=native where the compiler takes it."""
    for extra in (NATIVE, []):
        proc = subprocess.run([cc, *FLAGS, *extra, "-o", str(out), str(SOURCE), "-lm"], capture_output=True, text=True)
        if proc.returncode == 0:
            return
    raise RuntimeError(f"{cc} failed: {proc.stderr.strip()[:500]}")


def _compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler found (set CC or install gcc)")
    return cc


def library_path(cc: str) -> Path:
    """The cached library for this source, compiler, flags and CPU."""
    key = hashlib.sha256(SOURCE.read_bytes() + "\n".join(FLAGS + NATIVE + [cc, platform.machine(), _cpu()]).encode())
    return cache_dir() / f"ot_native-{key.hexdigest()[:16]}.so"


def _build() -> ctypes.CDLL:
    """Compile ot_native.c (once per source, compiler, flags and CPU) and load it."""
    cc = _compiler()
    out = library_path(cc)
    try:
        lib = ctypes.CDLL(str(out)) if out.exists() else None
    except OSError:  # a damaged cache file (a full disk, an interrupted copy): build it again
        lib = None
    if lib is None:
        out.parent.mkdir(parents=True, exist_ok=True)
        print(f"sparse-OT: building the native solver into {out} (once per machine, about a second)",
              file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:  # build aside, then rename: safe in parallel
            tmp_out = Path(tmp) / out.name
            _compile(cc, tmp_out)
            os.replace(tmp_out, out)
        lib = ctypes.CDLL(str(out))
    dp, ip, i, d = ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_int), ctypes.c_int, ctypes.c_double
    lib.sparse_ot_bfgs.argtypes = [dp, dp, dp, i, i, i, i, i, d, i, d, d, d, dp, dp, dp, dp, dp, dp, dp, ip]
    lib.sparse_ot_bfgs.restype = ctypes.c_int
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded library, building it on first use; None (after one warning) where it cannot be built."""
    global _lib, _failed
    if _lib is None and _failed is None:
        try:
            _lib = _build()
        except (OSError, RuntimeError) as e:
            _failed = str(e)
            warnings.warn(f"sparse-OT: the native solver is unavailable ({e}); using the torch solver", stacklevel=3)
    return _lib


def available() -> bool:
    return library() is not None


def applies(cost: Tensor, k: int, max_rows: int) -> bool:
    """Whether the native solve can take this problem: CPU, float32/64, at most max_rows rows (any k: the C
    code clamps it to the rows)."""
    return cost.device.type == "cpu" and cost.dtype in (torch.float32, torch.float64) and cost.shape[-2] <= max_rows


def _ptr(x: Tensor, ctype=ctypes.c_double):
    return ctypes.cast(x.data_ptr(), ctypes.POINTER(ctype))


def bfgs(cost: Tensor, a: Tensor, b: Tensor, k: int, gamma: float, max_iter: int, tol: float, ftol: float,
         damping: float, threads: int | None = None) -> dict[str, Tensor | int]:
    """BFGS + one polishing Newton step for each of B problems, in float64 whatever the input dtype.

    cost (B, n, m), a (B, n), b (B, m) -> a dict in the input's dtype: alpha (B, n), value D (B,), grad D
    (B, n), plan (B, n, m), beta (B, m) (ot_duals.dual_potentials), primal (B,), row_error (B,), and
    n_iter, the most BFGS iterations any problem took."""
    lib = library()
    if lib is None:
        raise RuntimeError(f"the native sparse-OT solver is unavailable: {_failed}")
    bsz, n, m = cost.shape
    f64 = torch.float64
    c = cost.detach().to(f64).contiguous()  # (B, n, m)
    a64 = a.detach().to(f64).expand(bsz, n).contiguous()
    b64 = b.detach().to(f64).expand(bsz, m).contiguous()
    out = {"alpha": torch.empty(bsz, n, dtype=f64), "value": torch.empty(bsz, dtype=f64),
           "grad": torch.empty(bsz, n, dtype=f64), "plan": torch.empty(bsz, n, m, dtype=f64),
           "beta": torch.empty(bsz, m, dtype=f64), "primal": torch.empty(bsz, dtype=f64),
           "row_error": torch.empty(bsz, dtype=f64)}
    iters = torch.zeros(bsz, dtype=torch.int32)
    ptrs = [_ptr(x) for x in out.values()]

    def run(lo: int, hi: int) -> int:
        return lib.sparse_ot_bfgs(_ptr(c), _ptr(a64), _ptr(b64), lo, hi, n, m, k, float(gamma), max_iter,
                                  tol, ftol, damping, *ptrs, _ptr(iters, ctypes.c_int))

    threads = max(1, min(threads or torch.get_num_threads(), bsz))
    if threads == 1:
        codes = [run(0, bsz)]
    else:
        bounds = [bsz * t // threads for t in range(threads + 1)]
        codes = list(_pool(threads).map(run, bounds[:-1], bounds[1:]))
    if -2 in codes:
        raise InvalidInput("a problem failed the value checks")
    if any(codes):
        raise RuntimeError(f"the native sparse-OT solver failed (k = {k}, out of memory?)")
    res: dict[str, Tensor | int] = {name: x.to(cost.dtype) for name, x in out.items()}
    res["n_iter"] = int(iters.max())
    return res


_pools: dict[int, ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    """One long-lived pool per thread count (starting threads on every solve would cost more than a small one)."""
    if threads not in _pools:
        _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="sparse-ot")
    return _pools[threads]
