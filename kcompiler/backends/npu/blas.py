"""How many threads numpy's BLAS uses while the functional simulator runs a program.

The simulator forms each op's whole product in one BLAS call (kernels.GemmKernel.prefetch),
threaded by OpenBLAS over every core this process may use; the rest (im2col, epilogues,
vector ops) runs on the calling thread. Measured on resnet50 here, splitting those over a
Python thread pool instead gained nothing (its tap-by-tap numpy calls wait on the GIL, and
memory-bound passes barely scale), and a pool-split GEMM ran 5 ms slower than OpenBLAS's own.

``KC_NPU_THREADS`` sets the count. Set it to 1 when several simulators share the cores (the
test suite's xdist workers do): OpenBLAS's worker threads spin for a while after each call,
and on oversubscribed cores a multi-threaded sgemm measured 10x slower than a single thread.
Without a findable OpenBLAS this does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
from functools import lru_cache


def host_threads() -> int:
    """Threads the simulator may use: KC_NPU_THREADS, else the cores this process may run on."""
    env = os.environ.get("KC_NPU_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@lru_cache(maxsize=1)
def _openblas():
    import numpy as np

    libdir = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")
    for path in glob.glob(os.path.join(libdir, "*openblas*.so*")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and set_ is not None:
                    set_.argtypes = [ctypes.c_int]
                    return get, set_
    return None


@contextlib.contextmanager
def blas_threads(n: int | None = None):
    """numpy's BLAS on `n` threads (default host_threads()) inside the block."""
    fns = _openblas()
    if fns is None:
        yield
        return
    get, set_ = fns
    want = n or host_threads()
    before = get()
    if want == before:
        yield
        return
    set_(want)
    try:
        yield
    finally:
        set_(before)
