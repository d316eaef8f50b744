"""How many host threads the functional simulator uses, and numpy's BLAS inside it.

The simulator makes one BLAS call per MATMUL instruction (sim.matmul_into), each on one BLAS
thread: OpenBLAS rounds a product differently when it splits it over threads (or when a product
is split into other tiles), and the reference walk and the replay must agree bit for bit on any
machine. Parallelism comes instead from running the chip's cores side by side on
``kcompiler.threads.host_threads()`` host threads (KC_THREADS or KC_NPU_THREADS; default: every
core this process may use) between barriers,
where no core writes DRAM another core of the segment touches (sim.Replay._split).

Set ``KC_NPU_THREADS=1`` when several simulators share the cores (the test suite's xdist
workers do). OpenBLAS's kernels are its own choice (or OPENBLAS_CORETYPE's): on the AMD EPYC
this was measured on, the environment pins the AVX2 Haswell kernels, one-thread sgemm of
3136x576 @ 576x64 at 121 GFLOP/s against 226 with OPENBLAS_CORETYPE=SkylakeX.
Without a findable OpenBLAS, blas_threads does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
from functools import lru_cache

import numpy as np

from kcompiler.threads import host_threads  # noqa: F401  (re-exported: the simulator's thread count)


@lru_cache(maxsize=1)
def _openblas():
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
                core = getattr(lib, f"{prefix}_get_corename{suffix}", None)
                if get is not None and set_ is not None:
                    set_.argtypes = [ctypes.c_int]
                    if core is not None:
                        core.restype = ctypes.c_char_p
                    return get, set_, core
    return None


def kernels() -> str:
    """The kernels numpy's OpenBLAS runs (e.g. 'Haswell', 'SkylakeX'), or '' if unknown."""
    fns = _openblas()
    if fns is None or fns[2] is None:
        return ""
    return fns[2]().decode("ascii", "replace")


@contextlib.contextmanager
def blas_threads(n: int | None = None):
    """numpy's BLAS on `n` threads (default host_threads()) inside the block."""
    fns = _openblas()
    if fns is None:
        yield
        return
    get, set_, _ = fns
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
