"""Run numpy's BLAS single-threaded while the functional simulator computes tiles.

OpenBLAS's worker threads spin; on a machine whose cores are shared (CI, a laptop running
ONNX Runtime next to us) a multi-threaded sgemm measured 10x slower than a single
thread here. ``KC_NPU_BLAS_THREADS`` overrides the count. Without a findable OpenBLAS
this does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
from functools import lru_cache


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
    fns = _openblas()
    if fns is None:
        yield
        return
    get, set_ = fns
    want = int(os.environ.get("KC_NPU_BLAS_THREADS", n or 1))
    before = get()
    if want == before:
        yield
        return
    set_(want)
    try:
        yield
    finally:
        set_(before)
